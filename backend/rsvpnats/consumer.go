package rsvpnats

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend"
)

// Consume implements backend.Backend. All consumers of a queue share one
// durable JetStream consumer, so they compete for its messages. Its lease
// (AckWait) is the longest any of them asked for since it was made, also
// when they open at the same moment (see shareLease): a delivery may stay
// leased longer than p.Lease, never shorter.
//
// Each Next sends one pull request for one message when its caller is ready
// for it, to the consumer's one inbox subscription: nothing is fetched ahead
// of a worker, so no request waits in a buffer while its lease runs out.
func (b *Backend) Consume(ctx context.Context, queue string, p backend.ConsumeParams) (backend.Consumer, error) {
	if err := backend.ValidateName("queue", queue); err != nil {
		return nil, fmt.Errorf("rsvpnats: consume: %w", err)
	}
	durable := "rsvp_" + queue
	cfg := jetstream.ConsumerConfig{
		Durable:        durable,
		Description:    "rsvp responders of queue " + queue,
		FilterSubjects: []string{subjRequests + queue, subjSessions + queue + ".*"},
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        cmp.Or(p.Lease, 30*time.Second),
		MaxDeliver:     -1,
		MaxAckPending:  100_000,
	}
	c := &consumer{b: b, queue: queue, log: b.opts.Logger.With("queue", queue), msgs: make(chan arrived, 256), lease: cfg.AckWait,
		next: fmt.Sprintf("$JS.API.CONSUMER.MSG.NEXT.%s.%s", streamRequests, durable)}
	c.ses = newSessions(c, cfg.AckWait)
	c.ctx, c.cancel = context.WithCancel(b.life)
	c.open = func(ctx context.Context) error {
		ctx, cancel := b.withTimeout(ctx)
		defer cancel()
		// The lease (AckWait) is the consumer's, shared by every process
		// consuming the queue: it ends as the longest asked for, so that
		// none cuts short the leases of another's deliveries.
		ackWait, err := b.shareLease(ctx, queue, cfg)
		if err != nil {
			return fmt.Errorf("rsvpnats: consumer for %s: %w", queue, err)
		}
		c.ackWait.Store(int64(ackWait))
		return nil
	}
	if err := c.open(ctx); err != nil {
		c.cancel()
		return nil, err
	}
	c.inbox = nats.NewInbox()
	sub, err := b.nc.Subscribe(c.inbox, func(m *nats.Msg) {
		if c.ctx.Err() == nil {
			select {
			case c.msgs <- arrived{m, time.Now()}:
				return
			case <-c.ctx.Done():
			}
		}
		if m.Reply != "" {
			_ = m.Nak() // pulled for a worker that is gone
		}
	})
	if err != nil {
		c.cancel()
		return nil, fmt.Errorf("rsvpnats: consume %s: %w", queue, err)
	}
	c.sub = sub
	c.wg.Go(func() { c.ses.run(c.ctx) })
	return c, nil
}

// pullWait is how long one pull waits at the server before it is renewed.
const pullWait = 5 * time.Second

type consumer struct {
	b       *Backend
	queue   string
	open    func(context.Context) error // creates the JetStream consumer (again)
	log     *slog.Logger
	ctx     context.Context // ends when the consumer or its backend is closed
	cancel  context.CancelFunc
	next    string // the pull request subject
	inbox   string // where pulled messages and pull statuses arrive
	sub     *nats.Subscription
	msgs    chan arrived
	lease   time.Duration // asked for: the consumer's may be longer
	ackWait atomic.Int64  // the consumer's lease when last opened (it may grow since, not shrink)
	ses     *sessions
	waiting atomic.Int32 // Next calls under way
	lastOut atomic.Int64 // when a Next call last returned (Unix ns)
	wg      sync.WaitGroup
	once    sync.Once
}

// pullRequest asks for one message, waiting up to pullWait for it.
var pullRequest = []byte(fmt.Sprintf(`{"batch":1,"expires":%d}`, pullWait.Nanoseconds()))

