package rsvppg

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// Atomic handling: the handler's business writes, its reply and the
// acknowledgement of its request commit in one transaction. A worker that
// dies before the commit leaves nothing behind: the server rolls the
// transaction back and the request is delivered again once its lease runs
// out.
//
// The transaction locks the request row FOR KEY SHARE: no other consumer
// can lease the row (the claim takes FOR UPDATE SKIP LOCKED, which that lock
// blocks) or delete it while the transaction is open, yet the lease can
// still be extended (an UPDATE of non-key columns) from the pool.

// Begin starts a transaction on the pool of handlers' transactions (see
// Pool) and locks the delivery's request row in it (see Lock). Do the
// business writes in it, then settle with CommitWith, or roll it back and
// settle the delivery as usual (Nack, or rsvp.Lease.Fail). Settle from
// outside only after the transaction ended: an Ack waits for it, but a
// Nack (like Extend) does not, and settles the lease at once; CommitWith
// then returns ErrLeaseLost and commits nothing, and the request is
// delivered again once the transaction ended.
func (d *Delivery) Begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := d.b.txs.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("rsvppg: begin for %s: %w", d.msg.ID, err)
	}
	if err := d.Lock(ctx, tx); err != nil {
		rollback(d.b, tx)
		return nil, err
	}
	return tx, nil
}

// Lock locks the delivery's request row in tx, a transaction on the
// backend's database, so that no redelivery runs beside it until tx ends.
// It returns ErrLeaseLost if the request was settled or delivered again.
func (d *Delivery) Lock(ctx context.Context, tx pgx.Tx) error {
	var one int
	err := tx.QueryRow(ctx, d.b.lockSQL(), d.seq, d.msg.Attempt).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		err = ErrLeaseLost
	}
	if err != nil {
		return fmt.Errorf("rsvppg: lock %s: %w", d.msg.ID, err)
	}
	return nil
}

func (b *Backend) lockSQL() string {
	return "SELECT 1 FROM " + ident(b.opts.Schema) + ".requests WHERE seq = $1 AND attempt = $2 AND lease_until IS NOT NULL FOR KEY SHARE"
}

// CommitWith settles the delivery in tx (from Begin, or locked with Lock):
// it stores reply to the request's ReplyTo (none when ReplyTo is empty or
// reply is nil) with the same rules as PutReply, deletes the request as Ack
// does, notifies the waiters, and commits. The business writes done in tx,
// the reply and the acknowledgement commit together or not at all.
//
// On any error tx is rolled back and nothing was stored:
// backend.ErrReplyExists if the request was answered already (cancelled),
// backend.ErrBadAddress or backend.ErrTooLarge for a reply that can never
// be stored, ErrLeaseLost if the lease is gone; a failed commit is
// returned as it is (whether it committed is then unknown).
func (d *Delivery) CommitWith(ctx context.Context, tx pgx.Tx, reply *backend.Reply) (err error) {
	defer func() {
		if err != nil {
			rollback(d.b, tx)
			err = fmt.Errorf("rsvppg: commit %s: %w", d.msg.ID, err)
		}
	}()
	var notes []string
	if replyTo := d.msg.ReplyTo; replyTo != "" && reply != nil {
		if err := backend.ValidateName("correlation id", reply.CorrelationID); err != nil {
			return err
		}
		inbox, ok := replyInbox(replyTo, reply.CorrelationID)
		if !ok {
			return fmt.Errorf("%w: %q is not %s<correlation id>.<inbox> for %q", backend.ErrBadAddress, replyTo, replyPrefix, reply.CorrelationID)
		}
		if err := d.b.checkReply(reply); err != nil {
			return err
		}
		stored, err := d.b.putReplies(ctx, tx, []replyItem{{inbox: inbox, r: *reply}})
		if err != nil {
			return err
		}
		if len(stored) == 0 {
			return backend.ErrReplyExists
		}
		notes = append(notes, replyNote(reply.CorrelationID, inbox))
	}
	tag, err := tx.Exec(ctx, d.b.sql.ack, d.seq, d.msg.Attempt)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrLeaseLost
	}
	if d.msg.SessionKey != "" {
		notes = append(notes, queueNote(d.msg.Queue)) // the session's next request is due
	}
	if len(notes) > 0 {
		if _, err := tx.Exec(ctx, d.b.sql.notify, d.b.channel, notes); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	d.b.tally.Out(d.msg.Queue)
	return nil
}

// rollback ends tx, on a context of its own: the caller's may have ended.
func rollback(b *Backend, tx pgx.Tx) {
	ctx, cancel := b.opCtx()
	defer cancel()
	_ = tx.Rollback(ctx)
}

