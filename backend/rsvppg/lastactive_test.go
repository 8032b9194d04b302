package rsvppg_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

// lastActive calls b.LastActive, failing t on an error, and returns the
// time it answered with and when the call began.
func lastActive(t *testing.T, b *rsvppg.Backend, queue string) (got, called time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	called = time.Now()
	got, err := b.LastActive(ctx, queue)
	if err != nil {
		t.Fatalf("LastActive(%s): %v", queue, err)
	}
	return got, called
}

// isNow reports whether LastActive's answer got, to a call begun at called,
// means "a responder is at it".
func isNow(got, called time.Time) bool { return !got.Before(called) }

// TestLastActive: zero before any consumer, now while one is open (in this
// process, and seen from another), a time in the past once it closed.
func TestLastActive(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	other := open(t, s.url, rsvppg.Options{Schema: s.schema}) // another process on the same schema
	q := uniq("q")

	for name, b := range map[string]*rsvppg.Backend{"same": s.b, "other": other} {
		if got, _ := lastActive(t, b, q); !got.IsZero() {
			t.Fatalf("%s backend, before any consumer: %v, want the zero time", name, got)
		}
	}

	opened := time.Now()
	c, err := s.b.Consume(s.ctx, q, backend.ConsumeParams{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if got, called := lastActive(t, s.b, q); !isNow(got, called) {
		t.Fatalf("same backend, consumer open: %v, want now (%v)", got, called)
	}
	// The other process sees the consumer's first heartbeat, written as it
	// starts.
	for deadline := time.Now().Add(5 * time.Second); ; {
		got, called := lastActive(t, other, q)
		if isNow(got, called) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("other backend, consumer open: %v, want now (%v)", got, called)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A queue nobody consumes stays zero meanwhile.
	if got, _ := lastActive(t, other, uniq("q")); !got.IsZero() {
		t.Fatalf("another queue: %v, want the zero time", got)
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	closed := time.Now()
	for name, b := range map[string]*rsvppg.Backend{"same": s.b, "other": other} {
		got, called := lastActive(t, b, q)
		// The server's clock, not ours, stamps the close: allow some skew.
		if got.IsZero() || isNow(got, called) || got.Before(opened.Add(-time.Minute)) || got.After(closed.Add(time.Minute)) {
			t.Fatalf("%s backend, consumer closed at %v: %v, want about then, before the call (%v)", name, closed, got, called)
		}
	}

	if _, err := s.b.LastActive(s.ctx, "bad queue"); err == nil {
		t.Error("LastActive with an invalid queue name: no error")
	}
}

// TestLastActiveStaleHeartbeat: a consumer whose heartbeat is older than
// the stale limit (its process crashed) is not live; its last heartbeat is
// when the queue was last active, also once the clean-up has folded it into
// the queue's summary.
func TestLastActiveStaleHeartbeat(t *testing.T) {
	t.Parallel()
	url := serverURL(t)
	schema := freshSchema(t, url)
	b := open(t, url, rsvppg.Options{Schema: schema, CleanupInterval: 50 * time.Millisecond})
	table := pgx.Identifier{schema, "consumers"}.Sanitize()
	crashed, live := uniq("q"), uniq("q")
	exec(t, url, "INSERT INTO "+table+" (queue, id, open, seen_at) VALUES ($1, 'crashed:1', true, now() - interval '5 minutes')", crashed)
	exec(t, url, "INSERT INTO "+table+" (queue, id, open, seen_at) VALUES ($1, 'elsewhere:1', true, now())", live)

	got, called := lastActive(t, b, crashed)
	want := called.Add(-5 * time.Minute)
	if got.Before(want.Add(-time.Minute)) || got.After(want.Add(time.Minute)) {
		t.Fatalf("crashed consumer seen 5 minutes ago: %v, want about %v", got, want)
	}
	if got, called := lastActive(t, b, live); !isNow(got, called) {
		t.Fatalf("consumer of another process with a fresh heartbeat: %v, want now (%v)", got, called)
	}

	// The clean-up replaces the crashed row by the queue's summary, and
	// leaves the live one.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := connect(t, url)
	for {
		var ids []string
		rows, err := conn.Query(ctx, "SELECT id FROM "+table+" WHERE queue = $1", crashed)
		if err == nil {
			ids, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) == 1 && ids[0] == "" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("rows of the crashed consumer's queue: %q, want only the summary", ids)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if again, _ := lastActive(t, b, crashed); !again.Equal(got) {
		t.Fatalf("after the clean-up: %v, want %v as before", again, got)
	}
	if got, called := lastActive(t, b, live); !isNow(got, called) {
		t.Fatalf("live consumer after the clean-up: %v, want now (%v)", got, called)
	}
}

// TestRequireResponderOnPostgres: with Config.RequireResponder, Request on
// a queue without a responder fails at once with ErrNoResponders and
// stores nothing; with a responder running in another process, it goes
// through; once that stops, a client with a short window refuses again.
func TestRequireResponderOnPostgres(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	requester, err := rsvp.New(s.ctx, s.b, rsvp.Config{RequireResponder: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = requester.Close(context.Background()) })
	q := uniq("q")

	start := time.Now()
	_, err = requester.Request(s.ctx, q, &rsvp.Message{Body: []byte("nobody there")})
	if !errors.Is(err, rsvp.ErrNoResponders) || time.Since(start) > 2*time.Second {
		t.Fatalf("Request with no responder: %v after %s, want ErrNoResponders at once", err, time.Since(start))
	}
	requests := pgx.Identifier{s.schema, "requests"}.Sanitize()
	if n := countRows(t, s, "SELECT count(*) FROM "+requests+" WHERE queue = $1", q); n != 0 {
		t.Fatalf("%d requests stored, want 0", n)
	}

	// The responder runs on a backend of its own: another process.
	worker, err := rsvp.New(s.ctx, open(t, s.url, rsvppg.Options{Schema: s.schema}), rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = worker.Close(context.Background()) })
	r, err := worker.Handle(q, rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: m.Body}, nil
	}), rsvp.HandleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Its consumer's first heartbeat is written as it starts.
	for deadline := time.Now().Add(10 * time.Second); ; {
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		got, err := requester.Request(ctx, q, &rsvp.Message{Body: []byte("hello")})
		cancel()
		if err == nil {
			if string(got.Body) != "hello" {
				t.Fatalf("reply %q, want %q", got.Body, "hello")
			}
			break
		}
		if !errors.Is(err, rsvp.ErrNoResponders) || time.Now().After(deadline) {
			t.Fatalf("Request with a responder: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	stopCtx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	if err := r.Stop(stopCtx); err != nil {
		t.Fatal(err)
	}
	// The stopped responder was active until just now: a client whose
	// window is short refuses once the window has passed.
	strict, err := rsvp.New(s.ctx, s.b, rsvp.Config{RequireResponder: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = strict.Close(context.Background()) })
	for deadline := time.Now().Add(5 * time.Second); ; {
		ctx, cancel := context.WithTimeout(s.ctx, 200*time.Millisecond)
		_, err := strict.Request(ctx, q, &rsvp.Message{Body: []byte("after stop")})
		cancel()
		if errors.Is(err, rsvp.ErrNoResponders) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Request after the responder stopped: %v, want ErrNoResponders", err)
		}
	}
}

// TestHeartbeat: a heartbeat makes an open consumer's row fresh, and
// leaves a closed one closed, even when it was sent before the close and
// arrives after it.
func TestHeartbeat(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	table := pgx.Identifier{s.schema, "consumers"}.Sanitize()
	stale, closed, fresh := uniq("q"), uniq("q"), uniq("q")
	exec(t, s.url, "INSERT INTO "+table+" (queue, id, open, seen_at) VALUES ($1, 'x:1', true, now() - interval '5 minutes')", stale)
	exec(t, s.url, "INSERT INTO "+table+" (queue, id, open, seen_at) VALUES ($1, 'x:2', false, now() - interval '5 minutes')", closed)

	rsvppg.Beat(s.b, stale, "x:1")
	if got, called := lastActive(t, s.b, stale); !isNow(got, called) {
		t.Fatalf("open consumer after a heartbeat: %v, want now (%v)", got, called)
	}
	rsvppg.Beat(s.b, closed, "x:2")
	if got, called := lastActive(t, s.b, closed); isNow(got, called) || called.Sub(got) < 4*time.Minute {
		t.Fatalf("closed consumer after a heartbeat: %v, want about 5 minutes before %v", got, called)
	}
	rsvppg.Beat(s.b, fresh, "x:3") // a row not there yet, as when a consumer starts
	if got, called := lastActive(t, s.b, fresh); !isNow(got, called) {
		t.Fatalf("new consumer after its first heartbeat: %v, want now (%v)", got, called)
	}
}
