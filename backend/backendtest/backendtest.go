// Package backendtest is the conformance suite every rsvp backend passes.
//
// A backend's test calls Run with a function that makes a fresh engine and
// the features the backend claims:
//
//	func TestConformance(t *testing.T) {
//		backendtest.Run(t, func(t *testing.T) backendtest.Opener {
//			dir := t.TempDir()
//			return func(t *testing.T) backend.Backend { ... open on dir ... }
//		}, backendtest.Features{Durable: true, Shared: true, Schedules: true})
//	}
//
// Cases use unique queue names and ids, so engines may be shared between
// cases.
package backendtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

// Opener opens a backend on one engine's storage. Each call is another
// handle on the same storage, as another process would open it. The suite
// closes what it opens (Close must be safe to call twice).
type Opener func(t *testing.T) backend.Backend

// Features are the optional abilities of a backend.
type Features struct {
	// Durable: a backend opened after every other handle on the storage was
	// closed sees everything they stored.
	Durable bool
	// Shared: several handles can be open on one storage at once, and their
	// consumers of one queue compete.
	Shared bool
	// Sessions: Message.SessionKey orders the delivery of a session's
	// requests (one at a time, in the order stored).
	Sessions bool
	// Schedules: a request with Message.NotBefore in the future is
	// delivered from then on. A backend without it refuses such a request
	// at Enqueue with an error wrapping errors.ErrUnsupported, and stores
	// nothing.
	Schedules bool
}

type testCase struct {
	name  string
	needs func(Features) bool
	run   func(t *testing.T, open Opener, f Features)
}

// Run runs every case that f allows, each on an engine from newEngine.
func Run(t *testing.T, newEngine func(t *testing.T) Opener, f Features) {
	for _, tc := range slices.Concat(cases, scheduleCases, eventCases, dlqCases, sessionCases, replayCases, contractCases, inspectCases) {
		t.Run(tc.name, func(t *testing.T) {
			if tc.needs != nil && !tc.needs(f) {
				t.Skipf("%s does not apply to the backend's features", tc.name)
			}
			t.Parallel()
			tc.run(t, newEngine(t), f)
		})
	}
}

