package rsvpnats_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// statsSetup is a memory engine for one test, and a context bounding it.
func statsSetup(t *testing.T) (*rsvpnats.Backend, context.Context) {
	t.Helper()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return b, ctx
}

// queueStats returns the stats of queue name, failing the test if Queues
// fails; ok is false when the queue is not listed.
func queueStats(t *testing.T, ctx context.Context, b *rsvpnats.Backend, name string) (q rsvpnats.QueueStats, ok bool) {
	t.Helper()
	qs, err := b.Queues(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if q.Queue == name {
			return q, true
		}
	}
	return q, false
}

// eventually waits until cond holds, failing after 20s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
}

func TestQueues(t *testing.T) {
	t.Parallel()
	b, ctx := statsSetup(t)

	if qs, err := b.Queues(ctx); err != nil || len(qs) != 0 {
		t.Fatalf("a new engine: %+v, %v; want no queues", qs, err)
	}

	before := time.Now()
	for i := range 3 {
		id := fmt.Sprintf("work-%d", i)
		if err := b.Enqueue(ctx, &backend.Message{ID: id, CorrelationID: id, Queue: "work"}); err != nil {
			t.Fatal(err)
		}
	}
	q, ok := queueStats(t, ctx, b, "work")
	if !ok || q.Depth != 3 || q.InFlight != 0 || q.Consumer || q.Waiting != 0 || q.DeadLetters != 0 || !q.LastDelivered.IsZero() {
		t.Fatalf("3 requests, no responder: %+v", q)
	}
	if q.Oldest.Before(before.Add(-time.Second)) || q.Oldest.After(time.Now()) {
		t.Fatalf("oldest %v, want about %v", q.Oldest, before)
	}

	// One delivered: in flight. It fails and comes back: redelivered.
	c, err := b.Consume(ctx, "work", backend.ConsumeParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if q, _ := queueStats(t, ctx, b, "work"); q.Depth != 3 || q.InFlight != 1 || q.Redelivered != 0 || !q.Consumer || q.LastDelivered.IsZero() {
		t.Fatalf("one running: %+v", q)
	}
	if err := d.Nack(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	// Waiting for its retry, it still counts as in flight.
	if q, _ := queueStats(t, ctx, b, "work"); q.Depth != 3 || q.InFlight != 1 {
		t.Fatalf("one waiting for its retry: %+v", q)
	}
	// Take the next, fail it at once and take it again: attempt 2. (The
	// third request may come first.)
	d2, err := c.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Nack(ctx, 0); err != nil {
		t.Fatal(err)
	}
	delivered := 2
	var again backend.Delivery
	for again == nil {
		d, err := c.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d.Message().Attempt == 2 {
			again = d
		} else {
			delivered++
		}
	}
	if q, _ := queueStats(t, ctx, b, "work"); q.Depth != 3 || q.InFlight != delivered || q.Redelivered != 1 {
		t.Fatalf("%d delivered, one of them twice: %+v", delivered, q)
	}
	if err := again.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "an acknowledged request leaves the queue", func() bool {
		q, _ := queueStats(t, ctx, b, "work")
		return q.Depth == 2 && q.InFlight == delivered-1 && q.Redelivered == 0
	})

	// An idle responder waits at the engine with a pull request.
	idle, err := b.Consume(ctx, "idle", backend.ConsumeParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	nctx, stop := context.WithCancel(ctx)
	nextDone := make(chan error, 1)
	go func() {
		_, err := idle.Next(nctx)
		nextDone <- err
	}()
	eventually(t, "an idle responder is counted as waiting", func() bool {
		q, ok := queueStats(t, ctx, b, "idle")
		return ok && q.Waiting == 1 && q.Consumer && q.Depth == 0 && q.Oldest.IsZero()
	})
	stop()
	if err := <-nextDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after cancel: %v", err)
	}

	// A queue with dead letters only.
	dl := &backend.DeadLetter{Message: &backend.Message{ID: "gone-1", CorrelationID: "gone-1", Queue: "gone", Attempt: 5},
		Reason: "attempts_exhausted", LastError: "boom", At: time.Now()}
	if err := b.DeadLetter(ctx, dl); err != nil {
		t.Fatal(err)
	}
	qs, err := b.Queues(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, q := range qs {
		names = append(names, q.Queue)
	}
	if strings.Join(names, " ") != "gone idle work" {
		t.Fatalf("queues %v, want gone idle work", names)
	}
	if q := qs[0]; q.DeadLetters != 1 || q.Depth != 0 || q.Consumer {
		t.Fatalf("a queue with one dead letter: %+v", q)
	}
}

func TestQueuesUnreachable(t *testing.T) {
	t.Parallel()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := b.Queues(context.Background()); err == nil || !strings.Contains(err.Error(), "rsvpnats: queues") {
		t.Fatalf("Queues on a closed backend: %v", err)
	}
}

func TestRequestTracked(t *testing.T) {
	t.Parallel()
	b, ctx := statsSetup(t)
	const id = "tracked-1"
	event := func(typ, data string) {
		t.Helper()
		if err := b.AppendEvent(ctx, &backend.Event{CorrelationID: id, Type: typ, At: time.Now(), Data: []byte(data)}); err != nil {
			t.Fatal(err)
		}
	}
	// As the gateway does: the queued record, then the request.
	event(backend.EventQueued, `{"id":"tracked-1","queue":"thumbs","created_at":"2025-03-14T09:26:53Z"}`)
	msg := &backend.Message{ID: id, CorrelationID: id, Queue: "thumbs", ReplyTo: b.ReplyAddress("in", id), Track: true}
	if err := b.Enqueue(ctx, msg); err != nil {
		t.Fatal(err)
	}
	// Another request on the queue, ahead of nothing: the search skips it.
	if err := b.Enqueue(ctx, &backend.Message{ID: "other", CorrelationID: "other", Queue: "thumbs"}); err != nil {
		t.Fatal(err)
	}
	ri, err := b.Request(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ri.State != rsvpnats.StateQueued || ri.Queue != "thumbs" || !ri.Tracked || ri.InQueue != rsvpnats.Present ||
		ri.Delivered || ri.StoredAt.IsZero() || ri.Attempts != 0 || len(ri.Events) != 1 || ri.Reply != nil {
		t.Fatalf("queued: %+v", ri)
	}

	c, err := b.Consume(ctx, "thumbs", backend.ConsumeParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Next(ctx)
	if err != nil || d.Message().ID != id {
		t.Fatalf("next: %v, %v", d, err)
	}
	event(backend.EventRunning, `{"attempt":1}`)
	event(backend.EventRetrying, `{"attempt":1,"error":"boom","retry_at":"2025-03-14T09:26:54Z"}`)
	ri, err = b.Request(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ri.State != rsvpnats.StateQueued || ri.Attempts != 1 || ri.InQueue != rsvpnats.Present || !ri.Delivered {
		t.Fatalf("waiting for a retry: %+v", ri)
	}
	event(backend.EventRunning, `{"attempt":2}`)
	if ri, err = b.Request(ctx, id); err != nil || ri.State != rsvpnats.StateRunning || ri.Attempts != 2 {
		t.Fatalf("running attempt 2: %+v, %v", ri, err)
	}

	// The responder's order: reply, ack, final event.
	r := &backend.Reply{CorrelationID: id, Status: backend.StatusSucceeded, Body: []byte("ok"), CreatedAt: time.Now()}
	if err := b.PutReply(ctx, msg.ReplyTo, r); err != nil {
		t.Fatal(err)
	}
	if ri, err = b.Request(ctx, id); err != nil || ri.State != "succeeded" || ri.Reply == nil || string(ri.Reply.Body) != "ok" {
		t.Fatalf("replied, not yet acknowledged: %+v, %v", ri, err)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	event(string(backend.StatusSucceeded), ``)
	eventually(t, "the acknowledged request leaves the queue", func() bool {
		ri, err = b.Request(ctx, id)
		return err == nil && ri.InQueue == rsvpnats.Absent
	})
	if ri.State != "succeeded" || len(ri.Events) != 5 || len(ri.DeadLetters) != 0 || !ri.DeadLettersComplete {
		t.Fatalf("done: %+v", ri)
	}
}

func TestRequestUntracked(t *testing.T) {
	t.Parallel()
	b, ctx := statsSetup(t)
	// The correlation id is what is looked up, not the message id.
	msg := &backend.Message{ID: "msg-1", CorrelationID: "corr-1", Queue: "plain", ReplyTo: b.ReplyAddress("in", "corr-1")}
	if err := b.Enqueue(ctx, msg); err != nil {
		t.Fatal(err)
	}
	ri, err := b.Request(ctx, "corr-1")
	if err != nil {
		t.Fatal(err)
	}
	if ri.State != rsvpnats.StateQueued || ri.Tracked || ri.Queue != "plain" || ri.InQueue != rsvpnats.Present || ri.Delivered {
		t.Fatalf("untracked, queued: %+v", ri)
	}
	if _, err := b.Request(ctx, "msg-1"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("looked up by message id: %v, want ErrNotFound", err)
	}

	c, err := b.Consume(ctx, "plain", backend.ConsumeParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ri, err = b.Request(ctx, "corr-1"); err != nil || ri.State != rsvpnats.StateRunning || !ri.Delivered {
		t.Fatalf("untracked, delivered: %+v, %v", ri, err)
	}

	// It fails for good: dead letter, failure reply, ack.
	m := d.Message()
	m.Attempt = 3
	if err := b.DeadLetter(ctx, &backend.DeadLetter{Message: m, Reason: "failed", LastError: "no luck", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r := &backend.Reply{CorrelationID: "corr-1", Status: backend.StatusFailed, ErrorCode: "failed", ErrorMessage: "no luck", CreatedAt: time.Now()}
	if err := b.PutReply(ctx, m.ReplyTo, r); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the acknowledged request leaves the queue", func() bool {
		ri, err = b.Request(ctx, "corr-1")
		return err == nil && ri.InQueue == rsvpnats.Absent
	})
	if ri.State != "failed" || ri.Attempts != 3 || len(ri.DeadLetters) != 1 || ri.DeadLetters[0].LastError != "no luck" ||
		ri.Reply == nil || ri.Reply.ErrorCode != "failed" {
		t.Fatalf("dead-lettered: %+v", ri)
	}
}

func TestRequestDeadLetterOnly(t *testing.T) {
	t.Parallel()
	b, ctx := statsSetup(t)
	// No reply address: a dead letter is all that is left of it.
	m := &backend.Message{ID: "late", CorrelationID: "late", Queue: "slow", Attempt: 1}
	if err := b.DeadLetter(ctx, &backend.DeadLetter{Message: m, Reason: "expired", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	ri, err := b.Request(ctx, "late")
	if err != nil {
		t.Fatal(err)
	}
	if ri.State != "expired" || ri.Queue != "slow" || ri.InQueue != rsvpnats.Absent || ri.Attempts != 1 {
		t.Fatalf("expired, dead letter only: %+v", ri)
	}
}

func TestRequestNotFound(t *testing.T) {
	t.Parallel()
	b, ctx := statsSetup(t)
	if err := b.Enqueue(ctx, &backend.Message{ID: "someone", CorrelationID: "someone", Queue: "q"}); err != nil {
		t.Fatal(err)
	}
	_, err := b.Request(ctx, "nobody")
	if !errors.Is(err, backend.ErrNotFound) || !strings.Contains(err.Error(), "not queued") {
		t.Fatalf("unknown id: %v", err)
	}
	if _, err := b.Request(ctx, "a.b"); err == nil || errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("invalid id: %v, want a validation error", err)
	}
}
