package rsvp_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
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

// TestRequestExpiresWithTimeoutCause: a Request whose ctx times out with a
// cause of its own expires as any other: ErrExpired, and the expired reply
// stored for Await elsewhere.
func TestRequestExpiresWithTimeoutCause(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	cause := errors.New("the caller's own timeout")
	ctx, cancel := context.WithTimeoutCause(context.Background(), 300*time.Millisecond, cause)
	defer cancel()
	m := &rsvp.Message{ID: rsvp.NewID()}
	if _, err := c.Request(ctx, "nobody-at-all", m); !errors.Is(err, rsvp.ErrExpired) || !errors.Is(err, cause) {
		t.Fatalf("Request: %v, want ErrExpired and the cause", err)
	}
	if r, err := c.be.GetReply(ctxWithin(t, 5*time.Second), m.ID); err != nil || r.Status != backend.StatusExpired {
		t.Fatalf("stored reply %+v, %v; want the expired one", r, err)
	}
}

// TestAbandonedRequestStillExpires: a Request with a Deadline whose caller
// gives up before it leaves the request to expire at its deadline, for
// whoever awaits it.
func TestAbandonedRequestStillExpires(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	m := &rsvp.Message{ID: rsvp.NewID(), Deadline: time.Now().Add(500 * time.Millisecond)}
	waiting := make(chan error, 1)
	go func() {
		_, err := c.Request(ctx, "nobody-at-all", m)
		waiting <- err
	}()
	waitFor(t, func() bool { return rsvp.WaiterCount(c.Client) == 1 })
	cancel()
	if err := receive(t, waiting, "Request to return"); !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned Request: %v, want context.Canceled", err)
	}
	r, err := c.Await(ctxWithin(t, 10*time.Second), m.ID)
	if !errors.Is(err, rsvp.ErrExpired) || r == nil || r.Status != backend.StatusExpired {
		t.Fatalf("Await: %+v, %v; want the expired reply", r, err)
	}
}

// earlyClock is an engine whose clock runs 50ms ahead of the client's: it
// delivers scheduled requests that much before their NotBefore (the
// conformance suite allows up to 100ms).
type earlyClock struct{ *rsvpnats.Backend }

func (e earlyClock) Enqueue(ctx context.Context, m *backend.Message) error {
	if !m.NotBefore.IsZero() {
		early := *m
		early.NotBefore = m.NotBefore.Add(-50 * time.Millisecond)
		m = &early
	}
	return e.Backend.Enqueue(ctx, m)
}

// TestExpiryTaskDueEarly: an expiry task the engine delivers a little
// before the deadline is not lost: the request still expires.
func TestExpiryTaskDueEarly(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 20*time.Second)
	early, err := rsvp.New(ctx, earlyClock{c.be}, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeWithin(t, "close the early client", early.Close) })
	deadline := time.Now().Add(time.Second)
	tk, err := early.Send(ctx, "nobody-early", &rsvp.Message{Deadline: deadline})
	if err != nil {
		t.Fatal(err)
	}
	r, err := early.Await(ctx, tk.CorrelationID)
	if !errors.Is(err, rsvp.ErrExpired) || r == nil || r.Status != backend.StatusExpired {
		t.Fatalf("Await: %+v, %v; want the expired reply", r, err)
	}
	if r.CreatedAt.Before(deadline) {
		t.Fatalf("expired at %s, before its deadline %s", r.CreatedAt, deadline)
	}
}

// waitDeadLetter waits up to 10s for a dead letter of queue with reason.
func waitDeadLetter(t *testing.T, ctx context.Context, b backend.Backend, queue, reason string) *backend.DeadLetter {
	t.Helper()
	var found *backend.DeadLetter
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for found == nil {
		dls, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: queue, Reason: reason})
		if err != nil {
			t.Fatal(err)
		}
		if len(dls) > 0 {
			found = dls[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s dead letter of %s within 10s", reason, queue)
		}
		<-tick.C
	}
	return found
}

