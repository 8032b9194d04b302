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
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	cons, err := b.js.CreateOrUpdateConsumer(ctx, streamRequests, jetstream.ConsumerConfig{
		Durable:       "rsvp_" + queue,
		Description:   "rsvp responders of queue " + queue,
		FilterSubject: subjRequests + queue,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       p.Lease,
		MaxDeliver:    -1,
		MaxAckPending: 100_000,
	})
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: consumer for %s: %w", queue, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(p.Prefetch))
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: consume %s: %w", queue, err)
	}
	c := &consumer{it: it, out: make(chan jetstream.Msg), done: make(chan struct{}), log: b.opts.Logger}
	c.wg.Add(1)
	go c.pump()
	return c, nil
}

type consumer struct {
	it   jetstream.MessagesContext
	out  chan jetstream.Msg
	done chan struct{}
	wg   sync.WaitGroup
	log  *slog.Logger
	once sync.Once
}

// pump moves messages from the iterator to Next's callers.
func (c *consumer) pump() {
	defer c.wg.Done()
	for {
		m, err := c.it.Next()
		if err != nil {
			if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				c.log.Warn("rsvpnats: consumer stopped", "err", err)
			}
			return
		}
		select {
		case c.out <- m:
		case <-c.done:
			// Not handed out: let it go back to the queue at once.
			_ = m.Nak()
			return
		}
	}
}

func (c *consumer) Next(ctx context.Context) (backend.Delivery, error) {
	for {
		select {
		case m := <-c.out:
			msg, err := decodeRequest(m.Subject(), m.Headers(), m.Data())
			if err != nil {
				// Not ours to handle: nobody could. Keep it out of the way.
				c.log.Error("rsvpnats: undecodable request terminated", "subject", m.Subject(), "err", err)
				_ = m.Term()
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

func (c *consumer) Close() error {
	c.once.Do(func() {
		close(c.done)
		c.it.Stop()
		c.wg.Wait()
	})
	return nil
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
