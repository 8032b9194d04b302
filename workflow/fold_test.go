package workflow

import (
	"strings"
	"testing"
	"time"
)

// A ContinueAsNew recorded again after the new epoch began (by a slower
// engine, beyond the dedupe window) changes nothing: the epoch starts at
// the first record, and what it recorded since stays.
func TestFoldIgnoresRepeatedContinueAsNew(t *testing.T) {
	at := time.Now()
	es := []entry{
		{seq: 1, kind: recStarted, at: at, rec: record{Run: "r", Name: "w", Version: 1, Input: []byte("0")}},
		{seq: 2, kind: recContinued, at: at, rec: record{Run: "r", Epoch: 1, Input: []byte("1")}},
		{seq: 3, kind: recStep, at: at, rec: record{Run: "r", Epoch: 1, Cmds: []command{{Seq: 1, Kind: "timer"}}}},
		{seq: 4, kind: recTimer, at: at, rec: record{Run: "r", Epoch: 1, Seq: 1, Kind: timerUser}},
		{seq: 5, kind: recContinued, at: at, rec: record{Run: "r", Epoch: 1, Input: []byte("1")}}, // the repeat
		{seq: 6, kind: recContinued, at: at, rec: record{Run: "r", Epoch: 2, Input: []byte("2")}},
		{seq: 7, kind: recContinued, at: at, rec: record{Run: "r", Epoch: 1, Input: []byte("1")}}, // a repeat of an older one
	}
	v := fold("x", es[:5])
	if v.epoch != 1 || v.entries[v.epochAt].seq != 2 || len(v.epochEntries()) != 2 || v.lastSeq != 4 {
		t.Errorf("epoch %d from position %d, %d entries in it, last position %d; want epoch 1 from 2, 2 entries, last 4",
			v.epoch, v.entries[v.epochAt].seq, len(v.epochEntries()), v.lastSeq)
	}
	v = fold("x", es)
	if v.epoch != 2 || v.entries[v.epochAt].seq != 6 || len(v.epochEntries()) != 0 || string(v.input) != "2" {
		t.Errorf("epoch %d from position %d, %d entries in it, input %s; want epoch 2 from 6, none, input 2",
			v.epoch, v.entries[v.epochAt].seq, len(v.epochEntries()), v.input)
	}
}

// The events of earlier epochs that wait for the current one: by a
// continued record's Upto and Pending, and by an older record's Consumed
// (histories written before Pending).
func TestFoldCarriesEvents(t *testing.T) {
	at := time.Now()
	event := func(seq uint64, id string) entry {
		return entry{seq: seq, kind: recEvent, at: at, rec: record{Run: "r", Event: "x", EventID: id}}
	}
	started := entry{seq: 1, kind: recStarted, at: at, rec: record{Run: "r", Name: "w", Version: 1}}
	for name, tc := range map[string]struct {
		continued record
		want      string
	}{
		// Up to position 4 read, e2 not consumed; e3 came after.
		"pending": {record{Run: "r", Epoch: 1, Upto: 4, Pending: []string{"e2"}}, "e2 e3"},
		"older":   {record{Run: "r", Epoch: 1, Consumed: []string{"e1"}}, "e2 e3"},
		"none":    {record{Run: "r", Epoch: 1, Upto: 5}, ""},
	} {
		es := []entry{started, event(2, "e1"), event(3, "e2"), {seq: 4, kind: recStep, at: at, rec: record{Run: "r"}}, event(5, "e3"),
			{seq: 6, kind: recContinued, at: at, rec: tc.continued}}
		v := fold("x", es)
		var waiting []string
		for _, e := range v.entries[:v.epochAt] {
			if e.kind == recEvent && v.carry.waits(e) {
				waiting = append(waiting, e.rec.EventID)
			}
		}
		if got := strings.Join(waiting, " "); got != tc.want {
			t.Errorf("%s: events waiting for the new epoch %q, want %q", name, got, tc.want)
		}
	}
}
