package rsvpnats_test

import (
	"context"
	"errors"
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
func queueStats(t *testing.T, ctx context.Context, b *rsvpnats.Backend, name string) (q backend.QueueStats, ok bool) {
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

// TestQueuesNATS: what only NATS counts (the conformance suite's
// InspectQueues covers the rest): idle responders' pull requests, the last
// delivery, and no count of responders.
func TestQueuesNATS(t *testing.T) {
	t.Parallel()
	b, ctx := statsSetup(t)
	if err := b.Enqueue(ctx, &backend.Message{ID: "w-1", CorrelationID: "w-1", Queue: "work"}); err != nil {
		t.Fatal(err)
	}
	c, err := b.Consume(ctx, "work", backend.ConsumeParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := time.Now()
	d, err := c.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	nctx, stop := context.WithCancel(ctx)
	nextDone := make(chan error, 1)
	go func() {
		_, err := c.Next(nctx)
		nextDone <- err
	}()
	eventually(t, "an idle responder is counted as waiting", func() bool {
		q, ok := queueStats(t, ctx, b, "work")
		return ok && q.Waiting == 1 && q.Depth == 0
	})
	stop()
	if err := <-nextDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after cancel: %v", err)
	}
	q, _ := queueStats(t, ctx, b, "work")
	if q.Responders != -1 || q.LastDelivered.Before(before.Add(-time.Second)) || q.LastDelivered.After(time.Now()) {
		t.Fatalf("responders %d (want -1, not counted), last delivered %v (want about %v)", q.Responders, q.LastDelivered, before)
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
