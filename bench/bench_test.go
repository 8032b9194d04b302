package bench

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func echo(ctx context.Context, id string) (string, error) { return id, nil }

func TestClosedLoopCountsEveryReply(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	r, err := Run(context.Background(), Config{Workload: "echo", Engine: "func", Concurrency: 4, Duration: 200 * time.Millisecond},
		func(ctx context.Context, id string) (string, error) { calls.Add(1); return id, nil })
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.Ops != calls.Load() || r.Mode != "closed" || r.ThroughputPerS <= 0 {
		t.Fatalf("result %+v after %d calls", r, calls.Load())
	}
	if !strings.Contains(r.String(), "exactly one reply") || !strings.Contains(r.JSON(), `"throughput_per_s"`) {
		t.Fatalf("report: %s / %s", r.String(), r.JSON())
	}
}

func TestWrongRepliesErrorsAndTimeouts(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	r, err := Run(context.Background(), Config{Concurrency: 2, Duration: 300 * time.Millisecond, Timeout: 20 * time.Millisecond},
		func(ctx context.Context, id string) (string, error) {
			switch n.Add(1) % 4 {
			case 0:
				return "someone-else", nil
			case 1:
				return "", errors.New("boom")
			case 2:
				<-ctx.Done() // never answers
				return "", ctx.Err()
			}
			return id, nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() || r.Ops == 0 || r.Errors == 0 || r.Lost == 0 || r.Duplicates == 0 || r.FirstError == "" {
		t.Fatalf("result %+v", r)
	}
}

// A system that stalls for 300ms once: the closed loop sees one slow
// operation, the open loop sees every operation scheduled during the stall.
func TestOpenLoopShowsStalls(t *testing.T) {
	t.Parallel()
	stalling := func() Op {
		var stalled atomic.Bool
		var mu = make(chan struct{}, 1)
		mu <- struct{}{}
		return func(ctx context.Context, id string) (string, error) {
			<-mu // one at a time, like a single-threaded server
			defer func() { mu <- struct{}{} }()
			if !stalled.Swap(true) {
				time.Sleep(300 * time.Millisecond) // the simulated stall itself
			}
			return id, nil
		}
	}
	closed, err := Run(context.Background(), Config{Concurrency: 1, Duration: time.Second}, stalling())
	if err != nil {
		t.Fatal(err)
	}
	open, err := Run(context.Background(), Config{Rate: 200, Duration: time.Second}, stalling())
	if err != nil {
		t.Fatal(err)
	}
	if closed.P90ms > 50 {
		t.Fatalf("closed loop p90 %.1fms: expected the stall to hide", closed.P90ms)
	}
	// The stall covers the first 30% of the schedule.
	if open.P90ms < 100 || open.MaxMs < 250 || !open.OK() {
		t.Fatalf("open loop p90 %.1fms max %.1fms (%+v): expected the stall in the percentiles", open.P90ms, open.MaxMs, open)
	}
	if open.Ops < 150 {
		t.Fatalf("open loop ran %d ops at 200/s for 1s", open.Ops)
	}
}

func TestConfigValidated(t *testing.T) {
	t.Parallel()
	for _, c := range []Config{{Concurrency: -1}, {Rate: -5}, {Duration: -time.Second}} {
		if _, err := Run(context.Background(), c, echo); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
}

// An open loop warms up as an open loop at its rate, not as a closed loop
// of its in-flight cap.
func TestOpenLoopWarmsUpAtItsRate(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	r, err := Run(context.Background(), Config{Rate: 100, Warmup: 300 * time.Millisecond, Duration: 300 * time.Millisecond},
		func(ctx context.Context, id string) (string, error) { calls.Add(1); return id, nil })
	if err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n > 80 || r.Ops > 40 {
		t.Fatalf("%d calls (%d measured) at 100/s over 600ms", n, r.Ops)
	}
}
