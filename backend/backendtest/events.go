package backendtest

import (
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

// eventCases cover the event log and the tracking fields of a message.
var eventCases = []testCase{
	{name: "TrackedMessageFields", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		m := newMsg(b, q)
		m.Track, m.Channel = true, uniq("ch")
		mustEnqueue(t, b, m)
		d := next(t, consume(t, b, q, backend.ConsumeParams{Lease: 10 * time.Second}), 10*time.Second)
		sameMessage(t, d.Message(), m)
	}},
	{name: "CancelledReply", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		id := uniq("id-")
		r := &backend.Reply{CorrelationID: id, Status: backend.StatusCancelled, ErrorCode: "cancelled", ErrorMessage: "by the caller"}
		if err := b.PutReply(ctx, b.ReplyAddress("gw", id), r); err != nil {
			t.Fatal(err)
		}
		late := &backend.Reply{CorrelationID: id, Status: backend.StatusSucceeded}
		if err := b.PutReply(ctx, b.ReplyAddress("inbox1", id), late); !errors.Is(err, backend.ErrReplyExists) {
			t.Fatalf("reply after cancel: %v, want ErrReplyExists", err)
		}
		got, err := b.GetReply(ctx, id)
		if err != nil || got.Status != backend.StatusCancelled || got.ErrorCode != "cancelled" {
			t.Fatalf("GetReply: %+v, %v", got, err)
		}
	}},
	{name: "EventLog", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		ch := uniq("ch")
		a, c := uniq("id-"), uniq("id-")
		if evs, err := b.Events(ctx, backend.EventQuery{CorrelationID: a}); err != nil || len(evs) != 0 {
			t.Fatalf("events of an unknown id: %v, %v", evs, err)
		}
		at := time.Now().UTC().Truncate(time.Microsecond)
		appended := []*backend.Event{
			{CorrelationID: a, Channel: ch, Type: backend.EventQueued, At: at, Data: []byte(`{"n":1}`)},
			{CorrelationID: c, Type: backend.EventQueued, At: at},
			{CorrelationID: a, Channel: ch, Type: backend.EventRunning, At: at, Data: []byte(`{"attempt":1}`)},
			{CorrelationID: c, Type: backend.EventRunning, At: at},
			{CorrelationID: a, Channel: ch, Type: string(backend.StatusSucceeded), At: at, DedupeKey: a + ":final"},
		}
		var last uint64
		for _, ev := range appended {
			if err := b.AppendEvent(ctx, ev); err != nil {
				t.Fatal(err)
			}
			if ev.Seq <= last {
				t.Fatalf("event %s of %s got seq %d after %d", ev.Type, ev.CorrelationID, ev.Seq, last)
			}
			last = ev.Seq
		}
		dup := &backend.Event{CorrelationID: a, Channel: ch, Type: string(backend.StatusSucceeded), At: at, DedupeKey: a + ":final"}
		if err := b.AppendEvent(ctx, dup); err != nil || dup.Seq != 0 {
			t.Fatalf("duplicate append: seq %d, %v; want 0, nil", dup.Seq, err)
		}
		want := []*backend.Event{appended[0], appended[2], appended[4]}
		evs, err := b.Events(ctx, backend.EventQuery{CorrelationID: a})
		if err != nil {
			t.Fatal(err)
		}
		sameEvents(t, evs, want)
		// Resume after the first one; a limit cuts the rest.
		evs, err = b.Events(ctx, backend.EventQuery{CorrelationID: a, After: want[0].Seq, Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		sameEvents(t, evs, want[1:2])
		// A limit of 0 or less is the default; a cursor past every seq
		// finds nothing.
		evs, err = b.Events(ctx, backend.EventQuery{CorrelationID: a, Limit: -1})
		if err != nil {
			t.Fatalf("Limit -1: %v", err)
		}
		sameEvents(t, evs, want)
		if evs, err = b.Events(ctx, backend.EventQuery{CorrelationID: a, After: math.MaxUint64}); err != nil || len(evs) != 0 {
			t.Fatalf("After MaxUint64: %d events, %v; want none", len(evs), err)
		}
		// The channel's log: the same events, numbered in its own order.
		byChannel, err := b.Events(ctx, backend.EventQuery{Channel: ch})
		if err != nil {
			t.Fatal(err)
		}
		sameEventsButSeq(t, byChannel, want)
		evs, err = b.Events(ctx, backend.EventQuery{Channel: ch, After: byChannel[0].Seq, Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		sameEventsButSeq(t, evs, want[1:2])
		if evs[0].Seq != byChannel[1].Seq {
			t.Fatalf("channel resume gave seq %d, want %d", evs[0].Seq, byChannel[1].Seq)
		}
		evs, err = b.Events(ctx, backend.EventQuery{CorrelationID: c})
		if err != nil {
			t.Fatal(err)
		}
		sameEvents(t, evs, []*backend.Event{appended[1], appended[3]})
	}},
	{name: "EventSubscription", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		var mu sync.Mutex
		got := map[string]*backend.Event{}
		arrived := make(chan struct{}, 10)
		sub, err := b.SubscribeEvents(ctx, func(ev *backend.Event) {
			mu.Lock()
			got[ev.CorrelationID] = ev
			mu.Unlock()
			arrived <- struct{}{}
		})
		if err != nil {
			t.Fatal(err)
		}
		ev := &backend.Event{CorrelationID: uniq("id-"), Channel: uniq("ch"), Type: backend.EventProgress,
			At: time.Now().UTC().Truncate(time.Microsecond), Data: []byte(`{"pct":50}`)}
		if err := b.AppendEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
		for {
			select {
			case <-arrived:
			case <-ctx.Done():
				t.Fatal("the subscription did not deliver the event")
			}
			mu.Lock()
			e := got[ev.CorrelationID]
			mu.Unlock()
			if e != nil {
				sameEvents(t, []*backend.Event{e}, []*backend.Event{ev})
				break
			}
		}
		if err := sub.Close(); err != nil {
			t.Fatal(err)
		}
	}},
	{name: "EventLongDedupeKey", run: func(t *testing.T, open Opener, f Features) {
		// A dedupe key has no length limit of its own: a long one (random,
		// so that no engine can compress it) dedupes as a short one does.
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		var key strings.Builder
		for range 700 {
			key.WriteString(uniq(""))
		}
		id := uniq("id-")
		first := &backend.Event{CorrelationID: id, Type: backend.EventQueued, DedupeKey: key.String()}
		again := &backend.Event{CorrelationID: id, Type: backend.EventQueued, DedupeKey: key.String()}
		other := &backend.Event{CorrelationID: id, Type: backend.EventRunning, DedupeKey: key.String() + "x"}
		for _, ev := range []*backend.Event{first, again, other} {
			if err := b.AppendEvent(ctx, ev); err != nil {
				t.Fatalf("append with a dedupe key of %d bytes: %v", len(ev.DedupeKey), err)
			}
		}
		if first.Seq == 0 || again.Seq != 0 || other.Seq == 0 {
			t.Fatalf("seqs %d, %d (the same key again), %d (another key): want the second only a duplicate", first.Seq, again.Seq, other.Seq)
		}
	}},
	{name: "EventBadInput", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		for _, ev := range []*backend.Event{
			{CorrelationID: "", Type: backend.EventQueued},
			{CorrelationID: "a.b", Type: backend.EventQueued},
			{CorrelationID: "ok", Channel: "_", Type: backend.EventQueued},
			{CorrelationID: "ok"},
		} {
			if err := b.AppendEvent(ctx, ev); err == nil {
				t.Errorf("AppendEvent(%+v) succeeded", ev)
			}
		}
		for _, q := range []backend.EventQuery{{}, {CorrelationID: "a", Channel: "b"}, {Channel: "a>b"}} {
			if _, err := b.Events(ctx, q); err == nil {
				t.Errorf("Events(%+v) succeeded", q)
			}
		}
	}},
}

// sameEventsButSeq compares events read by channel with those appended:
// all but Seq, which must grow.
func sameEventsButSeq(t *testing.T, got, want []*backend.Event) {
	t.Helper()
	renumbered := make([]*backend.Event, len(got))
	for i, g := range got {
		if i > 0 && g.Seq <= got[i-1].Seq {
			t.Fatalf("channel events out of order: seq %d after %d", g.Seq, got[i-1].Seq)
		}
		cp := *g
		if i < len(want) {
			cp.Seq = want[i].Seq
		}
		renumbered[i] = &cp
	}
	sameEvents(t, renumbered, want)
}

func sameEvents(t *testing.T, got, want []*backend.Event) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d: %+v", len(got), len(want), got)
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Seq != w.Seq || g.CorrelationID != w.CorrelationID || g.Channel != w.Channel || g.Type != w.Type ||
			!g.At.Equal(w.At) || string(g.Data) != string(w.Data) {
			t.Fatalf("event %d: got %+v, want %+v", i, g, w)
		}
	}
}
