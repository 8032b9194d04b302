package rsvp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go.opentelemetry.io/otel/trace"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/rsvp-go/rsvp/backend"
)

// settler records the outcomes of deliveries with the rules of a queue's
// HandleOptions. Responders and Consumers share it.
type settler struct {
	c    *Client
	opts HandleOptions
	log  *slog.Logger
	tel  *queueTel // the queue's telemetry
}

// begin checks a fresh delivery before anyone works on it. It settles
// those that need no work (answered or cancelled already, past their
// deadline, out of attempts) and returns ok false for them; otherwise it
// records the running event and starts the attempt's span, which the
// returned attempt carries.
func (r *settler) begin(ctx context.Context, d backend.Delivery) (a attempt, ok bool) {
	log, ok := r.check(ctx, d)
	if !ok {
		return attempt{log: log}, false
	}
	m := d.Message()
	a = attempt{log: log, start: time.Now()}
	a.ctx, a.span = r.c.tel.startAttempt(r.tel, m)
	r.event(ctx, m, backend.EventRunning, map[string]any{"attempt": m.Attempt}, log)
	return a, true
}

// attempt is one handler attempt under way.
type attempt struct {
	log   *slog.Logger
	ctx   context.Context // carries the attempt's span
	span  trace.Span
	start time.Time
}

// end records the attempt's outcome.
func (r *settler) end(a attempt, m *Message, outcome string, err error) {
	r.c.tel.endAttempt(r.tel, a.span, m, outcome, err, time.Since(a.start))
}

// check settles a delivery that needs no work and returns ok false for it.
func (r *settler) check(ctx context.Context, d backend.Delivery) (log *slog.Logger, ok bool) {
	m := d.Message()
	log = r.log.With("id", m.ID, "correlation_id", m.CorrelationID, "attempt", m.Attempt)
	expired := !m.Deadline.IsZero() && !time.Now().Before(m.Deadline)
	if (m.Attempt > 1 || m.Track || expired) && m.ReplyTo != "" {
		// Answered already (only the acknowledgement was lost), or cancelled
		// before it started: settle it without running or failing it again.
		// A cancelled reply is listed under its reply session here, as the
		// canceller does not know the session. (A first attempt of an
		// untracked request is looked up only past its deadline: it may
		// have been cancelled, and is not to be dead-lettered as expired.)
		if stored, err := r.c.b.GetReply(ctx, m.CorrelationID); err == nil {
			if r.expiredNotLettered(ctx, m, stored) {
				// Its expiry task, its Request or the gateway stored the
				// expired reply first: it is still dead-lettered as expired.
				r.fail(ctx, d, CodeExpired, "deadline passed before the request was started", log)
				return log, false
			}
			r.finalEvent(ctx, m, stored, log)
			r.listReply(ctx, m, log)
			if stored.Status == backend.StatusCancelled {
				// Cancel does not count it: the responder that reaches it
				// does, as it does a cancellation found when it replies.
				r.c.tel.completedOne(r.tel, stored.Status)
			}
			_ = d.Ack(ctx)
			return log, false
		}
	}
	if expired {
		r.fail(ctx, d, CodeExpired, "deadline passed before the request was started", log)
		return log, false
	}
	if m.Attempt > r.opts.MaxAttempts {
		r.fail(ctx, d, CodeAttemptsExhausted, fmt.Sprintf("lease ran out on all %d attempts", r.opts.MaxAttempts), log)
		return log, false
	}
	return log, true
}