func (c *consumer) Next(ctx context.Context) (backend.Delivery, error) {
	c.waiting.Add(1)
	defer func() {
		c.lastOut.Store(time.Now().UnixNano())
		c.waiting.Add(-1)
	}()
	for {
		if c.ctx.Err() != nil || c.lost() {
			return nil, backend.ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if d := c.ses.promote(ctx); d != nil {
			// Its lease was last renewed while held: start it afresh, so
			// that it lasts the full lease from now, as the caller expects.
			// Unless the engine confirms that in time, the request may be
			// with another worker by now: it is left to come back.
			if err := d.renew(ctx); err != nil {
				if ctx.Err() != nil && !errors.Is(err, ErrLeaseLost) {
					// The caller left (a responder stopping), not the lease:
					// it is held again, for another worker, or for Close
					// to hand back, rather than left to its lease.
					c.ses.keep(d)
					return nil, ctx.Err()
				}
				c.log.Warn("rsvpnats: a held session request's lease could not be renewed; it comes back", "id", d.msg.ID, "err", err)
				c.ses.settled(d, false)
				continue
			}
			c.ses.countAttempt(ctx, d)
			return d, nil
		}
		a := c.pull(ctx)
		if a.m == nil {
			continue // the pull ended empty: pull anew
		}
		m := a.m
		msg, err := decodeRequest(m.Subject, m.Header, m.Data)
		if err == nil {
			err = errors.Join(backend.ValidateName("id", msg.ID), backend.ValidateName("correlation id", msg.CorrelationID))
		}
		if err != nil {
			c.reject(m, msg, err)
			continue
		}
		d := &delivery{c: c, m: m, msg: msg}
		d.renewed.Store(a.at.UnixNano())
		if md, err := m.Metadata(); err == nil {
			msg.Attempt = int(md.NumDelivered)
			d.seq = md.Sequence.Stream
		}
		if msg.SessionKey != "" {
			d.ses = c.ses
			if !c.ses.admit(ctx, d) {
				continue // held until its turn, or gone
			}
			c.ses.countAttempt(ctx, d)
		}
		return d, nil
	}
}

// pull sends one pull request and returns the message it brought, or none
// when it ended empty (expired, or the consumer is gone and was made
// again) or ctx or the consumer ended. A status for another worker's pull
// may end this one: each status ends one pull, so the count stays right.
// While session requests are held, pulls expire after sessionPoll, so that
// the worker comes back to check their turns.
func (c *consumer) pull(ctx context.Context) arrived {
	wait := pullWait
	if c.ses.holding() {
		wait = sessionPoll
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) < wait {
		// Expire with the caller's wait, so that no pull outlives it to
		// deliver a message nobody waits for.
		wait = max(time.Until(d), time.Millisecond)
	}
	req := pullRequest
	if wait != pullWait {
		req = fmt.Appendf(nil, `{"batch":1,"expires":%d}`, wait.Nanoseconds())
	}
	if err := c.b.nc.PublishRequest(c.next, c.inbox, req); err != nil {
		c.pause(ctx, err)
		return arrived{}
	}
	timeout := time.NewTimer(wait + c.b.opts.Timeout) // a pull lost on the way
	defer timeout.Stop()
	select {
	case a := <-c.msgs:
		return c.pulled(ctx, a)
	case <-timeout.C:
		return arrived{}
	case <-ctx.Done():
		return arrived{}
	case <-c.ctx.Done():
		return arrived{}
	case <-c.b.done:
		return arrived{}
	}
}

// lost reports whether the backend lost its engine for good (Backend.Done):
// the consumer is closed as far as its workers can tell.
func (c *consumer) lost() bool {
	select {
	case <-c.b.done:
		return true
	default:
		return false
	}
}

// arrived is a message pulled, with when it arrived (or its lease was
// started again since).
type arrived struct {
	m  *nats.Msg
	at time.Time
}

// pulled returns the message a pull brought, or none for a status that
// ended it. A message that arrived for a pull whose caller had left waited
// here with its lease running: its lease starts again, unless it may have
// run out or the engine does not confirm the renewal in time (the request
// may be with another worker by now: it is left to come back), so that no
// lease is handed out shorter than the caller expects.
func (c *consumer) pulled(ctx context.Context, a arrived) arrived {
	m := a.m
	if status := m.Header.Get("Status"); status != "" && len(m.Data) == 0 {
		if status != "404" && status != "408" && status != "100" {
			// 409: the consumer was deleted, or similar. 503: no consumer.
			c.pause(ctx, fmt.Errorf("pull ended with status %s %s", status, m.Header.Get("Description")))
		}
		return arrived{}
	}
	switch waited := time.Since(a.at); {
	case waited < c.lease/20: // taken as it came: the usual case
	case waited >= c.lease*9/10:
		return arrived{}
	default:
		at, err := c.renew(ctx, m, a.at)
		if err != nil {
			return arrived{}
		}
		a.at = at // its lease started again
	}
	return a
}

// pause waits a second, then makes the JetStream consumer again: it may
// have been deleted, or the engine was unreachable.
func (c *consumer) pause(ctx context.Context, why error) {
	c.log.Warn("rsvpnats: pull failed; making the consumer again", "err", why)
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-t.C:
		_ = c.open(ctx)
	case <-ctx.Done():
	case <-c.ctx.Done():
	case <-c.b.done:
	}
}

