package rsvp_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// waitAttempts waits until the request correlationID has n recorded
// attempts (the final one is recorded just after the failure reply), and
// returns them.
func waitAttempts(t *testing.T, c *testClient, correlationID string, n int) []rsvp.Attempt {
	t.Helper()
	ctx := ctxWithin(t, 10*time.Second)
	for {
		as, err := c.Attempts(ctx, correlationID)
		if err != nil {
			t.Fatal(err)
		}
		if len(as) >= n {
			return as
		}
		select {
		case <-ctx.Done():
			t.Fatalf("attempts of %s: %+v, want %d", correlationID, as, n)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestAttempts fails a request three times, the last with a code of its
// own, and reads the dead letter's history: tracked or not, the same.
func TestAttempts(t *testing.T) {
	t.Parallel()
	for _, track := range []bool{false, true} {
		t.Run(fmt.Sprintf("track=%v", track), func(t *testing.T) {
			t.Parallel()
			c := setup(t, rsvp.Config{})
			ctx := ctxWithin(t, 20*time.Second)
			const q = "attempts"
			handle(t, c, q, rsvp.HandleOptions{MaxAttempts: 3, Backoff: fastRetry},
				func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
					if m.Attempt == 3 {
						return nil, &rsvp.RemoteError{Code: "teapot", Message: "boom 3"}
					}
					return nil, fmt.Errorf("boom %d", m.Attempt)
				})
			start := time.Now()
			_, err := c.Request(ctx, q, &rsvp.Message{ID: "req-1", Body: []byte("x"), Track: track, Channel: "ch"})
			var re *rsvp.RemoteError
			if !errors.As(err, &re) || re.Code != "teapot" {
				t.Fatalf("request: %v", err)
			}
			dls := deadLetters(t, c, q)
			if len(dls) != 1 {
				t.Fatalf("%d dead letters", len(dls))
			}
			got := waitAttempts(t, c, dls[0].Message.CorrelationID, 3)
			want := []rsvp.Attempt{
				{Attempt: 1, Code: rsvp.CodeFailed, Error: "boom 1"},
				{Attempt: 2, Code: rsvp.CodeFailed, Error: "boom 2"},
				{Attempt: 3, Code: "teapot", Error: "boom 3", Final: true},
			}
			if len(got) != len(want) {
				t.Fatalf("attempts %+v, want %+v", got, want)
			}
			prev := start
			for i, a := range got {
				if a.At.Before(prev) || a.At.After(time.Now()) {
					t.Errorf("attempt %d at %v, not in order after %v", a.Attempt, a.At, prev)
				}
				prev = a.At
				a.At = time.Time{}
				if a != want[i] {
					t.Errorf("attempt %d: %+v, want %+v", i+1, a, want[i])
				}
			}

			// Only a tracked request's events go to its channel.
			evs, err := c.be.Events(ctx, backend.EventQuery{Channel: "ch"})
			if err != nil {
				t.Fatal(err)
			}
			if !track && len(evs) != 0 {
				t.Errorf("untracked request has %d events on its channel", len(evs))
			}
			if track && len(evs) == 0 {
				t.Errorf("tracked request has no events on its channel")
			}
		})
	}
}

// TestAttemptsExpired: a handler still at work when the deadline passes
// leaves one final, expired attempt.
func TestAttemptsExpired(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 20*time.Second)
	const q = "attemptsexpired"
	handle(t, c, q, rsvp.HandleOptions{Backoff: fastRetry}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	tk, err := c.Send(ctx, q, &rsvp.Message{Deadline: time.Now().Add(200 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Await(ctx, tk.CorrelationID); !errors.Is(err, rsvp.ErrExpired) {
		t.Fatalf("await: %v, want expired", err)
	}
	got := waitAttempts(t, c, tk.CorrelationID, 1)
	if len(got) != 1 || got[0].Attempt != 1 || got[0].Code != rsvp.CodeExpired || !got[0].Final ||
		got[0].Error != "deadline passed while handling: context deadline exceeded" {
		t.Fatalf("attempts %+v", got)
	}
}

// TestAttemptsNoReply: a request that wants no reply (sent by another
// program) still has its history.
func TestAttemptsNoReply(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 20*time.Second)
	const q = "attemptsnoreply"
	handle(t, c, q, rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return nil, rsvp.Permanent(errors.New("no way"))
	})
	m := &backend.Message{ID: "noreply-1", CorrelationID: "noreply-1", Queue: q, CreatedAt: time.Now()}
	if err := c.be.Enqueue(ctx, m); err != nil {
		t.Fatal(err)
	}
	got := waitAttempts(t, c, m.CorrelationID, 1)
	if len(got) != 1 || got[0].Attempt != 1 || got[0].Code != rsvp.CodeFailed || got[0].Error != "no way" || !got[0].Final {
		t.Fatalf("attempts %+v", got)
	}
}

// TestAttemptsNoneOnSuccess: a request that succeeds at once writes no
// event, tracked or not; one that succeeds on a retry has the failure.
func TestAttemptsNoneOnSuccess(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 20*time.Second)
	const q = "attemptsok"
	r := handle(t, c, q, rsvp.HandleOptions{Backoff: fastRetry}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if string(m.Body) == "flaky" && m.Attempt == 1 {
			return nil, errors.New("once")
		}
		return &rsvp.Reply{}, nil
	})
	for _, id := range []string{"ok-1", "ok-2"} {
		if _, err := c.Request(ctx, q, &rsvp.Message{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Request(ctx, q, &rsvp.Message{ID: "flaky-1", Body: []byte("flaky")}); err != nil {
		t.Fatal(err)
	}
	// Stop waits for the handlers to settle: nothing is written after it.
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"ok-1", "ok-2"} {
		evs, err := c.be.Events(ctx, backend.EventQuery{CorrelationID: id})
		if err != nil || len(evs) != 0 {
			t.Fatalf("events of %s: %v, %v; want none", id, evs, err)
		}
		if as, err := c.Attempts(ctx, id); err != nil || len(as) != 0 {
			t.Fatalf("attempts of %s: %+v, %v; want none", id, as, err)
		}
	}
	as, err := c.Attempts(ctx, "flaky-1")
	if err != nil || len(as) != 1 || as[0].Attempt != 1 || as[0].Error != "once" || as[0].Final {
		t.Fatalf("attempts of flaky-1: %+v, %v", as, err)
	}
	if _, err := c.Attempts(ctx, "bad id!"); !errors.Is(err, rsvp.ErrInvalid) {
		t.Fatalf("bad id: %v, want ErrInvalid", err)
	}
}
