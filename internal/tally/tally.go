// Package tally counts the requests that enter and leave each queue in one
// process, and hands the counts to the engine now and then: the figures
// behind the IN/MIN and OUT/MIN columns of rsvp queues, where the engine
// cannot count them as it stores them (on NATS both; on PostgreSQL the
// requests that leave, deleted by acknowledgements batched per statement).
//
// Counting costs a map look-up and an atomic add; the engine is written to
// once per interval per queue that saw traffic, not once per request.
package tally

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Interval is how often engines store their counts, and StoreTimeout
// bounds each store (the last, at close, too).
const (
	Interval     = 5 * time.Second
	StoreTimeout = 2 * time.Second
)

// Count is what one queue saw since the last store.
type Count struct {
	Queue string
	In    uint64 // requests stored on the queue
	Out   uint64 // requests that left it
}

// Store writes counts to the engine. An error keeps them for the next try.
type Store func(ctx context.Context, counts []Count) error

// Tally counts per queue and stores the counts every interval, and once
// more at Close. Its methods are safe for concurrent use.
type Tally struct {
	store    Store
	timeout  time.Duration
	log      *slog.Logger
	queues   sync.Map // queue name → *pair
	stop     chan struct{}
	stopped  chan struct{}
	stopOnce sync.Once

	keptSince time.Time // of the counts kept after a failed store; zero if none are (run's only)
}

// keepFor is how long counts that could not be stored are kept for the
// next try: past it, storing them would show old traffic as new. A
// variable for tests.
var keepFor = time.Minute

type pair struct{ in, out atomic.Uint64 }

// Start starts a Tally that calls store every interval (each call bounded
// by timeout) until Close.
func Start(interval, timeout time.Duration, log *slog.Logger, store Store) *Tally {
	t := &Tally{store: store, timeout: timeout, log: log, stop: make(chan struct{}), stopped: make(chan struct{})}
	go t.run(interval)
	return t
}

// In counts a request stored on queue.
func (t *Tally) In(queue string) { t.pair(queue).in.Add(1) }

// Out counts a request that left queue.
func (t *Tally) Out(queue string) { t.pair(queue).out.Add(1) }

func (t *Tally) pair(queue string) *pair {
	if p, ok := t.queues.Load(queue); ok {
		return p.(*pair)
	}
	p, _ := t.queues.LoadOrStore(queue, new(pair))
	return p.(*pair)
}

func (t *Tally) run(interval time.Duration) {
	defer close(t.stopped)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			t.flush(true)
			return
		case <-tick.C:
			t.flush(false)
		}
	}
}

// flush takes the counts gathered so far and stores them; if that fails,
// they are added back for the next flush, unless they have been kept for
// keepFor already: then they are dropped. Failures are logged as warnings
// when counts are first kept and when they are dropped, and at debug level
// in between. The last flush (at Close) has no next try: what it fails to
// store is lost.
func (t *Tally) flush(last bool) {
	var counts []Count
	for k, v := range t.queues.Range {
		p := v.(*pair)
		c := Count{Queue: k.(string), In: p.in.Swap(0), Out: p.out.Swap(0)}
		if c.In > 0 || c.Out > 0 {
			counts = append(counts, c)
		}
	}
	if len(counts) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), t.timeout)
	defer cancel()
	err := t.store(ctx, counts)
	switch {
	case err == nil:
		if !t.keptSince.IsZero() {
			t.keptSince = time.Time{}
			t.log.Info("rsvp: the queue counts are stored again")
		}
		return
	case last:
		t.log.Warn("rsvp: storing the queue counts at close failed; they are lost", "err", err)
		return
	case t.keptSince.IsZero():
		t.keptSince = time.Now()
		t.log.Warn("rsvp: storing the queue counts failed; they are kept for the next try", "err", err)
	case time.Since(t.keptSince) > keepFor:
		t.keptSince = time.Time{}
		t.log.Warn("rsvp: storing the queue counts failed for a minute; dropped", "err", err)
		return
	default:
		t.log.Debug("rsvp: storing the queue counts failed again", "err", err)
	}
	for _, c := range counts {
		p := t.pair(c.Queue)
		p.in.Add(c.In)
		p.out.Add(c.Out)
	}
}

// Close stores what was counted since the last store and stops. It is safe
// to call more than once.
func (t *Tally) Close() {
	t.stopOnce.Do(func() { close(t.stop) })
	<-t.stopped
}