// expiredNotLettered reports whether stored, the reply found for m, is an
// expiry that no responder dead-lettered m for: m is past its deadline,
// and its event log has no final event naming an attempt (a responder's
// dead letter records one, see endEvent; the expiry task, Request and the
// gateway store the expired reply without). Such a request is to be
// dead-lettered. If the log cannot be read, it is taken as dead-lettered:
// a dead letter is not stored twice.
func (r *settler) expiredNotLettered(ctx context.Context, m *Message, stored *Reply) bool {
	if stored.Status != backend.StatusExpired || m.Deadline.IsZero() || time.Now().Before(m.Deadline) {
		return false
	}
	lettered := false
	err := r.c.eachEvent(ctx, m.CorrelationID, func(ev *backend.Event) bool {
		a, ok := attemptOf(ev)
		lettered = ok && a.Final
		return !lettered
	})
	return err == nil && !lettered
}

// succeed stores a handler's reply (nil: empty) and acknowledges. It
// returns the outcome: a reply that cannot be sent fails the request.
func (r *settler) succeed(ctx context.Context, d backend.Delivery, reply *Reply, log *slog.Logger) string {
	m := d.Message()
	if reply == nil {
		reply = &Reply{}
	}
	out := *reply
	out.CorrelationID, out.Status, out.ErrorCode, out.ErrorMessage = m.CorrelationID, backend.StatusSucceeded, "", ""
	if err := r.checkReply(&out); err != nil {
		r.fail(ctx, d, CodeFailed, err.Error(), log)
		return outcomeFailed
	}
	r.finish(ctx, d, &out, false, log)
	return outcomeSucceeded
}

// failed handles a failed attempt: a retry after backoff, or a final
// failure when err is permanent, attempts are used up, or the deadline
// passed. It returns the outcome.
func (r *settler) failed(ctx context.Context, d backend.Delivery, err error, log *slog.Logger) string {
	m := d.Message()
	switch {
	case !m.Deadline.IsZero() && !time.Now().Before(m.Deadline):
		r.fail(ctx, d, CodeExpired, "deadline passed while handling: "+err.Error(), log)
		return outcomeExpired
	case IsPermanent(err) || m.Attempt >= r.opts.MaxAttempts:
		code, msg := failure(err)
		r.fail(ctx, d, code, msg, log)
		return outcomeFailed
	default:
		r.c.tel.retryOne(r.tel)
		delay := r.opts.Backoff(m.Attempt)
		log.Info("rsvp: attempt failed, will retry", "err", err, "retry_in", delay)
		// Recorded for every request, tracked or not: the attempt history
		// (Client.Attempts) of the dead letter it may become.
		code, _ := failure(err)
		r.appendEvent(ctx, m, backend.EventRetrying, map[string]any{"attempt": m.Attempt, "error": cut(storable(err.Error())),
			"code": code, "retry_at": time.Now().Add(delay).UTC()}, log)
		if err := d.Nack(ctx, delay); err != nil {
			log.Error("rsvp: nack failed; the request comes back after its lease", "err", err)
		}
		return outcomeRetry
	}
}

// release gives d's request back unfinished, at once, for another worker.
// Its attempt is recorded as failed, to retry now, for the attempt history
// and, for a tracked request, its status: queued again, no longer running.
func (r *settler) release(ctx context.Context, d backend.Delivery, log *slog.Logger) error {
	m := d.Message()
	r.appendEvent(ctx, m, backend.EventRetrying, map[string]any{"attempt": m.Attempt,
		"error": "given back unfinished: its worker stopped, or its lease ran out", "retry_at": time.Now().UTC()}, log)
	return d.Nack(ctx, 0)
}

// checkReply reports what in a handler's reply cannot be sent.
func (r *settler) checkReply(reply *Reply) error {
	if len(reply.Body) > r.c.cfg.MaxBodySize {
		return fmt.Errorf("reply body is %d bytes, limit %d", len(reply.Body), r.c.cfg.MaxBodySize)
	}
	if err := errors.Join(checkHeaders(reply.Headers, "Reply.ContentType"), checkTraceContext(reply.TraceParent, reply.TraceState),
		checkText("Reply.ContentType", reply.ContentType)); err != nil {
		return fmt.Errorf("reply: %w", err)
	}
	return nil
}

