package workflow

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// Config configures an Engine. The zero value works.
type Config struct {
	// Queue is the rsvp queue of the engine's own tasks (run an instance,
	// a timer fired). Engines sharing a queue share the work. Its replies
	// inbox has the same name. Default "rsvp-workflows".
	Queue string
	// Concurrency is how many tasks this engine runs at once, and how many
	// activity replies it records at once. Runs mostly wait for the
	// engine's writes, so this is high. Default 64.
	Concurrency int
	// SweepInterval is how often the engine looks for instances whose
	// notification was lost (an activity reply stored while no engine
	// listened, a task lost to a crash, a sub-workflow's end its parent
	// was not told) and resumes them. Default 10s.
	SweepInterval time.Duration
	// Lease is how long a task is reserved for this engine: a task of an
	// engine that died is taken up by another after it. Default 30s.
	Lease time.Duration
	// CacheSize is how many instance histories are kept in memory, so an
	// execution reads only the entries added since. Default 10000.
	CacheSize int
	// Logger receives log lines about instances. Default: discard.
	Logger *slog.Logger
	// TracerProvider makes a span per run of an instance ("workflow.run
	// NAME"), the parent of the requests the run sends. Every run is in
	// the trace of the instance's starter (recorded with the start), and
	// links to what triggered it (a reply, a timer, an event) when that is
	// in another trace, so one trace follows an instance through every
	// activity. Default: the
	// global provider (otel.GetTracerProvider).
	TracerProvider trace.TracerProvider
	// StartUnregistered lets StartInstance start workflows not registered
	// on this engine, for processes that start instances other processes
	// run (a CLI, an HTTP front door). Their input is checked only for
	// being JSON, and an unknown name or version fails the instance when
	// an engine runs it (code unknown_workflow). Default false:
	// ErrUnknownWorkflow at once.
	StartUnregistered bool
}

func (c Config) withDefaults() Config {
	c.Queue = cmp.Or(c.Queue, "rsvp-workflows")
	c.Concurrency = cmp.Or(c.Concurrency, 64)
	c.SweepInterval = cmp.Or(c.SweepInterval, 10*time.Second)
	c.CacheSize = cmp.Or(c.CacheSize, 10000)
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c
}

// Engine starts, runs and manages workflow instances. Its management
// methods (StartInstance, Status, RaiseEvent, ...) work in any process; an
// engine also runs instances once Start is called, for the workflows
// registered on it. Several engines on one backend share the instances.
type Engine struct {
	c      *rsvp.Client
	b      backend.Backend
	cfg    Config
	tracer trace.Tracer

	mu     sync.Mutex
	defs   map[string]map[int]*definition
	latest map[string]int
	locks  map[string]*instLock
	cache  map[string]*hist
	index  indexCache

	wmu     sync.Mutex
	waiters map[string]map[*watcher]struct{}
	evSub   backend.Subscription

	run sync.Mutex // guards w
	w   *worker    // while started
}

// worker is what Start starts and Stop stops.
type worker struct {
	resp    *rsvp.Responder
	rsub    backend.Subscription
	stop    chan struct{} // closed by Stop
	wg      sync.WaitGroup
	replies chan *backend.Reply
}

// context returns a context that ends when w stops.
func (w *worker) context() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-w.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

type instLock struct {
	mu   sync.Mutex
	refs int
}

// definition is a registered workflow: its function over JSON.
type definition struct {
	name    string
	version int
	run     func(ctx Context, input []byte) ([]byte, error)
	check   func(input []byte) error
}

// New returns an engine that keeps its instances in c's backend.
func New(c *rsvp.Client, cfg Config) (*Engine, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: nil client", ErrInvalid)
	}
	cfg = cfg.withDefaults()
	if err := backend.ValidateName("queue", cfg.Queue); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if cfg.Concurrency < 0 || cfg.SweepInterval < 0 || cfg.CacheSize < 0 || cfg.Lease < 0 {
		return nil, fmt.Errorf("%w: negative Concurrency, SweepInterval, Lease or CacheSize", ErrInvalid)
	}
	return &Engine{c: c, b: c.Backend(), cfg: cfg, tracer: cfg.TracerProvider.Tracer("github.com/rsvp-go/rsvp/workflow"), defs: map[string]map[int]*definition{}, latest: map[string]int{},
		locks: map[string]*instLock{}, cache: map[string]*hist{}, waiters: map[string]map[*watcher]struct{}{}}, nil
}

