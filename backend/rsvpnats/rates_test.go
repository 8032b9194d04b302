package rsvpnats_test

import (
	"testing"

	"github.com/nats-io/nats.go"
)

// TestPublishRateCounts: docs/wire.md lets a program of its own publish
// its counts on rsvp.rate.<queue>; Publish takes them, as it takes every
// other subject of the wire format, and Queues sums them.
func TestPublishRateCounts(t *testing.T) {
	t.Parallel()
	b, ctx := statsSetup(t)
	if err := b.Publish(ctx, &nats.Msg{Subject: "rsvp.rate.counted", Data: []byte(`{"in":3,"out":2}`)}); err != nil {
		t.Fatalf("publishing counts: %v", err)
	}
	q, ok := queueStats(t, ctx, b, "counted")
	if !ok || q.In != 3 || q.Out != 2 {
		t.Fatalf("queue counted: listed %v, in %d, out %d; want listed, 3, 2", ok, q.In, q.Out)
	}
}
