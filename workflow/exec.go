package workflow

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"time"

	"github.com/rsvp-go/rsvp"
)

// An execution replays one epoch of an instance's history through the
// workflow function, and collects what the function asks for beyond it.
//
// The function runs as a coroutine on its own goroutine: it runs until
// it blocks on a future that is not ready (or returns), then hands control
// back. The history's entries are applied one at a time, in log order,
// each followed by a step of the coroutine. So the function sees every
// result in the same order on every replay, in every process.
type execution struct {
	def      *definition
	instance string
	run      string
	epoch    int
	input    []byte

	now       time.Time
	pos       uint64 // history position of the entry being applied
	replaying bool
	// seen is the history position up to which a former execution read:
	// the function's code after an entry up to it ran before (IsReplaying).
	seen uint64

	seq      int             // commands issued so far in this epoch
	recorded map[int]command // commands a former execution recorded
	done     map[string]bool // effects already performed (or recorded as done)
	futures  map[int]*future // by command seq
	acts     map[int]*activityCall
	waits    map[int]string     // event waits by seq: the event name
	waiters  []int              // event waits not finished, oldest first
	buffered map[string][]entry // raised events nobody consumed yet, by name
	consumed []string           // event ids consumed in this epoch (and, by an older continued record, before)
	early    map[int][]entry    // entries for commands not issued yet

	status    json.RawMessage // custom status as the function left it
	newCmds   []command
	effects   []effect
	nondet    error
	panicked  *Failure
	finished  bool // the function returned or panicked
	exited    bool // its goroutine ended (finished, or unwound)
	unwinding bool // unwind was called
	output    []byte
	outputErr error

	resume chan bool // to the coroutine: go on (true) or unwind (false)
	yield  chan struct{}
}

// effect is a side effect the function asked for that no former execution
// performed: a request to send, a timer to set, a sub-workflow to start.
type effect struct {
	key      string
	kind     string // send, timer, child
	seq      int
	attempt  int
	target   string // queue or workflow name
	body     []byte
	typ      string
	timeout  time.Duration // a send's time limit; an attempt's timeout timer's, from when it is set
	timer    string        // timer kind
	due      time.Time
	childID  string
	childVer int
}

type activityCall struct {
	queue   string
	input   []byte
	opts    ActivityOptions
	attempt int
}

// unwind ends the workflow function's goroutine where it is blocked
// (or where it made a call the history contradicts). runtime.Goexit runs
// the function's deferred calls, but no recover in them can stop it, and
// a panic in them is dropped (see main).
func (ex *execution) unwind() {
	ex.unwinding = true
	runtime.Goexit()
}

type ctxImpl struct{ ex *execution }

func (c ctxImpl) InstanceID() string { return c.ex.instance }
func (c ctxImpl) Name() string       { return c.ex.def.name }
func (c ctxImpl) Version() int       { return c.ex.def.version }
func (c ctxImpl) Now() time.Time     { return c.ex.now }
func (c ctxImpl) IsReplaying() bool  { return c.ex.replaying }
func (c ctxImpl) exec() *execution   { return c.ex }
func (c ctxImpl) String() string     { return "workflow.Context(" + c.ex.instance + ")" }
func (f *future) finish(order uint64, data []byte, err error) {
	if f.done {
		return
	}
	f.done, f.order, f.data, f.err = true, order, data, err
}

func newExecution(v *view, def *definition) *execution {
	ex := &execution{def: def, instance: v.id, run: v.run, epoch: v.epoch, input: v.input,
		now: v.entries[v.epochAt].at, pos: v.entries[v.epochAt].seq, status: v.status,
		recorded: map[int]command{}, done: map[string]bool{}, futures: map[int]*future{},
		acts: map[int]*activityCall{}, waits: map[int]string{}, buffered: map[string][]entry{},
		consumed: append([]string(nil), v.carry.consumed...), early: map[int][]entry{}}
	// Events raised in earlier epochs that none consumed wait for this one.
	for _, e := range v.entries[:v.epochAt] {
		if e.kind == recEvent && v.carry.waits(e) {
			ex.buffered[e.rec.Event] = append(ex.buffered[e.rec.Event], e)
		}
	}
	// What former executions did: their commands, their effects, and the
	// effects whose outcome is in the history (done even if never recorded).
	for _, e := range v.epochEntries() {
		r := e.rec
		if e.kind != recEvent && r.Epoch != ex.epoch {
			continue // late news of an earlier epoch
		}
		switch e.kind {
		case recStep:
			for _, c := range r.Cmds {
				ex.recorded[c.Seq] = c
			}
			for _, k := range r.Done {
				ex.done[k] = true
			}
		case recResult:
			ex.done[sendKey(r.Seq, r.Attempt)] = true
			ex.done[childKey(r.Seq)] = true
		case recTimer:
			ex.done[timerKey(r.Seq, r.Attempt, r.Kind)] = true
		}
	}
	return ex
}

