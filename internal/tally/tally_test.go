package tally_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rsvp-go/rsvp/internal/tally"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a Store that keeps the sums of what it was given, and fails
// while failing is set.
type recorder struct {
	mu      sync.Mutex
	in, out map[string]uint64
	calls   int
	failing bool
}

func newRecorder() *recorder {
	return &recorder{in: map[string]uint64{}, out: map[string]uint64{}}
}

func (r *recorder) store(_ context.Context, counts []tally.Count) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.failing {
		return errors.New("engine down")
	}
	for _, c := range counts {
		if c.In == 0 && c.Out == 0 {
			panic("an empty count was stored")
		}
		r.in[c.Queue] += c.In
		r.out[c.Queue] += c.Out
	}
	return nil
}

func (r *recorder) sums(queue string) (in, out uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.in[queue], r.out[queue]
}

func TestCloseStoresEverything(t *testing.T) {
	r := newRecorder()
	tl := tally.Start(time.Hour, time.Second, slog.New(slog.DiscardHandler), r.store)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				tl.In("a")
				tl.Out("a")
				tl.In("b")
			}
		})
	}
	wg.Wait()
	tl.Close()
	tl.Close() // twice is fine
	if in, out := r.sums("a"); in != 8000 || out != 8000 {
		t.Fatalf("queue a: in %d, out %d; want 8000, 8000", in, out)
	}
	if in, out := r.sums("b"); in != 8000 || out != 0 {
		t.Fatalf("queue b: in %d, out %d; want 8000, 0", in, out)
	}
}

func TestStoresEveryInterval(t *testing.T) {
	r := newRecorder()
	tl := tally.Start(10*time.Millisecond, time.Second, slog.New(slog.DiscardHandler), r.store)
	defer tl.Close()
	tl.In("a")
	deadline := time.Now().Add(10 * time.Second)
	for in, _ := r.sums("a"); in != 1; in, _ = r.sums("a") {
		if time.Now().After(deadline) {
			t.Fatal("the count was not stored within 10s")
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
}

func TestFailedStoreKeepsCounts(t *testing.T) {
	r := newRecorder()
	r.failing = true
	tl := tally.Start(10*time.Millisecond, time.Second, slog.New(slog.DiscardHandler), r.store)
	tl.In("a")
	tl.Out("a")
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		calls := r.calls
		if calls >= 2 {
			r.failing = false
		}
		r.mu.Unlock()
		if calls >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no store tried twice within 10s")
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
	tl.In("a")
	tl.Close()
	if in, out := r.sums("a"); in != 2 || out != 1 {
		t.Fatalf("after failed stores: in %d, out %d; want 2, 1", in, out)
	}
}

// TestCountsDroppedAfterLongFailure: counts that could not be stored for
// longer than a while are dropped, not stored later as if they were new.
func TestCountsDroppedAfterLongFailure(t *testing.T) {
	defer tally.SetKeepFor(0)()
	r := newRecorder()
	r.failing = true
	tl := tally.Start(5*time.Millisecond, time.Second, slog.New(slog.DiscardHandler), r.store)
	tl.In("a")
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		calls := r.calls
		r.mu.Unlock()
		if calls >= 2 { // the first failure keeps them; the second drops them
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no store tried twice within 10s")
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
	r.mu.Lock()
	r.failing = false
	r.mu.Unlock()
	tl.Out("a")
	tl.Close()
	if in, out := r.sums("a"); in != 0 || out != 1 {
		t.Fatalf("in %d, out %d; want the old count dropped: 0, 1", in, out)
	}
}

// TestFreshCountsKeptAfterEarlierDrop: counts dropped after a long failure
// leave no mark on counts taken later. A queue that was idle since the
// drop, and whose next store fails once, keeps that fresh count for the
// next try instead of dropping it as if it had been failing all along.
func TestFreshCountsKeptAfterEarlierDrop(t *testing.T) {
	defer tally.SetKeepFor(0)()
	var (
		mu       sync.Mutex
		calls    int
		failures = 3 // the first two: kept, then dropped; the third: the fresh count's first try
		in       uint64
	)
	store := func(_ context.Context, counts []tally.Count) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if failures > 0 {
			failures--
			return errors.New("engine down")
		}
		for _, c := range counts {
			in += c.In
		}
		return nil
	}
	wait := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			done := calls >= n
			mu.Unlock()
			if done {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("fewer than %d stores within 10s", n)
			}
			time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
		}
	}
	tl := tally.Start(5*time.Millisecond, time.Second, slog.New(slog.DiscardHandler), store)
	tl.In("a")
	wait(2) // kept once, then dropped; nothing is left to store
	tl.In("a")
	wait(3) // the fresh count's first try fails
	tl.Close()
	mu.Lock()
	defer mu.Unlock()
	if in != 1 {
		t.Fatalf("in %d; want the fresh count kept after its first failed store and stored later: 1", in)
	}
}

// BenchmarkCount is the cost a request pays to be counted in and out,
// from many goroutines on a few queues.
func BenchmarkCount(b *testing.B) {
	r := newRecorder()
	tl := tally.Start(time.Hour, time.Second, slog.New(slog.DiscardHandler), r.store)
	defer tl.Close()
	queues := []string{"thumbnail", "flaky", "shout", "rsvp-workflows"}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			q := queues[i%len(queues)]
			tl.In(q)
			tl.Out(q)
			i++
		}
	})
}
