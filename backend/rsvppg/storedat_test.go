package rsvppg_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

// TestEventStoredAtItsWrite: an event is stored at the time it is written,
// not when its append's transaction began and waited for the events lock
// behind other appends: the catch-up after the listening connection was
// down reads by stored_at, from a few seconds before the break, and would
// miss an event that waited longer than that.
func TestEventStoredAtItsWrite(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	// Hold the lock that appends take, as a slow append would.
	tx, err := s.b.Pool().Begin(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(s.ctx, "SELECT pg_advisory_xact_lock($1)", rsvppg.EventsLockKey(s.schema)); err != nil {
		t.Fatal(err)
	}
	id := uniq("ev")
	appended := make(chan error, 1)
	go func() {
		appended <- s.b.AppendEvent(s.ctx, &backend.Event{CorrelationID: id, Type: backend.EventRunning, At: time.Now()})
	}()
	waitForLockWaiter(t, s.ctx, s.url, rsvppg.EventsLockKey(s.schema))
	var released time.Time
	if err := tx.QueryRow(s.ctx, "SELECT clock_timestamp()").Scan(&released); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(s.ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-appended; err != nil {
		t.Fatal(err)
	}
	var stored time.Time
	if err := s.b.Pool().QueryRow(s.ctx, "SELECT stored_at FROM "+pgx.Identifier{s.schema, "events"}.Sanitize()+
		" WHERE correlation_id = $1", id).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored.Before(released) {
		t.Fatalf("event stored_at %s is %s before the events lock was let go (%s): its transaction's start, not its write",
			stored.Format(time.RFC3339Nano), released.Sub(stored), released.Format(time.RFC3339Nano))
	}
}