func sendKey(seq, attempt int) string            { return fmt.Sprintf("a:%d:%d", seq, attempt) }
func childKey(seq int) string                    { return fmt.Sprintf("c:%d", seq) }
func timerKey(seq, attempt int, k string) string { return fmt.Sprintf("t:%d:%d:%s", seq, attempt, k) }

// replay runs the function through the epoch's entries. Afterwards either
// nondet is set (finished may be too), or finished is (with
// output/outputErr or panicked), or the function is blocked and
// newCmds/effects say what to do next.
func (ex *execution) replay(entries []entry) {
	ex.resume, ex.yield = make(chan bool), make(chan struct{})
	go ex.main()
	// The code up to the first wait ran before if any execution of this
	// epoch did (ex.pos is the epoch's first record); the code after an
	// entry, if an execution read that entry. Not "all but the last
	// entry": entries no execution read yet (events raised before the
	// first run, say) take the function through code never run before.
	ex.replaying = ex.seen >= ex.pos
	ex.step()
	for _, e := range entries {
		if ex.exited {
			break
		}
		ex.now, ex.pos, ex.replaying = e.at, e.seq, e.seq <= ex.seen
		ex.apply(e)
		ex.step()
	}
	ex.replaying = false
	if !ex.exited {
		ex.resume <- false // unwind the blocked function
		<-ex.yield
	}
	if ex.finished {
		ex.checkAllMade()
	}
}

// checkAllMade sets nondet if the function finished without making every
// call a former execution recorded: its code changed to make fewer calls.
// (A deterministic function makes them all again before it gets as far as
// a former execution did.)
func (ex *execution) checkAllMade() {
	next := 0
	for seq := range ex.recorded {
		if seq > ex.seq && (next == 0 || seq < next) {
			next = seq
		}
	}
	if next > 0 {
		ex.nondet = fmt.Errorf("%w: workflow %s v%d finished after %d call(s), but the history recorded call %d, %s; "+
			"the code changed for a running instance (register the change as a new version)",
			ErrNonDeterministic, ex.def.name, ex.def.version, ex.seq, next, ex.recorded[next])
	}
}

func (ex *execution) step() {
	if ex.exited {
		return
	}
	ex.resume <- true
	<-ex.yield
}

func (ex *execution) main() {
	defer func() {
		// Recover in any case: a panic of deferred code run by an unwind is
		// not the function's (it did not finish), and is dropped.
		r := recover()
		ex.exited = true
		if !ex.unwinding { // (unwound while blocked: it did not finish)
			ex.finished = true
			if r != nil {
				ex.panicked = &Failure{Code: CodePanic, Message: fmt.Sprintf("panic: %v", r), Stack: string(debug.Stack())}
			}
		}
		ex.yield <- struct{}{}
	}()
	if !<-ex.resume {
		ex.unwind()
	}
	ex.output, ex.outputErr = ex.def.run(ctxImpl{ex}, ex.input)
}

// block returns once cond holds, handing control back to the replay loop
// while it does not. While unwinding (in deferred code), nothing is
// waited for: the goroutine ends.
func (ex *execution) block(cond func() bool) {
	for !cond() {
		if ex.nondet != nil || ex.unwinding {
			ex.unwind()
		}
		ex.yield <- struct{}{}
		if !<-ex.resume {
			ex.unwind()
		}
	}
}