// Register registers fn as version 1 of the workflow name. See
// RegisterVersion.
func Register[I, O any](e *Engine, name string, fn func(ctx Context, input I) (O, error)) error {
	return RegisterVersion(e, name, 1, fn)
}

// RegisterVersion registers fn as the given version (from 1) of the
// workflow name. New instances run the highest version registered; an
// instance keeps the version it started with, so a changed workflow is
// registered as a new version beside the old one until the old one's
// instances have finished. Input and output are encoded as JSON.
func RegisterVersion[I, O any](e *Engine, name string, version int, fn func(ctx Context, input I) (O, error)) error {
	if err := backend.ValidateName("workflow name", name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if version < 1 || fn == nil {
		return fmt.Errorf("%w: workflow %s: version must be 1 or more and fn not nil", ErrInvalid, name)
	}
	d := &definition{name: name, version: version,
		run: func(ctx Context, input []byte) ([]byte, error) {
			var in I
			if err := json.Unmarshal(input, &in); err != nil {
				return nil, &Failure{Code: CodeBadInput, Message: err.Error()}
			}
			out, err := fn(ctx, in)
			if err != nil {
				return nil, err
			}
			return json.Marshal(out)
		},
		check: func(input []byte) error {
			var in I
			return json.Unmarshal(input, &in)
		}}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.defs[name] == nil {
		e.defs[name] = map[int]*definition{}
	}
	if e.defs[name][version] != nil {
		return fmt.Errorf("%w: workflow %s version %d is registered already", ErrInvalid, name, version)
	}
	e.defs[name][version] = d
	e.latest[name] = max(e.latest[name], version)
	return nil
}

// lookup returns the definition of name and version (0: the newest).
func (e *Engine) lookup(name string, version int) (*definition, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	vs := e.defs[name]
	if vs == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownWorkflow, name)
	}
	if version == 0 {
		version = e.latest[name]
	}
	d := vs[version]
	if d == nil {
		return nil, fmt.Errorf("%w %q version %d (registered: up to %d)", ErrUnknownWorkflow, name, version, e.latest[name])
	}
	return d, nil
}

// Start begins running instances: it consumes the engine's task queue,
// listens for activity replies and sweeps for lost notifications, until
// Stop.
func (e *Engine) Start(ctx context.Context) error {
	e.run.Lock()
	defer e.run.Unlock()
	if e.w != nil {
		return errors.New("workflow: engine already started")
	}
	w := &worker{stop: make(chan struct{}), replies: make(chan *backend.Reply, 1024)}
	sub, err := e.b.SubscribeReplies(ctx, e.cfg.Queue, func(r *backend.Reply) {
		select {
		case w.replies <- r:
		default: // full: the sweeper finds it
		}
	})
	if err != nil {
		return fmt.Errorf("workflow: subscribe to activity replies: %w", err)
	}
	resp, err := e.c.Handle(e.cfg.Queue, rsvp.HandlerFunc(e.handleTask),
		rsvp.HandleOptions{Concurrency: e.cfg.Concurrency, MaxAttempts: taskAttempts, Lease: e.cfg.Lease, Backoff: taskBackoff})
	if err != nil {
		_ = sub.Close()
		return fmt.Errorf("workflow: consume %s: %w", e.cfg.Queue, err)
	}
	w.rsub, w.resp, e.w = sub, resp, w
	w.wg.Add(1 + e.cfg.Concurrency)
	for range e.cfg.Concurrency { // each reply costs two durable writes: record them in parallel
		go e.replyLoop(w)
	}
	go e.sweepLoop(w)
	return nil
}

// Stop stops running instances: it waits for running tasks to finish (or
// ctx to end). Instances go on in other engines, or when one is started
// again. It also ends the subscription Await and WaitChange set up, so
// call it on an engine used only for management too. Management methods
// keep working (a later wait subscribes again).
func (e *Engine) Stop(ctx context.Context) error {
	e.run.Lock()
	w := e.w
	e.w = nil // from now on, what this engine would run goes to the task queue
	e.run.Unlock()
	var errs []error
	if w != nil {
		errs = append(errs, w.resp.Stop(ctx), w.rsub.Close())
		close(w.stop)
		w.wg.Wait()
	}
	e.wmu.Lock()
	if e.evSub != nil {
		errs = append(errs, e.evSub.Close())
		e.evSub = nil
	}
	e.wmu.Unlock()
	return errors.Join(errs...)
}

