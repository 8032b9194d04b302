package rsvp_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/internal/natstest"
)

// TestEngineWithoutSchedules: on NATS 2.10 and 2.11, which cannot schedule
// messages, Send of a request scheduled for later fails with a clear error
// (errors.ErrUnsupported) instead of storing a request that is never
// delivered; Send and Publish with a deadline store the request and no
// expiry task (it would never come due); a Request's deadline still ends
// it with ErrExpired, visible to Await in any process.
func TestEngineWithoutSchedules(t *testing.T) {
	t.Parallel()
	for _, version := range []string{natstest.NATS210, natstest.NATS211} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			be, err := rsvpnats.Connect(ctx, natstest.StartVersion(t, version), rsvpnats.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { closeWithin(t, "close backend", func(context.Context) error { return be.Close() }) })
			c, err := rsvp.New(ctx, be, rsvp.Config{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { closeWithin(t, "close client", c.Close) })

			_, err = c.Send(ctx, "later", &rsvp.Message{NotBefore: time.Now().Add(time.Hour)})
			if !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "2.12 or newer") {
				t.Fatalf("Send scheduled for later: %v, want an error (errors.ErrUnsupported) saying 2.12 or newer", err)
			}
			if _, err := c.Send(ctx, "work", &rsvp.Message{Deadline: time.Now().Add(time.Hour)}); err != nil {
				t.Fatalf("Send with a deadline: %v", err)
			}
			if err := c.Subscribe(ctx, "news", "s1"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Publish(ctx, "news", &rsvp.Message{Deadline: time.Now().Add(time.Hour)}); err != nil {
				t.Fatalf("Publish with a deadline: %v", err)
			}
			js, _ := jetstream.New(be.Conn())
			s, err := js.Stream(ctx, "RSVP_REQUESTS")
			if err != nil {
				t.Fatal(err)
			}
			info, err := s.Info(ctx, jetstream.WithSubjectFilter(">"))
			if err != nil {
				t.Fatal(err)
			}
			for subject := range info.State.Subjects {
				if !strings.HasPrefix(subject, "rsvp.req.") {
					t.Errorf("stored under %s: never delivered on NATS %s", subject, version)
				}
			}
			if info.State.Msgs != 2 {
				t.Errorf("%d requests stored, want the request and the publication's copy: %v", info.State.Msgs, info.State.Subjects)
			}

			rctx, rcancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer rcancel()
			_, err = c.Request(rctx, "nobody", &rsvp.Message{ID: "r1"})
			if !errors.Is(err, rsvp.ErrExpired) {
				t.Fatalf("Request past its deadline: %v, want ErrExpired", err)
			}
			other, err := rsvp.New(ctx, be, rsvp.Config{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { closeWithin(t, "close other client", other.Close) })
			if r, err := other.Await(ctx, "r1"); !errors.Is(err, rsvp.ErrExpired) {
				t.Fatalf("Await in another client: %+v, %v; want ErrExpired", r, err)
			}
		})
	}
}
