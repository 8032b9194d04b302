package rsvppg_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

// TestSettledByNack: a delivery settled by Nack is settled. An Ack of it
// afterwards returns ErrLeaseLost and leaves the request to come back; an
// Extend returns ErrLeaseLost and leaves the Nack's delay as it was.
func TestSettledByNack(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	q := uniq("q")
	for _, m := range []*backend.Message{newMsg(q), newMsg(q)} {
		if err := s.b.Enqueue(s.ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	c := consume(t, s.b, q, 300*time.Millisecond)
	now, later := nextWithin(t, c, 5*time.Second), nextWithin(t, c, 5*time.Second)
	if err := now.Nack(s.ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := now.Ack(s.ctx); !errors.Is(err, rsvppg.ErrLeaseLost) {
		t.Errorf("Ack after Nack: %v, want ErrLeaseLost", err)
	}
	if err := later.Nack(s.ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := later.Extend(s.ctx); !errors.Is(err, rsvppg.ErrLeaseLost) {
		t.Errorf("Extend after Nack: %v, want ErrLeaseLost", err)
	}
	again := nextWithin(t, c, 5*time.Second)
	if again.Message().ID != now.Message().ID {
		t.Fatalf("delivered %s again, want %s (nacked with no delay); the other was nacked for an hour", again.Message().ID, now.Message().ID)
	}
	if err := again.Ack(s.ctx); err != nil {
		t.Fatal(err)
	}
	// The one nacked for an hour stays away past its lease.
	ctx, cancel := context.WithTimeout(s.ctx, time.Second)
	defer cancel()
	if d, err := c.Next(ctx); err == nil {
		t.Fatalf("%s (attempt %d) came back after a lease: Extend replaced the Nack's delay of an hour", d.Message().ID, d.Message().Attempt)
	}
}

// TestStaleAckBesideTheCurrentOne: acks of a lease that ran out and of
// the request's current lease, made at once so that they share ack
// batches: each stale one returns ErrLeaseLost, each current one nil.
func TestStaleAckBesideTheCurrentOne(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	q := uniq("q")
	const n = 50
	for range n {
		if err := s.b.Enqueue(s.ctx, newMsg(q)); err != nil {
			t.Fatal(err)
		}
	}
	c := consume(t, s.b, q, 500*time.Millisecond)
	// Take every request, let the leases run out, take each again.
	stale, fresh := map[string]backend.Delivery{}, map[string]backend.Delivery{}
	for len(fresh) < n {
		d := nextWithin(t, c, 10*time.Second)
		id := d.Message().ID
		switch d.Message().Attempt {
		case 1:
			stale[id] = d
		case 2:
			fresh[id] = d
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var staleOK, freshLost int
	for id, d := range fresh {
		if stale[id] == nil {
			continue
		}
		wg.Go(func() {
			if err := stale[id].Ack(s.ctx); err == nil {
				mu.Lock()
				staleOK++
				mu.Unlock()
			}
		})
		wg.Go(func() {
			if err := d.Ack(s.ctx); err != nil {
				mu.Lock()
				freshLost++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if staleOK > 0 {
		t.Fatalf("%d acks of leases lost to a redelivery returned nil, want ErrLeaseLost", staleOK)
	}
	if freshLost > 0 {
		t.Logf("%d current leases ran out too before their ack (a slow machine)", freshLost)
	}
}

// TestEnqueueTxDedupeWindowFromTheWrite: a request stored by EnqueueTx in
// a transaction that was open longer than the dedupe window before it
// (now() is the transaction's start) is still deduplicated right after the
// commit: the window starts when the marker is written.
func TestEnqueueTxDedupeWindowFromTheWrite(t *testing.T) {
	t.Parallel()
	url := serverURL(t)
	schema := freshSchema(t, url)
	b := open(t, url, rsvppg.Options{Schema: schema, DedupeWindow: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := newMsg(uniq("q"))
	tx, err := b.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	for { // business work in the transaction that outlasts the window
		var past bool
		if err := tx.QueryRow(ctx, "SELECT clock_timestamp() > now() + interval '1200 milliseconds'").Scan(&past); err != nil {
			t.Fatal(err)
		}
		if past {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, bounded by ctx
	}
	if err := b.EnqueueTx(ctx, tx, m); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Enqueue(ctx, m); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := connect(t, url).QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "requests"}.Sanitize()+" WHERE id = $1", m.ID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("id %s enqueued again right after its EnqueueTx committed (window 1s): stored %d times, want once", m.ID, n)
	}
}

// TestInfiniteTimeIsUnreadable: a request row another program wrote with a
// deadline of 'infinity' (a valid timestamptz, but no time) is
// dead-lettered as bad_request with the reason; it does not fail the
// claim that took it, which would leave that claim's rows leased for
// nobody.
func TestInfiniteTimeIsUnreadable(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	q := uniq("q")
	table := pgx.Identifier{s.schema, "requests"}.Sanitize()
	conn := connect(t, s.url)
	if _, err := conn.Exec(s.ctx, "INSERT INTO "+table+" (queue, id, correlation_id, deadline) VALUES ($1, 'infinite', 'infinite', 'infinity')", q); err != nil {
		t.Fatal(err)
	}
	good := newMsg(q)
	if err := s.b.Enqueue(s.ctx, good); err != nil {
		t.Fatal(err)
	}
	c := consume(t, s.b, q, 30*time.Second)
	// Two waiters, so that one claim may take both rows.
	got := make(chan backend.Delivery, 2)
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	for range 2 {
		wg.Go(func() {
			if d, err := c.Next(ctx); err == nil {
				got <- d
			}
		})
	}
	select {
	case d := <-got:
		if d.Message().ID != good.ID {
			t.Fatalf("delivered %q, want %s", d.Message().ID, good.ID)
		}
		if err := d.Ack(s.ctx); err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("the readable request was not delivered within 10s")
	}
	for {
		dls, err := s.b.DeadLetters(s.ctx, backend.DeadLetterQuery{Queue: q})
		if err != nil {
			t.Fatal(err)
		}
		if len(dls) == 1 {
			if dls[0].Reason != "bad_request" || dls[0].Message.ID != "infinite" || !strings.Contains(dls[0].LastError, "deadline is infinity") {
				t.Fatalf("dead letter %+v: %s", dls[0], dls[0].LastError)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the unreadable row was not dead-lettered within 10s (%d dead letters)", len(dls))
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, bounded by ctx
	}
	cancel() // the other waiter
}

// TestLongIDIsUnreadable: a request row another program wrote with an id
// too long for the seam (and too long for a key of the dedupe table's
// index) is dead-lettered as bad_request and removed, not taken again after
// every lease because its dead letter cannot be stored.
func TestLongIDIsUnreadable(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	q := uniq("q")
	raw := make([]byte, 8000)
	_, _ = rand.Read(raw)
	id := hex.EncodeToString(raw) // random, so that the server cannot compress it below the index's limit
	table := pgx.Identifier{s.schema, "requests"}.Sanitize()
	if _, err := connect(t, s.url).Exec(s.ctx, "INSERT INTO "+table+" (queue, id, correlation_id) VALUES ($1, $2, $2)", q, id); err != nil {
		t.Fatal(err)
	}
	c := consume(t, s.b, q, time.Second)
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	done := make(chan struct{})
	defer func() { cancel(); <-done }()
	go func() { // a waiting Next call, for the claim to take the row
		defer close(done)
		if d, err := c.Next(ctx); err == nil {
			t.Errorf("delivered %.20q...", d.Message().ID)
		}
	}()
	conn := connect(t, s.url)
	for {
		dls, err := s.b.DeadLetters(s.ctx, backend.DeadLetterQuery{Queue: q})
		if err != nil {
			t.Fatal(err)
		}
		var left int
		if err := conn.QueryRow(s.ctx, "SELECT count(*) FROM "+table+" WHERE queue = $1", q).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if len(dls) == 1 && left == 0 {
			if dls[0].Reason != "bad_request" || dls[0].Message.ID != id {
				t.Fatalf("dead letter %+v: %s", dls[0], dls[0].LastError)
			}
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("the unreadable row was not dead-lettered and deleted within 10s: %d dead letters, %d rows left", len(dls), left)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, bounded by ctx
	}
}