// task is the body of a message on the engine's queue.
type task struct {
	Instance string    `json:"instance"`
	Timer    bool      `json:"timer,omitempty"`
	Run      string    `json:"run,omitempty"`
	Epoch    int       `json:"epoch,omitempty"`
	Seq      int       `json:"seq,omitempty"`
	Attempt  int       `json:"attempt,omitempty"`
	Kind     string    `json:"kind,omitempty"`
	Due      time.Time `json:"due,omitzero"`
}

// enqueue stores a task under id (a repeat within the dedupe window is
// stored once), delivered from notBefore on.
func (e *Engine) enqueue(ctx context.Context, id string, t task, notBefore time.Time) error {
	body, _ := json.Marshal(t)
	if limit := time.Now().Add(e.c.MaxDelay() * 9 / 10); notBefore.After(limit) {
		notBefore = limit // a longer timer is set again when this one fires
	}
	m, err := e.c.Prepare(e.cfg.Queue, &rsvp.Message{ID: id, Body: body, ContentType: "application/json", NotBefore: notBefore})
	if err != nil {
		return fmt.Errorf("workflow: task for %s: %w", t.Instance, err)
	}
	m.ReplyTo = "" // tasks want no reply
	tc := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, tc) // the task's handler continues the trace
	m.TraceParent, m.TraceState = tc["traceparent"], tc["tracestate"]
	if err := e.b.Enqueue(ctx, m); err != nil {
		return fmt.Errorf("workflow: task for %s: %w", t.Instance, err)
	}
	return nil
}

func taskID(parts ...string) string {
	id := "wft:" + strings.Join(parts, ":")
	if len(id) > backend.MaxNameLen {
		sum := sha256.Sum256([]byte(id))
		id = "wft:" + hex.EncodeToString(sum[:20])
	}
	return id
}

func (e *Engine) handleTask(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
	var t task
	if err := json.Unmarshal(m.Body, &t); err != nil || t.Instance == "" {
		return nil, rsvp.Permanent(fmt.Errorf("workflow: bad task %s: %v", m.ID, err))
	}
	if t.Timer {
		if d := time.Until(t.Due); d > 100*time.Millisecond { // a long timer's hop
			return nil, e.enqueue(ctx, taskID(m.ID, "hop", strconv.FormatInt(t.Due.Unix(), 10)), t, t.Due)
		}
		key := strings.Join([]string{"wf:t", t.Instance, t.Run, strconv.Itoa(t.Epoch), strconv.Itoa(t.Seq), strconv.Itoa(t.Attempt), t.Kind}, ":")
		if _, err := e.append(ctx, t.Instance, recTimer, record{Run: t.Run, Epoch: t.Epoch, Seq: t.Seq, Attempt: t.Attempt, Kind: t.Kind}, key, false); err != nil {
			return nil, err
		}
	}
	return nil, e.executeOr(ctx, t.Instance, m.Attempt >= taskAttempts)
}

// append stores one history record of instance and returns its position
// (0 when dedupe made it a repeat). index also lists it in the instance
// index.
func (e *Engine) append(ctx context.Context, instance, kind string, r record, dedupe string, index bool) (uint64, error) {
	data, err := json.Marshal(r)
	if err != nil {
		return 0, fmt.Errorf("workflow: encode %s of %s: %w", kind, instance, err)
	}
	ev := &backend.Event{CorrelationID: historyKey(instance), Type: kind, At: time.Now(), Data: data, DedupeKey: dedupe}
	if index {
		ev.Channel = indexChannel
	}
	if err := e.b.AppendEvent(ctx, ev); err != nil {
		return 0, fmt.Errorf("workflow: record %s of %s: %w", kind, instance, err)
	}
	return ev.Seq, nil
}

// hist is a cached history: the entries read so far.
type hist struct {
	mu       sync.Mutex
	entries  []entry
	last     uint64
	executed uint64 // position up to which an execution here succeeded
}

// load brings instance's cached history up to date and returns a copy of
// its entries, and the position of the last successful execution here.
func (e *Engine) load(ctx context.Context, instance string) ([]entry, *hist, error) {
	e.mu.Lock()
	h := e.cache[instance]
	if h == nil {
		if len(e.cache) >= e.cfg.CacheSize {
			for k := range e.cache { // evict one at random
				delete(e.cache, k)
				break
			}
		}
		h = &hist{}
		e.cache[instance] = h
	}
	e.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	for {
		evs, err := e.b.Events(ctx, backend.EventQuery{CorrelationID: historyKey(instance), After: h.last, Limit: 500})
		if err != nil {
			return nil, nil, fmt.Errorf("workflow: read the history of %s: %w", instance, err)
		}
		if len(evs) == 0 {
			break
		}
		h.entries = append(h.entries, decodeEntries(evs)...)
		h.last = evs[len(evs)-1].Seq
		if len(evs) < 500 {
			break
		}
	}
	return h.entries[:len(h.entries):len(h.entries)], h, nil
}

