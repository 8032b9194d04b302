package workflow

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// MaxInstanceIDLen is the longest instance id, in bytes.
const MaxInstanceIDLen = 64

// StartOptions configures StartInstance. The zero value works.
type StartOptions struct {
	// ID is the instance id: letters, digits, '-', '_' and ':', at most
	// MaxInstanceIDLen bytes. Starting an id that exists returns that
	// instance (running or finished) instead of starting a second one, or
	// ErrIDInUse if it runs another workflow (concurrent starts too: one
	// wins).
	// Default: a new random id.
	ID string
	// Version is the workflow version to run, from 1 (a negative one is
	// ErrInvalid). Default: the newest registered on this engine.
	Version int
}

// StartInstance starts an instance of the workflow name with input
// (encoded as JSON) and returns its status. The workflow must be
// registered on this engine (so its input can be checked); some engine
// with Start called runs it. Errors: ErrUnknownWorkflow, ErrBadInput
// (input does not decode into the workflow's input type), ErrIDInUse,
// ErrInvalid.
func (e *Engine) StartInstance(ctx context.Context, name string, input any, opts StartOptions) (*Status, error) {
	body, err := json.Marshal(input)
	if err != nil {
		return nil, fmt.Errorf("%w: encode the input: %w", ErrBadInput, err)
	}
	if raw, ok := input.(json.RawMessage); ok {
		body = raw
	}
	return e.startInstance(ctx, name, opts.Version, opts.ID, body, nil)
}

// StartJSON is StartInstance with input already encoded as JSON.
func (e *Engine) StartJSON(ctx context.Context, name string, input []byte, opts StartOptions) (*Status, error) {
	return e.startInstance(ctx, name, opts.Version, opts.ID, input, nil)
}

func (e *Engine) startInstance(ctx context.Context, name string, version int, id string, input []byte, parent *parentRef) (*Status, error) {
	if len(input) == 0 {
		input = []byte("null")
	}
	if version < 0 {
		return nil, fmt.Errorf("%w: workflow %s: version %d; versions start at 1", ErrInvalid, name, version)
	}
	def, err := e.lookup(name, version)
	switch {
	case err == nil:
		if err := def.check(input); err != nil {
			return nil, fmt.Errorf("%w for workflow %s: %w", ErrBadInput, name, err)
		}
		version = def.version
	case errors.Is(err, ErrUnknownWorkflow) && e.cfg.StartUnregistered && parent == nil:
		if err := backend.ValidateName("workflow name", name); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		if !json.Valid(input) {
			return nil, fmt.Errorf("%w for workflow %s: not JSON", ErrBadInput, name)
		}
	default:
		return nil, err
	}
	if id == "" {
		id = rsvp.NewID()
	}
	if err := checkID(id); err != nil {
		return nil, err
	}
	v, err := e.view(ctx, id)
	if err != nil {
		return nil, err
	}
	if v == nil {
		r := record{Run: newRun(), Name: name, Version: version, Input: input, Parent: parent, Trace: map[string]string{}}
		propagation.TraceContext{}.Inject(ctx, propagation.MapCarrier(r.Trace))
		if _, err := e.append(ctx, id, recStarted, r, "", true); err != nil {
			return nil, err
		}
		if v, err = e.view(ctx, id); err != nil {
			return nil, err
		}
		if v == nil {
			return nil, fmt.Errorf("workflow: start %s: the history does not show the start just recorded", id)
		}
	}
	// (After the write too: a concurrent start of another workflow may
	// have won.)
	if v.name != name {
		return nil, fmt.Errorf("%w: instance %s runs workflow %s, not %s", ErrIDInUse, id, v.name, name)
	}
	if !v.state.Final() { // (again, when a start is repeated: its first run may have been lost)
		if err := e.runSoon(ctx, v, taskID(id, v.run, "start")); err != nil {
			return nil, err
		}
	}
	return v.toStatus(), nil
}