// TxHandler answers a request inside tx, the transaction in which its reply
// and the acknowledgement of the request commit. It must not commit or roll
// back tx itself. An error rolls tx back and is retried as a Handler's is.
type TxHandler func(ctx context.Context, tx pgx.Tx, req *rsvp.Message) (*rsvp.Reply, error)

// TxResponder runs a TxHandler on the requests of one queue.
type TxResponder struct {
	b    *Backend
	cons *rsvp.Consumer
	h    TxHandler
	log  func(msg string, args ...any)

	fetchCtx    context.Context
	stopFetch   context.CancelFunc
	handleCtx   context.Context
	stopHandles context.CancelFunc
	wg          sync.WaitGroup
	stopped     chan struct{}
	stopOnce    sync.Once
	stopErr     error
}

// HandleTx starts a responder for queue whose handler runs in a
// transaction on the pool of handlers' transactions (see Pool), whose
// commits wait for the disk, and which the backend's own writes do not
// share, so that the handlers can call rsvp.Progress and Send: the handler's
// business writes in tx, its reply and the acknowledgement of the request
// commit together. A worker that dies before the commit leaves no partial
// effect; the request is delivered again once its lease runs out. The
// handler still runs at least once per request, but its writes in tx take
// effect exactly once.
//
// c must run on a *Backend. Retries, backoff, dead letters, deadlines and
// the events of tracked requests (including rsvp.Progress) follow opts as
// for Client.Handle; a handler error rolls tx back first. As there, a
// cancellation (Client.Cancel) of a tracked request cancels the handler's
// ctx with cause rsvp.ErrCancelled; whatever the handler returns then, tx
// is rolled back, and so is a commit that finds the request answered
// already (cancelled, tracked or not): the stored reply stands. Stop the
// responder before closing the client: Client.Close does not stop it.
func HandleTx(c *rsvp.Client, queue string, h TxHandler, opts rsvp.HandleOptions) (*TxResponder, error) {
	b, ok := c.Backend().(*Backend)
	if !ok {
		return nil, fmt.Errorf("%w: rsvppg: HandleTx needs a client on the PostgreSQL backend, not %T", rsvp.ErrInvalid, c.Backend())
	}
	if h == nil {
		return nil, fmt.Errorf("%w: rsvppg: HandleTx: nil handler", rsvp.ErrInvalid)
	}
	cons, err := c.Consume(context.Background(), queue, opts)
	if err != nil {
		return nil, err
	}
	r := &TxResponder{b: b, cons: cons, h: h, stopped: make(chan struct{})}
	log := b.opts.Logger.With("queue", queue)
	r.log = log.Warn
	r.fetchCtx, r.stopFetch = context.WithCancel(context.Background())
	r.handleCtx, r.stopHandles = context.WithCancel(context.Background())
	n := cmp.Or(opts.Concurrency, 1)
	r.wg.Add(n)
	for range n {
		go r.work()
	}
	return r, nil
}