func (e *Engine) lock(instance string) func() {
	e.mu.Lock()
	l := e.locks[instance]
	if l == nil {
		l = &instLock{}
		e.locks[instance] = l
	}
	l.refs++
	e.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		e.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(e.locks, instance)
		}
		e.mu.Unlock()
	}
}

// errNotHere: the instance's workflow is not registered on this engine.
var errNotHere = errors.New("workflow: not registered on this engine")

// taskAttempts is how often a task is tried; with taskBackoff, about ten
// minutes for an engine that has the instance's workflow to take it.
const taskAttempts = 25

func taskBackoff(attempt int) time.Duration { return min(time.Second<<min(attempt, 5), 30*time.Second) }

// execute runs instance up to where it waits, and does what it asked for.
// If its workflow is not registered here, it returns errNotHere, unless
// giveUp says to fail the instance instead.
func (e *Engine) execute(ctx context.Context, instance string) error {
	return e.executeOr(ctx, instance, false)
}

func (e *Engine) executeOr(ctx context.Context, instance string, giveUp bool) (err error) {
	defer e.lock(instance)()
	entries, h, err := e.load(ctx, instance)
	if err != nil {
		return err
	}
	v := fold(instance, entries)
	if v == nil || v.state.Final() {
		return nil
	}
	if _, ok := lastInputAfter(v, h.executed); !ok {
		return nil // nothing happened since this engine last ran it
	}
	def, err := e.lookup(v.name, v.version)
	if err == nil && v.version == 0 { // started unregistered: the first execution pins the version
		if _, err := e.append(ctx, v.id, recStep, record{Run: v.run, Version: def.version}, "wf:v:"+v.id+":"+v.run, true); err != nil {
			return err
		}
		// Another engine may have pinned another version first.
		if entries, _, err = e.load(ctx, instance); err != nil {
			return err
		}
		if v = fold(instance, entries); v == nil || v.state.Final() || v.version == 0 {
			return err
		}
		def, err = e.lookup(v.name, v.version)
	}
	if err != nil {
		if !giveUp {
			return fmt.Errorf("%w: %w", errNotHere, err) // another engine may have it
		}
		return e.finish(ctx, v, recFailed, record{Run: v.run, Error: &Failure{Code: CodeUnknownWorkflow,
			Message: err.Error() + " in any engine that took its task"}})
	}
	// Every run is traced in the instance's trace (its starter's), linked
	// to what triggered it (a reply, a timer, an event's task).
	var opts []trace.SpanStartOption
	prop := propagation.TraceContext{}
	if inst := trace.SpanContextFromContext(prop.Extract(context.Background(), propagation.MapCarrier(v.trace))); inst.IsValid() {
		if trigger := trace.SpanContextFromContext(ctx); trigger.IsValid() && trigger.TraceID() != inst.TraceID() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: trigger}))
		}
		ctx = trace.ContextWithRemoteSpanContext(ctx, inst)
	}
	ctx, span := e.tracer.Start(ctx, "workflow.run "+v.name, append(opts, trace.WithAttributes(
		attribute.String("workflow.instance_id", v.id), attribute.String("workflow.name", v.name),
		attribute.Int("workflow.version", v.version), attribute.Int("workflow.history_length", len(v.entries))))...)
	defer span.End()
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "not recorded")
		}
	}()
	ex := newExecution(v, def)
	ex.seen = readUpto(v, h.executed)
	ex.replay(v.epochEntries())
	span.SetAttributes(attribute.Int("workflow.new_calls", len(ex.newCmds)), attribute.Int("workflow.effects", len(ex.effects)))
	e.cfg.Logger.DebugContext(ctx, "workflow: run", "instance", v.id, "workflow", v.name, "history", len(v.entries),
		"new_calls", len(ex.newCmds), "effects", len(ex.effects), "finished", ex.finished)
	outcome := "waiting" // for replies, timers or events: a step recorded
	var failure *Failure
	err = e.performAll(ctx, v, ex.effects)
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		// A timer on an engine that cannot schedule (NATS before 2.12)
		// would never fire: the instance fails, instead of its task being
		// run again and again.
		failure = &Failure{Code: CodeUnsupported, Message: err.Error()}
		outcome, err = "failed", e.finish(ctx, v, recFailed, record{Run: v.run, Error: failure})
	case err != nil:
		return err
	case ex.nondet != nil:
		failure = &Failure{Code: CodeNonDeterministic, Message: ex.nondet.Error()}
		outcome, err = "failed", e.finish(ctx, v, recFailed, record{Run: v.run, Error: failure})
	case ex.finished:
		kind, r := ex.outcome()
		if kind == recContinued {
			r.Upto, r.Pending = v.lastSeq, v.pending(ex)
		}
		if string(ex.status) != string(v.status) { // set since the last step
			r.Status = ex.status
		}
		outcome, failure = runOutcome[kind], r.Error
		err = e.finish(ctx, v, kind, r)
	default:
		err = e.recordStep(ctx, v, ex)
	}
	if errors.Is(err, backend.ErrTooLarge) {
		// What the run must record (its output, ContinueAsNew's input, its
		// custom status) is over the backend's limit for good: the instance
		// fails, instead of being run again and again.
		failure = &Failure{Code: CodeTooLarge, Message: err.Error()}
		outcome, err = "failed", e.finish(ctx, v, recFailed, record{Run: v.run, Error: failure})
	}
	span.SetAttributes(attribute.String("workflow.outcome", outcome))
	if failure != nil {
		span.SetStatus(codes.Error, failure.Code)
	}
	if errors.Is(err, errFinishedElsewhere) {
		err = nil
	}
	if err == nil {
		h.mu.Lock()
		h.executed = max(h.executed, v.lastSeq)
		h.mu.Unlock()
	}
	return err
}

