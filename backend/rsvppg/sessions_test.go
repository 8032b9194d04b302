package rsvppg_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

func sessionMsg(queue, key string) *backend.Message {
	m := newMsg(queue)
	m.SessionKey = key
	return m
}

// TestMigrateSessionsOverV2Rows: a schema of version 2 holding requests and
// dead letters is upgraded to version 3 by Open, and its rows read as
// requests without a session.
func TestMigrateSessionsOverV2Rows(t *testing.T) {
	t.Parallel()
	url := serverURL(t)
	schema := freshSchema(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := rsvppg.MigrateTo(ctx, url, schema, 2); err != nil {
		t.Fatal(err)
	}
	s := pgx.Identifier{schema}.Sanitize()
	q := uniq("q")
	// Rows as a version 2 rsvp writes them: two requests, one dead letter.
	exec(t, url, "INSERT INTO "+s+".requests (queue, id, correlation_id, body, headers) VALUES ($1, 'old-1', 'old-1', 'one', '{\"A\":\"b\"}'), ($1, 'old-2', 'old-2', 'two', NULL)", q)
	exec(t, url, "INSERT INTO "+s+".dead_letters (queue, id, correlation_id, body, attempt, reason) VALUES ($1, 'old-3', 'old-3', 'three', 2, 'failed')", q)

	b := open(t, url, rsvppg.Options{Schema: schema})
	var v int
	if err := b.Pool().QueryRow(ctx, "SELECT max(version) FROM "+s+".schema_version").Scan(&v); err != nil || v != rsvppg.SchemaVersion {
		t.Fatalf("schema version %d (%v), want %d", v, err, rsvppg.SchemaVersion)
	}
	c := consume(t, b, q, 10*time.Second)
	for _, want := range []string{"old-1", "old-2"} {
		d := nextWithin(t, c, 5*time.Second)
		if m := d.Message(); m.ID != want || m.SessionKey != "" || m.ReplySession != "" {
			t.Fatalf("got %+v, want %s without a session", m, want)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	dls, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: q})
	if err != nil || len(dls) != 1 || dls[0].Message.ID != "old-3" || dls[0].Message.SessionKey != "" || dls[0].Message.ReplySession != "" {
		t.Fatalf("dead letters %v, %v; want old-3 without a session", dls, err)
	}
	// Sessions work on the upgraded schema.
	m1, m2 := sessionMsg(q, "k"), sessionMsg(q, "k")
	for _, m := range []*backend.Message{m1, m2} {
		if err := b.Enqueue(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	d := nextWithin(t, c, 5*time.Second)
	if d.Message().ID != m1.ID || d.Message().SessionKey != "k" {
		t.Fatalf("got %+v, want %s of session k", d.Message(), m1.ID)
	}
	nothingWithin(t, c, 300*time.Millisecond)
	_ = d.Ack(ctx)
	if d := nextWithin(t, c, 5*time.Second); d.Message().ID != m2.ID {
		t.Fatalf("got %s, want %s", d.Message().ID, m2.ID)
	}
}

// TestBlockedSessionDoesNotSpin: while a session's first request is leased
// (here by another process), a consumer waiting on the queue, whose only
// stored request is the session's second, sends no statements: that
// request is due by its time but cannot be taken. When the first is
// settled in the other process (Ack, or CommitWith in a transaction), the
// second is delivered at once, not at the next idle recheck (a minute) or
// when the first one's lease would have run out.
func TestBlockedSessionDoesNotSpin(t *testing.T) {
	t.Parallel()
	for _, settle := range []string{"Ack", "CommitWith"} {
		t.Run(settle, func(t *testing.T) {
			t.Parallel()
			url := serverURL(t)
			schema := freshSchema(t, url)
			var count queryCounter
			b := open(t, url, rsvppg.Options{Schema: schema, ConnConfig: func(c *pgx.ConnConfig) { c.Tracer = &count }})
			other := open(t, url, rsvppg.Options{Schema: schema}) // another process
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			q := uniq("q")
			m1, m2 := sessionMsg(q, "k"), sessionMsg(q, "k")
			for _, m := range []*backend.Message{m1, m2} {
				if err := b.Enqueue(ctx, m); err != nil {
					t.Fatal(err)
				}
			}
			first := nextWithin(t, consume(t, other, q, time.Minute), 5*time.Second).(*rsvppg.Delivery)
			if first.Message().ID != m1.ID {
				t.Fatalf("got %s, want %s", first.Message().ID, m1.ID)
			}
			c := consume(t, b, q, time.Minute)
			got := make(chan backend.Delivery, 1)
			go func() {
				if d, err := c.Next(ctx); err == nil {
					got <- d
				}
			}()
			time.Sleep(200 * time.Millisecond) // the first look
			before := count.n.Load()
			const idle = time.Second
			time.Sleep(idle)
			if n := count.n.Load() - before; n != 0 {
				t.Errorf("%d statements in %s while the session's next request was blocked", n, idle)
			}
			select {
			case d := <-got:
				t.Fatalf("%s delivered while %s of its session was leased", d.Message().ID, m1.ID)
			default:
			}
			settled := time.Now()
			switch settle {
			case "Ack":
				if err := first.Ack(ctx); err != nil {
					t.Fatal(err)
				}
			case "CommitWith":
				tx, err := first.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := first.CommitWith(ctx, tx, nil); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case d := <-got:
				if d.Message().ID != m2.ID {
					t.Fatalf("got %s, want %s", d.Message().ID, m2.ID)
				}
				if took := time.Since(settled); took > time.Second {
					t.Errorf("the session's next request came %s after the first was settled", took)
				}
				_ = d.Ack(ctx)
			case <-time.After(5 * time.Second):
				t.Fatalf("the session's next request did not come after %s of the first", settle)
			}
		})
	}
}

// TestSessionEnqueueWaitsForOpenTx: a session request enqueued while an
// earlier one of its session sits in an open transaction (EnqueueTx) waits
// for that transaction, so that the session's requests become visible in
// the order they are delivered in, and never two at once.
func TestSessionEnqueueWaitsForOpenTx(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	q := uniq("q")
	c := consume(t, s.b, q, 30*time.Second)
	m1, m2 := sessionMsg(q, "k"), sessionMsg(q, "k")
	tx, err := s.b.Pool().Begin(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) }) // on failure: the backend's Close waits for its connection
	if err := s.b.EnqueueTx(s.ctx, tx, m1); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.b.Enqueue(s.ctx, m2) }()
	// Another session, and requests without one, are not held up.
	other, plain := sessionMsg(q, "other"), newMsg(q)
	for _, m := range []*backend.Message{other, plain} {
		if err := s.b.Enqueue(s.ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		d := nextWithin(t, c, 5*time.Second)
		if id := d.Message().ID; id != other.ID && id != plain.ID {
			t.Fatalf("got %s while the transaction with the session's first request was open", id)
		}
		_ = d.Ack(s.ctx)
	}
	nothingWithin(t, c, 300*time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("the session's second enqueue returned (%v) while its first was in an open transaction", err)
	default:
	}
	if err := tx.Commit(s.ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	d := nextWithin(t, c, 5*time.Second)
	if d.Message().ID != m1.ID {
		t.Fatalf("got %s, want the session's first, %s", d.Message().ID, m1.ID)
	}
	nothingWithin(t, c, 300*time.Millisecond)
	_ = d.Ack(s.ctx)
	if d := nextWithin(t, c, 5*time.Second); d.Message().ID != m2.ID {
		t.Fatalf("got %s, want %s", d.Message().ID, m2.ID)
	}
}

// TestSessionFieldsEveryPath: SessionKey and ReplySession survive EnqueueTx,
// SendTx and a dead letter, and EnqueueTx refuses bad ones, storing
// nothing.
func TestSessionFieldsEveryPath(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	q := uniq("q")
	c := consume(t, s.b, q, 30*time.Second)
	check := func(how string, got *backend.Message, key, replySession string) {
		t.Helper()
		if got.SessionKey != key || got.ReplySession != replySession {
			t.Fatalf("%s: session %q, reply session %q; want %q, %q", how, got.SessionKey, got.ReplySession, key, replySession)
		}
	}
	inTx := func(f func(tx pgx.Tx) error) error { return pgx.BeginFunc(s.ctx, s.b.Pool(), f) }

	m := sessionMsg(q, "tenant 7/ü")
	m.ReplySession = "requester 1"
	if err := inTx(func(tx pgx.Tx) error { return s.b.EnqueueTx(s.ctx, tx, m) }); err != nil {
		t.Fatal(err)
	}
	d := nextWithin(t, c, 5*time.Second)
	check("EnqueueTx", d.Message(), m.SessionKey, m.ReplySession)
	if err := s.b.DeadLetter(s.ctx, &backend.DeadLetter{Message: d.Message(), Reason: "failed", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	_ = d.Ack(s.ctx)
	dls, err := s.b.DeadLetters(s.ctx, backend.DeadLetterQuery{Queue: q})
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters: %v, %v", dls, err)
	}
	check("DeadLetter", dls[0].Message, m.SessionKey, m.ReplySession)

	client := newClient(t, s)
	if err := inTx(func(tx pgx.Tx) error {
		_, err := rsvppg.SendTx(s.ctx, client, tx, q, &rsvp.Message{SessionKey: "k2", ReplySession: "r2"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	d = nextWithin(t, c, 5*time.Second)
	check("SendTx", d.Message(), "k2", "r2")
	_ = d.Ack(s.ctx)

	for _, tc := range []struct {
		edit func(*backend.Message)
		want string
	}{
		{func(m *backend.Message) { m.SessionKey = strings.Repeat("k", backend.MaxSessionKeyLen+1) }, "session key"},
		{func(m *backend.Message) { m.ReplySession = "a\tb" }, "reply session"},
		{func(m *backend.Message) { m.SessionKey, m.NotBefore = "k", time.Now().Add(time.Minute) }, "cannot be scheduled"},
	} {
		m := newMsg(q)
		tc.edit(m)
		err := inTx(func(tx pgx.Tx) error { return s.b.EnqueueTx(s.ctx, tx, m) })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("EnqueueTx of %+v: %v, want an error saying %q", m, err, tc.want)
		}
	}
	nothingWithin(t, c, 300*time.Millisecond)
}

// TestSessionBatchClaim: one claim for many waiting callers takes at most
// one request per session, and every request without one.
func TestSessionBatchClaim(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	q := uniq("q")
	var plain int
	for i := range 30 {
		m := sessionMsg(q, fmt.Sprint("k", i%3))
		if i%5 == 0 {
			m.SessionKey = ""
			plain++
		}
		if err := s.b.Enqueue(s.ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	c := consume(t, s.b, q, 30*time.Second)
	got := make(chan backend.Delivery, 64)
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range 30 {
		wg.Go(func() {
			if d, err := c.Next(ctx); err == nil {
				got <- d
			}
		})
	}
	wg.Wait() // every caller returned: with a delivery, or when ctx ended
	close(got)
	bySession := map[string]int{}
	n := 0
	for d := range got {
		n++
		bySession[d.Message().SessionKey]++
	}
	if n != plain+3 || bySession[""] != plain {
		t.Fatalf("delivered %d (%v), want the %d without a session and one of each of 3 sessions", n, bySession, plain)
	}
	for k, got := range bySession {
		if k != "" && got != 1 {
			t.Errorf("session %s: %d delivered at once", k, got)
		}
	}
}

// TestBlockedSessionsHoldUpNoOneElse: session enqueues (Enqueue) that wait
// for their sessions' locks, held by open transactions that enqueued into
// those sessions (EnqueueTx), hold up no other enqueue: neither one without
// a session nor one of another session, though more sessions are blocked
// than the backend has enqueue workers or connections in a pool
// (MaxConns 2). When the transactions commit, the blocked enqueues
// complete, and each session delivers its first request before its second.
func TestBlockedSessionsHoldUpNoOneElse(t *testing.T) {
	t.Parallel()
	url := serverURL(t)
	schema := freshSchema(t, url)
	b := open(t, url, rsvppg.Options{Schema: schema, MaxConns: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	q, other := uniq("q"), uniq("other")
	keys := []string{"k1", "k2", "k3"}
	var txs []pgx.Tx
	first, second := map[string]string{}, map[string]string{}
	done := make(chan error, len(keys))
	for i, k := range keys {
		// The open transactions are on connections of their own, so that
		// they take none of the backend's.
		tx, err := connect(t, url).Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback(context.Background()) }) // on failure, before the backend closes
		txs = append(txs, tx)
		m1, m2 := sessionMsg(q, k), sessionMsg(q, k)
		first[m1.ID], second[m2.ID] = k, k
		if err := b.EnqueueTx(ctx, tx, m1); err != nil {
			t.Fatal(err)
		}
		go func() { done <- b.Enqueue(ctx, m2) }()
		if i < 2 {
			// The first two wait for their locks; the third may wait for a
			// connection behind them (it waits anyway).
			waitForLockWaiter(t, ctx, url, rsvppg.SessionLockKey(schema, q, k))
		} else {
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, m := range []*backend.Message{newMsg(other), sessionMsg(other, "k1"), sessionMsg(q, "k4"), newMsg(q)} {
		start := time.Now()
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := b.Enqueue(ctx, m)
		cancel()
		if err != nil {
			t.Fatalf("Enqueue on %s with session key %q while %d sessions were blocked: %v after %s",
				m.Queue, m.SessionKey, len(keys), err, time.Since(start).Round(time.Millisecond))
		}
	}
	select {
	case err := <-done:
		t.Fatalf("an enqueue returned (%v) while its session's lock was held by an open transaction", err)
	default:
	}
	c := consume(t, b, q, 30*time.Second)
	for range 2 { // k4's and the one without a session
		d := nextWithin(t, c, 5*time.Second)
		if k := d.Message().SessionKey; k != "k4" && k != "" {
			t.Fatalf("got %s of session %s while its transaction was open", d.Message().ID, k)
		}
		_ = d.Ack(ctx)
	}
	for _, tx := range txs {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for range keys {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []map[string]string{first, second} {
		var ds []backend.Delivery
		for range keys {
			d := nextWithin(t, c, 5*time.Second)
			if _, ok := want[d.Message().ID]; !ok {
				t.Fatalf("got %s of session %s out of order", d.Message().ID, d.Message().SessionKey)
			}
			ds = append(ds, d)
		}
		nothingWithin(t, c, 300*time.Millisecond)
		for _, d := range ds {
			_ = d.Ack(ctx)
		}
	}
}

// waitForLockWaiter waits until a transaction waits for the advisory lock
// key.
func waitForLockWaiter(t *testing.T, ctx context.Context, url string, key int64) {
	t.Helper()
	conn := connect(t, url)
	for {
		var n int
		err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
			AND ((classid::bigint << 32) | objid::bigint) = $1`, key).Scan(&n)
		if err != nil {
			t.Fatalf("waiting for a waiter on lock %d: %v", key, err)
		}
		if n > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