// Close ends the consumer: waiting Next calls return ErrClosed, and
// messages pulled for workers that left go back to the queue at once.
// Deliveries handed out stay valid until settled or their lease runs out.
func (c *consumer) Close() error {
	c.once.Do(func() {
		c.cancel()
		c.wg.Wait()
		// Unsubscribe first: a pull of this consumer still waiting at the
		// server then has no interest, and what is handed back below goes
		// to another consumer, not to it.
		c.unsubscribe()
		c.ses.release()
		for {
			select {
			case a := <-c.msgs:
				if a.m.Reply != "" && time.Since(a.at) < c.lease*9/10 {
					_ = a.m.Nak()
				}
			default:
				return
			}
		}
	})
	return nil
}

// unsubscribe ends the consumer's inbox subscription once every message
// the server sent to it before it learnt of the end has been through the
// subscription's handler, which hands it back (the consumer is closed):
// pulls of workers that left may still be waiting at the server, and a
// message it sent them just before would otherwise be dropped on arrival,
// or from the subscription's pending messages, and wait out its lease
// there, holding up its session. It drains the subscription, waiting at
// most the backend's Timeout.
func (c *consumer) unsubscribe() {
	closed := c.sub.StatusChanged(nats.SubscriptionClosed)
	if err := c.sub.Drain(); err != nil {
		_ = c.sub.Unsubscribe()
		return
	}
	timeout := time.NewTimer(c.b.opts.Timeout)
	defer timeout.Stop()
	select {
	case <-closed:
	case <-timeout.C:
		_ = c.sub.Unsubscribe()
	case <-c.b.done:
	}
}

// reject takes a request that no handler could read out of the queue: it
// goes to the dead-letter store with reason bad_request, and its requester,
// if it can be told, gets that failure as the reply.
func (c *consumer) reject(m *nats.Msg, msg *backend.Message, why error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.b.opts.Timeout)
	defer cancel()
	c.log.Error("rsvpnats: bad request dead-lettered", "subject", m.Subject, "id", msg.ID, "err", why)
	if md, err := m.Metadata(); err == nil {
		msg.Attempt = int(md.NumDelivered)
		if msg.ID == "" {
			msg.ID = fmt.Sprintf("seq-%d", md.Sequence.Stream)
		}
	}
	dl := &backend.DeadLetter{Message: msg, Reason: "bad_request", LastError: why.Error(), At: time.Now()}
	if err := c.b.DeadLetter(ctx, dl); err != nil {
		c.log.Error("rsvpnats: dead-lettering a bad request failed; it comes back after its lease", "err", err)
		return
	}
	if msg.ReplyTo != "" {
		r := &backend.Reply{CorrelationID: msg.CorrelationID, Status: backend.StatusFailed, ErrorCode: "bad_request", ErrorMessage: why.Error(), CreatedAt: time.Now()}
		_ = c.b.PutReply(ctx, msg.ReplyTo, r) // best effort: the address may be as bad as the rest
	}
	if m.Term() == nil {
		c.b.tally.Out(c.queue)
	}
}

// ErrLeaseLost: a delivery was not settled or extended because its lease
// may have run out, so that the request may be with another worker now.
// It wraps backend.ErrLeaseLost.
var ErrLeaseLost = fmt.Errorf("rsvpnats: %w", backend.ErrLeaseLost)

// delivery is a leased request. JetStream takes an ack, nak or renewal
// sent for any delivery of a message as one for its current delivery: a
// worker whose lease ran out would renew, end or give back the lease of
// the worker that has the request now. So Ack, Nack and Extend act only
// while the lease may still be this delivery's, by its time: once the
// consumer's lease (as read when the consumer opened) has passed since it
// last started, less a twentieth for the time a delivery takes to arrive
// (the engine started the lease before it was seen here), they return
// ErrLeaseLost and send nothing. (JetStream itself does not take a
// renewal after the lease ran out either: the request is delivered again.)
type delivery struct {
	c       *consumer
	m       *nats.Msg
	msg     *backend.Message
	seq     uint64       // stream sequence
	ses     *sessions    // set for a session request
	renewed atomic.Int64 // when its lease last started, Unix ns
}