// command registers the function's next durable call and checks it is the
// call recorded at that position. A call made while unwinding (by deferred
// code) is not the function's yet: it ends the goroutine instead, and is
// made when the function returns.
func (ex *execution) command(kind, target string) *future {
	if ex.unwinding {
		ex.unwind()
	}
	ex.seq++
	c := command{Seq: ex.seq, Kind: kind, Target: target}
	if r, ok := ex.recorded[c.Seq]; ok && r != c {
		ex.nondet = fmt.Errorf("%w: call %d of workflow %s v%d is %s, but the history recorded %s there; "+
			"the code changed for a running instance (register the change as a new version)",
			ErrNonDeterministic, c.Seq, ex.def.name, ex.def.version, c, r)
		ex.unwind()
	} else if !ok {
		ex.newCmds = append(ex.newCmds, c)
	}
	f := &future{cmd: c}
	ex.futures[c.Seq] = f
	return f
}

// flushEarly applies the entries that arrived for seq before the function
// issued its command (only possible when a former execution recorded its
// effects but not its commands).
func (ex *execution) flushEarly(seq int) {
	es := ex.early[seq]
	delete(ex.early, seq)
	for _, e := range es {
		ex.apply(e)
	}
}

func (ex *execution) effect(ef effect) {
	if ex.done[ef.key] {
		return
	}
	ex.done[ef.key] = true
	ex.effects = append(ex.effects, ef)
}

func (ex *execution) startActivity(f *future, a *activityCall) {
	ex.acts[f.cmd.Seq] = a
	ex.sendAttempt(f.cmd.Seq, a, 1)
	ex.flushEarly(f.cmd.Seq)
}

func (ex *execution) sendAttempt(seq int, a *activityCall, attempt int) {
	a.attempt = attempt
	ex.effect(effect{key: sendKey(seq, attempt), kind: "send", seq: seq, attempt: attempt,
		target: a.queue, body: a.input, typ: a.opts.Type, timeout: a.opts.Timeout})
	if a.opts.Timeout > 0 { // due when performed (see effect.timeout)
		ex.effect(effect{key: timerKey(seq, attempt, timerTimeout), kind: "timer", seq: seq, attempt: attempt,
			timer: timerTimeout, timeout: a.opts.Timeout})
	}
}

func (ex *execution) startTimer(f *future, d time.Duration) {
	ex.effect(effect{key: timerKey(f.cmd.Seq, 0, timerUser), kind: "timer", seq: f.cmd.Seq,
		timer: timerUser, due: ex.now.Add(max(d, 0))})
	ex.flushEarly(f.cmd.Seq)
}

func (ex *execution) startChild(f *future, name string, input []byte) {
	ex.effect(effect{key: childKey(f.cmd.Seq), kind: "child", seq: f.cmd.Seq, target: name, body: input,
		childID: childID(ex.instance, ex.run, ex.epoch, f.cmd.Seq)})
	ex.flushEarly(f.cmd.Seq)
}

func (ex *execution) waitEvent(f *future, name string, timeout time.Duration) {
	seq := f.cmd.Seq
	ex.waits[seq] = name
	if q := ex.buffered[name]; len(q) > 0 {
		ex.buffered[name] = q[1:]
		ex.consume(f, q[0])
		return
	}
	ex.waiters = append(ex.waiters, seq)
	if timeout > 0 {
		ex.effect(effect{key: timerKey(seq, 0, timerUser), kind: "timer", seq: seq, timer: timerUser, due: ex.now.Add(timeout)})
	}
	ex.flushEarly(seq)
}

func (ex *execution) consume(f *future, e entry) {
	ex.consumed = append(ex.consumed, e.rec.EventID)
	f.finish(e.seq, e.rec.Data, nil) // ordered (AwaitAny) by when the event was recorded
}

// apply feeds one history entry to the state the function's calls set up.
func (ex *execution) apply(e entry) {
	r := e.rec
	if (e.kind == recResult || e.kind == recTimer) && r.Epoch != ex.epoch {
		return // a late reply or timer of an earlier epoch
	}
	switch e.kind {
	case recResult, recTimer:
		f := ex.futures[r.Seq]
		if f == nil {
			ex.early[r.Seq] = append(ex.early[r.Seq], e)
			return
		}
		if f.done {
			return
		}
		if e.kind == recResult {
			ex.applyResult(f, e)
		} else {
			ex.applyTimer(f, e)
		}
	case recEvent:
		if slices.Contains(ex.consumed, r.EventID) {
			return // consumed before ContinueAsNew
		}
		for i, seq := range ex.waiters {
			if ex.waits[seq] == r.Event {
				ex.waiters = append(ex.waiters[:i:i], ex.waiters[i+1:]...)
				ex.consume(ex.futures[seq], e)
				return
			}
		}
		ex.buffered[r.Event] = append(ex.buffered[r.Event], e)
	}
}

