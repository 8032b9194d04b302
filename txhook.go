package rsvp

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/rsvp-go/rsvp/backend"
)

// Hooks for backends that settle a lease in a transaction of their own,
// together with the handler's business writes (rsvppg.HandleTx): the
// backend stores the reply and acknowledges the request in one commit, and
// the Lease records the outcome as Reply would.

// SendWith sends m, a request from Prepare, as Send does (in a span of its
// own that m's trace context names, counted in the metrics), but stores it
// with store instead of the engine's Enqueue: for code that stores
// requests its own way (rsvppg.SendTx, in the caller's transaction). Its
// errors are Send's. It stores no expiry task: see ExpiryTask.
func (c *Client) SendWith(ctx context.Context, m *Message, store func(context.Context, *Message) error) (Ticket, error) {
	return c.sendWith(ctx, m, true, store)
}

// ExpiryTask returns the expiry task that Send stores beside m, a request
// from Prepare, or nil if m gets none (no Deadline, or no ReplyTo). It is
// for code that stores requests its own way: rsvppg.SendTx stores both in
// the caller's transaction, so that neither exists without the other (a
// request without its task would never expire while nobody serves its
// queue, and Await would wait for good). It makes c handle expiry tasks,
// as Send does.
func (c *Client) ExpiryTask(m *Message) *Message {
	if m.Deadline.IsZero() || m.ReplyTo == "" {
		return nil
	}
	c.startExpirer()
	return c.expiryMessage(expiryOf(m))
}

// Delivery returns the backend's delivery behind the lease, for backends
// whose deliveries offer more than backend.Delivery.
func (l *Lease) Delivery() backend.Delivery { return l.d }

// PrepareReply returns the reply that Reply(ctx, reply) would store (nil:
// an empty one), with the request's correlation id, status succeeded, the
// time and the attempt's trace context; or an error if it cannot be sent
// (too large a body, bad headers), which a caller passes on to Fail. It
// does not settle the lease.
func (l *Lease) PrepareReply(ctx context.Context, reply *Reply) (*Reply, error) {
	if reply == nil {
		reply = &Reply{}
	}
	out := *reply
	out.CorrelationID, out.Status, out.ErrorCode, out.ErrorMessage = l.d.Message().CorrelationID, backend.StatusSucceeded, "", ""
	if err := l.s.checkReply(&out); err != nil {
		return nil, Permanent(err)
	}
	out.CreatedAt = time.Now()
	putTraceContext(trace.ContextWithSpan(ctx, l.a.span), &out.TraceParent, &out.TraceState)
	return &out, nil
}

// Settled settles the lease with reply, from PrepareReply, after the caller
// tried to store it and acknowledge the request in one commit of its own.
// commitErr is that commit's outcome:
//
//   - nil: both committed. Settled records what Reply records (the final
//     event of a tracked request, metrics) and touches the backend no more.
//   - backend.ErrReplyExists: nothing committed because the request was
//     answered already (cancelled, most likely): that reply stands and the
//     request is acknowledged; if that reply is an expiry (its deadline
//     passed while the handler ran) and reply succeeded, the request is
//     also dead-lettered as expired, as a Handler's late success is.
//   - backend.ErrTooLarge: nothing committed; the request fails, as Reply
//     fails it.
//   - backend.ErrBadAddress: nothing committed; the request is
//     dead-lettered.
//   - any other error: nothing committed, or it is unknown whether it did;
//     the request comes back after backoff (a committed one is gone, so
//     that does nothing).
//
// The lease may run out while that commit waits (a database that hangs),
// and Settled then finds it settled as lost and records nothing, although
// the commit may have stored the reply: use SettleWith, which settles the
// lease before it commits.
func (l *Lease) Settled(ctx context.Context, reply *Reply, commitErr error) error {
	return l.SettleWith(ctx, reply, func() error { return commitErr })
}

// SettleWith settles the lease and then runs commit, the caller's commit
// that stores reply (from PrepareReply) and acknowledges the request
// together, and records its outcome as Settled does. The lease is settled
// first so that it cannot run out while commit waits: the caller must keep
// other workers off the request until commit returns (rsvppg locks its
// row). If the lease was settled or ran out already, SettleWith returns
// ErrSettled without running commit: abandon the commit then, and the
// request comes back.
func (l *Lease) SettleWith(ctx context.Context, reply *Reply, commit func() error) error {
	if err := l.settle(); err != nil {
		return err
	}
	commitErr := commit()
	r, d, m, log := l.s, l.d, l.d.Message(), l.a.log
	ctx = trace.ContextWithSpan(ctx, l.a.span)
	outcome := outcomeSucceeded
	switch {
	case commitErr == nil:
		if m.ReplyTo != "" {
			r.finalEvent(ctx, m, reply, log)
			r.listReply(ctx, m, log)
			r.c.tel.completedOne(r.tel, reply.Status)
		}
	case errors.Is(commitErr, backend.ErrReplyExists):
		stored, err := r.c.b.GetReply(ctx, m.CorrelationID)
		if err != nil {
			log.Error("rsvp: reading the stored reply failed; the request will be settled again", "err", err)
			_ = d.Nack(ctx, r.opts.Backoff(m.Attempt))
			outcome = outcomeRetry
			break
		}
		if stored.Status == backend.StatusExpired && reply != nil && reply.Status == backend.StatusSucceeded {
			// The handler succeeded after the deadline, too late: the
			// request ended expired, and is dead-lettered so, as finish
			// does for a Handler's late success.
			r.fail(ctx, d, CodeExpired, succeededLate, log)
			outcome = outcomeExpired
			break
		}
		if stored.Status == backend.StatusCancelled {
			outcome = outcomeCancelled
		}
		r.finalEvent(ctx, m, stored, log)
		if m.ReplyTo != "" {
			r.listReply(ctx, m, log)
		}
		if !storedByResponder(stored.Status) { // else counted by the attempt that stored it
			r.c.tel.completedOne(r.tel, stored.Status)
		}
		if err := d.Ack(ctx); err != nil {
			log.Warn("rsvp: ack failed; the request may be handled again", "err", err)
		}
	case errors.Is(commitErr, backend.ErrTooLarge):
		r.fail(ctx, d, CodeFailed, "the reply does not fit the engine: "+commitErr.Error(), log)
		outcome = outcomeFailed
	case errors.Is(commitErr, backend.ErrBadAddress):
		outcome = outcomeRetry
		if r.badReplyTo(ctx, d, commitErr, log) {
			outcome = outcomeFailed
		}
	default:
		log.Error("rsvp: committing the outcome failed; the request will be handled again", "err", commitErr)
		r.c.tel.retryOne(r.tel)
		if err := d.Nack(ctx, r.opts.Backoff(m.Attempt)); err != nil {
			log.Warn("rsvp: nack failed; the request comes back after its lease", "err", err)
		}
		outcome = outcomeRetry
	}
	r.end(l.a, m, outcome, commitErr)
	return nil
}

// WithProgress returns ctx carrying the leased request's progress recorder,
// so that Progress(ctx, v) records events for a tracked request as it does
// in a Handler. For an untracked request it returns ctx.
func (l *Lease) WithProgress(ctx context.Context) context.Context {
	return withProgress(ctx, l.s.c.b, l.d.Message())
}
