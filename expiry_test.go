package rsvp_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// TestSentRequestExpires: a request sent with Send and a deadline that no
// responder takes is expired by its expiry task, so a requester that
// restarted gets ErrExpired from Await; one answered in time is not.
func TestSentRequestExpires(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		q, answered := "nobody-"+rsvp.NewID()[24:], "answered-"+rsvp.NewID()[24:]
		sender := e.client()
		deadline := time.Now().Add(500 * time.Millisecond)
		lost, err := sender.Send(ctx, q, &rsvp.Message{Body: []byte("x"), Deadline: deadline, Track: true})
		if err != nil {
			t.Fatal(err)
		}
		ok, err := sender.Send(ctx, answered, &rsvp.Message{Body: []byte("y"), Deadline: deadline})
		if err != nil {
			t.Fatal(err)
		}
		// The sender goes away; a new requester (a restart, say) awaits.
		e.restart()
		requester := e.client()
		serve(t, requester, answered, replyWith("done"))
		if r, err := requester.Await(ctx, ok.CorrelationID); err != nil || string(r.Body) != "done:y" {
			t.Fatalf("answered in time: %+v, %v", r, err)
		}
		r, err := requester.Await(ctx, lost.CorrelationID)
		if !errors.Is(err, rsvp.ErrExpired) || r == nil || r.Status != backend.StatusExpired {
			t.Fatalf("Await of a request nobody took: %+v, %v; want the expired reply", r, err)
		}
		if time.Now().Before(deadline) {
			t.Fatalf("expired before its deadline")
		}
		// A tracked request's event log ends with its expiry.
		waitFor(t, func() bool {
			evs, err := e.b.Events(ctx, backend.EventQuery{CorrelationID: lost.CorrelationID})
			if err != nil {
				t.Fatal(err)
			}
			return len(evs) > 0 && evs[len(evs)-1].Type == string(backend.StatusExpired)
		})
	})
}

// TestRequestExpiresOnItsOwn: a Request whose deadline passes with no reply
// stores the expired reply itself, and does what a responder does with the
// replies it stores: a tracked request's event log ends with its expiry,
// and the reply is listed under its reply session.
func TestRequestExpiresOnItsOwn(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	session := "rs-expired-" + rsvp.NewID()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	m := &rsvp.Message{ID: rsvp.NewID(), Track: true, ReplySession: session}
	if _, err := c.Request(ctx, "nobody-at-all", m); !errors.Is(err, rsvp.ErrExpired) {
		t.Fatalf("Request: %v, want ErrExpired", err)
	}
	wctx := ctxWithin(t, 10*time.Second)
	evs, err := c.be.Events(wctx, backend.EventQuery{CorrelationID: m.ID})
	if err != nil || len(evs) == 0 || evs[len(evs)-1].Type != string(backend.StatusExpired) {
		t.Fatalf("events %v, %v; want the last one expired", evs, err)
	}
	listed, err := c.SessionReplies(wctx, session, 0)
	if err != nil || len(listed) != 1 || listed[0].Reply.CorrelationID != m.ID || listed[0].Reply.Status != backend.StatusExpired {
		t.Fatalf("reply session lists %+v, %v; want the expired reply", listed, err)
	}
}