// finish stores the reply, then acknowledges the request. If the reply
// cannot be stored for now the request is left to come back; if it can
// never be (a bad reply address), the request is dead-lettered. failed
// says reply is this attempt's failure (from fail): its final event is
// then recorded for every request, tracked or not, with the attempt.
func (r *settler) finish(ctx context.Context, d backend.Delivery, reply *Reply, failed bool, log *slog.Logger) {
	m := d.Message()
	if m.ReplyTo != "" {
		reply.CreatedAt = time.Now()
		putTraceContext(ctx, &reply.TraceParent, &reply.TraceState) // the responder's span, for the requester to link to
		err := r.c.b.PutReply(ctx, m.ReplyTo, reply)
		if errors.Is(err, backend.ErrTooLarge) && reply.Status == backend.StatusSucceeded {
			// Retrying cannot make it fit: fail the request instead.
			r.fail(ctx, d, CodeFailed, "the reply does not fit the engine: "+err.Error(), log)
			return
		}
		if errors.Is(err, backend.ErrBadAddress) {
			r.badReplyTo(ctx, d, err, log)
			return
		}
		exists := errors.Is(err, backend.ErrReplyExists)
		if exists {
			// Cancelled, expired, or answered by another attempt: that
			// reply stands.
			succeeded := reply.Status == backend.StatusSucceeded
			reply, err = r.c.b.GetReply(ctx, m.CorrelationID)
			failed = false
			if err == nil && succeeded && reply.Status == backend.StatusExpired {
				// The handler succeeded after the deadline, too late: the
				// request ended expired, and, as when a handler fails late,
				// is dead-lettered so.
				r.fail(ctx, d, CodeExpired, succeededLate, log)
				return
			}
		}
		if err != nil {
			log.Error("rsvp: storing the outcome failed; the request will be handled again", "err", err)
			_ = d.Nack(ctx, r.opts.Backoff(m.Attempt))
			return
		}
		r.endEvent(ctx, m, reply, failed, log)
		r.listReply(ctx, m, log)
		if !exists || !storedByResponder(reply.Status) {
			r.c.tel.completedOne(r.tel, reply.Status)
		}
	} else if failed {
		r.endEvent(ctx, m, reply, failed, log) // no reply wanted, but a history
	}
	if err := d.Ack(ctx); err != nil {
		log.Warn("rsvp: ack failed; the request may be handled again", "err", err)
	}
}

// storedByResponder reports whether a final reply of status is stored
// only by a responder's attempt, which counted it in
// rsvp.requests.completed: a succeeded or failed one. Expired and
// cancelled replies are also stored by requesters, expiry tasks, Cancel
// and the gateway, which do not count them: the responder that finds one
// does.
func storedByResponder(status backend.Status) bool {
	return status == backend.StatusSucceeded || status == backend.StatusFailed
}

// badReplyTo dead-letters the request of d, whose reply address is
// unusable (cause): no reply can ever be stored, so its history ends with
// that failure, whatever the handler answered. It reports whether the
// request was dead-lettered; if not, it comes back.
func (r *settler) badReplyTo(ctx context.Context, d backend.Delivery, cause error, log *slog.Logger) bool {
	m := d.Message()
	log.Error("rsvp: the request's reply address is unusable; dead-lettering it", "reply_to", m.ReplyTo, "err", cause)
	if err := r.c.b.DeadLetter(ctx, &backend.DeadLetter{Message: m, Reason: CodeBadReplyTo, LastError: cause.Error(), At: time.Now()}); err != nil {
		log.Error("rsvp: dead-lettering failed; the request will be handled again", "err", err)
		_ = d.Nack(ctx, r.opts.Backoff(m.Attempt))
		return false
	}
	r.c.tel.deadLetteredOne(r.tel, CodeBadReplyTo)
	failure := &Reply{CorrelationID: m.CorrelationID, Status: failureStatus(CodeBadReplyTo), ErrorCode: CodeBadReplyTo, ErrorMessage: cut(cause.Error())}
	r.endEvent(ctx, m, failure, true, log)
	if err := d.Ack(ctx); err != nil {
		log.Warn("rsvp: ack failed; the request may be handled again", "err", err)
	}
	return true
}

