package rsvpnats

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend"
)

// Consume implements backend.Backend. All consumers of a queue share one
// durable JetStream consumer, so they compete for its messages.
//
// Each Next pulls one message when its caller is ready for it: nothing is
// fetched ahead, so no request waits in a buffer while its lease runs out.
func (b *Backend) Consume(ctx context.Context, queue string, p backend.ConsumeParams) (backend.Consumer, error) {
	if err := backend.ValidateName("queue", queue); err != nil {
		return nil, fmt.Errorf("rsvpnats: consume: %w", err)
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       "rsvp_" + queue,
		Description:   "rsvp responders of queue " + queue,
		FilterSubject: subjRequests + queue,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cmp.Or(p.Lease, 30*time.Second),
		MaxDeliver:    -1,
		MaxAckPending: 100_000,
	}
	c := &consumer{b: b, log: b.opts.Logger.With("queue", queue)}
	c.ctx, c.cancel = context.WithCancel(b.life)
	c.open = func(ctx context.Context) (jetstream.Consumer, error) {
		ctx, cancel := b.withTimeout(ctx)
		defer cancel()
		cons, err := b.js.CreateOrUpdateConsumer(ctx, streamRequests, cfg)
		if err != nil {
			return nil, fmt.Errorf("rsvpnats: consumer for %s: %w", queue, err)
		}
		return cons, nil
	}
	cons, err := c.open(ctx)
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.cons = cons
	return c, nil
}

// pullWait is how long one pull waits at the server before it is renewed.
const pullWait = 5 * time.Second

type consumer struct {
	b      *Backend
	open   func(context.Context) (jetstream.Consumer, error)
	log    *slog.Logger
	ctx    context.Context // ends when the consumer is closed
	cancel context.CancelFunc

	mu   sync.Mutex
	cons jetstream.Consumer // made again if it was deleted
}

func (c *consumer) Next(ctx context.Context) (backend.Delivery, error) {
	for {
		if c.ctx.Err() != nil {
			return nil, backend.ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m, err := c.pull(ctx)
		if err != nil {
			continue // an empty pull, or the consumer was made again: pull anew
		}
		msg, err := decodeRequest(m.Subject(), m.Headers(), m.Data())
		if err == nil {
			err = errors.Join(backend.ValidateName("id", msg.ID), backend.ValidateName("correlation id", msg.CorrelationID))
		}
		if err != nil {
			c.reject(m, msg, err)
			continue
		}
		if md, err := m.Metadata(); err == nil {
			msg.Attempt = int(md.NumDelivered)
		}
		return &delivery{m: m, msg: msg}, nil
	}
}

// pull fetches one message, waiting at most pullWait, until ctx ends or the
// consumer closes. An error means: nothing this time.
func (c *consumer) pull(ctx context.Context) (jetstream.Msg, error) {
	fctx, cancel := context.WithTimeout(ctx, pullWait)
	defer cancel()
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	c.mu.Lock()
	cons := c.cons
	c.mu.Unlock()
	m, err := cons.Next(jetstream.FetchContext(fctx))
	if err == nil || fctx.Err() != nil || errors.Is(err, nats.ErrTimeout) {
		return m, err
	}
	// The consumer was deleted, or the engine is unreachable: make the
	// consumer again, pacing the attempts.
	c.log.Warn("rsvpnats: pull failed; making the consumer again", "err", err)
	pace := time.NewTimer(time.Second)
	defer pace.Stop()
	select {
	case <-pace.C:
	case <-fctx.Done():
		return nil, err
	}
	if cons, oerr := c.open(ctx); oerr == nil {
		c.mu.Lock()
		c.cons = cons
		c.mu.Unlock()
	}
	return nil, err
}

// Close ends the consumer: waiting Next calls return ErrClosed. Deliveries
// already handed out stay valid until settled or their lease runs out.
func (c *consumer) Close() error {
	c.cancel()
	return nil
}

// reject takes a request that no handler could read out of the queue: it
// goes to the dead-letter store with reason bad_request, and its requester,
// if it can be told, gets that failure as the reply.
func (c *consumer) reject(m jetstream.Msg, msg *backend.Message, why error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.b.opts.Timeout)
	defer cancel()
	c.log.Error("rsvpnats: bad request dead-lettered", "subject", m.Subject(), "id", msg.ID, "err", why)
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
	_ = m.Term()
}

type delivery struct {
	m   jetstream.Msg
	msg *backend.Message
}

func (d *delivery) Message() *backend.Message { return d.msg }

func (d *delivery) Ack(ctx context.Context) error {
	if err := d.m.Ack(); err != nil {
		return fmt.Errorf("rsvpnats: ack %s: %w", d.msg.ID, err)
	}
	return nil
}

func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	if err := d.m.NakWithDelay(delay); err != nil {
		return fmt.Errorf("rsvpnats: nack %s: %w", d.msg.ID, err)
	}
	return nil
}

func (d *delivery) Extend(ctx context.Context) error {
	if err := d.m.InProgress(); err != nil {
		return fmt.Errorf("rsvpnats: extend lease of %s: %w", d.msg.ID, err)
	}
	return nil
}