func (ex *execution) applyResult(f *future, e entry) {
	r := e.rec
	a := ex.acts[r.Seq]
	if a == nil { // a sub-workflow
		if r.Error != nil {
			f.finish(e.seq, nil, &ActivityError{Target: f.cmd.Target, Failure: *r.Error, Attempts: 1})
		} else {
			f.finish(e.seq, r.Output, nil)
		}
		return
	}
	if r.Attempt != a.attempt {
		return // a late reply of an attempt that timed out
	}
	if r.Error != nil {
		fail := *r.Error
		if fail.Code == rsvp.CodeExpired && a.opts.Timeout > 0 {
			// The attempt's request expired at its deadline, which is the
			// attempt's timeout: the same end as the timeout timer's, which
			// it may beat.
			fail = timeoutFailure(a)
		}
		ex.failAttempt(f, a, fail)
		return
	}
	f.finish(e.seq, r.Output, nil)
}

// timeoutFailure is the failure of activity attempt a that got no reply
// within its timeout.
func timeoutFailure(a *activityCall) Failure {
	return Failure{Code: CodeTimeout, Message: fmt.Sprintf("attempt %d got no reply within %s", a.attempt, a.opts.Timeout)}
}

func (ex *execution) applyTimer(f *future, e entry) {
	r := e.rec
	switch r.Kind {
	case timerUser:
		if _, ok := ex.waits[r.Seq]; ok {
			for i, seq := range ex.waiters {
				if seq == r.Seq {
					ex.waiters = append(ex.waiters[:i:i], ex.waiters[i+1:]...)
					break
				}
			}
			f.finish(e.seq, nil, ErrEventTimeout)
			return
		}
		f.finish(e.seq, nil, nil)
	case timerRetry:
		if a := ex.acts[r.Seq]; a != nil && r.Attempt == a.attempt+1 {
			ex.sendAttempt(r.Seq, a, r.Attempt)
		}
	case timerTimeout:
		if a := ex.acts[r.Seq]; a != nil && r.Attempt == a.attempt {
			ex.failAttempt(f, a, timeoutFailure(a))
		}
	}
}

// failAttempt retries the activity after its backoff, or fails the call.
func (ex *execution) failAttempt(f *future, a *activityCall, fail Failure) {
	if a.opts.Retry.retries(&fail, a.attempt) {
		next := a.attempt + 1
		ex.effect(effect{key: timerKey(f.cmd.Seq, next, timerRetry), kind: "timer", seq: f.cmd.Seq, attempt: next,
			timer: timerRetry, due: ex.now.Add(a.opts.Retry.delay(a.attempt))})
		return // a.attempt stays: a late success of it still counts
	}
	f.finish(ex.pos, nil, &ActivityError{Target: a.queue, Failure: fail, Attempts: a.attempt})
}

// outcome is what an execution ends in when the function finished.
func (ex *execution) outcome() (kind string, r record) {
	r = record{Run: ex.run}
	var can *continueAsNew
	switch {
	case ex.panicked != nil:
		return recFailed, record{Run: ex.run, Error: ex.panicked}
	case errors.As(ex.outputErr, &can):
		return recContinued, record{Run: ex.run, Epoch: ex.epoch + 1, Input: can.input} // Upto and Pending: see runOnce
	case ex.outputErr != nil:
		f := Failure{Code: CodeFailed, Message: ex.outputErr.Error()}
		var ae *ActivityError
		var own *Failure // the input did not decode
		if errors.As(ex.outputErr, &ae) {
			f.Code = cmp.Or(ae.Code, CodeFailed)
		} else if errors.As(ex.outputErr, &own) {
			f = *own
		}
		return recFailed, record{Run: ex.run, Error: &f}
	}
	r.Output = ex.output
	return recCompleted, r
}
