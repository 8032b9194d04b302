package workflow

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Context is what a workflow function receives. It is not a
// context.Context: a workflow must not block on anything but the calls of
// this package (CallActivity, Sleep, WaitForEvent, Future.Get, ...), and
// must not read the clock, random numbers or other state that differs when
// the function is replayed. Its methods must be called only from the
// workflow function's own goroutine.
type Context interface {
	// InstanceID is the instance's id.
	InstanceID() string
	// Name and Version are those of the running workflow.
	Name() string
	Version() int
	// Now is the time of the history entry being replayed: it moves
	// forward with the instance and is the same on every replay. Use it
	// instead of time.Now.
	Now() time.Time
	// IsReplaying reports whether the function is re-running steps taken
	// before; log lines written while it is true are repeats. (While it
	// is false, a line may still be a repeat of a run that recorded
	// nothing, or failed before it could, in another engine.)
	IsReplaying() bool

	exec() *execution
}

// Future is the result of a durable call, ready once the call finished.
type Future[T any] struct{ f *future }

// Get waits until the call has finished and returns its result.
func (f Future[T]) Get(ctx Context) (T, error) {
	var v T
	ctx.exec().block(func() bool { return f.f.done })
	if f.f.err != nil {
		return v, f.f.err
	}
	if len(f.f.data) > 0 {
		if err := json.Unmarshal(f.f.data, &v); err != nil {
			return v, fmt.Errorf("workflow: decode the result of %s: %w", f.f.cmd, err)
		}
	}
	return v, nil
}

// Ready reports whether the call has finished, without waiting.
func (f Future[T]) Ready() bool { return f.f.done }

func (f Future[T]) future() *future { return f.f }

// Awaitable is any Future, for AwaitAll and AwaitAny.
type Awaitable interface{ future() *future }

// AwaitAll waits until every future in fs has finished (fan-in). It returns
// the first of their errors, in the order of fs.
func AwaitAll(ctx Context, fs ...Awaitable) error {
	ctx.exec().block(func() bool {
		for _, f := range fs {
			if !f.future().done {
				return false
			}
		}
		return true
	})
	for _, f := range fs {
		if err := f.future().err; err != nil {
			return err
		}
	}
	return nil
}

// AwaitAny waits until one of fs has finished and returns its index: the
// one whose result was recorded first.
func AwaitAny(ctx Context, fs ...Awaitable) int {
	if len(fs) == 0 {
		panic("workflow: AwaitAny of no futures")
	}
	idx := -1
	ctx.exec().block(func() bool {
		var first uint64
		for i, f := range fs {
			if ff := f.future(); ff.done && (idx < 0 || ff.order < first) {
				idx, first = i, ff.order
			}
		}
		return idx >= 0
	})
	return idx
}

// future is the untyped state behind a Future.
type future struct {
	cmd   command
	done  bool
	order uint64 // position of the history entry that finished it
	data  []byte
	err   error
}

// ActivityOptions configures one CallActivity. The zero value works.
type ActivityOptions struct {
	// Retry is the call's retry policy, on top of the responder's own
	// retries. Default: one attempt.
	Retry RetryPolicy
	// Timeout limits each attempt: an attempt without a reply by then
	// fails with code "timeout" (and may be retried), and its request is
	// not started any more. Default 0: no limit.
	Timeout time.Duration
	// Type is the request's schema type (rsvp.Message.Type). Default none.
	Type string
}

// RetryPolicy says how often and when a failed activity call is tried
// again. The zero value makes one attempt.
type RetryPolicy struct {
	// MaxAttempts is how many attempts are made at most. Default 1.
	MaxAttempts int
	// Backoff is the delay before the second attempt; it doubles for
	// each attempt after that, up to MaxBackoff. Default 1s.
	Backoff time.Duration
	// MaxBackoff caps the delay. Default 1m.
	MaxBackoff time.Duration
	// NonRetryable lists error codes that end the call at once. Replies
	// with the codes bad_payload, bad_request and cancelled are never
	// retried. A handler's rsvp.Permanent error ends its request's
	// attempts at the responder, but reaches the workflow with its code
	// (failed, or that of an *rsvp.RemoteError it wraps): list that code
	// here to end the call.
	NonRetryable []string
}

