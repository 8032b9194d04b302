package rsvppg

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/rsvp-go/rsvp/backend"
)

// ErrLeaseLost: a delivery could not be settled or extended because its
// lease is gone: it was settled already, or it ran out and the request was
// delivered again. It wraps backend.ErrLeaseLost.
var ErrLeaseLost = fmt.Errorf("rsvppg: %w", backend.ErrLeaseLost)

// Consume implements backend.Backend. Each consumer has one fetching
// goroutine that leases requests for the Next calls waiting, as many in one
// statement as there are callers, and only for them: nothing is taken
// ahead. It looks when notified that its queue has work (an enqueue, a
// Nack), when a delayed or leased request comes due, and otherwise once a
// minute, or every Options.PollInterval while the listening connection is
// down.
//
// A consumer also records that it is open, when it starts and every 15
// seconds (one statement per backend for all its consumers), and that it
// closed, for LastActive.
func (b *Backend) Consume(ctx context.Context, queue string, p backend.ConsumeParams) (backend.Consumer, error) {
	if err := backend.ValidateName("queue", queue); err != nil {
		return nil, fmt.Errorf("rsvppg: consume: %w", err)
	}
	if b.life.Err() != nil {
		return nil, backend.ErrClosed
	}
	id := fmt.Sprintf("%s:%d", b.instance, b.consumerSeq.Add(1))
	c := &consumer{b: b, queue: queue, id: id, leaseFor: cmp.Or(p.Lease, 30*time.Second), log: b.opts.Logger.With("queue", queue),
		wake: make(chan struct{}, 1), more: make(chan struct{}, 1), done: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancel(b.life)
	b.reg.addConsumer(c)
	b.goRun(func() {
		defer close(c.done)
		defer b.reg.removeConsumer(c)
		defer c.gone()
		// Recorded as open, unless it closes first: then gone does.
		ctx, cancel := context.WithTimeout(c.ctx, b.opts.Timeout)
		b.beat(ctx, []string{queue}, []string{id})
		cancel()
		c.fetch()
	})
	return c, nil
}

type consumer struct {
	b        *Backend
	queue    string
	id       string // names the consumer's heartbeat row
	leaseFor time.Duration
	log      *slog.Logger
	wake     chan struct{} // the queue may have work: a notification, or the listener came back
	more     chan struct{} // a Next call began waiting
	ctx      context.Context
	cancel   context.CancelFunc
	done     chan struct{} // the fetching goroutine ended

	mu      sync.Mutex
	waiters []chan *Delivery // Next calls waiting, oldest first; each buffered 1
}

// idleRecheck is how often an idle consumer looks for work although the
// listening connection is up, in case a notification went astray.
const idleRecheck = time.Minute

// minRecheck is the shortest wait before looking again for a request that
// was due but locked by another transaction (taken by another consumer
// that has not committed yet, most likely).
const minRecheck = 10 * time.Millisecond

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (c *consumer) Next(ctx context.Context) (backend.Delivery, error) {
	if c.ctx.Err() != nil {
		return nil, backend.ErrClosed
	}
	w := make(chan *Delivery, 1)
	c.mu.Lock()
	c.waiters = append(c.waiters, w)
	c.mu.Unlock()
	signal(c.more)
	select {
	case d := <-w:
		return d, nil
	case <-ctx.Done():
		c.leave(w)
		return nil, ctx.Err()
	case <-c.ctx.Done():
		c.leave(w)
		return nil, backend.ErrClosed
	}
}

// leave removes a Next call that stopped waiting. If a delivery was handed
// to it meanwhile, the delivery goes to another waiting call, or back.
func (c *consumer) leave(w chan *Delivery) {
	c.mu.Lock()
	i := slices.Index(c.waiters, w)
	if i >= 0 {
		c.waiters = slices.Delete(c.waiters, i, i+1)
	}
	c.mu.Unlock()
	if i < 0 {
		c.handOut(<-w)
	}
}

// waiting returns how many Next calls wait.
func (c *consumer) waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

// handOut gives d to the Next call that has waited longest, or, with none
// waiting, back to the queue.
func (c *consumer) handOut(d *Delivery) {
	c.mu.Lock()
	if len(c.waiters) > 0 && c.ctx.Err() == nil {
		w := c.waiters[0]
		c.waiters = c.waiters[1:]
		w <- d
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	d.unclaim()
}

// Close ends the consumer: waiting Next calls return ErrClosed. Deliveries
// handed out stay valid until settled or their lease runs out.
func (c *consumer) Close() error {
	c.cancel()
	<-c.done
	return nil
}

// fetch leases requests for waiting Next calls until the consumer ends.
// It looks while it has callers and the queue may have due requests; after
// a look that found fewer than wanted, it waits for a notification or the
// time recheckAt chose.
func (c *consumer) fetch() {
	look := true      // the queue may have due requests
	var due time.Time // with !look, when to look anyway
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		if !look && !time.Now().Before(due) {
			look = true
		}
		if n := c.waiting(); n > 0 && look {
			got, next, err := c.claim(n)
			switch {
			case isConnErr(err):
				c.b.dropConns(c.b.fast, err)
				look, due = false, time.Now().Add(minRecheck)
			case err != nil:
				c.log.Warn("rsvppg: taking requests failed; trying again", "err", err, "retry_in", c.b.opts.PollInterval)
				look, due = false, time.Now().Add(c.b.opts.PollInterval)
			case got < n:
				look, due = false, c.recheckAt(next)
			}
			continue
		}
		var expired <-chan time.Time
		if !look {
			timer.Reset(time.Until(due))
			expired = timer.C
		}
		select {
		case <-c.more:
		case <-c.wake:
			look = true
		case <-expired:
		case <-c.ctx.Done():
			return
		}
		timer.Stop()
	}
}

// recheckAt is when an idle consumer looks again without a notification:
// when the next request comes due, but at least minRecheck and at most the
// polling interval from now.
func (c *consumer) recheckAt(next *time.Time) time.Time {
	now := time.Now()
	limit := now.Add(idleRecheck)
	if !c.b.listenUp.Load() {
		limit = now.Add(c.b.opts.PollInterval)
	}
	switch {
	case next == nil || next.After(limit):
		return limit
	case next.Before(now.Add(minRecheck)):
		return now.Add(minRecheck)
	}
	return *next
}

// claim leases up to n due requests and hands them out. It returns how many
// it leased and when the next request of the queue comes due (nil: none
// stored). It runs in the backend's own context, not the consumer's, so
// that leases taken are never left unhanded: those whose caller left go
// back.
func (c *consumer) claim(n int) (int, *time.Time, error) {
	ctx, cancel := c.b.opCtx()
	defer cancel()
	ds, bad, next, err := c.lease(ctx, n)
	if err != nil {
		return 0, nil, fmt.Errorf("rsvppg: take requests of %s: %w", c.queue, err)
	}
	for _, d := range bad {
		c.reject(d.d, d.why)
	}
	for _, d := range ds {
		c.handOut(d)
	}
	return len(ds) + len(bad), next, nil
}

// unreadable is a leased request that cannot be read (written by another
// program, with bad ids or headers), with why.
type unreadable struct {
	d   *Delivery
	why error
}

// lease runs the claim and nextDue statements in one round trip and
// transaction, and returns the leases once it committed: the readable ones
// oldest first, and the others.
func (c *consumer) lease(ctx context.Context, n int) (ds []*Delivery, bad []unreadable, next *time.Time, err error) {
	batch := &pgx.Batch{}
	batch.Queue(c.b.sql.claim, c.queue, n, micros(c.leaseFor))
	batch.Queue(c.b.sql.nextDue, c.queue)
	br := c.b.fast.SendBatch(ctx, batch)
	defer br.Close()
	rows, err := br.Query()
	if err != nil {
		return nil, nil, nil, err
	}
	var seq int64
	var r messageRow
	_, err = pgx.ForEachRow(rows, append([]any{&seq}, r.dest()...), func() error {
		m, err := r.message()
		if err == nil {
			err = errors.Join(backend.ValidateName("id", m.ID), backend.ValidateName("correlation id", m.CorrelationID))
		}
		d := &Delivery{b: c.b, seq: seq, lease: c.leaseFor, msg: m}
		if err != nil {
			bad = append(bad, unreadable{d, err})
		} else {
			ds = append(ds, d)
		}
		return nil
	})
	if err == nil {
		err = br.QueryRow().Scan(&next)
	}
	if err == nil {
		err = br.Close() // the commit
	}
	if err != nil {
		return nil, nil, nil, err
	}
	slices.SortFunc(ds, func(a, b *Delivery) int { return cmp.Compare(a.seq, b.seq) })
	return ds, bad, next, nil
}

// reject dead-letters a request that cannot be read, with reason
// bad_request, and removes it, in the background.
func (c *consumer) reject(d *Delivery, why error) {
	c.log.Error("rsvppg: unreadable request dead-lettered", "seq", d.seq, "id", d.msg.ID, "err", why)
	c.b.goRun(func() {
		ctx, cancel := c.b.opCtx()
		defer cancel()
		dl := &backend.DeadLetter{Message: d.msg, Reason: "bad_request", LastError: why.Error(), At: time.Now()}
		if err := c.b.DeadLetter(ctx, dl); err != nil {
			c.log.Error("rsvppg: dead-lettering an unreadable request failed; it comes back after its lease", "err", err)
			return
		}
		_ = d.Ack(ctx)
	})
}

// Delivery is a leased request. Ack, Nack and Extend act only while the
// lease is this delivery's: once it ran out and the request was delivered
// again, or was settled, they return ErrLeaseLost.
type Delivery struct {
	b     *Backend
	seq   int64 // the row's key
	lease time.Duration
	msg   *backend.Message // msg.Attempt is the lease's token
}

// leaseRef names one lease of a request row.
type leaseRef struct {
	seq     int64
	attempt int
	session bool // the request has a session key
}

func (d *Delivery) ref() leaseRef { return leaseRef{d.seq, d.msg.Attempt, d.msg.SessionKey != ""} }

// Message implements backend.Delivery.
func (d *Delivery) Message() *backend.Message { return d.msg }

// Ack implements backend.Delivery: it deletes the request. Concurrent acks
// share a statement. The request's id stays in the dedupe window. The Ack
// of a request with a session key notifies the queue's consumers, for
// whom the session's next request is now due.
func (d *Delivery) Ack(ctx context.Context) error {
	ctx, cancel, err := d.b.callCtx(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	ok, err := d.b.acks.do(ctx, d.ref())
	if err == nil && !ok {
		err = ErrLeaseLost
	}
	if err != nil {
		return fmt.Errorf("rsvppg: ack %s: %w", d.msg.ID, err)
	}
	d.b.tally.Out(d.msg.Queue)
	return nil
}

// execAcks deletes a batch of leased requests.
func (b *Backend) execAcks(ctx context.Context, refs []leaseRef, again bool) ([]bool, []error, error) {
	deleted, err := b.ack(ctx, b.fast, refs)
	if err != nil {
		return nil, nil, err
	}
	if again {
		// The first run may have deleted some: an ack whose request is
		// gone is taken as done (a stale one would have got ErrLeaseLost).
		if err := b.goneAcks(ctx, refs, deleted); err != nil {
			return nil, nil, err
		}
	}
	return deleted, make([]error, len(refs)), nil
}

// goneAcks sets deleted[i] for the leases of refs whose request rows are
// gone.
func (b *Backend) goneAcks(ctx context.Context, refs []leaseRef, deleted []bool) error {
	var seqs []int64
	for i, r := range refs {
		if !deleted[i] {
			seqs = append(seqs, r.seq)
		}
	}
	if len(seqs) == 0 {
		return nil
	}
	rows, err := b.fast.Query(ctx, b.sql.existing, seqs)
	if err != nil {
		return err
	}
	left, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return err
	}
	for i, r := range refs {
		deleted[i] = deleted[i] || !slices.Contains(left, r.seq)
	}
	return nil
}

// ack deletes the requests of leases, in one round trip and transaction,
// and reports for each lease whether it was still theirs. (A batch may
// hold two leases of one request: a lost one and the current one.)
func (b *Backend) ack(ctx context.Context, q batchSender, refs []leaseRef) ([]bool, error) {
	batch := &pgx.Batch{}
	for _, r := range refs {
		if r.session {
			batch.Queue(b.sql.ackSession, r.seq, r.attempt, b.channel)
		} else {
			batch.Queue(b.sql.ack, r.seq, r.attempt)
		}
	}
	br := q.SendBatch(ctx, batch)
	defer br.Close()
	deleted := make([]bool, len(refs))
	for i := range refs {
		tag, err := br.Exec()
		if err != nil {
			return nil, err
		}
		deleted[i] = tag.RowsAffected() > 0
	}
	return deleted, br.Close()
}

// batchSender sends pipelines: a pool, or a transaction.
type batchSender interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// Nack implements backend.Delivery: the request comes due again after
// delay, and the queue's consumers are told.
func (d *Delivery) Nack(ctx context.Context, delay time.Duration) error {
	if err := d.update(ctx, d.b.sql.nack, true, micros(max(delay, 0)), d.b.channel); err != nil {
		return fmt.Errorf("rsvppg: nack %s: %w", d.msg.ID, err)
	}
	return nil
}

// Extend implements backend.Delivery: the lease runs for another lease
// period from now.
func (d *Delivery) Extend(ctx context.Context) error {
	if err := d.update(ctx, d.b.sql.extend, false, micros(d.lease)); err != nil {
		return fmt.Errorf("rsvppg: extend lease of %s: %w", d.msg.ID, err)
	}
	return nil
}

// update runs a statement on the delivery's lease ($1, $2; args follow),
// and returns ErrLeaseLost if it matched no row.
func (d *Delivery) update(ctx context.Context, sql string, settles bool, args ...any) error {
	ctx, cancel, err := d.b.callCtx(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	var tag pgconn.CommandTag
	runs := 0
	err = d.b.retryOnce(ctx, d.b.fast, func() (err error) {
		runs++
		tag, err = d.b.fast.Exec(ctx, sql, append([]any{d.seq, d.msg.Attempt}, args...)...)
		return err
	})
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 && settles && runs > 1 {
		// Run again after its answer was lost: the first run may have
		// settled the lease (its row is still this attempt's, unleased).
		var done bool
		if err := d.b.fast.QueryRow(ctx, d.b.sql.settled, d.seq, d.msg.Attempt).Scan(&done); err != nil {
			return err
		}
		if done {
			return nil
		}
	}
	if tag.RowsAffected() == 0 {
		return ErrLeaseLost
	}
	return nil
}

// unclaim gives back a lease taken for a Next call that left: the request
// is due at once, with its attempt count as before.
func (d *Delivery) unclaim() {
	ctx, cancel := d.b.opCtx()
	defer cancel()
	err := d.b.retryOnce(ctx, d.b.fast, func() error {
		_, err := d.b.fast.Exec(ctx, d.b.sql.unclaim, d.seq, d.msg.Attempt, d.b.channel)
		return err
	})
	if err != nil {
		d.b.opts.Logger.Warn("rsvppg: giving back a request nobody waited for failed; it comes back after its lease",
			"queue", d.msg.Queue, "id", d.msg.ID, "err", err)
	}
}
