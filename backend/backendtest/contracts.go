package backendtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

// contractCases check promises of backend.go's doc comments that the
// other cases leave out: settling once, consumers and subscriptions that
// close, default limits, what a reopened engine keeps, activity.
var contractCases = []testCase{
	{name: "SettledOnce", run: func(t *testing.T, open Opener, f Features) {
		// Exactly one of Ack, Nack or the lease's end settles a delivery:
		// a settled delivery can be neither settled again nor extended
		// (ErrLeaseLost, "or it was settled"), and its second call neither
		// brings an acked request back nor removes a nacked one.
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		q := uniq("q")
		acked, nacked := newMsg(b, q), newMsg(b, q)
		mustEnqueue(t, b, acked)
		c := consume(t, b, q, backend.ConsumeParams{Lease: 10 * time.Second})
		d := next(t, c, 10*time.Second)
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		for op, call := range map[string]func() error{
			"Ack":    func() error { return d.Ack(ctx) },
			"Nack":   func() error { return d.Nack(ctx, 0) },
			"Extend": func() error { return d.Extend(ctx) },
		} {
			if err := call(); !errors.Is(err, backend.ErrLeaseLost) {
				t.Errorf("%s after Ack: %v, want ErrLeaseLost", op, err)
			}
		}
		mustEnqueue(t, b, nacked)
		d = next(t, c, 10*time.Second)
		if d.Message().ID != nacked.ID {
			t.Fatalf("got %s (attempt %d) after the Ack and a Nack of it, want only %s", d.Message().ID, d.Message().Attempt, nacked.ID)
		}
		if err := d.Nack(ctx, 300*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		for op, call := range map[string]func() error{
			"Ack":    func() error { return d.Ack(ctx) },
			"Extend": func() error { return d.Extend(ctx) },
		} {
			if err := call(); !errors.Is(err, backend.ErrLeaseLost) {
				t.Errorf("%s after Nack: %v, want ErrLeaseLost", op, err)
			}
		}
		d = next(t, c, 5*time.Second)
		if d.Message().ID != nacked.ID || d.Message().Attempt != 2 {
			t.Fatalf("got %s attempt %d, want %s back after its Nack (attempt 2)", d.Message().ID, d.Message().Attempt, nacked.ID)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		nothingWithin(t, c, 300*time.Millisecond)
	}},
	{name: "ClosedConsumerDeliveriesStayValid", run: func(t *testing.T, open Opener, f Features) {
		// Consumer.Close ends waiting Next calls with ErrClosed; what it
		// handed out can still be settled and extended, and what is left
		// unsettled comes again after its lease.
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		q := uniq("q")
		for range 2 {
			mustEnqueue(t, b, newMsg(b, q))
		}
		const lease = 600 * time.Millisecond
		c1, err := b.Consume(ctx, q, backend.ConsumeParams{Lease: lease})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c1.Close() })
		acked, kept := next(t, c1, 10*time.Second), next(t, c1, 10*time.Second)
		cancelled, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := c1.Next(cancelled); !errors.Is(err, context.Canceled) {
			t.Fatalf("Next on an ended context: %v, want context.Canceled", err)
		}
		waiting := make(chan error, 1)
		go func() {
			_, err := c1.Next(ctx)
			waiting <- err
		}()
		if err := c1.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-waiting; !errors.Is(err, backend.ErrClosed) {
			t.Fatalf("Next waiting when its consumer closed: %v, want ErrClosed", err)
		}
		if err := acked.Ack(ctx); err != nil {
			t.Fatalf("Ack after the consumer closed: %v", err)
		}
		if err := kept.Extend(ctx); err != nil {
			t.Fatalf("Extend after the consumer closed: %v", err)
		}
		extended := time.Now()
		c2 := consume(t, b, q, backend.ConsumeParams{Lease: lease})
		d := next(t, c2, 10*time.Second)
		if d.Message().ID != kept.Message().ID || d.Message().Attempt != 2 {
			t.Fatalf("got %s attempt %d, want the unsettled %s again (attempt 2)", d.Message().ID, d.Message().Attempt, kept.Message().ID)
		}
		if waited := time.Since(extended); waited < lease/2 {
			t.Fatalf("delivered again %s after its Extend, well before its %s lease ran out", waited, lease)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		_ = c1.Close() // safe twice
	}},
	{name: "ClosedConsumerKeepsNothing", run: func(t *testing.T, open Opener, f Features) {
		// A consumer closed while Next calls that gave up (a responder
		// stopping: its workers' ctx cancelled) may still have their pulls
		// waiting at the engine: a message stored just before Close goes
		// at once to another consumer, not leased to the closed one until
		// its lease runs out. The race is narrow; each round is one try.
		b := opened(t, open)
		const rounds, workers, lease = 20, 4, time.Minute
		in, _ := b.(backend.Inspector)
		queues := make([]string, rounds)
		for i := range queues {
			q := uniq("q")
			queues[i] = q
			c1, err := b.Consume(ctxFor(t, 10*time.Second), q, backend.ConsumeParams{Lease: lease})
			if err != nil {
				t.Fatal(err)
			}
			gaveUp, giveUp := context.WithCancel(context.Background())
			done := make(chan error, workers)
			for range workers {
				go func() {
					_, err := c1.Next(gaveUp)
					done <- err
				}()
			}
			if in != nil {
				eventually(t, "the Next calls waiting at the engine", func() bool {
					st, _ := queueStats(t, in, q)
					return st.Waiting == -1 || st.Waiting >= workers
				})
			}
			giveUp()
			for range workers {
				if err := <-done; !errors.Is(err, context.Canceled) {
					t.Fatalf("Next given up: %v, want context.Canceled", err)
				}
			}
			mustEnqueue(t, b, newMsg(b, q))
			if err := c1.Close(); err != nil {
				t.Fatal(err)
			}
		}
		var lost []string
		within := ctxFor(t, 5*time.Second) // for all: far less than the lease
		for _, q := range queues {
			c2 := consume(t, b, q, backend.ConsumeParams{Lease: lease})
			d, err := c2.Next(within)
			if err != nil {
				lost = append(lost, q)
				continue
			}
			if err := d.Ack(ctxFor(t, 5*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
		if len(lost) > 0 {
			t.Fatalf("%d of %d messages stored just before their consumer closed were not delivered to another within 5s "+
				"(lease %s): leased to the closed consumer (queues %v)", len(lost), rounds, lease, lost)
		}
	}},
	{name: "NextLeasesOnlyWhatItTakes", run: func(t *testing.T, open Opener, f Features) {
		// A message is leased when Next takes it, not before: what a
		// consumer did not take goes at once to another, at attempt 1. A
		// zero Lease is the default (30s), not none: the delivery taken is
		// not handed out again meanwhile.
		b := opened(t, open)
		q := uniq("q")
		want := map[string]bool{}
		for range 3 {
			m := newMsg(b, q)
			mustEnqueue(t, b, m)
			want[m.ID] = true
		}
		c1 := consume(t, b, q, backend.ConsumeParams{})
		held := next(t, c1, 10*time.Second)
		delete(want, held.Message().ID)
		c2 := consume(t, b, q, backend.ConsumeParams{})
		for range 2 {
			d := next(t, c2, 5*time.Second)
			if !want[d.Message().ID] || d.Message().Attempt != 1 {
				t.Fatalf("second consumer got %s attempt %d, want one of %v at attempt 1", d.Message().ID, d.Message().Attempt, want)
			}
			delete(want, d.Message().ID)
			_ = d.Ack(ctxFor(t, 5*time.Second))
		}
		nothingWithin(t, c2, 500*time.Millisecond)
		if err := held.Ack(ctxFor(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}},
	{name: "ClosedSubscriptionsHearNothing", run: func(t *testing.T, open Opener, f Features) {
		// After Close returns, SubscribeReplies and SubscribeEvents call fn
		// no more. A subscription still open hears the same reply or event
		// (so it was published) before the closed one is checked.
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		inbox, id := uniq("in"), uniq("id-")
		var closedCalls atomic.Int32
		stillReplies := make(chan string, 10)
		stillEvents := make(chan string, 100)
		replies, err := b.SubscribeReplies(ctx, inbox, func(*backend.Reply) { closedCalls.Add(1) })
		if err != nil {
			t.Fatal(err)
		}
		events, err := b.SubscribeEvents(ctx, func(ev *backend.Event) {
			if ev.CorrelationID == id {
				closedCalls.Add(1)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		open2, err := b.SubscribeReplies(ctx, inbox, func(r *backend.Reply) { stillReplies <- r.CorrelationID })
		if err != nil {
			t.Fatal(err)
		}
		defer open2.Close()
		openEv, err := b.SubscribeEvents(ctx, func(ev *backend.Event) {
			select {
			case stillEvents <- ev.CorrelationID:
			default: // other cases' events
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		defer openEv.Close()
		if err := replies.Close(); err != nil {
			t.Fatal(err)
		}
		if err := events.Close(); err != nil {
			t.Fatal(err)
		}
		if err := b.PutReply(ctx, b.ReplyAddress(inbox, id), &backend.Reply{CorrelationID: id, Status: backend.StatusSucceeded}); err != nil {
			t.Fatal(err)
		}
		if err := b.AppendEvent(ctx, &backend.Event{CorrelationID: id, Type: backend.EventQueued, At: time.Now()}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, ctx, stillReplies, id, "the reply on the open subscription")
		waitFor(t, ctx, stillEvents, id, "the event on the open subscription")
		if n := closedCalls.Load(); n != 0 {
			t.Fatalf("closed subscriptions called fn %d times after Close", n)
		}
	}},
	{name: "BackendCloseStopsSubscriptions", needs: func(f Features) bool { return f.Shared }, run: func(t *testing.T, open Opener, f Features) {
		// Close stops a backend's subscriptions: replies and events stored
		// by another handle afterwards reach the other handle's
		// subscriptions only.
		// The handle opened first stays: an engine's later handles may
		// depend on it (the embedded NATS server).
		other := opened(t, open)
		a := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		inbox, id := uniq("in"), uniq("id-")
		var calls atomic.Int32
		count := func() { calls.Add(1) }
		if _, err := a.SubscribeReplies(ctx, inbox, func(*backend.Reply) { count() }); err != nil {
			t.Fatal(err)
		}
		if _, err := a.WatchReply(ctx, id, func(*backend.Reply) { count() }); err != nil {
			t.Fatal(err)
		}
		if _, err := a.SubscribeEvents(ctx, func(ev *backend.Event) {
			if ev.CorrelationID == id {
				count()
			}
		}); err != nil {
			t.Fatal(err)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		_ = a.Close() // safe twice
		replies, events := hear(t, ctx, other, id)
		if err := other.PutReply(ctx, other.ReplyAddress(inbox, id), &backend.Reply{CorrelationID: id, Status: backend.StatusSucceeded}); err != nil {
			t.Fatal(err)
		}
		if err := other.AppendEvent(ctx, &backend.Event{CorrelationID: id, Type: backend.EventQueued, At: time.Now()}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, ctx, replies, id, "the reply on the other handle's watch")
		waitFor(t, ctx, events, id, "the event on the other handle's subscription")
		if n := calls.Load(); n != 0 {
			t.Fatalf("a closed backend's subscriptions were called %d times", n)
		}
	}},
	{name: "SharedHandlesSeeEventsAndWatches", needs: func(f Features) bool { return f.Shared }, run: func(t *testing.T, open Opener, f Features) {
		// WatchReply serves waiters for requests of another process: it
		// hears a reply another handle stores; events appended by one
		// handle are read and heard by another, in one order.
		a, b := opened(t, open), opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		id, ch := uniq("id-"), uniq("ch")
		replies, events := hear(t, ctx, a, id)
		var appended []*backend.Event
		for _, h := range []backend.Backend{b, a, b} {
			ev := &backend.Event{CorrelationID: id, Channel: ch, Type: backend.EventProgress, At: time.Now().UTC().Truncate(time.Microsecond),
				Data: []byte(fmt.Sprintf(`{"n":%d}`, len(appended)))}
			if err := h.AppendEvent(ctx, ev); err != nil {
				t.Fatal(err)
			}
			if n := len(appended); n > 0 && ev.Seq <= appended[n-1].Seq {
				t.Fatalf("append by another handle got seq %d after %d", ev.Seq, appended[n-1].Seq)
			}
			appended = append(appended, ev)
		}
		for _, h := range []backend.Backend{a, b} {
			evs, err := h.Events(ctx, backend.EventQuery{CorrelationID: id})
			if err != nil {
				t.Fatal(err)
			}
			sameEvents(t, evs, appended)
			evs, err = h.Events(ctx, backend.EventQuery{Channel: ch})
			if err != nil {
				t.Fatal(err)
			}
			sameEventsButSeq(t, evs, appended)
		}
		waitFor(t, ctx, events, id, "an event appended by the other handle")
		if err := b.PutReply(ctx, b.ReplyAddress(uniq("in"), id), &backend.Reply{CorrelationID: id, Status: backend.StatusSucceeded}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, ctx, replies, id, "the reply stored by the other handle on the watch")
	}},
	{name: "ReopenKeepsEventsAndDedupe", needs: func(f Features) bool { return f.Durable }, run: func(t *testing.T, open Opener, f Features) {
		// Events are kept as long as replies, and Seq goes on growing
		// after a restart; the dedupe window of ids and event keys
		// outlives the handle that stored them.
		b := open(t)
		ctx := ctxFor(t, 20*time.Second)
		q, id, ch := uniq("q"), uniq("id-"), uniq("ch")
		m := newMsg(b, q)
		mustEnqueue(t, b, m)
		at := time.Now().UTC().Truncate(time.Microsecond)
		first := &backend.Event{CorrelationID: id, Channel: ch, Type: backend.EventQueued, At: at, DedupeKey: id + ":queued"}
		if err := b.AppendEvent(ctx, first); err != nil {
			t.Fatal(err)
		}
		byChannel, err := b.Events(ctx, backend.EventQuery{Channel: ch})
		if err != nil || len(byChannel) != 1 {
			t.Fatalf("channel events: %v, %v", byChannel, err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}

		b = opened(t, open)
		evs, err := b.Events(ctx, backend.EventQuery{CorrelationID: id})
		if err != nil {
			t.Fatal(err)
		}
		sameEvents(t, evs, []*backend.Event{first})
		again := &backend.Event{CorrelationID: id, Channel: ch, Type: backend.EventQueued, At: at, DedupeKey: id + ":queued"}
		if err := b.AppendEvent(ctx, again); err != nil || again.Seq != 0 {
			t.Fatalf("the same dedupe key after reopen: seq %d, %v; want 0 (a duplicate)", again.Seq, err)
		}
		second := &backend.Event{CorrelationID: id, Channel: ch, Type: backend.EventRunning, At: at}
		if err := b.AppendEvent(ctx, second); err != nil {
			t.Fatal(err)
		}
		if second.Seq <= first.Seq {
			t.Fatalf("append after reopen got seq %d, not after %d", second.Seq, first.Seq)
		}
		evs, err = b.Events(ctx, backend.EventQuery{Channel: ch})
		if err != nil || len(evs) != 2 || evs[0].Seq != byChannel[0].Seq || evs[1].Seq <= evs[0].Seq {
			t.Fatalf("channel events after reopen: %+v, %v; want the first at seq %d, then a later one", evs, err, byChannel[0].Seq)
		}
		mustEnqueue(t, b, m) // within the dedupe window: stored once
		c := consume(t, b, q, backend.ConsumeParams{Lease: 10 * time.Second})
		d := next(t, c, 10*time.Second)
		sameMessage(t, d.Message(), m)
		_ = d.Ack(ctx)
		nothingWithin(t, c, 500*time.Millisecond)
	}},
	{name: "DefaultLimits", run: func(t *testing.T, open Opener, f Features) {
		// A zero Limit is 100, for dead letters and events alike.
		b := opened(t, open)
		ctx := ctxFor(t, 20*time.Second)
		q, id := uniq("q"), uniq("id-")
		const n = 101
		work := make(chan int, 2*n)
		for i := range 2 * n {
			work <- i
		}
		close(work)
		var wg sync.WaitGroup
		errs := make(chan error, 2*n)
		for range 8 {
			wg.Go(func() {
				for i := range work {
					if i < n {
						m := newMsg(b, q)
						m.Attempt = 1
						errs <- b.DeadLetter(ctx, &backend.DeadLetter{Message: m, Reason: "failed", At: time.Now()})
					} else {
						errs <- b.AppendEvent(ctx, &backend.Event{CorrelationID: id, Type: backend.EventProgress, At: time.Now()})
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if dls, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: q}); err != nil || len(dls) != 100 {
			t.Errorf("dead letters, no limit: %d, %v; want 100 of %d", len(dls), err, n)
		}
		if evs, err := b.Events(ctx, backend.EventQuery{CorrelationID: id}); err != nil || len(evs) != 100 {
			t.Errorf("events, no limit: %d, %v; want 100 of %d", len(evs), err, n)
		}
		if dls, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: q, Limit: n}); err != nil || len(dls) != n {
			t.Errorf("dead letters, limit %d: %d, %v", n, len(dls), err)
		}
		if evs, err := b.Events(ctx, backend.EventQuery{CorrelationID: id, Limit: n}); err != nil || len(evs) != n {
			t.Errorf("events, limit %d: %d, %v", n, len(evs), err)
		}
	}},
	{name: "DeadLetterKeyIgnored", run: func(t *testing.T, open Opener, f Features) {
		// DeadLetter ignores dl.Key: the engine keys what it stores. The
		// query's Queue is required.
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		q := uniq("q")
		m := newMsg(b, q)
		m.Attempt = 1
		if err := b.DeadLetter(ctx, &backend.DeadLetter{Message: m, Reason: "failed", At: time.Now()}); err != nil {
			t.Fatal(err)
		}
		stored, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: q})
		if err != nil || len(stored) != 1 {
			t.Fatalf("%d dead letters, %v", len(stored), err)
		}
		for _, key := range []string{stored[0].Key, "made-up-key"} {
			m2 := newMsg(b, q)
			m2.Attempt = 1
			if err := b.DeadLetter(ctx, &backend.DeadLetter{Key: key, Message: m2, Reason: "expired", At: time.Now()}); err != nil {
				t.Fatalf("dead letter with Key %q: %v", key, err)
			}
		}
		dls, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: q})
		if err != nil || len(dls) != 3 {
			t.Fatalf("%d dead letters, %v; want 3", len(dls), err)
		}
		if dls[0].Message.ID != m.ID || dls[0].Key != stored[0].Key || dls[1].Key == dls[0].Key || dls[2].Key == dls[1].Key ||
			dls[1].Key == "made-up-key" || dls[2].Key == "made-up-key" {
			t.Fatalf("keys %q, %q, %q: want the first kept, the others the engine's own", dls[0].Key, dls[1].Key, dls[2].Key)
		}
		if _, err := b.DeadLetters(ctx, backend.DeadLetterQuery{}); err == nil {
			t.Error("DeadLetters without a queue: no error")
		}
	}},
	{name: "MessageDefaults", run: func(t *testing.T, open Opener, f Features) {
		// CorrelationID defaults to ID; an empty ReplyTo (no reply wanted)
		// and no headers are carried as they are, also into dead letters.
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		q := uniq("q")
		m := newMsg(b, q)
		m.CorrelationID, m.ReplyTo, m.Headers, m.TraceParent = "", "", nil, ""
		mustEnqueue(t, b, m)
		d := next(t, consume(t, b, q, backend.ConsumeParams{Lease: 10 * time.Second}), 10*time.Second)
		want := *m
		want.CorrelationID = m.ID
		got := d.Message()
		if len(got.Headers) == 0 {
			got.Headers = nil // no headers: nil or empty alike
		}
		sameMessage(t, got, &want)
		if err := b.DeadLetter(ctx, &backend.DeadLetter{Message: got, Reason: "failed", At: time.Now()}); err != nil {
			t.Fatal(err)
		}
		_ = d.Ack(ctx)
		dls, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: q})
		if err != nil || len(dls) != 1 {
			t.Fatalf("%d dead letters, %v", len(dls), err)
		}
		if len(dls[0].Message.Headers) == 0 {
			dls[0].Message.Headers = nil
		}
		sameMessage(t, dls[0].Message, &want)
	}},
	{name: "LastActive", run: func(t *testing.T, open Opener, f Features) {
		// LastActive: zero for a queue no responder ever served; now while
		// one holds a delivery, for every handle (any process); after,
		// the time it was last seen.
		b := opened(t, open)
		ar, ok := b.(backend.ActivityReporter)
		if !ok {
			t.Fatalf("%T does not implement backend.ActivityReporter", b)
		}
		reporters := []backend.ActivityReporter{ar}
		if f.Shared {
			reporters = append(reporters, opened(t, open).(backend.ActivityReporter))
		}
		ctx := ctxFor(t, 10*time.Second)
		q := uniq("q")
		for i, r := range reporters {
			if at, err := r.LastActive(ctx, q); err != nil || !at.IsZero() {
				t.Fatalf("handle %d: a queue never consumed was last active at %s, %v; want the zero time", i, at, err)
			}
		}
		start := time.Now()
		mustEnqueue(t, b, newMsg(b, q))
		c, err := b.Consume(ctx, q, backend.ConsumeParams{Lease: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		d := next(t, c, 10*time.Second)
		for i, r := range reporters {
			asked := time.Now()
			at, err := r.LastActive(ctx, q)
			if err != nil || at.Before(asked.Add(-time.Second)) {
				t.Fatalf("handle %d: while a delivery is held, last active at %s (asked at %s), %v; want now", i, at, asked, err)
			}
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		_ = c.Close() // safe twice
		for i, r := range reporters {
			at, err := r.LastActive(ctx, q)
			if err != nil || at.Before(start.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
				t.Fatalf("handle %d: after the consumer closed, last active at %s, %v; want a time since %s", i, at, err, start)
			}
		}
	}},
}

// waitFor waits until want comes on ch (others are skipped), failing the
// test if ctx ends first.
func waitFor(t *testing.T, ctx context.Context, ch <-chan string, want, what string) {
	t.Helper()
	for {
		select {
		case got := <-ch:
			if got == want {
				return
			}
		case <-ctx.Done():
			t.Fatalf("%s did not come", what)
		}
	}
}

// hear watches b for the reply of id and subscribes to its events until
// the test ends: the correlation ids of the replies and events heard come
// on the channels.
func hear(t *testing.T, ctx context.Context, b backend.Backend, id string) (replies, events chan string) {
	t.Helper()
	replies, events = make(chan string, 10), make(chan string, 100)
	w, err := b.WatchReply(ctx, id, func(r *backend.Reply) { replies <- r.CorrelationID })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	s, err := b.SubscribeEvents(ctx, func(ev *backend.Event) {
		select {
		case events <- ev.CorrelationID:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return replies, events
}
