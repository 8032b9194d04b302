package workflow

import (
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
