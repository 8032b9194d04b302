package rsvpnats_test

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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

// TestRatesStreamSettings: RSVP_RATES has the settings docs/wire.md says
// all five streams share: max_msg_size the connection's max_payload.
func TestRatesStreamSettings(t *testing.T) {
	t.Parallel()
	b, ctx := statsSetup(t)
	js, err := jetstream.New(b.Conn())
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, "RSVP_RATES")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.CachedInfo().Config.MaxMsgSize, int32(b.Conn().MaxPayload()); got != want {
		t.Fatalf("RSVP_RATES max_msg_size %d; want max_payload, %d", got, want)
	}
}