func (d *delivery) Message() *backend.Message { return d.msg }

// renewedAt is when d's lease last started.
func (d *delivery) renewedAt() time.Time { return time.Unix(0, d.renewed.Load()) }

// renew starts d's lease again, if the engine confirms it in time (see
// consumer.renew).
func (d *delivery) renew(ctx context.Context) error {
	at, err := d.c.renew(ctx, d.m, d.renewedAt())
	if err != nil {
		return err
	}
	for { // keep the latest start: renewals may overlap
		old := d.renewed.Load()
		if at.UnixNano() <= old || d.renewed.CompareAndSwap(old, at.UnixNano()) {
			return nil
		}
	}
}

// lost reports whether d's lease may have run out by now.
func (d *delivery) lost(now time.Time) bool { return d.c.expired(d.renewedAt(), now) }

// expired reports whether a lease of this consumer that started at from
// may have run out by now: the consumer's lease has passed since, less a
// twentieth for the time a delivery takes to arrive (the engine started
// the lease before it was seen here).
func (c *consumer) expired(from, now time.Time) bool {
	ackWait := time.Duration(c.ackWait.Load())
	return now.Sub(from) >= ackWait-ackWait/20
}

// renew starts the lease of m, which started at from, again, and returns
// when the new one started. Only a renewal that the engine confirmed
// before the old lease could run out counts; otherwise it returns an
// error (ErrLeaseLost if the lease may have run out). One that arrived
// later may have renewed another worker's lease, and one that never
// arrived renewed nothing: nats.go reports a publish sent once it is
// written, or buffered while the connection is down.
func (c *consumer) renew(ctx context.Context, m *nats.Msg, from time.Time) (time.Time, error) {
	sent := time.Now()
	if c.expired(from, sent) {
		return from, ErrLeaseLost
	}
	ctx, cancel := c.b.withTimeout(ctx)
	defer cancel()
	if err := m.InProgress(nats.Context(ctx)); err != nil {
		return from, settled(err)
	}
	if c.expired(from, time.Now()) {
		return from, ErrLeaseLost
	}
	return sent, nil
}

// settled is err, or ErrLeaseLost if err says the delivery was settled
// already: its lease is no longer the caller's (backend.ErrLeaseLost).
func settled(err error) error {
	if errors.Is(err, nats.ErrMsgAlreadyAckd) {
		return ErrLeaseLost
	}
	return err
}

func (d *delivery) Ack(ctx context.Context) error {
	if d.lost(time.Now()) {
		return fmt.Errorf("rsvpnats: ack %s: %w", d.msg.ID, ErrLeaseLost)
	}
	if d.ses != nil {
		// Confirmed: the session's next request is handed out on the
		// strength of this ack.
		if err := d.m.AckSync(nats.Context(ctx)); err != nil {
			return fmt.Errorf("rsvpnats: ack %s: %w", d.msg.ID, settled(err))
		}
		d.ses.settled(d, true)
		d.c.b.tally.Out(d.c.queue)
		return nil
	}
	if err := d.m.Ack(); err != nil {
		return fmt.Errorf("rsvpnats: ack %s: %w", d.msg.ID, settled(err))
	}
	d.c.b.tally.Out(d.c.queue)
	return nil
}

func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	if d.lost(time.Now()) {
		return fmt.Errorf("rsvpnats: nack %s: %w", d.msg.ID, ErrLeaseLost)
	}
	if err := d.m.NakWithDelay(delay); err != nil {
		return fmt.Errorf("rsvpnats: nack %s: %w", d.msg.ID, settled(err))
	}
	if d.ses != nil {
		d.ses.settled(d, false)
	}
	return nil
}

// Extend waits for the engine to confirm the renewal, so that it is known
// to have arrived before the lease could run out; if it came too late, it
// may have renewed another worker's lease, and Extend returns ErrLeaseLost.
func (d *delivery) Extend(ctx context.Context) error {
	if err := d.renew(ctx); err != nil {
		return fmt.Errorf("rsvpnats: extend lease of %s: %w", d.msg.ID, err)
	}
	if d.ses != nil {
		d.ses.extended(d)
	}
	return nil
}