// runSoon runs instance v: in the background here if this engine runs
// its workflow (saving a task's write and delivery), else by a task with
// id taskID. If this process dies first, the sweep finds the instance.
func (e *Engine) runSoon(ctx context.Context, v *view, taskID string) error {
	_, err := e.lookup(v.name, v.version)
	e.run.Lock()
	w := e.w
	if w == nil || err != nil {
		e.run.Unlock()
		return e.enqueue(ctx, taskID, task{Instance: v.id}, time.Time{})
	}
	w.wg.Add(1)
	e.run.Unlock()
	parent := trace.SpanContextFromContext(ctx) // the first run continues the starter's trace
	go func() {
		defer w.wg.Done()
		ctx, cancel := w.context()
		defer cancel()
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
		if err := e.execute(ctx, v.id); err != nil && ctx.Err() == nil {
			e.cfg.Logger.Warn("workflow: first run (queued as a task instead)", "instance", v.id, "error", err)
			if err := e.enqueue(ctx, taskID, task{Instance: v.id}, time.Time{}); err != nil {
				e.cfg.Logger.Warn("workflow: queue a task (the sweep will find the instance)", "instance", v.id, "error", err)
			}
		}
	}()
	return nil
}

func checkID(id string) error {
	if err := backend.ValidateName("instance id", id); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if len(id) > MaxInstanceIDLen {
		return fmt.Errorf("%w: instance id %.20q... is longer than %d bytes", ErrInvalid, id, MaxInstanceIDLen)
	}
	return nil
}

func newRun() string { return rsvp.NewID()[24:] } // the random tail of a UUIDv7

// view reads and folds the history of id; nil if no run is current.
func (e *Engine) view(ctx context.Context, id string) (*view, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	entries, _, err := e.load(ctx, id)
	if err != nil {
		return nil, err
	}
	return fold(id, entries), nil
}

// Status returns the status of instance id, or ErrNotFound.
func (e *Engine) Status(ctx context.Context, id string) (*Status, error) {
	v, err := e.view(ctx, id)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return v.toStatus(), nil
}

// History returns the entries of instance id's current run, oldest first.
func (e *Engine) History(ctx context.Context, id string) ([]HistoryEvent, error) {
	v, err := e.view(ctx, id)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	out := make([]HistoryEvent, 0, len(v.entries))
	for _, en := range v.entries {
		data, _ := json.Marshal(en.rec)
		out = append(out, HistoryEvent{Seq: en.seq, Type: en.kind, At: en.at, Data: data})
	}
	return out, nil
}

// Await waits until instance id has finished and returns its final
// status; ctx bounds the wait.
func (e *Engine) Await(ctx context.Context, id string) (*Status, error) {
	return e.waitFor(ctx, id, func(st *Status) bool { return st.State.Final() }, true)
}

// WaitChange waits until instance id's history has grown past position
// after (Status.Position), or ctx ends, and returns its status then. With
// after 0 it returns at once. It serves pushes of status changes.
func (e *Engine) WaitChange(ctx context.Context, id string, after uint64) (*Status, error) {
	return e.waitFor(ctx, id, func(st *Status) bool { return st.Position > after || st.State.Final() }, false)
}

// waitFor returns the status of id once done(status) holds. It reads the
// status at first, then on each notification of a change (with finalOnly,
// only of a final one), and every second in case a notification was lost.
func (e *Engine) waitFor(ctx context.Context, id string, done func(*Status) bool, finalOnly bool) (*Status, error) {
	ch, stop, err := e.watch(ctx, id, finalOnly)
	if err != nil {
		return nil, err
	}
	defer stop()
	recheck := time.NewTicker(time.Second)
	defer recheck.Stop()
	for {
		st, err := e.Status(ctx, id)
		if err != nil || done(st) {
			return st, err
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("workflow: wait for %s: %w", id, context.Cause(ctx))
		case <-ch:
		case <-recheck.C:
		}
	}
}

