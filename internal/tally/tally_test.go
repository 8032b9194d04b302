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

// recorder is a Store that keeps the sums of what it was given, after
// failing its first failures calls.
type recorder struct {
	mu       sync.Mutex
	in, out  map[string]uint64
	calls    int
	failures int
}

func newRecorder(failures int) *recorder {
	return &recorder{in: map[string]uint64{}, out: map[string]uint64{}, failures: failures}
}

func (r *recorder) store(_ context.Context, counts []tally.Count) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.failures > 0 {
		r.failures--
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

// waitCalls waits until the store was called n times.
func (r *recorder) waitCalls(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		calls := r.calls
		r.mu.Unlock()
		if calls >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d stores within 10s, want %d", calls, n)
		}
		time.Sleep(2 * time.Millisecond) // polling a condition, with a deadline
	}
}

func start(interval time.Duration, r *recorder) *tally.Tally {
	return tally.Start(interval, time.Second, slog.New(slog.DiscardHandler), r.store)
}

func TestCloseStoresEverything(t *testing.T) {
	r := newRecorder(0)
	tl := start(time.Hour, r)
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
	r := newRecorder(0)
	tl := start(5*time.Millisecond, r)
	defer tl.Close()
	tl.In("a")
	r.waitCalls(t, 1)
	if in, _ := r.sums("a"); in != 1 {
		t.Fatalf("in %d, want 1", in)
	}
}

func TestFailedStoreKeepsCounts(t *testing.T) {
	r := newRecorder(1)
	tl := start(5*time.Millisecond, r)
	tl.In("a")
	tl.Out("a")
	r.waitCalls(t, 2) // failed, then stored
	tl.In("a")
	tl.Close()
	if in, out := r.sums("a"); in != 2 || out != 1 {
		t.Fatalf("after a failed store: in %d, out %d; want 2, 1", in, out)
	}
}

// TestCountsDroppedAfterLongFailure: counts that could not be stored for
// longer than a while are dropped, not stored later as if they were new.
func TestCountsDroppedAfterLongFailure(t *testing.T) {
	defer tally.SetKeepFor(0)()
	r := newRecorder(2)
	tl := start(5*time.Millisecond, r)
	tl.In("a")
	r.waitCalls(t, 2) // the first failure keeps them; the second drops them
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
	r := newRecorder(3) // kept, dropped; then the fresh count's first try
	tl := start(5*time.Millisecond, r)
	tl.In("a")
	r.waitCalls(t, 2) // nothing is left to store
	tl.In("a")
	r.waitCalls(t, 3)
	tl.Close()
	if in, _ := r.sums("a"); in != 1 {
		t.Fatalf("in %d; want the fresh count kept after its first failed store and stored later: 1", in)
	}
}

// BenchmarkCount is the cost a request pays to be counted in and out,
// from many goroutines on a few queues.
func BenchmarkCount(b *testing.B) {
	r := newRecorder(0)
	tl := start(time.Hour, r)
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
