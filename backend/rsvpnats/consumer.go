package rsvpnats

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend"
)

// Consume implements backend.Backend. All consumers of a queue share one
// durable JetStream consumer, so they compete for its messages.
func (b *Backend) Consume(ctx context.Context, queue string, p backend.ConsumeParams) (backend.Consumer, error) {
	if err := backend.ValidateName("queue", queue); err != nil {
		return nil, fmt.Errorf("rsvpnats: consume: %w", err)
	}
	p.Lease = cmp.Or(p.Lease, 30*time.Second)
	p.Prefetch = max(p.Prefetch, 1)
	cfg := jetstream.ConsumerConfig{
		Durable:       "rsvp_" + queue,
		Description:   "rsvp responders of queue " + queue,
		FilterSubject: subjRequests + queue,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       p.Lease,
		MaxDeliver:    -1,
		MaxAckPending: 100_000,
	}
	c := &consumer{b: b, out: make(chan jetstream.Msg), done: make(chan struct{}), log: b.opts.Logger.With("queue", queue)}
	c.open = func(ctx context.Context) (jetstream.MessagesContext, error) {
		ctx, cancel := b.withTimeout(ctx)
		defer cancel()
		cons, err := b.js.CreateOrUpdateConsumer(ctx, streamRequests, cfg)
		if err != nil {
			return nil, fmt.Errorf("rsvpnats: consumer for %s: %w", queue, err)
		}
		// Missing heartbeats end the iterator, so that a consumer deleted
		// under it is noticed (within two heartbeats) and made again.
		it, err := cons.Messages(jetstream.PullMaxMessages(p.Prefetch), jetstream.PullHeartbeat(5*time.Second),
			jetstream.WithMessagesErrOnMissingHeartbeat(true))
		if err != nil {
			return nil, fmt.Errorf("rsvpnats: consume %s: %w", queue, err)
		}
		return it, nil
	}
	it, err := c.open(ctx)
	if err != nil {
		return nil, err
	}
	c.it = it
	c.wg.Add(1)
	go c.pump()
	return c, nil
}

type consumer struct {
	b    *Backend
	open func(context.Context) (jetstream.MessagesContext, error)
	out  chan jetstream.Msg
	done chan struct{}
	wg   sync.WaitGroup
	log  *slog.Logger
	once sync.Once

	mu      sync.Mutex
	it      jetstream.MessagesContext // replaced when the consumer had to be made again
	closing bool
}

// pump moves messages from the iterator to Next's callers. Once the
// consumer is closing, it returns what it still holds to the queue. If the
// iterator ends by itself (the JetStream consumer was deleted, say), it
// makes a new one, retrying every second.
func (c *consumer) pump() {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		it := c.it
		c.mu.Unlock()
		m, err := it.Next()
		if err != nil {
			giveBack(it)
			if !c.reopen(err) {
				return
			}
			continue
		}
		select {
		case c.out <- m:
		case <-c.done:
			_ = m.Nak()
		}
	}
}

// giveBack ends it and returns the messages it still buffers to the queue.
func giveBack(it jetstream.MessagesContext) {
	it.Drain()
	for {
		m, err := it.Next()
		if err != nil {
			return
		}
		_ = m.Nak()
	}
}

// reopen replaces an iterator that ended with err. It reports false when
// the consumer is closing.
func (c *consumer) reopen(err error) bool {
	c.mu.Lock()
	closing := c.closing
	c.mu.Unlock()
	if closing {
		return false
	}
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-c.done:
			return false
		case <-retry.C:
		}
		c.log.Warn("rsvpnats: consumer interrupted; making it again", "err", err)
		var it jetstream.MessagesContext
		if it, err = c.open(context.Background()); err == nil {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.closing {
				it.Stop()
				return false
			}
			c.it = it
			return true
		}
		retry.Reset(time.Second)
	}
}

func (c *consumer) Next(ctx context.Context) (backend.Delivery, error) {
	for {
		select {
		case m := <-c.out:
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
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.done:
			return nil, backend.ErrClosed
		}
	}
}

// Close unsubscribes first, so that the messages it then gives back (the
// ones fetched but not handed out) go to other consumers at once rather
// than back to this one.
func (c *consumer) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.closing = true
		c.it.Drain()
		c.mu.Unlock()
		close(c.done)
		c.wg.Wait()
	})
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
