package rsvp_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

func TestScheduledRequest(t *testing.T) {
	tc := setup(t, rsvp.Config{MaxDelay: time.Hour})
	handled := make(chan time.Time, 1)
	handle(t, tc, "later", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		handled <- time.Now()
		return &rsvp.Reply{Body: []byte("done")}, nil
	})
	due := time.Now().Add(time.Second)
	r, err := tc.Request(ctxWithin(t, 10*time.Second), "later", &rsvp.Message{NotBefore: due, Body: []byte("x")})
	if err != nil || string(r.Body) != "done" {
		t.Fatalf("Request: %v %v", r, err)
	}
	if at := <-handled; at.Before(due.Add(-100 * time.Millisecond)) {
		t.Fatalf("handled at %s, %s before it was due", at, due.Sub(at))
	}
	// Too far ahead is refused; in the past means now.
	_, err = tc.Send(ctxWithin(t, 5*time.Second), "later", &rsvp.Message{NotBefore: time.Now().Add(2 * time.Hour)})
	if !errors.Is(err, rsvp.ErrInvalid) || !strings.Contains(err.Error(), "MaxDelay") {
		t.Fatalf("two hours ahead: %v", err)
	}
	if _, err := tc.Request(ctxWithin(t, 10*time.Second), "later", &rsvp.Message{NotBefore: time.Now().Add(-time.Minute)}); err != nil {
		t.Fatalf("in the past: %v", err)
	}
}

// A scheduled tracked request cancelled before it is due never runs.
func TestScheduledRequestCancelled(t *testing.T) {
	tc := setup(t, rsvp.Config{})
	ran := make(chan string, 2)
	handle(t, tc, "sched", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		ran <- string(m.Body)
		return nil, nil
	})
	ctx := ctxWithin(t, 10*time.Second)
	cancelled, err := tc.Send(ctx, "sched", &rsvp.Message{Track: true, NotBefore: time.Now().Add(500 * time.Millisecond), Body: []byte("cancelled")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tc.Cancel(ctx, cancelled.CorrelationID); err != nil {
		t.Fatal(err)
	}
	// A marker due after it: once the marker ran, the cancelled one was due.
	if _, err := tc.Request(ctx, "sched", &rsvp.Message{NotBefore: time.Now().Add(time.Second), Body: []byte("marker")}); err != nil {
		t.Fatal(err)
	}
	if got := <-ran; got != "marker" {
		t.Fatalf("ran %q", got)
	}
}

// A request whose deadline passes while it waits in the queue expires: the
// requester gets ErrExpired, and the responder that reaches it later
// dead-letters it as expired without running it.
func TestQueuedRequestExpires(t *testing.T) {
	tc := setup(t, rsvp.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := tc.Request(ctx, "nobody-yet", &rsvp.Message{ID: "exp-1", Body: []byte("x")})
	if !errors.Is(err, rsvp.ErrExpired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Request: %v, want ErrExpired", err)
	}
	// Its expiry is stored: another client's Await knows at once, though no
	// responder has seen the request yet.
	other, err := rsvp.New(ctxWithin(t, 5*time.Second), tc.be, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	if rep, err := other.Await(ctxWithin(t, 5*time.Second), "exp-1"); !errors.Is(err, rsvp.ErrExpired) || rep == nil || rep.Status != backend.StatusExpired {
		t.Fatalf("Await elsewhere: %+v, %v; want the expired reply", rep, err)
	}
	ran := make(chan struct{}, 1)
	r := handle(t, tc, "nobody-yet", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		ran <- struct{}{}
		return nil, nil
	})
	var dls []*rsvp.DeadLetter
	for deadline := time.Now().Add(10 * time.Second); len(dls) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("not dead-lettered")
		}
		dls = deadLetters(t, tc, "nobody-yet")
		if len(dls) == 0 {
			time.Sleep(20 * time.Millisecond) // polling a condition, with a deadline
		}
	}
	if dls[0].Reason != rsvp.CodeExpired {
		t.Fatalf("dead letter %+v", dls[0])
	}
	_ = r.Stop(ctxWithin(t, 5*time.Second))
	if len(ran) != 0 {
		t.Fatal("the expired request ran")
	}
}

// TestRequireResponder: with no responder active within the window,
// Request fails at once and stores nothing.
func TestRequireResponder(t *testing.T) {
	tc := setup(t, rsvp.Config{RequireResponder: 300 * time.Millisecond})
	start := time.Now()
	_, err := tc.Request(ctxWithin(t, 10*time.Second), "lonely", &rsvp.Message{Body: []byte("x")})
	if !errors.Is(err, rsvp.ErrNoResponders) || time.Since(start) > 2*time.Second {
		t.Fatalf("Request with nobody there: %v after %s", err, time.Since(start))
	}
	r := handle(t, tc, "lonely", rsvp.HandleOptions{}, echoHandler)
	// Once the responder's first pull reaches the engine, requests go
	// through; the refused one was not stored, so the first reply is ours.
	for deadline := time.Now().Add(10 * time.Second); ; {
		got, err := tc.Request(ctxWithin(t, 10*time.Second), "lonely", &rsvp.Message{Body: []byte("second")})
		if err == nil {
			if string(got.Body) != "second" {
				t.Fatalf("first reply %q", got.Body)
			}
			break
		}
		if !errors.Is(err, rsvp.ErrNoResponders) || time.Now().After(deadline) {
			t.Fatalf("Request with a responder: %v", err)
		}
	}
	if err := r.Stop(ctxWithin(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	// The stopped responder's last pulls may count as waiting for a few
	// seconds more (they expire at the engine).
	for deadline := time.Now().Add(15 * time.Second); ; {
		_, err := tc.Request(ctxWithin(t, 500*time.Millisecond), "lonely", &rsvp.Message{Body: []byte("x")})
		if errors.Is(err, rsvp.ErrNoResponders) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still sent after the responder stopped: %v", err)
		}
	}
}

func echoHandler(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
	return &rsvp.Reply{Body: m.Body}, nil
}
