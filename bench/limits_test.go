package bench

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// roundErr is the "error" a fake sync returns: how many writes had
// happened when its round started.
type roundErr struct{ covered int64 }

func (r roundErr) Error() string { return "round" }

// Every wait returns after a round that started after the write before it,
// and concurrent writers share rounds.
func TestCommitterCoversEveryWrite(t *testing.T) {
	t.Parallel()
	var writes atomic.Int64
	c := newCommitter(func() error {
		covered := writes.Load()
		time.Sleep(2 * time.Millisecond) // the disk's time, not synchronisation
		return roundErr{covered}
	})
	const writers, each = 64, 10
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range each {
				w := writes.Add(1)
				var re roundErr
				if err := c.wait(context.Background()); !errors.As(err, &re) || re.covered < w {
					t.Errorf("write %d answered by %v (a round covering %d writes)", w, err, re.covered)
					return
				}
			}
		})
	}
	wg.Wait()
	if rounds := c.close(); rounds > writers*each/2 {
		t.Errorf("%d rounds for %d writes from %d writers: no group commit", rounds, writers*each, writers)
	}
	if err := c.wait(context.Background()); !errors.Is(err, errCommitterClosed) {
		t.Errorf("wait after close: %v", err)
	}
}

// Every limit runs, labels its result and gets every reply.
func TestLimits(t *testing.T) {
	t.Parallel()
	cfg := Config{Concurrency: 4, Duration: 150 * time.Millisecond}
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		run              func(context.Context, Config) (Result, error)
		workload, engine string
	}{
		"tcp":          {LimitTCPEcho, "limit:tcp-echo", "loopback"},
		"http":         {LimitHTTP, "limit:http", "loopback"},
		"nats":         {LimitNATSRequest, "limit:nats-request", "embedded:mem"},
		"fsync":        {func(ctx context.Context, c Config) (Result, error) { return LimitFsync(ctx, c, dir) }, "limit:fsync", "disk:" + dir},
		"group-commit": {func(ctx context.Context, c Config) (Result, error) { return LimitGroupCommit(ctx, c, dir) }, "limit:group-commit", "disk:" + dir},
		"js-fsync": {func(ctx context.Context, c Config) (Result, error) {
			return LimitJetStream(ctx, c, dir, rsvpnats.SyncAlways)
		}, "limit:jetstream", "embedded:fsync"},
		"js-interval": {func(ctx context.Context, c Config) (Result, error) {
			return LimitJetStream(ctx, c, "", rsvpnats.SyncInterval)
		}, "limit:jetstream", "embedded:interval"},
		"js-open-loop": {func(ctx context.Context, c Config) (Result, error) {
			c.Concurrency, c.Rate, c.Warmup = 0, 200, 50*time.Millisecond
			return LimitJetStream(ctx, c, dir, rsvpnats.SyncInterval)
		}, "limit:jetstream", "embedded:interval"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r, err := tc.run(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !r.OK() || r.Workload != tc.workload || r.Engine != tc.engine {
				t.Fatalf("result %+v, want %s on %s with every reply", r, tc.workload, tc.engine)
			}
		})
	}
}

func TestLimitJetStreamOnLeavesNothing(t *testing.T) {
	t.Parallel()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r, err := LimitJetStreamOn(t.Context(), Config{Concurrency: 2, Duration: 100 * time.Millisecond, Engine: "embedded:mem"}, b)
	if err != nil || !r.OK() || r.Engine != "embedded:mem" {
		t.Fatalf("result %+v, error %v", r, err)
	}
	js, err := jetstream.New(b.Conn())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{wireRequests, wireReplies} {
		s, err := js.Stream(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != 0 || info.State.Consumers != 0 {
			t.Errorf("%s after the run: %d messages, %d consumers", name, info.State.Msgs, info.State.Consumers)
		}
	}
}