// maxErrorText bounds the error text kept when a full one does not fit.
const maxErrorText = 1024

// fail dead-letters the request and replies with the failure.
func (r *settler) fail(ctx context.Context, d backend.Delivery, code, msg string, log *slog.Logger) {
	m := d.Message()
	if stored, err := r.c.b.GetReply(ctx, m.CorrelationID); err == nil && stored.Status != backend.StatusExpired {
		// Cancelled meanwhile (or answered by another attempt): that outcome
		// stands, and a dead letter would let a replay run the request
		// again. (An expired request is still dead-lettered, as expired.)
		// This narrows the window for a cancel to the few calls below.
		r.finish(ctx, d, &Reply{CorrelationID: m.CorrelationID, Status: failureStatus(code), ErrorCode: code, ErrorMessage: cut(msg)}, true, log)
		return
	}
	log.Warn("rsvp: request dead-lettered", "reason", code, "err", msg)
	dl := &backend.DeadLetter{Message: m, Reason: code, LastError: msg, At: time.Now()}
	err := r.c.b.DeadLetter(ctx, dl)
	if errors.Is(err, backend.ErrTooLarge) && len(msg) > maxErrorText {
		// The request plus a long error text does not fit: keep the request.
		dl.LastError = cut(msg)
		err = r.c.b.DeadLetter(ctx, dl)
	}
	if err != nil {
		log.Error("rsvp: dead-lettering failed; the request will be handled again", "err", err)
		_ = d.Nack(ctx, r.opts.Backoff(m.Attempt))
		return
	}
	r.c.tel.deadLetteredOne(r.tel, code) // once stored: a request that comes back is counted when it is
	msg = cut(msg)
	r.finish(ctx, d, &Reply{CorrelationID: m.CorrelationID, Status: failureStatus(code), ErrorCode: code, ErrorMessage: msg}, true, log)
}

// succeededLate is the error text of a request dead-lettered because its
// handler succeeded after the deadline, which an expired reply had marked.
const succeededLate = "deadline passed while handling: the handler succeeded after the request had expired"

// failureStatus is the final status of a request dead-lettered with code.
func failureStatus(code string) backend.Status {
	if code == CodeExpired {
		return backend.StatusExpired
	}
	return backend.StatusFailed
}

// cut shortens an error text to at most maxErrorText bytes, on a character
// boundary: a character cut in two is not UTF-8, which an engine on
// PostgreSQL refuses.
func cut(msg string) string {
	if len(msg) > maxErrorText {
		n := maxErrorText
		for n > 0 && !utf8.RuneStart(msg[n]) {
			n--
		}
		return msg[:n] + "…"
	}
	return msg
}

// event appends an event to a tracked request's log.
func (r *settler) event(ctx context.Context, m *Message, typ string, data any, log *slog.Logger) {
	if m.Track {
		r.appendEvent(ctx, m, typ, data, log)
	}
}

// appendEvent appends an event to m's log, tracked or not; under its
// channel only if tracked. Events are for watchers and for the history of
// dead letters; failing to record one does not fail the request.
func (r *settler) appendEvent(ctx context.Context, m *Message, typ string, data any, log *slog.Logger) {
	ev := &backend.Event{CorrelationID: m.CorrelationID, Channel: eventChannel(m), Type: typ, At: time.Now()}
	if data != nil {
		ev.Data, _ = json.Marshal(data) // maps of plain values always encode
	}
	if err := r.c.b.AppendEvent(ctx, ev); err != nil {
		log.Warn("rsvp: recording a request event failed", "event", typ, "err", err)
	}
}