// Result waits until instance id has finished and decodes its output into
// T. A failed or terminated instance returns its *Failure as the error
// (errors.Is ErrNonDeterministic, ErrUnknownWorkflow or ErrBadInput for
// those codes).
func Result[T any](ctx context.Context, e *Engine, id string) (T, error) {
	var out T
	st, err := e.Await(ctx, id)
	if err != nil {
		return out, err
	}
	if st.Error != nil {
		return out, st.Error
	}
	if len(st.Output) > 0 {
		if err := json.Unmarshal(st.Output, &out); err != nil {
			return out, fmt.Errorf("workflow: decode the result of %s: %w", id, err)
		}
	}
	return out, nil
}

// watch returns a channel that receives (at least) when instance id's
// history grows (with finalOnly, when it gets a final record), until stop
// is called.
func (e *Engine) watch(ctx context.Context, id string, finalOnly bool) (<-chan struct{}, func(), error) {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if e.evSub == nil {
		sub, err := e.b.SubscribeEvents(ctx, e.notify)
		if err != nil {
			return nil, nil, fmt.Errorf("workflow: watch %s: %w", id, err)
		}
		e.evSub = sub
	}
	w := &watcher{ch: make(chan struct{}, 1), finalOnly: finalOnly}
	key := historyKey(id)
	if e.waiters[key] == nil {
		e.waiters[key] = map[*watcher]struct{}{}
	}
	e.waiters[key][w] = struct{}{}
	return w.ch, func() {
		e.wmu.Lock()
		defer e.wmu.Unlock()
		delete(e.waiters[key], w)
		if len(e.waiters[key]) == 0 {
			delete(e.waiters, key)
		}
	}, nil
}

type watcher struct {
	ch        chan struct{}
	finalOnly bool
}

func (e *Engine) notify(ev *backend.Event) {
	if !strings.HasPrefix(ev.CorrelationID, "wfh:") {
		return
	}
	final := ev.Type == recCompleted || ev.Type == recFailed || ev.Type == recTerminated || ev.Type == recPurged
	e.wmu.Lock()
	defer e.wmu.Unlock()
	for w := range e.waiters[ev.CorrelationID] {
		if final || !w.finalOnly {
			select {
			case w.ch <- struct{}{}:
			default:
			}
		}
	}
}

// RaiseEvent delivers the external event name with payload (encoded as
// JSON) to instance id. An event raised before the instance waits for it
// is kept until it does. eventID makes raising idempotent: an event with
// an id the instance has seen is ignored. Default: a new random id.
// Errors: ErrNotFound, ErrFinished, ErrInvalid.
func (e *Engine) RaiseEvent(ctx context.Context, id, name string, payload any, eventID string) error {
	data, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("%w: encode the payload of event %s: %w", ErrInvalid, name, err)
	}
	if raw, ok := payload.(json.RawMessage); ok {
		data = raw
	}
	if name == "" || len(name) > 256 {
		return fmt.Errorf("%w: event name must be 1 to 256 bytes", ErrInvalid)
	}
	if len(eventID) > 256 {
		return fmt.Errorf("%w: event id is longer than 256 bytes", ErrInvalid)
	}
	if eventID == "" {
		eventID = rsvp.NewID()
	}
	v, err := e.view(ctx, id)
	if err != nil {
		return err
	}
	if v == nil {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if v.state.Final() {
		if slices.ContainsFunc(v.entries, func(en entry) bool { return en.kind == recEvent && en.rec.EventID == eventID }) {
			return nil // raised before: a repeat
		}
		return fmt.Errorf("%w: %s is %s; event %s not delivered", ErrFinished, id, v.state, name)
	}
	sum := sha256.Sum256([]byte(eventID))
	key := id + ":" + v.run + ":" + hex.EncodeToString(sum[:12])
	if _, err := e.append(ctx, id, recEvent, record{Run: v.run, Event: name, EventID: eventID, Data: data}, "wf:e:"+key, false); err != nil {
		return err
	}
	// The instance may have finished after the check above, before the
	// event was stored: then the event is not delivered, and that is said.
	if v, err = e.view(ctx, id); err != nil {
		return err
	}
	if v == nil || v.state.Final() && !slices.ContainsFunc(v.entries, func(en entry) bool { return en.kind == recEvent && en.rec.EventID == eventID }) {
		return fmt.Errorf("%w: %s finished before event %s arrived; it was not delivered", ErrFinished, id, name)
	}
	if v.state.Final() {
		return nil
	}
	return e.enqueue(ctx, taskID("e", key), task{Instance: id}, time.Time{})
}

