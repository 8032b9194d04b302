package rsvpnats_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/internal/natstest"
)

// TestConnectRefusesServerBefore210: Connect to a server older than 2.10
// fails, naming the version found and the version needed, and creates
// nothing there. (A 2.9 server took requests that no responder could ever
// consume: its consumers cannot have several filter subjects.)
func TestConnectRefusesServerBefore210(t *testing.T) {
	t.Parallel()
	url := natstest.StartVersion(t, natstest.NATS29)
	b, err := rsvpnats.Connect(context.Background(), url, rsvpnats.Options{})
	if err == nil {
		b.Close()
		t.Fatalf("Connect to NATS %s succeeded, want it refused", natstest.NATS29)
	}
	if !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), natstest.NATS29) || !strings.Contains(err.Error(), "2.10 or newer") {
		t.Fatalf("got %q, want an error (errors.ErrUnsupported) naming %s and 2.10 or newer", err, natstest.NATS29)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		t.Errorf("stream %s created on a refused server", name)
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestScheduleRefusedBefore212: on NATS 2.10 and 2.11, whose streams
// cannot schedule messages, Enqueue refuses a request scheduled for later
// (it was stored and never delivered) and stores nothing; one scheduled in
// the past is delivered at once; the wire format's scheduled subjects are
// refused by Publish too.
func TestScheduleRefusedBefore212(t *testing.T) {
	t.Parallel()
	for _, version := range []string{natstest.NATS210, natstest.NATS211} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			b, err := rsvpnats.Connect(ctx, natstest.StartVersion(t, version), rsvpnats.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			later := &backend.Message{ID: "later", CorrelationID: "later", Queue: "q", CreatedAt: time.Now(), NotBefore: time.Now().Add(time.Hour)}
			err = b.Enqueue(ctx, later)
			if !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "2.12 or newer") || !strings.Contains(err.Error(), version) {
				t.Fatalf("Enqueue scheduled for later: %v, want an error (errors.ErrUnsupported) naming %s and 2.12 or newer", err, version)
			}
			sched := nats.NewMsg("rsvp.sched.q.raw")
			sched.Header.Set("Nats-Schedule", "@at "+time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
			sched.Header.Set("Nats-Schedule-Target", "rsvp.req.q")
			if err := b.Publish(ctx, sched); !errors.Is(err, errors.ErrUnsupported) {
				t.Fatalf("Publish to rsvp.sched.q.raw: %v, want errors.ErrUnsupported", err)
			}
			js, _ := jetstream.New(b.Conn())
			s, err := js.Stream(ctx, "RSVP_REQUESTS")
			if err != nil {
				t.Fatal(err)
			}
			if info, err := s.Info(ctx); err != nil || info.State.Msgs != 0 {
				t.Fatalf("RSVP_REQUESTS after the refused requests: %+v, %v; want it empty", info.State, err)
			}
			past := &backend.Message{ID: "past", CorrelationID: "past", Queue: "q", CreatedAt: time.Now(), NotBefore: time.Now().Add(-time.Minute)}
			if err := b.Enqueue(ctx, past); err != nil {
				t.Fatalf("Enqueue scheduled in the past: %v", err)
			}
			c, err := b.Consume(ctx, "q", backend.ConsumeParams{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			d, err := c.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if d.Message().ID != past.ID {
				t.Fatalf("delivered %s, want %s", d.Message().ID, past.ID)
			}
			if err := d.Ack(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}
