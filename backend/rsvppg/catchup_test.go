package rsvppg_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp/backend"
)

// The catch-up after the listening connection was down hands out every
// event stored since shortly before it broke, however many: at a few
// thousand events a second, the margin it reads again holds more than one
// query's worth, and the events whose notifications were lost come after
// those. The events here are written with plain SQL, without a
// notification, as those written while the listener was down are heard of.
func TestCatchUpHandsOutEveryEvent(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	last := uniq("last-")
	got := make(chan string, 1)
	sub, err := s.b.SubscribeEvents(s.ctx, func(ev *backend.Event) {
		if ev.CorrelationID == last {
			select {
			case got <- ev.CorrelationID:
			default: // handed out twice
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	events := pgx.Identifier{s.schema, "events"}.Sanitize()
	conn := connect(t, s.url)
	_, err = conn.Exec(s.ctx, `INSERT INTO `+events+` (correlation_id, type)
		SELECT 'busy-' || n, 'progress' FROM generate_series(1, 12000) n`)
	if err == nil {
		_, err = conn.Exec(s.ctx, `INSERT INTO `+events+` (correlation_id, type) VALUES ($1, 'succeeded')`, last)
	}
	if err != nil {
		t.Fatal(err)
	}
	terminateListener(t, s.url, s.schema)
	select {
	case <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("the catch-up after the listener came back did not hand out the last event stored")
	}
}
