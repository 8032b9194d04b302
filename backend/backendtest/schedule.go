package backendtest

import (
	"errors"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

func hasSchedules(f Features) bool { return f.Schedules }

// scheduleCases cover scheduled delivery (Message.NotBefore).
var scheduleCases = []testCase{
	{name: "ScheduledDelivery", needs: hasSchedules, run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		later := newMsg(b, q)
		later.NotBefore = time.Now().Add(1500 * time.Millisecond)
		mustEnqueue(t, b, later)
		past := newMsg(b, q)
		past.NotBefore = time.Now().Add(-time.Hour) // in the past: at once
		mustEnqueue(t, b, past)
		c := consume(t, b, q, backend.ConsumeParams{Lease: 10 * time.Second})
		d := next(t, c, 5*time.Second)
		if d.Message().ID != past.ID {
			t.Fatalf("first delivery %s, want the unscheduled %s", d.Message().ID, past.ID)
		}
		_ = d.Ack(ctxFor(t, 5*time.Second))
		d = next(t, c, 10*time.Second)
		if got := time.Now(); d.Message().ID != later.ID || got.Before(later.NotBefore.Add(-100*time.Millisecond)) {
			t.Fatalf("delivery of %s at %s, want %s not before %s", d.Message().ID, got.Format(time.StampMicro),
				later.ID, later.NotBefore.Format(time.StampMicro))
		}
		sameMessage(t, d.Message(), later)
		_ = d.Ack(ctxFor(t, 5*time.Second))
	}},
	{name: "ScheduleSurvivesReopen", needs: func(f Features) bool { return f.Durable && f.Schedules }, run: func(t *testing.T, open Opener, f Features) {
		b := open(t)
		q := uniq("q")
		m := newMsg(b, q)
		m.NotBefore = time.Now().Add(time.Second)
		mustEnqueue(t, b, m)
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		b = opened(t, open)
		d := next(t, consume(t, b, q, backend.ConsumeParams{Lease: 10 * time.Second}), 15*time.Second)
		if d.Message().ID != m.ID || time.Now().Before(m.NotBefore.Add(-100*time.Millisecond)) {
			t.Fatalf("delivery of %s at %s, want %s not before %s", d.Message().ID, time.Now(), m.ID, m.NotBefore)
		}
	}}, {name: "ScheduleUnsupported", needs: func(f Features) bool { return !f.Schedules }, run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		q := uniq("q")
		later := newMsg(b, q)
		later.NotBefore = time.Now().Add(time.Hour)
		if err := b.Enqueue(ctx, later); !errors.Is(err, errors.ErrUnsupported) {
			t.Fatalf("Enqueue scheduled for later: %v, want errors.ErrUnsupported", err)
		}
		past := newMsg(b, q)
		past.NotBefore = time.Now().Add(-time.Hour) // in the past: at once
		mustEnqueue(t, b, past)
		d := next(t, consume(t, b, q, backend.ConsumeParams{Lease: 10 * time.Second}), 5*time.Second)
		if d.Message().ID != past.ID {
			t.Fatalf("delivery of %s, want %s: the refused request was stored", d.Message().ID, past.ID)
		}
		_ = d.Ack(ctx)
		if in, ok := b.(backend.Inspector); ok {
			if q, _ := queueStats(t, in, q); q.Scheduled != 0 {
				t.Fatalf("%d scheduled, want none: the refused request was stored", q.Scheduled)
			}
		}
	}},
}