// runOutcome is the workflow.outcome of a run span that ended its
// instance's run with a record of this kind.
var runOutcome = map[string]string{recCompleted: "completed", recFailed: "failed", recContinued: "continued_as_new"}

func (e *Engine) recordStep(ctx context.Context, v *view, ex *execution) error {
	r := record{Run: v.run, Epoch: v.epoch, Cmds: ex.newCmds, Upto: v.lastSeq}
	for _, ef := range ex.effects {
		r.Done = append(r.Done, ef.key)
	}
	if string(ex.status) != string(v.status) {
		r.Status = ex.status
	}
	if len(r.Cmds) == 0 && len(r.Done) == 0 && r.Status == nil {
		return nil
	}
	_, err := e.append(ctx, v.id, recStep, r, "", false)
	return err
}

// performAll does effects, at once (a fan-out's requests are stored in
// parallel).
func (e *Engine) performAll(ctx context.Context, v *view, effects []effect) error {
	if len(effects) == 1 {
		return e.perform(ctx, v, effects[0])
	}
	errs := make([]error, len(effects))
	var wg sync.WaitGroup
	for i, ef := range effects {
		wg.Go(func() { errs[i] = e.perform(ctx, v, ef) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// perform does one effect. Each is idempotent for a while (deterministic
// ids), so an execution that dies after it and runs again does it once.
func (e *Engine) perform(ctx context.Context, v *view, ef effect) error {
	switch ef.kind {
	case "send":
		corr := activityCorr(v.id, v.run, v.epoch, ef.seq, ef.attempt)
		m := &rsvp.Message{ID: corr, CorrelationID: corr, ReplyTo: e.b.ReplyAddress(e.cfg.Queue, corr),
			Type: ef.typ, ContentType: "application/json", Body: ef.body,
			Headers: map[string]string{"Workflow-Instance": v.id}}
		if ef.timeout > 0 {
			m.Deadline = time.Now().Add(ef.timeout)
		}
		if _, err := e.c.Send(ctx, ef.target, m); err != nil {
			if errors.Is(err, rsvp.ErrInvalid) || errors.Is(err, rsvp.ErrTooLarge) {
				// Never storable: the call fails, the instance goes on.
				return e.recordResult(ctx, v.id, record{Run: v.run, Epoch: v.epoch, Seq: ef.seq, Attempt: ef.attempt,
					Error: &Failure{Code: "bad_request", Message: err.Error()}}, corr)
			}
			return fmt.Errorf("workflow: %s: call %s: %w", v.id, ef.target, err)
		}
		return nil
	case "timer":
		if ef.timeout > 0 {
			// An attempt's timeout counts from now, as its request's
			// deadline does, not from Context.Now: the run may come long
			// after the entry it replayed last (a backlog of tasks,
			// engines down), and the attempt has all its time.
			ef.due = time.Now().Add(ef.timeout)
		}
		t := task{Instance: v.id, Timer: true, Run: v.run, Epoch: v.epoch, Seq: ef.seq, Attempt: ef.attempt, Kind: ef.timer, Due: ef.due}
		return e.enqueue(ctx, taskID(v.id, v.run, strconv.Itoa(v.epoch), strconv.Itoa(ef.seq), strconv.Itoa(ef.attempt), ef.timer), t, ef.due)
	case "child":
		parent := &parentRef{Instance: v.id, Run: v.run, Epoch: v.epoch, Seq: ef.seq}
		_, err := e.startInstance(ctx, ef.target, 0, ef.childID, ef.body, parent)
		if errors.Is(err, ErrUnknownWorkflow) || errors.Is(err, ErrBadInput) || errors.Is(err, backend.ErrTooLarge) {
			// Never startable: the call fails, the instance goes on.
			code := CodeUnknownWorkflow
			switch {
			case errors.Is(err, ErrBadInput):
				code = CodeBadInput
			case errors.Is(err, backend.ErrTooLarge):
				code = CodeTooLarge
			}
			return e.recordResult(ctx, v.id, record{Run: v.run, Epoch: v.epoch, Seq: ef.seq,
				Error: &Failure{Code: code, Message: err.Error()}}, "wf:c:"+ef.childID)
		}
		return err
	}
	return fmt.Errorf("workflow: unknown effect %q", ef.kind)
}

// finish records the end of v's run (or its ContinueAsNew) and tells the
// parent, if any. It returns errFinishedElsewhere if another end was
// recorded first.
func (e *Engine) finish(ctx context.Context, v *view, kind string, r record) error {
	if kind == recContinued {
		// Another engine may have run the epoch at the same time: its
		// record is stored once (and within the dedupe window only, so
		// fold ignores a repeat too).
		if _, err := e.append(ctx, v.id, kind, r, "wf:n:"+v.id+":"+v.run+":"+strconv.Itoa(r.Epoch), false); err != nil {
			return err
		}
		return e.enqueue(ctx, taskID(v.id, v.run, "continued", strconv.Itoa(r.Epoch)), task{Instance: v.id}, time.Time{})
	}
	r.Name = v.name
	pos, err := e.append(ctx, v.id, kind, r, "wf:f:"+v.id+":"+v.run, true)
	if err != nil {
		return err
	}
	if pos == 0 {
		return errFinishedElsewhere
	}
	if r.Error != nil {
		e.cfg.Logger.WarnContext(ctx, "workflow: instance failed", "instance", v.id, "workflow", v.name, "code", r.Error.Code, "error", r.Error.Message)
	}
	// The parent after the final record, so that it learns the end the
	// history keeps (a Terminate and the instance's own end may race). If
	// this fails, or the process dies first, the sweep tells it.
	if v.parent != nil {
		if err := e.tellParent(ctx, v.id, v.run, v.parent, kind, r); err != nil {
			e.cfg.Logger.WarnContext(ctx, "workflow: tell the parent (the sweep retries)", "instance", v.id, "parent", v.parent.Instance, "error", err)
		}
	}
	return nil
}

// tellParent records in the history of parent p how its sub-workflow id
// (its run) ended: kind and r are the sub-workflow's final record.
func (e *Engine) tellParent(ctx context.Context, id, run string, p *parentRef, kind string, r record) error {
	pr := record{Run: p.Run, Epoch: p.Epoch, Seq: p.Seq, Output: r.Output, Error: r.Error}
	if kind == recTerminated {
		pr.Error = &Failure{Code: CodeTerminated, Message: "sub-workflow " + id + " was terminated: " + r.Reason}
	}
	return e.recordResult(ctx, p.Instance, pr, "wf:c:"+id+":"+run)
}

// remindParent tells the parent of finished instance v how it ended, if
// the parent still waits for that and was not told (the engine that
// finished v failed to, or died first).
func (e *Engine) remindParent(ctx context.Context, v *view) error {
	p := v.parent
	if p == nil {
		return nil
	}
	pv, err := e.view(ctx, p.Instance)
	if err != nil {
		return err
	}
	if pv == nil || pv.state.Final() || pv.run != p.Run || pv.epoch != p.Epoch {
		return nil // the parent has moved on
	}
	for _, en := range pv.epochEntries() {
		if en.kind == recResult && en.rec.Epoch == p.Epoch && en.rec.Seq == p.Seq {
			return nil // told
		}
	}
	final := v.entries[len(v.entries)-1] // (nothing is kept after it)
	e.cfg.Logger.DebugContext(ctx, "workflow: tell a parent how its sub-workflow ended, which it did not hear", "instance", v.id, "parent", p.Instance)
	return e.tellParent(ctx, v.id, v.run, p, final.kind, final.rec)
}

// errFinishedElsewhere: another engine recorded the instance's final
// state first (say, a Terminate racing its completion).
var errFinishedElsewhere = errors.New("workflow: finished by another engine first")

// recordResult stores the outcome of a call in instance's history and, if
// it is news, queues a task to run the instance.
func (e *Engine) recordResult(ctx context.Context, instance string, r record, key string) error {
	seq, err := e.append(ctx, instance, recResult, r, "wf:r:"+key, false)
	if err != nil || seq == 0 {
		return err
	}
	return e.enqueue(ctx, taskID("r", key), task{Instance: instance}, time.Time{})
}

func activityCorr(instance, run string, epoch, seq, attempt int) string {
	return fmt.Sprintf("wfa:%s:%s:%d:%d:%d", instance, run, epoch, seq, attempt)
}

// parseActivityCorr splits an activityCorr value.
func parseActivityCorr(corr string) (instance, run string, epoch, seq, attempt int, ok bool) {
	rest, ok := strings.CutPrefix(corr, "wfa:")
	if !ok {
		return "", "", 0, 0, 0, false
	}
	parts := strings.Split(rest, ":")
	if len(parts) < 5 {
		return "", "", 0, 0, 0, false
	}
	n := len(parts)
	nums := [3]int{}
	for i, p := range parts[n-3:] {
		v, err := strconv.Atoi(p)
		if err != nil {
			return "", "", 0, 0, 0, false
		}
		nums[i] = v
	}
	return strings.Join(parts[:n-4], ":"), parts[n-4], nums[0], nums[1], nums[2], true
}

func childID(parent, run string, epoch, seq int) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s:%s:%d:%d", parent, run, epoch, seq))
	return "sub-" + hex.EncodeToString(sum[:12])
}

// onReply records an activity's reply in its instance's history.
func (e *Engine) onReply(ctx context.Context, rep *backend.Reply) error {
	instance, run, epoch, seq, attempt, ok := parseActivityCorr(rep.CorrelationID)
	if !ok {
		return nil
	}
	r := record{Run: run, Epoch: epoch, Seq: seq, Attempt: attempt}
	if rep.Status == backend.StatusSucceeded {
		r.Output = rep.Body
		if len(rep.Body) == 0 {
			r.Output = nil
		} else if !json.Valid(rep.Body) {
			r.Output, _ = json.Marshal(string(rep.Body)) // a text reply becomes a JSON string
		}
	} else {
		r.Error = &Failure{Code: cmp.Or(rep.ErrorCode, string(rep.Status)), Message: rep.ErrorMessage}
	}
	// Run the instance here rather than through a task: a task would cost
	// a durable write and a delivery more per activity call.
	pos, err := e.append(ctx, instance, recResult, r, "wf:r:"+rep.CorrelationID, false)
	if err != nil || pos == 0 {
		return err
	}
	// The run continues the trace of the activity that replied.
	ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": rep.TraceParent, "tracestate": rep.TraceState})
	if err := e.execute(ctx, instance); err != nil {
		e.cfg.Logger.WarnContext(ctx, "workflow: run after a reply (queued as a task instead)", "instance", instance, "error", err)
		return e.enqueue(ctx, taskID("r", rep.CorrelationID), task{Instance: instance}, time.Time{})
	}
	return nil
}

func (e *Engine) replyLoop(w *worker) {
	defer w.wg.Done()
	ctx, cancel := w.context()
	defer cancel()
	for {
		select {
		case <-w.stop:
			return
		case r := <-w.replies:
			if err := e.onReply(ctx, r); err != nil && ctx.Err() == nil {
				e.cfg.Logger.Warn("workflow: record an activity reply (the sweep retries)", "correlation_id", r.CorrelationID, "error", err)
			}
		}
	}
}

func (e *Engine) sweepLoop(w *worker) {
	defer w.wg.Done()
	ctx, cancel := w.context()
	defer cancel()
	t := time.NewTicker(e.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
		if err := e.sweep(ctx); err != nil && ctx.Err() == nil {
			e.cfg.Logger.Warn("workflow: sweep", "error", err)
		}
	}
}

// sweep resumes running instances whose notification was lost: an
// activity reply that is stored but not in the history, or an entry no
// execution has seen for a sweep interval. It tells a parent how its
// sub-workflow ended, if that was lost, and corrects the instance index
// where it disagrees with a history.
func (e *Engine) sweep(ctx context.Context) error {
	list, err := e.List(ctx, ListQuery{})
	if err != nil {
		return err
	}
	for _, st := range list {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// The index gets its copy of a record before the history does: a
		// final state there may be one the history never got. Such an
		// instance is swept until its history is checked once.
		if st.State.Final() && e.index.isChecked(st.ID) {
			continue
		}
		entries, h, err := e.load(ctx, st.ID)
		if err != nil {
			return err
		}
		v := fold(st.ID, entries)
		// The index may have kept another start or end than the history.
		// It is corrected once the history's run is final (a correction
		// of a running one could be read after the run's end). An index
		// that merely lags behind has no other final state of that run.
		if run, state := e.index.listing(st.ID); v != nil && v.state.Final() && (v.run != run || state.Final() && state != v.state) {
			if err := e.relist(ctx, run, v); err != nil {
				return err
			}
		}
		if v == nil && time.Since(st.UpdatedAt) > e.cfg.SweepInterval {
			// Listed, but no history: a start that died half-way, never
			// acknowledged. Take it off the list.
			if err := e.unlist(ctx, st.ID); err != nil {
				return err
			}
		}
		if v == nil || v.state.Final() {
			if v != nil && st.State.Final() {
				if err := e.remindParent(ctx, v); err != nil {
					// Not checked: the next sweep tries again. The others
					// are swept meanwhile.
					e.cfg.Logger.WarnContext(ctx, "workflow: sweep: telling a parent how its sub-workflow ended failed", "instance", v.id, "parent", v.parent.Instance, "error", err)
					continue
				}
				e.index.check(st.ID)
			}
			continue
		}
		for _, corr := range pendingCalls(v) {
			rep, err := e.b.GetReply(ctx, corr)
			if errors.Is(err, backend.ErrNotFound) {
				continue
			}
			if err != nil {
				return fmt.Errorf("workflow: sweep %s: %w", v.id, err)
			}
			if err := e.onReply(ctx, rep); err != nil {
				return err
			}
		}
		h.mu.Lock()
		seen := h.executed
		h.mu.Unlock()
		if in, ok := unseenInput(v, seen); ok && time.Since(in.at) > e.cfg.SweepInterval {
			e.cfg.Logger.DebugContext(ctx, "workflow: sweep resumes an instance", "instance", v.id, "input", in.kind, "at", in.seq)
			id := taskID(v.id, "sweep", strconv.FormatUint(in.seq, 10))
			if err := e.enqueue(ctx, id, task{Instance: v.id}, time.Time{}); err != nil {
				return err
			}
		}
	}
	return nil
}

// unseenInput returns the last entry of v that no execution has read, as
// far as the steps recorded and this engine's own executions (up to
// position seen) tell.
func unseenInput(v *view, seen uint64) (entry, bool) {
	return lastInputAfter(v, readUpto(v, seen))
}

// readUpto returns the history position up to which some execution of v
// has read, as far as the steps recorded and this engine's own
// executions (up to position executed) tell.
func readUpto(v *view, executed uint64) uint64 {
	upto := executed
	for _, e := range v.entries {
		if e.kind == recStep {
			upto = max(upto, e.rec.Upto)
		}
	}
	return upto
}

// lastInputAfter returns v's last entry after position pos that an
// execution must see: anything but a step record. (The epoch's first
// record is one, so the search never reaches an earlier epoch.)
func lastInputAfter(v *view, pos uint64) (entry, bool) {
	for i := len(v.entries) - 1; i >= 0 && v.entries[i].seq > pos; i-- {
		if e := v.entries[i]; e.kind != recStep {
			return e, true
		}
	}
	return entry{}, false
}

// pendingCalls returns the correlation ids of v's activity attempts that
// were sent and have no result in the history.
func pendingCalls(v *view) []string {
	var sent [][2]int
	answered := map[[2]int]bool{}
	for _, e := range v.epochEntries() {
		if e.rec.Epoch != v.epoch {
			continue
		}
		switch e.kind {
		case recStep:
			for _, k := range e.rec.Done {
				var seq, attempt int
				if _, err := fmt.Sscanf(k, "a:%d:%d", &seq, &attempt); err == nil {
					sent = append(sent, [2]int{seq, attempt})
				}
			}
		case recResult:
			answered[[2]int{e.rec.Seq, e.rec.Attempt}] = true
		}
	}
	var out []string
	for _, k := range sent {
		if !answered[k] {
			out = append(out, activityCorr(v.id, v.run, v.epoch, k[0], k[1]))
		}
	}
	return out
}