func (p RetryPolicy) delay(attempt int) time.Duration {
	d, limit := p.Backoff, p.MaxBackoff
	if d <= 0 {
		d = time.Second
	}
	if limit <= 0 {
		limit = time.Minute
	}
	for i := 1; i < attempt && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

func (p RetryPolicy) retries(f *Failure, attempt int) bool {
	if attempt >= max(p.MaxAttempts, 1) {
		return false
	}
	switch f.Code {
	case "bad_payload", "bad_request", "cancelled", CodeTerminated:
		return false
	}
	for _, c := range p.NonRetryable {
		if c == f.Code {
			return false
		}
	}
	return true
}

// CallActivity sends input (encoded as JSON) as a durable request to queue,
// where an ordinary rsvp responder handles it, and returns a future of its
// reply decoded into T. A failed call's error is an *ActivityError.
func CallActivity[T any](ctx Context, queue string, input any, opts ActivityOptions) Future[T] {
	ex := ctx.exec()
	body, err := json.Marshal(input)
	f := ex.command("activity", queue)
	if err != nil {
		f.finish(0, nil, fmt.Errorf("workflow: encode the input of activity %s: %w", queue, err))
		return Future[T]{f}
	}
	ex.startActivity(f, &activityCall{queue: queue, input: body, opts: opts})
	return Future[T]{f}
}

// CallWorkflow starts the workflow name (its newest version) as a
// sub-workflow with input and returns a future of its result. The
// sub-workflow's instance id is derived from the caller's, so a replay
// finds it again. A failed sub-workflow's error is an *ActivityError.
func CallWorkflow[T any](ctx Context, name string, input any) Future[T] {
	ex := ctx.exec()
	body, err := json.Marshal(input)
	f := ex.command("workflow", name)
	if err != nil {
		f.finish(0, nil, fmt.Errorf("workflow: encode the input of sub-workflow %s: %w", name, err))
		return Future[T]{f}
	}
	ex.startChild(f, name, body)
	return Future[T]{f}
}

// NewTimer returns a future that is ready d after ctx.Now(). The timer is
// durable: it fires (within about a second of its time) even if every
// process was restarted meanwhile.
func NewTimer(ctx Context, d time.Duration) Future[struct{}] {
	ex := ctx.exec()
	f := ex.command("timer", "")
	ex.startTimer(f, d)
	return Future[struct{}]{f}
}

// Sleep waits for d, durably (see NewTimer).
func Sleep(ctx Context, d time.Duration) error {
	_, err := NewTimer(ctx, d).Get(ctx)
	return err
}

// ErrEventTimeout is returned by WaitForEvent when its timeout passed
// first. The event, if raised later, stays for the next WaitForEvent.
var ErrEventTimeout = errors.New("workflow: timed out waiting for the event")

// WaitForEvent waits for the external event name (raised by RaiseEvent) and
// decodes its payload into T. Events raised before the wait are kept, in
// order, and the oldest unconsumed one is returned at once. timeout > 0
// bounds the wait: then ErrEventTimeout is returned and the wait no
// longer consumes anything.
func WaitForEvent[T any](ctx Context, name string, timeout time.Duration) (T, error) {
	return EventFuture[T](ctx, name, timeout).Get(ctx)
}

// EventFuture is WaitForEvent as a future, to wait for an event together
// with other calls (AwaitAny). Until it has finished (or its timeout has
// passed), it takes the next event of its name whether or not anything
// reads it: a future left behind, say by a loop that makes a new one on
// each pass while an AwaitAny picked another call, takes an event that a
// later future never sees. In such a loop, make the future once and keep
// it until it has finished.
func EventFuture[T any](ctx Context, name string, timeout time.Duration) Future[T] {
	ex := ctx.exec()
	f := ex.command("event", name)
	ex.waitEvent(f, name, timeout)
	return Future[T]{f}
}

// SetCustomStatus records v (encoded as JSON) as the instance's custom
// status, shown by Status, for progress reports and the like. In deferred
// code run while replay unwinds the function, it does nothing (see the
// package doc).
func SetCustomStatus(ctx Context, v any) error {
	ex := ctx.exec()
	if ex.unwinding {
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("workflow: encode custom status: %w", err)
	}
	ex.status = b
	return nil
}

// ContinueAsNew ends this epoch of the instance and starts it again from
// the top with input, keeping its id and its unconsumed events: replay then
// starts from the new epoch, for workflows that loop. Return its error from
// the workflow function. The instance's records all stay in one history,
// which expires with the backend's retention (see the package doc), so a
// loop must end, or run again as a new instance, within it.
func ContinueAsNew(ctx Context, input any) error {
	b, err := json.Marshal(input)
	if err != nil {
		return fmt.Errorf("workflow: encode the input of ContinueAsNew: %w", err)
	}
	return &continueAsNew{input: b}
}

type continueAsNew struct{ input []byte }

func (c *continueAsNew) Error() string { return "workflow: continue as new" }
