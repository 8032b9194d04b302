package backendtest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

// The operator's queries (backend.Inspector), which every backend answers.

// inspector returns b as a backend.Inspector, failing the test if it is
// not one.
func inspector(t *testing.T, b backend.Backend) backend.Inspector {
	t.Helper()
	in, ok := b.(backend.Inspector)
	if !ok {
		t.Fatalf("%T does not implement backend.Inspector", b)
	}
	return in
}

// queueStats returns the stats of queue, and whether Queues lists it.
func queueStats(t *testing.T, in backend.Inspector, queue string) (backend.QueueStats, bool) {
	t.Helper()
	qs, err := in.Queues(ctxFor(t, 10*time.Second))
	if err != nil {
		t.Fatalf("queues: %v", err)
	}
	for _, q := range qs {
		if q.Queue == queue {
			return q, true
		}
	}
	return backend.QueueStats{}, false
}

// eventually waits until cond holds, failing after 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
}

// unknownOr reports whether a count the engine may not know (-1) is want.
func unknownOr(n, want int) bool { return n == -1 || n == want }

var inspectCases = []testCase{
	{name: "InspectQueues", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		in := inspector(t, b)
		ctx := ctxFor(t, 30*time.Second)
		base := uniq("iq")
		work, idle, gone, later := base+"a-work", base+"b-idle", base+"c-gone", base+"d-later"

		if _, ok := queueStats(t, in, work); ok {
			t.Fatalf("a queue never used is listed")
		}
		before := time.Now()
		for range 3 {
			mustEnqueue(t, b, newMsg(b, work))
		}
		q, ok := queueStats(t, in, work)
		if !ok || q.Depth != 3 || q.InFlight != 0 || q.Redelivered != 0 || q.Consumer || !unknownOr(q.Waiting, 0) ||
			!unknownOr(q.Responders, 0) || q.DeadLetters != 0 || q.Scheduled != 0 || !q.LastDelivered.IsZero() {
			t.Fatalf("3 requests, no responder: listed %v, %+v", ok, q)
		}
		if q.Oldest.Before(before.Add(-time.Second)) || q.Oldest.After(time.Now().Add(time.Second)) {
			t.Fatalf("oldest %v, want about %v", q.Oldest, before)
		}

		// One delivered: in flight. Failed, it waits for its retry: still
		// in flight.
		c := consume(t, b, work, backend.ConsumeParams{Lease: 30 * time.Second})
		d := next(t, c, 10*time.Second)
		if q, _ := queueStats(t, in, work); q.Depth != 3 || q.InFlight != 1 || q.Redelivered != 0 || !q.Consumer || !unknownOr(q.Responders, 1) {
			t.Fatalf("one running: %+v", q)
		}
		if err := d.Nack(ctx, time.Hour); err != nil {
			t.Fatal(err)
		}
		if q, _ := queueStats(t, in, work); q.Depth != 3 || q.InFlight != 1 {
			t.Fatalf("one waiting for its retry: %+v", q)
		}
		// Take the next, fail it at once and take it again: attempt 2. (The
		// third request may come first.)
		if err := next(t, c, 10*time.Second).Nack(ctx, 0); err != nil {
			t.Fatal(err)
		}
		delivered := 2
		var again backend.Delivery
		for again == nil {
			d := next(t, c, 10*time.Second)
			if d.Message().Attempt == 2 {
				again = d
			} else {
				delivered++
			}
		}
		if q, _ := queueStats(t, in, work); q.Depth != 3 || q.InFlight != delivered || q.Redelivered != 1 {
			t.Fatalf("%d delivered, one of them twice: %+v", delivered, q)
		}
		if err := again.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		eventually(t, "an acknowledged request leaves the queue", func() bool {
			q, _ := queueStats(t, in, work)
			return q.Depth == 2 && q.InFlight == delivered-1 && q.Redelivered == 0
		})

		// An idle responder: its consumer is counted, or its wait.
		ic := consume(t, b, idle, backend.ConsumeParams{})
		nctx, stop := context.WithCancel(ctx)
		nextDone := make(chan error, 1)
		go func() {
			_, err := ic.Next(nctx)
			nextDone <- err
		}()
		eventually(t, "an idle responder is counted", func() bool {
			q, ok := queueStats(t, in, idle)
			return ok && q.Consumer && q.Depth == 0 && q.Oldest.IsZero() && unknownOr(q.Waiting, 1) && unknownOr(q.Responders, 1) &&
				(q.Waiting == 1 || q.Responders == 1)
		})
		stop()
		if err := <-nextDone; !errors.Is(err, context.Canceled) {
			t.Fatalf("Next after cancel: %v", err)
		}

		// A queue with a dead letter only.
		dl := &backend.DeadLetter{Message: newMsg(b, gone), Reason: "attempts_exhausted", LastError: "boom", At: time.Now()}
		dl.Message.Attempt = 5
		if err := b.DeadLetter(ctx, dl); err != nil {
			t.Fatal(err)
		}
		// A queue with a request scheduled for later only: not in the depth.
		want := "a-work b-idle c-gone"
		if f.Schedules {
			m := newMsg(b, later)
			m.NotBefore = time.Now().Add(time.Hour)
			mustEnqueue(t, b, m)
			want += " d-later"
		}

		qs, err := in.Queues(ctx)
		if err != nil {
			t.Fatal(err)
		}
		qs = slices.DeleteFunc(qs, func(q backend.QueueStats) bool { return !strings.HasPrefix(q.Queue, base) })
		var names []string
		for _, q := range qs {
			names = append(names, strings.TrimPrefix(q.Queue, base))
		}
		if strings.Join(names, " ") != want {
			t.Fatalf("queues %v, want %s, in this order", names, want)
		}
		if q := qs[2]; q.DeadLetters != 1 || q.Depth != 0 || q.Consumer {
			t.Fatalf("a queue with one dead letter: %+v", q)
		}
		if q := qs[len(qs)-1]; f.Schedules && (q.Scheduled != 1 || q.Depth != 0 || !q.Oldest.IsZero()) {
			t.Fatalf("a queue with one request scheduled for later: %+v", q) // d-later, the last
		}
	}},

	{name: "InspectScheduledComesDue", needs: hasSchedules, run: func(t *testing.T, open Opener, f Features) {
		// A scheduled request that came due waits from then on: the oldest
		// age of its queue, and its stored time, do not count the time it
		// was scheduled for.
		b := opened(t, open)
		in := inspector(t, b)
		ctx := ctxFor(t, 30*time.Second)
		queue := uniq("iqs")
		m := newMsg(b, queue)
		m.NotBefore = time.Now().Add(1500 * time.Millisecond)
		mustEnqueue(t, b, m)
		if q, _ := queueStats(t, in, queue); q.Scheduled != 1 || q.Depth != 0 {
			t.Fatalf("scheduled, not yet due: %+v", q)
		}
		var q backend.QueueStats
		eventually(t, "the scheduled request comes due", func() bool {
			q, _ = queueStats(t, in, queue)
			return q.Depth == 1 && q.Scheduled == 0
		})
		if early := m.NotBefore.Add(-500 * time.Millisecond); q.Oldest.Before(early) {
			t.Fatalf("came due at %v: oldest %v, want from when it came due", m.NotBefore, q.Oldest)
		}
		ri, err := in.Request(ctx, m.CorrelationID)
		if err != nil {
			t.Fatal(err)
		}
		if ri.InQueue != backend.Present || ri.StoredAt.Before(m.NotBefore.Add(-500*time.Millisecond)) {
			t.Fatalf("came due at %v: in queue %v, stored at %v, want from when it came due", m.NotBefore, ri.InQueue, ri.StoredAt)
		}
	}},

	{name: "InspectQueuesClosed", run: func(t *testing.T, open Opener, f Features) {
		b := open(t)
		in := inspector(t, b)
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := in.Queues(ctxFor(t, 10*time.Second)); err == nil {
			t.Fatal("Queues on a closed backend: no error")
		}
		if _, err := in.Request(ctxFor(t, 10*time.Second), "some-id"); err == nil || errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("Request on a closed backend: %v, want an error that is not ErrNotFound", err)
		}
	}},

	{name: "InspectRequestTracked", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		in := inspector(t, b)
		ctx := ctxFor(t, 30*time.Second)
		q := uniq("q")
		msg := newMsg(b, q)
		msg.Track = true
		id := msg.CorrelationID
		event := func(typ, data string) {
			t.Helper()
			if err := b.AppendEvent(ctx, &backend.Event{CorrelationID: id, Type: typ, At: time.Now(), Data: []byte(data)}); err != nil {
				t.Fatal(err)
			}
		}
		// As the gateway does: the queued record, then the request, with
		// another request of the queue after it.
		event(backend.EventQueued, `{"id":"`+id+`","queue":"`+q+`","created_at":"2025-03-14T09:26:53Z"}`)
		mustEnqueue(t, b, msg)
		mustEnqueue(t, b, newMsg(b, q))
		ri, err := in.Request(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if ri.CorrelationID != id || ri.State != backend.StateQueued || ri.Queue != q || !ri.Tracked || ri.InQueue != backend.Present ||
			ri.Delivered || ri.StoredAt.IsZero() || ri.Attempts != 0 || len(ri.Events) != 1 || ri.Reply != nil {
			t.Fatalf("queued: %+v", ri)
		}

		c := consume(t, b, q, backend.ConsumeParams{Lease: 30 * time.Second})
		d := next(t, c, 10*time.Second)
		if d.Message().ID != msg.ID {
			t.Fatalf("next: %s, want %s", d.Message().ID, msg.ID)
		}
		event(backend.EventRunning, `{"attempt":1}`)
		event(backend.EventRetrying, `{"attempt":1,"error":"boom","retry_at":"2025-03-14T09:26:54Z"}`)
		if ri, err = in.Request(ctx, id); err != nil || ri.State != backend.StateQueued || ri.Attempts != 1 ||
			ri.InQueue != backend.Present || !ri.Delivered {
			t.Fatalf("waiting for a retry: %+v, %v", ri, err)
		}
		event(backend.EventRunning, `{"attempt":2}`)
		if ri, err = in.Request(ctx, id); err != nil || ri.State != backend.StateRunning || ri.Attempts != 2 {
			t.Fatalf("running attempt 2: %+v, %v", ri, err)
		}

		// The responder's order: reply, ack, final event.
		r := &backend.Reply{CorrelationID: id, Status: backend.StatusSucceeded, Body: []byte("ok"), CreatedAt: time.Now()}
		if err := b.PutReply(ctx, msg.ReplyTo, r); err != nil {
			t.Fatal(err)
		}
		if ri, err = in.Request(ctx, id); err != nil || ri.State != "succeeded" || ri.Reply == nil || string(ri.Reply.Body) != "ok" {
			t.Fatalf("replied, not yet acknowledged: %+v, %v", ri, err)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		event(string(backend.StatusSucceeded), ``)
		eventually(t, "the acknowledged request leaves the queue", func() bool {
			ri, err = in.Request(ctx, id)
			return err == nil && ri.InQueue == backend.Absent
		})
		if ri.State != "succeeded" || len(ri.Events) != 5 || len(ri.DeadLetters) != 0 || !ri.DeadLettersComplete {
			t.Fatalf("done: %+v", ri)
		}
	}},

	{name: "InspectRequestUntracked", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		in := inspector(t, b)
		ctx := ctxFor(t, 30*time.Second)
		q := uniq("q")
		// The correlation id is what is looked up, not the message id.
		msg := newMsg(b, q)
		msg.CorrelationID = uniq("corr-")
		msg.ReplyTo = b.ReplyAddress("inbox1", msg.CorrelationID)
		corr := msg.CorrelationID
		mustEnqueue(t, b, msg)
		ri, err := in.Request(ctx, corr)
		if err != nil {
			t.Fatal(err)
		}
		if ri.State != backend.StateQueued || ri.Tracked || ri.Queue != q || ri.InQueue != backend.Present || ri.Delivered {
			t.Fatalf("untracked, queued: %+v", ri)
		}
		if _, err := in.Request(ctx, msg.ID); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("looked up by message id: %v, want ErrNotFound", err)
		}

		c := consume(t, b, q, backend.ConsumeParams{Lease: 30 * time.Second})
		d := next(t, c, 10*time.Second)
		if ri, err = in.Request(ctx, corr); err != nil || ri.State != backend.StateRunning || !ri.Delivered {
			t.Fatalf("untracked, delivered: %+v, %v", ri, err)
		}

		// It fails for good: dead letter, failure reply, ack.
		m := *d.Message()
		m.Attempt = 3
		if err := b.DeadLetter(ctx, &backend.DeadLetter{Message: &m, Reason: "failed", LastError: "no luck", At: time.Now()}); err != nil {
			t.Fatal(err)
		}
		r := &backend.Reply{CorrelationID: corr, Status: backend.StatusFailed, ErrorCode: "failed", ErrorMessage: "no luck", CreatedAt: time.Now()}
		if err := b.PutReply(ctx, m.ReplyTo, r); err != nil {
			t.Fatal(err)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the acknowledged request leaves the queue", func() bool {
			ri, err = in.Request(ctx, corr)
			return err == nil && ri.InQueue == backend.Absent
		})
		if ri.State != "failed" || ri.Attempts != 3 || len(ri.DeadLetters) != 1 || ri.DeadLetters[0].LastError != "no luck" ||
			ri.Reply == nil || ri.Reply.ErrorCode != "failed" {
			t.Fatalf("dead-lettered: %+v", ri)
		}
	}},

	{name: "InspectRequestDeadLetterOnly", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		in := inspector(t, b)
		ctx := ctxFor(t, 10*time.Second)
		// No reply address: a dead letter is all that is left of it.
		m := newMsg(b, uniq("q"))
		m.ReplyTo, m.Attempt = "", 1
		if err := b.DeadLetter(ctx, &backend.DeadLetter{Message: m, Reason: "expired", At: time.Now()}); err != nil {
			t.Fatal(err)
		}
		ri, err := in.Request(ctx, m.CorrelationID)
		if err != nil {
			t.Fatal(err)
		}
		if ri.State != "expired" || ri.Queue != m.Queue || ri.InQueue != backend.Absent || ri.Attempts != 1 || len(ri.DeadLetters) != 1 {
			t.Fatalf("expired, dead letter only: %+v", ri)
		}
	}},

	{name: "InspectRequestNotFound", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		in := inspector(t, b)
		ctx := ctxFor(t, 10*time.Second)
		mustEnqueue(t, b, newMsg(b, uniq("q")))
		if _, err := in.Request(ctx, uniq("nobody-")); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("unknown id: %v, want ErrNotFound", err)
		}
		if _, err := in.Request(ctx, "a.b"); err == nil || errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("invalid id: %v, want a validation error", err)
		}
	}},
	{name: "InspectRequestWhileFinishing", run: func(t *testing.T, open Opener, f Features) {
		// A request that finishes while Request looks it up is still found:
		// its reply is stored before it leaves the queue.
		b := opened(t, open)
		in := inspector(t, b)
		ctx := ctxFor(t, 30*time.Second)
		q := uniq("q")
		const n = 30
		ids := make([]string, n)
		for i := range ids {
			m := newMsg(b, q)
			ids[i] = m.CorrelationID
			mustEnqueue(t, b, m)
		}
		c := consume(t, b, q, backend.ConsumeParams{Lease: 30 * time.Second})
		for _, id := range ids {
			d := next(t, c, 10*time.Second)
			m := d.Message()
			looked := make(chan error, 1)
			stop := make(chan struct{})
			go func() { // looks the request up until it is finished
				for {
					ri, err := in.Request(ctx, id)
					if err != nil || ri.State == string(backend.StatusSucceeded) {
						looked <- err
						return
					}
					select {
					case <-stop:
						looked <- nil
						return
					default:
					}
				}
			}()
			if err := b.PutReply(ctx, m.ReplyTo, &backend.Reply{CorrelationID: m.CorrelationID, Status: backend.StatusSucceeded, CreatedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
			if err := d.Ack(ctx); err != nil {
				t.Fatal(err)
			}
			close(stop)
			if err := <-looked; err != nil {
				t.Fatalf("Request of %s while it finished: %v", id, err)
			}
		}
	}},
	{name: "InspectRates", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		in := inspector(t, b)
		ctx := ctxFor(t, 30*time.Second)
		q, other := uniq("ir"), uniq("ir")
		dup := newMsg(b, q)
		mustEnqueue(t, b, dup)
		mustEnqueue(t, b, dup) // a duplicate is not stored: not counted
		for range 2 {
			mustEnqueue(t, b, newMsg(b, q))
		}
		mustEnqueue(t, b, newMsg(b, other))
		c := consume(t, b, q, backend.ConsumeParams{Lease: 30 * time.Second})
		for range 2 {
			if err := next(t, c, 10*time.Second).Ack(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := next(t, c, 10*time.Second).Nack(ctx, time.Hour); err != nil { // stays: not out
			t.Fatal(err)
		}
		var got backend.QueueStats
		eventually(t, "3 in and 2 out counted", func() bool {
			got, _ = queueStats(t, in, q)
			return got.In == 3 && got.Out == 2
		})
		if o, _ := queueStats(t, in, other); o.In != 1 || o.Out != 0 {
			t.Fatalf("another queue: in %d, out %d; want 1, 0", o.In, o.Out)
		}
		if !f.Shared {
			return
		}
		// Another process's counts are stored by the time it has closed.
		b2 := open(t)
		mustEnqueue(t, b2, newMsg(b2, q))
		if err := b2.Close(); err != nil {
			t.Fatal(err)
		}
		if got, _ := queueStats(t, in, q); got.In != 4 || got.Out != 2 {
			t.Fatalf("after another handle stored one and closed: in %d, out %d; want 4, 2", got.In, got.Out)
		}
	}},
}