// Terminate ends instance id at once, in state terminated with reason.
// Activities it called and sub-workflows it started go on; the parent of
// a sub-workflow gets a failure with code terminated. If the instance
// ends by itself at the same moment, one of the two ends is kept (and
// told to the parent): Terminate returns ErrFinished if it is not its
// own. Errors: ErrNotFound, ErrFinished.
func (e *Engine) Terminate(ctx context.Context, id, reason string) error {
	// No wait for a run of the instance in this engine (e.lock), which
	// may take long (a slow write) and knows no ctx: the final record's
	// dedupe key keeps one end in the history, as when a Terminate from
	// another process races the run.
	v, err := e.view(ctx, id)
	if err != nil {
		return err
	}
	if v == nil {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if v.state.Final() {
		return fmt.Errorf("%w: %s is %s", ErrFinished, id, v.state)
	}
	if err := e.finish(ctx, v, recTerminated, record{Run: v.run, Reason: reason}); errors.Is(err, errFinishedElsewhere) {
		return fmt.Errorf("%w: %s finished before the termination arrived", ErrFinished, id)
	} else if err != nil {
		return err
	}
	return nil
}

// Purge forgets finished instance id: it is no longer listed or found, and
// its id may be started again. The parent of a sub-workflow that has not
// heard how it ended is told first. Errors: ErrNotFound, ErrRunning.
func (e *Engine) Purge(ctx context.Context, id string) error {
	v, err := e.view(ctx, id)
	if err != nil {
		return err
	}
	if v == nil {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if !v.state.Final() {
		return fmt.Errorf("%w: %s; terminate it first", ErrRunning, id)
	}
	// A sub-workflow's parent may not have heard how it ended (the engine
	// that finished it died first): once the history is gone, the sweep
	// could not tell it.
	if err := e.remindParent(ctx, v); err != nil {
		return fmt.Errorf("workflow: purge %s: tell its parent how it ended: %w", id, err)
	}
	_, err = e.append(ctx, id, recPurged, record{Run: v.run}, "", true)
	return err
}

// unlist marks the listed run of id purged in the instance index only.
func (e *Engine) unlist(ctx context.Context, id string) error {
	run, _ := e.index.listing(id)
	if run == "" {
		return nil
	}
	data, _ := json.Marshal(record{Run: run})
	ev := &backend.Event{CorrelationID: "wfi:" + id, Channel: indexChannel, Type: recPurged, At: time.Now(), Data: data}
	if err := e.b.AppendEvent(ctx, ev); err != nil {
		return fmt.Errorf("workflow: unlist %s: %w", id, err)
	}
	return nil
}

// relist corrects the instance index to the history v: the listing of
// run (the run the index lists for v.id) becomes one of v's run in its
// state. Concurrent starts, or a Terminate racing an instance's end,
// reach the index and the history in different orders, so the index may
// have kept another start or end than the history. The correction is
// applied only if the index still lists run when it reads it, so one
// written late changes nothing.
func (e *Engine) relist(ctx context.Context, run string, v *view) error {
	data, _ := json.Marshal(record{Run: v.run, From: run, Name: v.name, Version: v.version, State: v.state, Created: v.createdAt})
	ev := &backend.Event{CorrelationID: "wfi:" + v.id, Channel: indexChannel, Type: recListed, At: time.Now(), Data: data}
	if err := e.b.AppendEvent(ctx, ev); err != nil {
		return fmt.Errorf("workflow: correct the listing of %s: %w", v.id, err)
	}
	return nil
}

// ListQuery selects instances for List. The zero value selects all.
type ListQuery struct {
	Name  string // workflow name; empty: any
	State State  // empty: any
	Limit int    // at most this many, newest first; 0: no limit
}

// List returns the instances q selects, newest first. Their status has no
// input, output or custom status (Status has them). The list is an index
// kept beside the histories: after concurrent starts of one id, or a
// Terminate racing an instance's end, it may show another start or end
// than Status does until the instance has finished and a started engine's
// sweep (Config.SweepInterval) has corrected it.
func (e *Engine) List(ctx context.Context, q ListQuery) ([]*Status, error) {
	if err := e.index.update(ctx, e.b); err != nil {
		return nil, err
	}
	e.index.mu.Lock()
	defer e.index.mu.Unlock()
	var out []*Status
	for _, st := range e.index.m {
		if (q.Name == "" || st.Name == q.Name) && (q.State == "" || st.State == q.State) {
			c := *st
			out = append(out, &c)
		}
	}
	slices.SortFunc(out, func(a, b *Status) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out, nil
}

// indexCache folds the instance index channel, read incrementally.
type indexCache struct {
	mu      sync.Mutex
	last    uint64
	m       map[string]*Status
	runs    map[string]string
	checked map[string]bool // final in the index, and in the history too
}

// listing returns the run the index lists for id, and its state; "" if
// none.
func (ic *indexCache) listing(id string) (run string, state State) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if st := ic.m[id]; st != nil {
		state = st.State
	}
	return ic.runs[id], state
}

func (ic *indexCache) isChecked(id string) bool {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	return ic.checked[id]
}

func (ic *indexCache) check(id string) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.checked == nil {
		ic.checked = map[string]bool{}
	}
	ic.checked[id] = true
}

func (ic *indexCache) update(ctx context.Context, b backend.Backend) error {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.m == nil {
		ic.m, ic.runs = map[string]*Status{}, map[string]string{}
	}
	for {
		evs, err := b.Events(ctx, backend.EventQuery{Channel: indexChannel, After: ic.last, Limit: 1000})
		if err != nil {
			return fmt.Errorf("workflow: list instances: %w", err)
		}
		for _, ev := range evs {
			for _, en := range decodeEntries([]*backend.Event{ev}) {
				id, _ := strings.CutPrefix(ev.CorrelationID, "wfh:")
				id, _ = strings.CutPrefix(id, "wfi:")
				ic.apply(id, en)
			}
		}
		if len(evs) > 0 {
			ic.last = evs[len(evs)-1].Seq
		}
		if len(evs) < 1000 {
			return nil
		}
	}
}

func (ic *indexCache) apply(id string, en entry) {
	st := ic.m[id]
	if en.kind == recListed {
		if st == nil || ic.runs[id] != en.rec.From {
			return // the listing changed since the sweep read it
		}
		ic.runs[id] = en.rec.Run
		delete(ic.checked, id)
		ic.m[id] = &Status{ID: id, Name: en.rec.Name, Version: en.rec.Version, State: en.rec.State, CreatedAt: en.rec.Created, UpdatedAt: en.at}
		return
	}
	if en.kind == recStarted {
		if st != nil && st.State != statePurged {
			return // a concurrent start that lost
		}
		ic.runs[id] = en.rec.Run
		delete(ic.checked, id)
		ic.m[id] = &Status{ID: id, Name: en.rec.Name, Version: en.rec.Version, State: StateRunning, CreatedAt: en.at, UpdatedAt: en.at}
		return
	}
	if st == nil || ic.runs[id] != en.rec.Run || st.State.Final() && en.kind != recPurged {
		return
	}
	st.UpdatedAt = en.at
	switch en.kind {
	case recStep:
		st.Version = cmp.Or(st.Version, en.rec.Version)
	case recCompleted:
		st.State = StateCompleted
	case recFailed:
		st.State = StateFailed
	case recTerminated:
		st.State = StateTerminated
	case recPurged:
		delete(ic.m, id)
		delete(ic.runs, id)
		delete(ic.checked, id)
	}
}