// opened opens a backend and closes it with the test.
func opened(t *testing.T, open Opener) backend.Backend {
	t.Helper()
	b := open(t)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func uniq(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func newMsg(b backend.Backend, queue string) *backend.Message {
	id := uniq("id-")
	return &backend.Message{
		ID: id, CorrelationID: id, Queue: queue,
		ReplyTo:   b.ReplyAddress("inbox1", id),
		Type:      "test.request.v1",
		Body:      []byte("body of " + id),
		CreatedAt: time.Now().UTC().Truncate(time.Microsecond),
		// A trace context travels with every request (here, dead letters too).
		TraceParent: testTraceParent,
	}
}

// testTraceParent and testTraceState are a W3C trace context.
const (
	testTraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	testTraceState  = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
)

func mustEnqueue(t *testing.T, b backend.Backend, m *backend.Message) {
	t.Helper()
	if err := b.Enqueue(ctxFor(t, 10*time.Second), m); err != nil {
		t.Fatalf("enqueue %s: %v", m.ID, err)
	}
}

func consume(t *testing.T, b backend.Backend, queue string, p backend.ConsumeParams) backend.Consumer {
	t.Helper()
	c, err := b.Consume(ctxFor(t, 10*time.Second), queue, p)
	if err != nil {
		t.Fatalf("consume %s: %v", queue, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func next(t *testing.T, c backend.Consumer, within time.Duration) backend.Delivery {
	t.Helper()
	d, err := c.Next(ctxFor(t, within))
	if err != nil {
		t.Fatalf("next delivery within %s: %v", within, err)
	}
	return d
}

// nothingWithin asserts that no delivery arrives within d.
func nothingWithin(t *testing.T, c backend.Consumer, d time.Duration) {
	t.Helper()
	got, err := c.Next(ctxFor(t, d))
	if err == nil {
		t.Fatalf("unexpected delivery of %s (attempt %d)", got.Message().ID, got.Message().Attempt)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("next: %v", err)
	}
}

func sameMessage(t *testing.T, got, want *backend.Message) {
	t.Helper()
	if got.ID != want.ID || got.CorrelationID != want.CorrelationID || got.ReplyTo != want.ReplyTo ||
		got.Queue != want.Queue || got.Type != want.Type || got.ContentType != want.ContentType ||
		string(got.Body) != string(want.Body) || !maps.Equal(got.Headers, want.Headers) ||
		!got.CreatedAt.Equal(want.CreatedAt) || !got.Deadline.Equal(want.Deadline) ||
		got.Track != want.Track || got.Channel != want.Channel ||
		got.SessionKey != want.SessionKey || got.ReplySession != want.ReplySession ||
		got.TraceParent != want.TraceParent || got.TraceState != want.TraceState {
		t.Fatalf("message changed in the engine:\n got %+v\nwant %+v", got, want)
	}
}

var cases = []testCase{
	{name: "EnqueueConsume", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		m := newMsg(b, q)
		m.ContentType = "text/plain"
		m.Headers = map[string]string{"Tenant": "acme", "X-Trace": "abc"}
		m.TraceState = testTraceState
		m.Deadline = time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)
		mustEnqueue(t, b, m)
		c := consume(t, b, q, backend.ConsumeParams{})
		d := next(t, c, 10*time.Second)
		sameMessage(t, d.Message(), m)
		if d.Message().Attempt != 1 {
			t.Fatalf("first delivery has attempt %d, want 1", d.Message().Attempt)
		}
		if err := d.Ack(ctxFor(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}},
	{name: "QueuesAreSeparate", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q1, q2 := uniq("q"), uniq("q")
		m1, m2 := newMsg(b, q1), newMsg(b, q2)
		mustEnqueue(t, b, m1)
		mustEnqueue(t, b, m2)
		d := next(t, consume(t, b, q2, backend.ConsumeParams{}), 10*time.Second)
		if d.Message().ID != m2.ID {
			t.Fatalf("consumer of %s got %s, a message of another queue", q2, d.Message().ID)
		}
		_ = d.Ack(ctxFor(t, 5*time.Second))
	}},
	{name: "AckRemoves", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		mustEnqueue(t, b, newMsg(b, q))
		c := consume(t, b, q, backend.ConsumeParams{Lease: time.Second})
		d := next(t, c, 10*time.Second)
		if err := d.Ack(ctxFor(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
		nothingWithin(t, c, 2500*time.Millisecond) // over two leases
	}},
	{name: "NackRedeliversAfterDelay", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		m := newMsg(b, q)
		mustEnqueue(t, b, m)
		c := consume(t, b, q, backend.ConsumeParams{Lease: 10 * time.Second})
		d := next(t, c, 10*time.Second)
		const delay = 500 * time.Millisecond
		start := time.Now()
		if err := d.Nack(ctxFor(t, 5*time.Second), delay); err != nil {
			t.Fatal(err)
		}
		d2 := next(t, c, 10*time.Second)
		if waited := time.Since(start); waited < delay-50*time.Millisecond {
			t.Fatalf("redelivered after %s, before the %s delay", waited, delay)
		}
		if d2.Message().ID != m.ID || d2.Message().Attempt != 2 {
			t.Fatalf("redelivery is %s attempt %d, want %s attempt 2", d2.Message().ID, d2.Message().Attempt, m.ID)
		}
		_ = d2.Ack(ctxFor(t, 5*time.Second))
	}},
	{name: "LeaseExpiryRedelivers", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		m := newMsg(b, q)
		mustEnqueue(t, b, m)
		const lease = time.Second
		c := consume(t, b, q, backend.ConsumeParams{Lease: lease})
		_ = next(t, c, 10*time.Second) // taken, then the worker "dies"
		start := time.Now()
		d := next(t, c, 10*time.Second)
		if waited := time.Since(start); waited < lease/2 {
			t.Fatalf("redelivered after %s, well before the %s lease ran out", waited, lease)
		}
		if d.Message().ID != m.ID || d.Message().Attempt != 2 {
			t.Fatalf("redelivery is %s attempt %d, want %s attempt 2", d.Message().ID, d.Message().Attempt, m.ID)
		}
		_ = d.Ack(ctxFor(t, 5*time.Second))
	}},
	{name: "LeaseOfEachConsumer", run: func(t *testing.T, open Opener, f Features) {
		// A consumer of the queue opened later with a shorter lease does
		// not cut the lease of a delivery the first one holds: it would be
		// handed to a second worker while the first still runs it.
		b := opened(t, open)
		q := uniq("q")
		mustEnqueue(t, b, newMsg(b, q))
		long := consume(t, b, q, backend.ConsumeParams{Lease: 5 * time.Second})
		d := next(t, long, 10*time.Second)
		short := consume(t, b, q, backend.ConsumeParams{Lease: 300 * time.Millisecond})
		nothingWithin(t, short, 1500*time.Millisecond)
		if err := d.Ack(ctxFor(t, 5*time.Second)); err != nil {
			t.Fatalf("ack within the 5s lease: %v", err)
		}
	}},
	{name: "CloseGivesBackAtOnce", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		for range 3 {
			mustEnqueue(t, b, newMsg(b, q))
		}
		// A consumer holds one delivery and closes; the delivery is given back.
		// It, and what the closed consumer never took, go to the next consumer
		// without waiting out a lease.
		c1, err := b.Consume(ctxFor(t, 10*time.Second), q, backend.ConsumeParams{Lease: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		d := next(t, c1, 10*time.Second)
		if err := c1.Close(); err != nil {
			t.Fatal(err)
		}
		if err := d.Nack(ctxFor(t, 5*time.Second), 0); err != nil {
			t.Fatal(err)
		}
		c2 := consume(t, b, q, backend.ConsumeParams{Lease: time.Minute})
		attempts := map[string]int{}
		for range 3 {
			d2 := next(t, c2, 10*time.Second)
			attempts[d2.Message().ID] = d2.Message().Attempt
			_ = d2.Ack(ctxFor(t, 5*time.Second))
		}
		if len(attempts) != 3 || attempts[d.Message().ID] != 2 {
			t.Errorf("attempts %v: want 3 messages, %s (given back) at attempt 2", attempts, d.Message().ID)
		}
		for id, a := range attempts {
			if id != d.Message().ID && a != 1 {
				t.Errorf("%s, never taken before, came as attempt %d", id, a)
			}
		}
		if _, err := c1.Next(ctxFor(t, time.Second)); !errors.Is(err, backend.ErrClosed) {
			t.Fatalf("Next on a closed consumer: %v, want ErrClosed", err)
		}
	}},
	{name: "ExtendKeepsLease", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		mustEnqueue(t, b, newMsg(b, q))
		const lease = time.Second
		c := consume(t, b, q, backend.ConsumeParams{Lease: lease})
		d := next(t, c, 10*time.Second)
		// Extend for three leases' time while another worker watches.
		stop := extendEvery(d, lease/4, func(err error) {
			if err != nil {
				t.Errorf("extend: %v", err)
			}
		})
		nothingWithin(t, c, 3*lease)
		stop()
		if err := d.Ack(ctxFor(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}},
	{name: "StaleHolderCannotSettle", run: func(t *testing.T, open Opener, f Features) {
		// A worker whose lease ran out, and whose request went to another,
		// can neither extend nor settle it: its call fails, and the new
		// holder's lease is untouched (not renewed, ended or given back).
		b := opened(t, open)
		const lease = time.Second
		for _, op := range []string{"Extend", "Nack", "Ack"} {
			t.Run(op, func(t *testing.T) {
				t.Parallel()
				q := uniq("q")
				mustEnqueue(t, b, newMsg(b, q))
				c := consume(t, b, q, backend.ConsumeParams{Lease: lease})
				stale := next(t, c, 10*time.Second)
				holder := next(t, c, 10*time.Second) // once stale's lease ran out
				if a := holder.Message().Attempt; a != 2 {
					t.Fatalf("redelivery is attempt %d, want 2", a)
				}
				var err error
				switch ctx := ctxFor(t, 5*time.Second); op {
				case "Extend":
					err = stale.Extend(ctx)
					// It goes on extending, as a worker that does not know.
					renewed := 0
					stop := extendEvery(stale, lease/4, func(err error) {
						if err == nil {
							renewed++
						}
					})
					defer func() {
						stop()
						if renewed > 0 {
							t.Errorf("the stale holder's Extend succeeded %d more times", renewed)
						}
					}()
				case "Nack":
					err = stale.Nack(ctx, 0)
				case "Ack":
					err = stale.Ack(ctx)
				}
				if !errors.Is(err, backend.ErrLeaseLost) {
					t.Errorf("the stale holder's %s: %v, want backend.ErrLeaseLost", op, err)
				}
				if err := holder.Extend(ctxFor(t, 5*time.Second)); err != nil {
					t.Fatalf("the holder's Extend: %v", err)
				}
				extended := time.Now()
				// Neither kept by the stale holder, nor given back, nor
				// removed: it comes again once the holder's lease ran out.
				d := next(t, c, 4*lease)
				if waited := time.Since(extended); waited < lease/2 {
					t.Fatalf("delivered again after %s, well before the holder's %s lease ran out", waited, lease)
				}
				if a := d.Message().Attempt; a != 3 {
					t.Fatalf("delivered again as attempt %d, want 3", a)
				}
				_ = d.Ack(ctxFor(t, 5*time.Second))
			})
		}
	}},
	{name: "Dedupe", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		m := newMsg(b, q)
		mustEnqueue(t, b, m)
		mustEnqueue(t, b, m)
		c := consume(t, b, q, backend.ConsumeParams{Lease: 10 * time.Second})
		d := next(t, c, 10*time.Second)
		_ = d.Ack(ctxFor(t, 5*time.Second))
		nothingWithin(t, c, time.Second)
	}},
	{name: "Replies", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		id := uniq("id-")
		if _, err := b.GetReply(ctx, id); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("GetReply of unknown id: %v, want ErrNotFound", err)
		}
		r := &backend.Reply{CorrelationID: id, Status: backend.StatusSucceeded, ContentType: "application/json",
			Headers: map[string]string{"X-Answer": "42"}, Body: []byte(`{"ok":true}`), CreatedAt: time.Now().UTC().Truncate(time.Microsecond),
			TraceParent: testTraceParent, TraceState: testTraceState}
		if err := b.PutReply(ctx, b.ReplyAddress("inboxA", id), r); err != nil {
			t.Fatal(err)
		}
		second := &backend.Reply{CorrelationID: id, Status: backend.StatusFailed, ErrorCode: "failed", ErrorMessage: "late"}
		if err := b.PutReply(ctx, b.ReplyAddress("inboxA", id), second); !errors.Is(err, backend.ErrReplyExists) {
			t.Fatalf("second reply: %v, want ErrReplyExists", err)
		}
		// Also when addressed to another inbox (a requester that restarted).
		if err := b.PutReply(ctx, b.ReplyAddress("inboxB", id), second); !errors.Is(err, backend.ErrReplyExists) {
			t.Fatalf("second reply to another inbox: %v, want ErrReplyExists", err)
		}
		got, err := b.GetReply(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got.CorrelationID != id || got.Status != r.Status || string(got.Body) != string(r.Body) ||
			got.ContentType != r.ContentType || !maps.Equal(got.Headers, r.Headers) || !got.CreatedAt.Equal(r.CreatedAt) ||
			got.TraceParent != r.TraceParent || got.TraceState != r.TraceState {
			t.Fatalf("stored reply %+v, want %+v", got, r)
		}
		failed := &backend.Reply{CorrelationID: uniq("id-"), Status: backend.StatusFailed, ErrorCode: "bad_payload", ErrorMessage: "line one\nline two"}
		if err := b.PutReply(ctx, b.ReplyAddress("inboxA", failed.CorrelationID), failed); err != nil {
			t.Fatal(err)
		}
		got, err = b.GetReply(ctx, failed.CorrelationID)
		if err != nil || got.Status != backend.StatusFailed || got.ErrorCode != "bad_payload" || got.ErrorMessage == "" {
			t.Fatalf("failure reply: %+v, %v", got, err)
		}
	}},
	{name: "ReplySubscriptions", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		inbox, other := uniq("in"), uniq("in")
		byInbox := make(chan *backend.Reply, 10)
		byID := make(chan *backend.Reply, 10)
		sub, err := b.SubscribeReplies(ctx, inbox, func(r *backend.Reply) { byInbox <- r })
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		mine, theirs := uniq("id-"), uniq("id-")
		watch, err := b.WatchReply(ctx, theirs, func(r *backend.Reply) { byID <- r })
		if err != nil {
			t.Fatal(err)
		}
		defer watch.Close()
		for _, p := range []struct{ inbox, id string }{{other, theirs}, {inbox, mine}} {
			if err := b.PutReply(ctx, b.ReplyAddress(p.inbox, p.id), &backend.Reply{CorrelationID: p.id, Status: backend.StatusSucceeded}); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case r := <-byInbox:
			if r.CorrelationID != mine {
				t.Fatalf("inbox subscription got %s, a reply for another inbox", r.CorrelationID)
			}
		case <-ctx.Done():
			t.Fatal("no reply on the inbox subscription")
		}
		select {
		case r := <-byID:
			if r.CorrelationID != theirs {
				t.Fatalf("watch got %s, want %s", r.CorrelationID, theirs)
			}
		case <-ctx.Done():
			t.Fatal("no reply on the id watch")
		}
		// A closed subscription hears nothing more.
		if err := watch.Close(); err != nil {
			t.Fatal(err)
		}
		late := uniq("id-")
		lateWatch, err := b.WatchReply(ctx, late, func(*backend.Reply) {})
		if err != nil {
			t.Fatal(err)
		}
		_ = lateWatch.Close()
		if err := b.PutReply(ctx, b.ReplyAddress(inbox, late), &backend.Reply{CorrelationID: late, Status: backend.StatusSucceeded}); err != nil {
			t.Fatal(err)
		}
		if r := <-byInbox; r.CorrelationID != late {
			t.Fatalf("got %s, want %s", r.CorrelationID, late)
		}
		if len(byID) != 0 {
			t.Fatalf("closed watch still delivered %d replies", len(byID))
		}
	}},
	{name: "DeadLetters", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		q := uniq("q")
		if dls, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: q, Limit: 10}); err != nil || len(dls) != 0 {
			t.Fatalf("dead letters of a new queue: %v, %v", dls, err)
		}
		var want []*backend.DeadLetter
		for i := range 3 {
			m := newMsg(b, q)
			m.Attempt = i + 1
			dl := &backend.DeadLetter{Message: m, Reason: "failed", LastError: fmt.Sprintf("boom %d", i), At: time.Now().UTC().Truncate(time.Microsecond)}
			if err := b.DeadLetter(ctx, dl); err != nil {
				t.Fatal(err)
			}
			want = append(want, dl)
		}
		mustEnqueue(t, b, newMsg(b, uniq("q"))) // another queue's traffic
		got, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: q, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%d dead letters, want %d", len(got), len(want))
		}
		for i := range want {
			g, w := got[i], want[i]
			sameMessage(t, g.Message, w.Message)
			if g.Message.Attempt != w.Message.Attempt || g.Reason != w.Reason || g.LastError != w.LastError || !g.At.Equal(w.At) {
				t.Fatalf("dead letter %d: %+v, want %+v", i, g, w)
			}
		}
		if got, _ := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: q, Limit: 2}); len(got) != 2 {
			t.Fatalf("limit 2 returned %d", len(got))
		}
	}},
	{name: "ConcurrentConsumers", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		const n = 200
		want := map[string]bool{}
		for range n {
			m := newMsg(b, q)
			want[m.ID] = true
			mustEnqueue(t, b, m)
		}
		b2 := b
		if f.Shared {
			b2 = opened(t, open)
		}
		var mu sync.Mutex
		seen := map[string]int{}
		perConsumer := make([]int, 2)
		ctx := ctxFor(t, 30*time.Second)
		var wg sync.WaitGroup
		// Both open before either takes a message: an open may take a
		// while (rsvpnats agrees on the lease with the others), in which
		// the other could take them all.
		cs := []backend.Consumer{consume(t, b, q, backend.ConsumeParams{Lease: 30 * time.Second}),
			consume(t, b2, q, backend.ConsumeParams{Lease: 30 * time.Second})}
		// A consumer goes on after its first delivery only once the other
		// has one too: on a busy machine one consumer could otherwise take
		// them all before the other's first Next (a test flake, not a lack
		// of sharing). Both must get work while the other holds some.
		first := []chan struct{}{make(chan struct{}), make(chan struct{})}
		var firstOnce [2]sync.Once
		for i, c := range cs {
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						mu.Lock()
						done := len(seen) == n
						mu.Unlock()
						if done {
							return
						}
						dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
						d, err := c.Next(dctx)
						cancel()
						if err != nil {
							if ctx.Err() != nil {
								return
							}
							continue
						}
						mu.Lock()
						seen[d.Message().ID]++
						perConsumer[i]++
						mu.Unlock()
						firstOnce[i].Do(func() { close(first[i]) })
						select {
						case <-first[1-i]:
						case <-ctx.Done():
						}
						_ = d.Ack(ctx)
					}
				}()
			}
		}
		wg.Wait()
		if len(seen) != n {
			t.Fatalf("%d of %d messages delivered", len(seen), n)
		}
		for id, k := range seen {
			if !want[id] || k != 1 {
				t.Fatalf("message %s delivered %d times", id, k)
			}
		}
		if perConsumer[0] == 0 || perConsumer[1] == 0 {
			t.Fatalf("consumers did not share the work: %v", perConsumer)
		}
	}},
	{name: "SharedHandlesSeeEachOther", needs: func(f Features) bool { return f.Shared }, run: func(t *testing.T, open Opener, f Features) {
		a, b := opened(t, open), opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		q := uniq("q")
		m := newMsg(a, q)
		mustEnqueue(t, a, m)
		d := next(t, consume(t, b, q, backend.ConsumeParams{}), 10*time.Second)
		sameMessage(t, d.Message(), m)
		got := make(chan *backend.Reply, 1)
		sub, err := a.SubscribeReplies(ctx, "inbox1", func(r *backend.Reply) {
			if r.CorrelationID == m.ID {
				got <- r
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		if err := b.PutReply(ctx, d.Message().ReplyTo, &backend.Reply{CorrelationID: m.ID, Status: backend.StatusSucceeded, Body: []byte("pong")}); err != nil {
			t.Fatal(err)
		}
		_ = d.Ack(ctx)
		select {
		case r := <-got:
			if string(r.Body) != "pong" {
				t.Fatalf("reply body %q", r.Body)
			}
		case <-ctx.Done():
			t.Fatal("reply from the other handle did not arrive")
		}
	}},
	{name: "ReopenKeepsEverything", needs: func(f Features) bool { return f.Durable }, run: func(t *testing.T, open Opener, f Features) {
		b := open(t)
		ctx := ctxFor(t, 20*time.Second)
		q := uniq("q")
		var pending []*backend.Message
		for range 5 {
			m := newMsg(b, q)
			mustEnqueue(t, b, m)
			pending = append(pending, m)
		}
		replyID := uniq("id-")
		if err := b.PutReply(ctx, b.ReplyAddress("inbox1", replyID), &backend.Reply{CorrelationID: replyID, Status: backend.StatusSucceeded, Body: []byte("kept")}); err != nil {
			t.Fatal(err)
		}
		dead := newMsg(b, q)
		if err := b.DeadLetter(ctx, &backend.DeadLetter{Message: dead, Reason: "failed", At: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}

		b = opened(t, open) // the requester restarted
		r, err := b.GetReply(ctx, replyID)
		if err != nil || string(r.Body) != "kept" {
			t.Fatalf("reply after reopen: %v, %v", r, err)
		}
		if dls, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: q, Limit: 10}); err != nil || len(dls) != 1 || dls[0].Message.ID != dead.ID {
			t.Fatalf("dead letters after reopen: %v, %v", dls, err)
		}
		c := consume(t, b, q, backend.ConsumeParams{})
		var got []string
		for range pending {
			d := next(t, c, 10*time.Second)
			got = append(got, d.Message().ID)
			_ = d.Ack(ctx)
		}
		var want []string
		for _, m := range pending {
			want = append(want, m.ID)
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("after reopen got %v, want %v", got, want)
		}
	}},
	{name: "CloseEndsConsumers", run: func(t *testing.T, open Opener, f Features) {
		b := open(t)
		c, err := b.Consume(ctxFor(t, 10*time.Second), uniq("q"), backend.ConsumeParams{})
		if err != nil {
			t.Fatal(err)
		}
		waiting := make(chan error, 1)
		go func() {
			_, err := c.Next(ctxFor(t, 20*time.Second))
			waiting <- err
		}()
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-waiting; !errors.Is(err, backend.ErrClosed) {
			t.Fatalf("Next waiting when the backend closed: %v, want ErrClosed", err)
		}
		_ = c.Close()
	}},
	{name: "BadInput", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		for _, q := range []string{"", "a.b", "a b", "q*", "q>", string(make([]byte, backend.MaxNameLen+1))} {
			m := newMsg(b, "x")
			m.Queue = q
			if err := b.Enqueue(ctx, m); err == nil {
				t.Errorf("enqueue to queue %q: no error", q)
			}
			if _, err := b.Consume(ctx, q, backend.ConsumeParams{}); err == nil {
				t.Errorf("consume queue %q: no error", q)
			}
		}
		if _, err := b.GetReply(ctx, "no.such"); err == nil || errors.Is(err, backend.ErrNotFound) {
			t.Errorf("GetReply of an illegal id: %v, want a validation error", err)
		}
		for _, addr := range []string{"somewhere.else", b.ReplyAddress("inbox1", "y"), b.ReplyAddress("in.box", "x"), ""} {
			if err := b.PutReply(ctx, addr, &backend.Reply{CorrelationID: "x"}); !errors.Is(err, backend.ErrBadAddress) {
				t.Errorf("PutReply for x to %q: %v, want ErrBadAddress", addr, err)
			}
		}
		big := newMsg(b, uniq("q"))
		big.Body = make([]byte, 64<<20)
		if err := b.Enqueue(ctx, big); !errors.Is(err, backend.ErrTooLarge) {
			t.Errorf("enqueue of 64 MiB: %v, want ErrTooLarge", err)
		}
	}},
}

// extendEvery extends d's lease every period, passing each result to f,
// until the returned stop is called; stop returns once the last Extend
// and f are done.
func extendEvery(d backend.Delivery, period time.Duration, f func(error)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				f(d.Extend(context.Background()))
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}