// TestExpiredAfterExpiryTaskIsDeadLettered: a request whose expiry task
// (or its Request) stored the expired reply before a responder reached it
// is still dead-lettered as expired by that responder, as docs/wire.md
// (sections 8 and 18) says: a tracked request that waited in its queue
// past its deadline, and a request whose deadline passed between two of
// its attempts. Neither runs again.
func TestExpiredAfterExpiryTaskIsDeadLettered(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		t.Run("tracked_queued", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c := e.client()
			q := "late-" + rsvp.NewID()[24:]
			tk, err := c.Send(ctx, q, &rsvp.Message{Body: []byte("x"), Deadline: time.Now().Add(300 * time.Millisecond), Track: true})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Await(ctx, tk.CorrelationID); !errors.Is(err, rsvp.ErrExpired) {
				t.Fatalf("Await: %v, want ErrExpired from the expiry task", err)
			}
			ran := make(chan struct{}, 1)
			serve(t, c, q, func(context.Context, *rsvp.Message) (*rsvp.Reply, error) {
				ran <- struct{}{}
				return nil, nil
			})
			dl := waitDeadLetter(t, ctx, e.b, q, rsvp.CodeExpired)
			if dl.Message.CorrelationID != tk.CorrelationID {
				t.Fatalf("dead letter of %s, want %s", dl.Message.CorrelationID, tk.CorrelationID)
			}
			if len(ran) != 0 {
				t.Fatal("the expired request ran")
			}
		})
		t.Run("between_attempts", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c := e.client()
			q := "retried-" + rsvp.NewID()[24:]
			attempts := make(chan int, 4)
			r, err := c.Handle(q, rsvp.HandlerFunc(func(_ context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
				attempts <- m.Attempt
				return nil, errors.New("not now")
			}), rsvp.HandleOptions{Backoff: func(int) time.Duration { return 2 * time.Second }})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { closeWithin(t, "stop the responder", r.Stop) })
			tk, err := c.Send(ctx, q, &rsvp.Message{Body: []byte("x"), Deadline: time.Now().Add(time.Second)})
			if err != nil {
				t.Fatal(err)
			}
			if got := receive(t, attempts, "first attempt"); got != 1 {
				t.Fatalf("attempt %d, want 1", got)
			}
			// The deadline passes during the backoff: the expiry task
			// stores the expired reply before the second delivery.
			if _, err := c.Await(ctx, tk.CorrelationID); !errors.Is(err, rsvp.ErrExpired) {
				t.Fatalf("Await: %v, want ErrExpired", err)
			}
			waitDeadLetter(t, ctx, e.b, q, rsvp.CodeExpired)
			if len(attempts) != 0 {
				t.Fatalf("attempt %d ran after the deadline", <-attempts)
			}
		})
		t.Run("succeeded_late", func(t *testing.T) {
			// The handler succeeds after the expiry task stored the expired
			// reply: that reply stands, and the request, which ended
			// expired, has its copy in the dead-letter queue
			// (../shared/DESIGN.md section 2), as when the handler fails
			// late.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c := e.client()
			q := "slow-" + rsvp.NewID()[24:]
			expired := make(chan struct{})
			serve(t, c, q, func(context.Context, *rsvp.Message) (*rsvp.Reply, error) {
				<-expired // past the deadline, ignoring its context
				return &rsvp.Reply{Body: []byte("late")}, nil
			})
			tk, err := c.Send(ctx, q, &rsvp.Message{Body: []byte("x"), Deadline: time.Now().Add(300 * time.Millisecond)})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Await(ctx, tk.CorrelationID); !errors.Is(err, rsvp.ErrExpired) {
				t.Fatalf("Await: %v, want ErrExpired from the expiry task", err)
			}
			close(expired)
			dl := waitDeadLetter(t, ctx, e.b, q, rsvp.CodeExpired)
			if dl.Message.CorrelationID != tk.CorrelationID || !strings.Contains(dl.LastError, "succeeded after") {
				t.Fatalf("dead letter of %s (%q), want %s, the handler's late success", dl.Message.CorrelationID, dl.LastError, tk.CorrelationID)
			}
			if _, err := c.Await(ctx, tk.CorrelationID); !errors.Is(err, rsvp.ErrExpired) {
				t.Fatalf("Await after the late success: %v, want ErrExpired", err)
			}
		})
	})
}

// TestRequestEndsAtMessageDeadline: a Request whose Message.Deadline comes
// before its ctx ends (a ctx with no deadline, here) stops waiting at that
// deadline with ErrExpired, and stores the expired reply, as it does when
// its ctx's deadline passes: the request is over then.
func TestRequestEndsAtMessageDeadline(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := &rsvp.Message{ID: rsvp.NewID(), Deadline: time.Now().Add(300 * time.Millisecond)}
	done := make(chan error, 1)
	go func() {
		_, err := c.Request(ctx, "nobody-at-all", m)
		done <- err
	}()
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	select {
	case err := <-done:
		if !errors.Is(err, rsvp.ErrExpired) {
			t.Fatalf("Request: %v, want ErrExpired", err)
		}
	case <-timer.C:
		cancel()
		t.Fatalf("Request with a Deadline 300ms ahead still waiting 5s later; cancelled, it returned %v", <-done)
	}
	r, err := c.Await(ctxWithin(t, 10*time.Second), m.ID)
	if !errors.Is(err, rsvp.ErrExpired) || r == nil || r.Status != backend.StatusExpired {
		t.Fatalf("Await: %+v, %v; want the expired reply", r, err)
	}
}