// eventChannel is the channel m's events are also listed under: its
// Channel if it is tracked, else none.
func eventChannel(m *Message) string {
	if m.Track {
		return m.Channel
	}
	return ""
}

// finalEvent ends a tracked request's event log with its reply's status,
// once however often it is recorded.
func (r *settler) finalEvent(ctx context.Context, m *Message, reply *Reply, log *slog.Logger) {
	r.endEvent(ctx, m, reply, false, log)
}

// endEvent is finalEvent, except that when failed says reply is the
// failure of this attempt it records it for an untracked request too (the
// last entry of its attempt history, Client.Attempts), and names the
// attempt in the event's data.
func (r *settler) endEvent(ctx context.Context, m *Message, reply *Reply, failed bool, log *slog.Logger) {
	failed = failed && reply.Status != backend.StatusSucceeded
	if !m.Track && !failed {
		return
	}
	ev := &backend.Event{CorrelationID: m.CorrelationID, Channel: eventChannel(m), Type: string(reply.Status),
		At: time.Now(), DedupeKey: finalKey(m)}
	if reply.Status == backend.StatusCancelled && m.ID != m.CorrelationID {
		// Cancel stored it, and recorded its event under the current run's
		// key (see currentRun), which for a first run is not finalKey's.
		if key, _, err := r.c.currentRun(ctx, m.CorrelationID); err == nil {
			ev.DedupeKey = key
		}
	}
	if reply.Status != backend.StatusSucceeded {
		data := map[string]any{"code": reply.ErrorCode, "message": reply.ErrorMessage}
		if failed {
			data["attempt"] = m.Attempt
		}
		ev.Data, _ = json.Marshal(data) // maps of plain values always encode
	}
	if err := r.c.b.AppendEvent(ctx, ev); err != nil {
		log.Warn("rsvp: recording the final request event failed", "err", err)
	}
}

// finalKey is the dedupe key of m's final event: one per request, and one
// per replay of it (a replay has an id of its own).
func finalKey(m *Message) string {
	if m.ID == "" || m.ID == m.CorrelationID {
		return m.CorrelationID + ":final"
	}
	return m.ID + ":final"
}

// Consumer hands out a queue's requests one lease at a time, for code that
// handles them outside a Handler: the HTTP worker API, say. Outcomes follow
// the same rules as a Responder's (retries with backoff, dead letters,
// events of tracked requests, the attempt history of every request); a
// lease that runs out unsettled comes back.
type Consumer struct {
	settler
	cons backend.Consumer
}

// Consume returns a Consumer of queue. opts.Concurrency is not used: call
// Next as often as wanted. The lease is not renewed by itself: call
// Lease.Extend.
func (c *Client) Consume(ctx context.Context, queue string, opts HandleOptions) (*Consumer, error) {
	opts = opts.withDefaults()
	if err := errors.Join(backend.ValidateName("queue", queue), opts.validate()); err != nil {
		return nil, fmt.Errorf("%w: consume: %w", ErrInvalid, err)
	}
	if c.isClosed() {
		return nil, ErrClosed
	}
	cons, err := c.b.Consume(ctx, queue, backend.ConsumeParams{Lease: opts.Lease})
	if err != nil {
		return nil, fmt.Errorf("rsvp: consume %s: %w", queue, err)
	}
	return &Consumer{settler: settler{c: c, opts: opts, log: c.cfg.Logger.With("queue", queue), tel: c.tel.queue(queue)}, cons: cons}, nil
}

// Next waits for a request that needs work and leases it. Requests that
// need none (cancelled, expired, out of attempts) are settled on the way.
func (c *Consumer) Next(ctx context.Context) (*Lease, error) {
	for {
		d, err := c.cons.Next(ctx)
		if err != nil {
			return nil, err
		}
		sctx, cancel := settleCtx()
		a, ok := c.begin(sctx, d)
		cancel()
		if ok {
			l := &Lease{s: &c.settler, d: d, a: a, msg: ownCopy(d.Message())}
			l.renewed.Store(time.Now().UnixNano())
			l.timer.Store(time.AfterFunc(c.opts.Lease, l.ranOut))
			return l, nil
		}
	}
}

