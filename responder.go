package rsvp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"go.opentelemetry.io/otel/trace"
	"maps"
	"math/rand/v2"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

// A Handler answers requests. It returns the reply (nil for an empty one)
// or an error: an error is retried with backoff up to HandleOptions
// MaxAttempts, unless wrapped with Permanent. Return a *RemoteError (or wrap
// one) to choose the code the requester sees.
//
// ctx ends at the request's deadline, or when the responder is stopped
// without time to finish. It is cancelled with cause ErrCancelled when the
// request is cancelled, and with a cause matching ErrLeaseLost (errors.Is)
// when the handler's lease was lost: it ran out, so that the request may be
// with another worker. The outcome of such a handler is not recorded. A
// handler may run more than once for one request (at-least-once execution);
// the requester sees exactly one final reply. req is the handler's own
// copy of the request: changing its fields (but not the bytes of its Body)
// does not change the request that is dead-lettered and replayed.
type Handler interface {
	ServeRequest(ctx context.Context, req *Message) (*Reply, error)
}

// HandlerFunc adapts a function to a Handler.
type HandlerFunc func(ctx context.Context, req *Message) (*Reply, error)

// ServeRequest calls f.
func (f HandlerFunc) ServeRequest(ctx context.Context, req *Message) (*Reply, error) {
	return f(ctx, req)
}

// HandleOptions configures a responder. The zero value works.
type HandleOptions struct {
	// Concurrency is how many requests are handled at once. Default 1.
	Concurrency int
	// MaxAttempts is how many times a failing request is tried before it is
	// dead-lettered. Default 5.
	MaxAttempts int
	// Backoff returns the delay before attempt+1 after attempt failed.
	// Default: 1s doubling to at most 1m, each ±25% at random.
	Backoff func(attempt int) time.Duration
	// Lease is how long a request is reserved for this responder before
	// another may take it; it is renewed every Lease/3 while the handler
	// runs, so only a dead or stalled worker lets it run out. A handler
	// whose lease was lost is cancelled (see Handler). Default 30s.
	Lease time.Duration

	// beforeExtend, if set, runs before each renewal of a handler's lease,
	// with the handler's ctx. A test seam (export_test.go): blocking in it
	// makes the renewal come too late.
	beforeExtend func(ctx context.Context)
}

func (o HandleOptions) withDefaults() HandleOptions {
	o.Concurrency = cmp.Or(o.Concurrency, 1)
	o.MaxAttempts = cmp.Or(o.MaxAttempts, 5)
	o.Lease = cmp.Or(o.Lease, 30*time.Second)
	if o.Backoff == nil {
		o.Backoff = DefaultBackoff
	}
	return o
}

func (o HandleOptions) validate() error {
	var errs []error
	if o.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("Concurrency %d is below 1", o.Concurrency))
	}
	if o.MaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("MaxAttempts %d is below 1", o.MaxAttempts))
	}
	if o.Lease < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("Lease %s is below 100ms", o.Lease))
	}
	return errors.Join(errs...)
}

// DefaultBackoff waits 1s after the first attempt, doubling up to 1m, with
// ±25% jitter so that failures do not retry in lockstep.
func DefaultBackoff(attempt int) time.Duration {
	d := time.Minute
	if attempt < 7 {
		d = time.Second << max(attempt-1, 0)
	}
	return time.Duration(float64(d) * (0.75 + rand.Float64()/2))
}

// Responder runs a Handler on the requests of one queue.
type Responder struct {
	settler
	queue string
	h     Handler
	cons  backend.Consumer

	fetchCtx    context.Context // ends: stop taking requests
	stopFetch   context.CancelFunc
	handleCtx   context.Context // ends: abandon running handlers
	stopHandles context.CancelFunc
	wg          sync.WaitGroup
	stopped     chan struct{}
	stopOnce    sync.Once
	stopErr     error       // the outcome of Stop, set before stopped closes
	stopAsked   atomic.Bool // Stop was called
}

// Handle starts a responder for queue. It runs until Stop or Client.Close.
// The client then also runs the expiry tasks of requests (see ExpiryQueue).
func (c *Client) Handle(queue string, h Handler, opts HandleOptions) (*Responder, error) {
	r, err := c.handle(queue, h, opts)
	if err == nil && queue != ExpiryQueue {
		c.startExpirer()
	}
	return r, err
}