// Stop stops taking requests and waits for running handlers until ctx
// ends; then it cancels them, rolling their transactions back, and leaves
// their requests to be delivered again. It returns ctx's error if ctx ended
// first (the stop then completes in the background).
func (r *TxResponder) Stop(ctx context.Context) error {
	go r.stopOnce.Do(func() {
		r.stopFetch()
		done := make(chan struct{})
		go func() { r.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			r.stopHandles()
			<-done
			r.stopErr = ctx.Err()
		}
		r.stopHandles()
		r.stopErr = errors.Join(r.stopErr, r.cons.Close())
		close(r.stopped)
	})
	select {
	case <-r.stopped:
		return r.stopErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stopped is closed once the responder stopped.
func (r *TxResponder) Stopped() <-chan struct{} { return r.stopped }

func (r *TxResponder) work() {
	defer r.wg.Done()
	for {
		l, err := r.cons.Next(r.fetchCtx)
		if err != nil {
			if r.fetchCtx.Err() == nil && !errors.Is(err, backend.ErrClosed) {
				r.log("rsvppg: fetch failed", "err", err)
			}
			return
		}
		r.handle(l)
	}
}

// settleCtx bounds the calls that record an outcome; they run even while
// the responder stops.
func (r *TxResponder) settleCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

func (r *TxResponder) handle(l *rsvp.Lease) {
	m := l.Message()
	d, ok := l.Delivery().(*Delivery)
	sctx, cancel := r.settleCtx()
	defer cancel()
	if !ok { // cannot happen: the client runs on r.b
		_ = l.Fail(sctx, rsvp.Permanent(fmt.Errorf("rsvppg: delivery of %T", l.Delivery())))
		return
	}
	err := r.run(l, d, m, func(tx pgx.Tx, reply *rsvp.Reply) {
		out, err := l.PrepareReply(sctx, reply)
		if err != nil {
			rollback(r.b, tx)
			_ = l.Fail(sctx, err)
			return
		}
		// The lease is settled before the commit, which may wait long (a
		// database that hangs): its own clock must not run out meanwhile
		// and drop what is recorded after a commit that then stands, as
		// the row lock keeps every other worker off the request.
		if err := l.SettleWith(sctx, out, func() error { return d.CommitWith(sctx, tx, out) }); err != nil {
			rollback(r.b, tx) // it ran out before: the request comes back
		}
	})
	switch {
	case err == nil:
	case err == errCancelled:
		_ = l.Settled(sctx, nil, backend.ErrReplyExists)
	case r.handleCtx.Err() != nil:
		_ = l.Release(sctx)
	default:
		_ = l.Fail(sctx, err)
	}
}

// errCancelled: the handler stopped because the request was cancelled.
var errCancelled = errors.New("rsvppg: cancelled while running")

// run begins the transaction and calls the handler in it with the lease
// kept alive, turning a panic into an error. On success it calls settle
// with the open transaction and returns nil; on error tx is rolled back.
func (r *TxResponder) run(l *rsvp.Lease, d *Delivery, m *rsvp.Message, settle func(pgx.Tx, *rsvp.Reply)) (err error) {
	ctx, cancelCause := context.WithCancelCause(l.WithProgress(r.handleCtx))
	cancel := func() { cancelCause(nil) }
	defer cancel()
	if m.Track && m.ReplyTo != "" {
		// A cancellation stores a cancelled reply: stop the handler then.
		sub, err := r.b.WatchReply(ctx, m.CorrelationID, func(rep *backend.Reply) {
			if rep.Status == backend.StatusCancelled {
				cancelCause(rsvp.ErrCancelled)
			}
		})
		if err != nil {
			r.log("rsvppg: cannot watch for cancellation", "id", m.ID, "err", err)
		} else {
			defer sub.Close()
		}
	}
	if !m.Deadline.IsZero() {
		var cancelDeadline context.CancelFunc
		ctx, cancelDeadline = context.WithDeadline(ctx, m.Deadline)
		defer cancelDeadline()
	}
	extended := make(chan struct{})
	go func() {
		defer close(extended)
		t := time.NewTicker(l.Duration() / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := l.Extend(ctx); err != nil && ctx.Err() == nil {
					r.log("rsvppg: lease extension failed", "id", m.ID, "err", err)
				}
			}
		}
	}()
	stopExtending := func() {
		cancel()
		<-extended
	}
	defer stopExtending()
	tx, err := d.Begin(ctx)
	if err != nil {
		return err
	}
	var reply *rsvp.Reply
	func() {
		defer func() {
			if p := recover(); p != nil {
				r.b.opts.Logger.Error("rsvppg: handler panicked", "id", m.ID, "panic", p, "stack", string(debug.Stack()))
				err = fmt.Errorf("handler panicked: %v", p)
			}
		}()
		reply, err = r.h(ctx, tx, m)
	}()
	if err != nil {
		rollback(r.b, tx)
		if context.Cause(ctx) == rsvp.ErrCancelled {
			// The cancelled reply stands: settle with it, without a retry.
			return errCancelled
		}
		return err
	}
	// The row lock keeps others off the request until the commit; stop
	// extending so that an extension does not race the acknowledgement.
	stopExtending()
	settle(tx, reply)
	return nil
}

// SendTx sends msg to queue as c.Send does, but in tx, a transaction on
// c's PostgreSQL database: the request exists if and only if tx commits.
// Await its reply with c.Await(ticket.CorrelationID) after the commit. A
// request with a Deadline gets its expiry task (see rsvp.ExpiryQueue) in
// tx too, as Send stores one beside it.
func SendTx(ctx context.Context, c *rsvp.Client, tx pgx.Tx, queue string, msg *rsvp.Message) (rsvp.Ticket, error) {
	b, ok := c.Backend().(*Backend)
	if !ok {
		return rsvp.Ticket{}, errors.New("rsvppg: SendTx: the client is not on a PostgreSQL backend")
	}
	m, err := c.Prepare(queue, msg)
	if err != nil {
		return rsvp.Ticket{}, err
	}
	return c.SendWith(ctx, m, func(ctx context.Context, m *rsvp.Message) error {
		if err := b.EnqueueTx(ctx, tx, m); err != nil {
			return err
		}
		if task := c.ExpiryTask(m); task != nil {
			if err := b.EnqueueTx(ctx, tx, task); err != nil {
				return fmt.Errorf("rsvppg: SendTx: schedule the expiry of %s: %w", m.CorrelationID, err)
			}
		}
		return nil
	})
}