// Close stops the consumer; leases it handed out stay valid until they
// run out.
func (c *Consumer) Close() error { return c.cons.Close() }

// ErrSettled: the lease was settled already (Reply, Fail or Release), or
// lost (Extend returned ErrLeaseLost).
var ErrSettled = errors.New("rsvp: lease already settled")

// Lease is one request leased from a Consumer. Settle it once with Reply,
// Fail or Release, and Extend it while working on it. A lease that runs
// out unsettled (Expires passed) is lost: its attempt is recorded as such,
// the request comes back to the queue by itself, Extend returns
// ErrLeaseLost, and Reply, Fail and Release return ErrSettled.
type Lease struct {
	s       *settler
	d       backend.Delivery
	msg     *Message // Message's: the caller's copy of d's
	a       attempt
	state   atomic.Int32               // leaseOpen, leaseSettled or leaseRanOut
	renewed atomic.Int64               // when the lease was taken or last extended, Unix ns
	timer   atomic.Pointer[time.Timer] // runs ranOut when the lease runs out
	// renewing orders a renewal (Extend's renewed.Store) and ranOut: the
	// lease runs out either before the renewal, which then fails, or after
	// the renewed expiry.
	renewing sync.Mutex
}

// States of a Lease.
const (
	leaseOpen    = iota
	leaseSettled // by Reply, Fail, Release, Cancelled, or Extend finding it lost
	leaseRanOut  // by ranOut
)

// ranOut settles a lease that ran out unsettled as lost, so that its
// attempt's span ends and it leaves the in-flight count: the request comes
// back to the queue by itself. An extended lease is looked at again when
// its extension runs out.
func (l *Lease) ranOut() {
	l.renewing.Lock()
	if l.state.Load() != leaseOpen {
		l.renewing.Unlock()
		return
	}
	if wait := time.Until(l.Expires()); wait > 0 {
		l.timer.Load().Reset(wait)
		l.renewing.Unlock()
		return
	}
	ran := l.state.CompareAndSwap(leaseOpen, leaseRanOut)
	l.renewing.Unlock()
	if ran {
		m := l.d.Message()
		l.a.log.Warn("rsvp: a lease ran out unsettled; the request goes back to the queue")
		l.s.end(l.a, m, outcomeLeaseLost, fmt.Errorf("rsvp: lease of %s ran out unsettled: %w", m.ID, ErrLeaseLost))
	}
}

// ranOutError is Extend's error for a lease that ran out (ranOut).
func (l *Lease) ranOutError() error {
	return fmt.Errorf("rsvp: extend lease of %s: it ran out at %s: %w", l.d.Message().ID, l.Expires().Format(time.RFC3339Nano), ErrLeaseLost)
}

// Expires returns when the lease runs out unless extended.
func (l *Lease) Expires() time.Time {
	return time.Unix(0, l.renewed.Load()).Add(l.s.opts.Lease)
}

// Message returns the leased request: the caller's copy, as a Handler's
// is. Changing its fields (but not the bytes of its Body) does not change
// the request that is dead-lettered and replayed.
func (l *Lease) Message() *Message { return l.msg }

// TraceContext returns the W3C trace context (traceparent, tracestate) of
// the attempt's span, rsvp.handle, for the spans of the work done under
// the lease to be its children, as a Handler's ctx makes them. With no
// tracer (the default no-op provider) it is the request's own, or empty.
func (l *Lease) TraceContext() (traceparent, tracestate string) {
	putTraceContext(l.a.ctx, &traceparent, &tracestate)
	if traceparent == "" {
		traceparent, tracestate = l.msg.TraceParent, l.msg.TraceState
	}
	return traceparent, tracestate
}