func (c *Client) handle(queue string, h Handler, opts HandleOptions) (*Responder, error) {
	opts = opts.withDefaults()
	if err := errors.Join(backend.ValidateName("queue", queue), opts.validate()); err != nil {
		return nil, fmt.Errorf("%w: handle: %w", ErrInvalid, err)
	}
	if c.isClosed() {
		return nil, ErrClosed
	}
	// Consume may wait on the engine: not under c.mu, which every call of
	// the client takes.
	cons, err := c.b.Consume(context.Background(), queue, backend.ConsumeParams{Lease: opts.Lease})
	if err != nil {
		return nil, fmt.Errorf("rsvp: handle %s: %w", queue, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed { // closed meanwhile
		return nil, errors.Join(ErrClosed, cons.Close())
	}
	r := &Responder{settler: settler{c: c, opts: opts, log: c.cfg.Logger.With("queue", queue), tel: c.tel.queue(queue)},
		queue: queue, h: h, cons: cons, stopped: make(chan struct{})}
	r.fetchCtx, r.stopFetch = context.WithCancel(context.Background())
	r.handleCtx, r.stopHandles = context.WithCancel(context.Background())
	r.wg.Add(opts.Concurrency)
	for range opts.Concurrency {
		go r.work()
	}
	c.responders[r] = struct{}{}
	return r, nil
}

// Stop stops taking requests and waits for running handlers to finish until
// ctx ends; then it cancels them and leaves their requests to be delivered
// again. It returns ctx's error if ctx ended before the responder stopped
// (the stop then completes in the background). A Stop while another runs
// waits for that one, or for its own ctx.
func (r *Responder) Stop(ctx context.Context) error {
	r.stopAsked.Store(true)
	go r.stopOnce.Do(func() { r.stop(ctx) })
	select {
	case <-r.stopped:
		return r.stopErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *Responder) stop(ctx context.Context) {
	var err error
	{
		r.stopFetch()
		done := make(chan struct{})
		go func() { r.wg.Wait(); close(done) }()
		select {
		case <-done:
			err = r.cons.Close()
		case <-ctx.Done():
			// Unsubscribe before the cancelled handlers give their requests
			// back, so those go to another responder, not to this one.
			err = errors.Join(ctx.Err(), r.cons.Close())
			r.stopHandles()
			<-done
		}
		r.stopHandles()
		r.c.mu.Lock()
		delete(r.c.responders, r)
		r.c.mu.Unlock()
		r.stopErr = err
		close(r.stopped)
	}
}

// Stopped is closed once Stop has returned.
func (r *Responder) Stopped() <-chan struct{} { return r.stopped }

func (r *Responder) work() {
	defer r.wg.Done()
	for {
		d, err := r.cons.Next(r.fetchCtx)
		if err != nil {
			if r.fetchCtx.Err() == nil && !errors.Is(err, backend.ErrClosed) {
				r.log.Error("rsvp: fetch failed", "err", err)
			}
			return
		}
		r.handle(d)
	}
}

// settleCtx bounds the calls that record an outcome. They run even while
// the responder stops, so that finished work is not done again.
func settleCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

func (r *Responder) handle(d backend.Delivery) {
	ctx, cancel := settleCtx()
	defer cancel()
	a, ok := r.begin(ctx, d)
	if !ok {
		return
	}
	ctx = trace.ContextWithSpan(ctx, a.span) // replies carry the attempt's trace context
	m := d.Message()
	reply, cause, err := r.run(a, d, m)
	var outcome string
	switch {
	case errors.Is(cause, ErrLeaseLost):
		// The request may be with another worker, whose outcome it is to
		// record: this attempt stores no reply, event or dead letter, and
		// neither acks nor nacks, as if its worker had died.
		a.log.Warn("rsvp: lease lost while handling; the handler's outcome is dropped", "err", cause)
		outcome = outcomeLeaseLost
	case err == nil:
		outcome = r.succeed(ctx, d, reply, a.log)
	case cause == ErrCancelled:
		// Client.Cancel stored the final reply: the handler's error loses to
		// it, without a retry or a dead letter.
		r.finish(ctx, d, &Reply{CorrelationID: m.CorrelationID, Status: backend.StatusCancelled, ErrorCode: CodeCancelled,
			ErrorMessage: "cancelled while running"}, false, a.log)
		outcome = outcomeCancelled
	case r.handleCtx.Err() != nil:
		// Stopped without time to finish: someone else gets it now.
		_ = r.release(ctx, d, a.log)
		outcome = outcomeReleased
	default:
		outcome = r.failed(ctx, d, err, a.log)
	}
	r.end(a, m, outcome, err)
}

// cancelPoll is how often a running tracked request is checked for a
// cancellation when its reply cannot be watched.
const cancelPoll = time.Second

// ownCopy returns a copy of m for a handler or a pull consumer's caller:
// its fields and headers are its own (its Body's bytes are shared), so
// that changing them (an in-place upgrade, say) does not change the
// request that is dead-lettered and replayed.
func ownCopy(m *Message) *Message {
	c := *m
	c.Headers = maps.Clone(m.Headers)
	return &c
}

// run calls the handler of attempt a with the lease kept alive, turning a
// panic into an error. cause says why the responder cancelled the
// handler's ctx: ErrCancelled (Client.Cancel), an error matching
// ErrLeaseLost (a renewal found the lease lost), or nil for neither. Its
// log lines name the request (a.log).
func (r *Responder) run(a attempt, d backend.Delivery, m *Message) (reply *Reply, cause error, err error) {
	ctx, cancelCause := context.WithCancelCause(trace.ContextWithSpan(r.handleCtx, a.span))
	cancel := func() { cancelCause(nil) }
	defer cancel()
	// A cancellation stores a cancelled reply: stop the handler then. The
	// reply is watched for; if the watch cannot be set up, it is looked
	// for every cancelPoll instead, so that a cancellation is never lost.
	var poll <-chan time.Time
	if m.Track && m.ReplyTo != "" {
		sub, err := r.c.b.WatchReply(ctx, m.CorrelationID, func(rep *Reply) { cancelIfCancelled(rep, cancelCause) })
		if err != nil {
			a.log.Warn("rsvp: cannot watch for cancellation; looking for it every second instead", "err", err)
			t := time.NewTicker(cancelPoll)
			defer t.Stop()
			poll = t.C
		} else {
			defer sub.Close()
		}
		r.checkCancelled(ctx, m, cancelCause) // stored before the watch began
	}
	if !m.Deadline.IsZero() {
		var cancelDeadline context.CancelFunc
		ctx, cancelDeadline = context.WithDeadline(ctx, m.Deadline)
		defer cancelDeadline()
	}
	ctx = withProgress(ctx, r.c.b, m)
	extended := make(chan struct{})
	go func() {
		defer close(extended)
		t := time.NewTicker(r.opts.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if r.opts.beforeExtend != nil {
					r.opts.beforeExtend(ctx)
				}
				err := d.Extend(ctx)
				if errors.Is(err, ErrLeaseLost) {
					cancelCause(err) // a renewal cannot win it back
					return
				}
				if err != nil {
					a.log.Warn("rsvp: lease extension failed", "err", err)
				}
			case <-poll:
				r.checkCancelled(ctx, m, cancelCause)
			}
		}
	}()
	defer func() {
		cancel()
		<-extended
	}()
	defer func() {
		if p := recover(); p != nil {
			a.log.Error("rsvp: handler panicked", "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("handler panicked: %v", p)
		}
		if c := context.Cause(ctx); c == ErrCancelled || errors.Is(c, ErrLeaseLost) {
			cause = c
		}
	}()
	reply, err = r.h.ServeRequest(ctx, ownCopy(m))
	return reply, nil, err
}

// checkCancelled cancels a handler's ctx with cause ErrCancelled if m's
// stored reply is a cancellation.
func (r *Responder) checkCancelled(ctx context.Context, m *Message, cancel context.CancelCauseFunc) {
	if rep, err := r.c.b.GetReply(ctx, m.CorrelationID); err == nil {
		cancelIfCancelled(rep, cancel)
	}
}

func cancelIfCancelled(rep *Reply, cancel context.CancelCauseFunc) {
	if rep.Status == backend.StatusCancelled {
		cancel(ErrCancelled)
	}
}

// failure returns the code and message a failed request replies with: those
// of a *RemoteError in err's chain (CodeFailed if it has no code: a failed
// reply and a dead letter always name one), else CodeFailed and the
// error's text.
func failure(err error) (code, msg string) {
	var re *RemoteError
	if errors.As(err, &re) {
		return cmp.Or(storable(re.Code), CodeFailed), storable(re.Message)
	}
	var p *permanentError
	if errors.As(err, &p) {
		err = p.err
	}
	return CodeFailed, storable(err.Error())
}

// storable returns s as valid UTF-8 without NUL bytes, each invalid byte
// sequence and NUL as U+FFFD: a handler's error text goes into its reply,
// dead letter and events, and an engine on PostgreSQL stores no other
// text (it refused them, and the request ran again).
func storable(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}
