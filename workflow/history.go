package workflow

import (
	"cmp"
	"encoding/json"
	"slices"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

// An instance's history is the backend's event log under the correlation
// id "wfh:<instance id>". Each entry is one record, its kind the event type.
// Records of the instance's lifecycle (started, final, purged) are also
// written to the channel indexChannel, which serves List; the sweep adds
// records under "wfi:<instance id>" there that correct the index to the
// history.
const (
	recStarted    = "wf.started"    // a run began: name, version, input
	recStep       = "wf.step"       // an execution's new commands, done effects, custom status
	recResult     = "wf.result"     // an activity attempt or sub-workflow finished
	recTimer      = "wf.timer"      // a durable timer fired
	recEvent      = "wf.event"      // an external event was raised
	recContinued  = "wf.continued"  // ContinueAsNew: the run restarts with a new input
	recCompleted  = "wf.completed"  // final: the function returned a result
	recFailed     = "wf.failed"     // final: the function returned an error or panicked
	recTerminated = "wf.terminated" // final: Terminate
	recPurged     = "wf.purged"     // the instance is forgotten; its id may start again
	recListed     = "wf.listed"     // index only: the sweep corrects an instance's listing to its history

	indexChannel = "rsvp-workflows"
)

// Timer kinds: what a fired timer means.
const (
	timerUser    = "timer"   // Sleep, NewTimer, WaitForEvent's timeout
	timerRetry   = "retry"   // an activity's backoff before its next attempt
	timerTimeout = "timeout" // an activity attempt's time limit
)

// record is the JSON body of one history entry. Which fields are set
// depends on the kind.
type record struct {
	Run     string          `json:"run"`
	Name    string          `json:"name,omitempty"`
	Version int             `json:"version,omitempty"`
	Input   json.RawMessage `json:"input,omitempty"`
	Parent  *parentRef      `json:"parent,omitempty"`
	Epoch   int             `json:"epoch,omitempty"`
	Seq     int             `json:"seq,omitempty"`
	Attempt int             `json:"attempt,omitempty"`
	Kind    string          `json:"kind,omitempty"`
	Cmds    []command       `json:"cmds,omitempty"`
	Done    []string        `json:"done,omitempty"`
	// Status, on a step, a final or a continued record, is the custom
	// status the function set since the step before, if it did.
	Status  json.RawMessage `json:"status,omitempty"`
	Output  json.RawMessage `json:"output,omitempty"`
	Error   *Failure        `json:"error,omitempty"`
	Event   string          `json:"event,omitempty"`
	EventID string          `json:"event_id,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
	// Consumed, on a continued record written before Pending, is every
	// event id consumed in the epochs before it.
	Consumed []string `json:"consumed,omitempty"`
	// Pending, on a continued record, is the ids of the events up to Upto
	// that no epoch before it consumed: with the events after Upto, those
	// wait for the new epoch.
	Pending []string `json:"pending,omitempty"`
	Reason  string   `json:"reason,omitempty"`
	// From, State and Created, on a listed record, are the run the index
	// listed, which the record replaces by Run, and the state and creation
	// time of Run.
	From    string    `json:"from,omitempty"`
	State   State     `json:"state,omitempty"`
	Created time.Time `json:"created,omitzero"`
	// Upto, on a step or a continued record, is the history position the
	// execution had read: inputs after it may not have been seen by any
	// execution.
	Upto uint64 `json:"upto,omitempty"`
	// Trace, on a start, is the starter's trace context (W3C headers):
	// every run of the instance is traced in it.
	Trace map[string]string `json:"trace,omitempty"`
}

// parentRef names the command of a parent instance that started a
// sub-workflow; the sub-workflow's outcome is recorded there.
type parentRef struct {
	Instance string `json:"instance"`
	Run      string `json:"run"`
	Epoch    int    `json:"epoch"`
	Seq      int    `json:"seq"`
}

// command is one durable call a workflow made, in call order (Seq from 1 in
// each epoch). Replay checks the code makes the same calls again.
type command struct {
	Seq    int    `json:"seq"`
	Kind   string `json:"kind"`   // activity, timer, event, workflow
	Target string `json:"target"` // queue, event name or workflow name; empty for timers
}

func (c command) String() string {
	if c.Target == "" {
		return c.Kind
	}
	return c.Kind + " " + c.Target
}

// entry is a decoded history record.
type entry struct {
	seq  uint64
	kind string
	at   time.Time
	rec  record
}

func historyKey(instance string) string { return "wfh:" + instance }

func decodeEntries(evs []*backend.Event) []entry {
	out := make([]entry, 0, len(evs))
	for _, ev := range evs {
		var r record
		if json.Unmarshal(ev.Data, &r) != nil {
			continue // not written by this package
		}
		out = append(out, entry{seq: ev.Seq, kind: ev.Type, at: ev.At, rec: r})
	}
	return out
}

// view is what a history says about its instance's current run.
type view struct {
	id        string
	run       string
	name      string
	version   int
	input     json.RawMessage
	parent    *parentRef
	trace     map[string]string
	createdAt time.Time
	updatedAt time.Time
	state     State
	status    json.RawMessage // custom status, last set
	output    json.RawMessage
	err       *Failure
	// entries of the run from its last epoch on: the continued (or
	// started) record first.
	epoch   int
	epochAt int // index in entries of the epoch's first record
	entries []entry
	carry   carry // which events of earlier epochs wait for this one
	lastSeq uint64
}

// carry is what a continued record says of the events of earlier epochs:
// those after upto, or in pending, were not consumed and wait for the new
// epoch. (A record written before Pending lists the consumed ones
// instead: every other event waits.)
type carry struct {
	upto     uint64
	pending  map[string]bool
	consumed []string // of an older record, upto 0
}

// waits reports whether event e of an earlier epoch waits for this one.
func (c carry) waits(e entry) bool {
	if c.upto == 0 {
		return !slices.Contains(c.consumed, e.rec.EventID)
	}
	return e.seq > c.upto || c.pending[e.rec.EventID]
}

// fold reads a history. It returns nil when no run is current: the
// instance was never started, or was purged.
func fold(id string, es []entry) *view {
	var v *view
	seenEvents := map[string]bool{}
	for _, e := range es {
		if e.kind == recStarted {
			if v != nil && v.state != statePurged {
				continue // a concurrent start lost: the first one stands
			}
			v = &view{id: id, run: e.rec.Run, name: e.rec.Name, version: e.rec.Version, input: e.rec.Input,
				parent: e.rec.Parent, trace: e.rec.Trace, createdAt: e.at, state: StateRunning}
			seenEvents = map[string]bool{}
		}
		if v == nil || e.rec.Run != v.run {
			continue
		}
		if e.kind == recEvent {
			if seenEvents[e.rec.EventID] {
				continue // raised twice: the first one counts
			}
			seenEvents[e.rec.EventID] = true
		}
		if e.kind == recContinued && e.rec.Epoch <= v.epoch {
			continue // recorded again by a slower engine: the first one counts
		}
		if v.state.Final() && e.kind != recPurged {
			continue // nothing changes a finished run but a purge
		}
		v.updatedAt, v.lastSeq = e.at, e.seq
		v.entries = append(v.entries, e)
		if e.rec.Status != nil { // on a step, or on the record of how it ended
			v.status = e.rec.Status
		}
		switch e.kind {
		case recStep:
			if v.version == 0 {
				v.version = e.rec.Version // pinned by the first execution
			}
		case recContinued:
			v.epoch, v.epochAt, v.input = e.rec.Epoch, len(v.entries)-1, e.rec.Input
			v.carry = carry{upto: e.rec.Upto, consumed: e.rec.Consumed, pending: map[string]bool{}}
			for _, id := range e.rec.Pending {
				v.carry.pending[id] = true
			}
		case recCompleted:
			v.state, v.output = StateCompleted, e.rec.Output
		case recFailed:
			v.state, v.err = StateFailed, e.rec.Error
		case recTerminated:
			v.state, v.err = StateTerminated, &Failure{Code: CodeTerminated, Message: cmp.Or(e.rec.Reason, "no reason given")}
		case recPurged:
			v.state = statePurged
		}
	}
	if v == nil || v.state == statePurged {
		return nil
	}
	return v
}

// pending returns the ids of the events of v's run that wait for its next
// epoch if ex, the execution of its current epoch, ends in ContinueAsNew:
// those of earlier epochs that waited for this one, and this epoch's, less
// those ex consumed. (An execution that ended early did not apply every
// event up to v.lastSeq: the ones it did not apply wait too.)
func (v *view) pending(ex *execution) []string {
	var ids []string
	for i, e := range v.entries {
		if e.kind != recEvent || (i < v.epochAt && !v.carry.waits(e)) || slices.Contains(ex.consumed, e.rec.EventID) {
			continue
		}
		ids = append(ids, e.rec.EventID)
	}
	return ids
}

// epochEntries returns the entries of the current epoch after its first
// record (the started or continued record).
func (v *view) epochEntries() []entry { return v.entries[v.epochAt+1:] }

// Status returns the instance's public status.
func (v *view) toStatus() *Status {
	return &Status{ID: v.id, Name: v.name, Version: v.version, State: v.state, Input: v.input,
		CustomStatus: v.status, Output: v.output, Error: v.err, CreatedAt: v.createdAt, UpdatedAt: v.updatedAt,
		Position: v.lastSeq}
}