// Duration is how long the lease lasts after it was taken or last
// extended: HandleOptions.Lease.
func (l *Lease) Duration() time.Duration { return l.s.opts.Lease }

func (l *Lease) settle() error {
	if !l.state.CompareAndSwap(leaseOpen, leaseSettled) {
		return ErrSettled
	}
	l.timer.Load().Stop()
	return nil
}

// Reply answers the request (nil: an empty reply), as a Handler returning
// it would.
func (l *Lease) Reply(ctx context.Context, reply *Reply) error {
	if err := l.settle(); err != nil {
		return err
	}
	l.s.end(l.a, l.d.Message(), l.s.succeed(trace.ContextWithSpan(ctx, l.a.span), l.d, reply, l.a.log), nil)
	return nil
}

// Fail records a failed attempt, as a Handler returning err would: retried
// after backoff unless err is Permanent or attempts are used up.
func (l *Lease) Fail(ctx context.Context, err error) error {
	if err := l.settle(); err != nil {
		return err
	}
	// A failure reply carries the attempt's span, as Reply's does, not the
	// span of Fail's caller.
	ctx = trace.ContextWithSpan(ctx, l.a.span)
	l.s.end(l.a, l.d.Message(), l.s.failed(ctx, l.d, err, l.a.log), err)
	return nil
}

// Release gives the request back at once, for another worker; the attempt
// still counts, and is recorded as one to retry (a tracked request shows
// as queued again).
func (l *Lease) Release(ctx context.Context) error {
	if err := l.settle(); err != nil {
		return err
	}
	l.s.end(l.a, l.d.Message(), outcomeReleased, nil)
	return l.s.release(ctx, l.d, l.a.log)
}

// Cancelled reports whether the request was cancelled (Client.Cancel, or a
// DELETE over HTTP) while leased: a Handler's ctx would be cancelled. If
// it was, the lease is settled, as a cancelled Handler's is: stop working
// on the request; Reply and Fail then return ErrSettled. Call it now and
// then during long work, with Extend say.
func (l *Lease) Cancelled(ctx context.Context) (bool, error) {
	m := l.d.Message()
	rep, err := l.s.c.b.GetReply(ctx, m.CorrelationID)
	switch {
	case errors.Is(err, backend.ErrNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("rsvp: look for a cancellation of %s: %w", m.ID, err)
	case rep.Status != backend.StatusCancelled:
		return false, nil
	}
	if l.settle() == nil {
		l.s.finish(ctx, l.d, &Reply{CorrelationID: m.CorrelationID, Status: backend.StatusCancelled, ErrorCode: CodeCancelled,
			ErrorMessage: "cancelled while running"}, false, l.a.log)
		l.s.end(l.a, m, outcomeCancelled, nil)
	}
	return true, nil
}

// Extend renews the lease for another HandleOptions.Lease. It fails with
// an error matching ErrLeaseLost if the lease ran out (Expires passed), or
// the engine says the request may have gone to another worker: stop
// working on it then. The lease is then settled with the attempt recorded
// as lost, as a Handler's would be: Reply, Fail and Release return
// ErrSettled.
func (l *Lease) Extend(ctx context.Context) error {
	switch l.state.Load() {
	case leaseSettled:
		return ErrSettled
	case leaseRanOut:
		return l.ranOutError()
	}
	if err := l.d.Extend(ctx); err != nil {
		if errors.Is(err, ErrLeaseLost) && l.settle() == nil {
			l.s.end(l.a, l.d.Message(), outcomeLeaseLost, err)
		}
		return fmt.Errorf("rsvp: extend lease of %s: %w", l.d.Message().ID, err)
	}
	l.renewing.Lock()
	defer l.renewing.Unlock()
	if l.state.Load() == leaseRanOut { // while the engine renewed it: recorded as lost
		return l.ranOutError()
	}
	l.renewed.Store(time.Now().UnixNano())
	return nil
}
