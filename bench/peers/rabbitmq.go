package peers

import (
	"context"
	"errors"
	"fmt"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// rabbitPeer is RabbitMQ RPC: a durable request queue, persistent requests
// published with publisher confirms, a responder that acks by hand after
// replying through direct reply-to.
var rabbitPeer = Peer{
	Name:   "rabbitmq-rpc",
	Server: "RabbitMQ",
	addr: func(o Options) (string, error) {
		u, err := amqp.ParseURI(o.AMQP)
		if err != nil {
			return "", err
		}
		return hostPort(fmt.Sprintf("%s:%d", u.Host, u.Port), "5672"), nil
	},
	start: startRabbit,
}

const (
	rabbitQueue   = "rsvp_peer_rpc"
	rabbitReplyTo = "amq.rabbitmq.reply-to"
)

func startRabbit(ctx context.Context, o Options) (*instance, error) {
	// Requester and responder have a connection each, as two programs
	// would.
	reqConn, err := amqp.Dial(o.AMQP)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", redactURL(o.AMQP), err)
	}
	respConn, err := amqp.Dial(o.AMQP)
	if err != nil {
		reqConn.Close()
		return nil, fmt.Errorf("dial %s: %w", redactURL(o.AMQP), err)
	}
	fail := func(err error) (*instance, error) {
		return nil, errors.Join(err, respConn.Close(), reqConn.Close())
	}

	// A durable classic queue, emptied of anything an earlier run left.
	setup, err := respConn.Channel()
	if err != nil {
		return fail(err)
	}
	if _, err := setup.QueueDeclare(rabbitQueue, true, false, false, false, nil); err != nil {
		return fail(fmt.Errorf("declare queue: %w", err))
	}
	if _, err := setup.QueuePurge(rabbitQueue, false); err != nil {
		return fail(fmt.Errorf("purge queue: %w", err))
	}

	// Responder: o.Workers channels, each with one unacked request at a
	// time; reply, then ack.
	var wg sync.WaitGroup
	for range o.Workers {
		ch, err := respConn.Channel()
		if err != nil {
			return fail(err)
		}
		if err := ch.Qos(1, 0, false); err != nil {
			return fail(err)
		}
		deliveries, err := ch.Consume(rabbitQueue, "", false, false, false, false, nil)
		if err != nil {
			return fail(fmt.Errorf("consume: %w", err))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range deliveries { // closed when the connection is
				err := ch.PublishWithContext(context.Background(), "", d.ReplyTo, false, false, amqp.Publishing{
					CorrelationId: d.CorrelationId, ContentType: d.ContentType, Body: d.Body,
				})
				if err != nil {
					_ = d.Nack(false, true)
					continue
				}
				_ = d.Ack(false)
			}
		}()
	}

	pool := &rabbitPool{conn: reqConn}
	op := func(ctx context.Context, id string) (string, error) {
		rc, err := pool.get()
		if err != nil {
			return "", err
		}
		reply, err := rc.call(ctx, id, payload(id, o.Size))
		pool.put(rc, err == nil)
		return reply, err
	}
	return &instance{engine: "rabbitmq-rpc:persistent+confirms", op: op, close: func() error {
		pool.closeAll()
		_, derr := setup.QueueDelete(rabbitQueue, false, false, false)
		err := errors.Join(derr, respConn.Close())
		wg.Wait()
		return errors.Join(err, reqConn.Close())
	}}, nil
}

// rabbitPool holds the requester's channels, one per request in flight:
// direct reply-to delivers a reply to the channel that published the
// request, and a channel carries one request at a time.
type rabbitPool struct {
	conn *amqp.Connection
	mu   sync.Mutex
	free []*rabbitChan
	all  []*rabbitChan
}

// rabbitChan is a requester channel in confirm mode, consuming its
// direct reply-to pseudo-queue.
type rabbitChan struct {
	ch      *amqp.Channel
	replies <-chan amqp.Delivery
}

func (p *rabbitPool) get() (*rabbitChan, error) {
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		rc := p.free[n-1]
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return rc, nil
	}
	p.mu.Unlock()
	ch, err := p.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, fmt.Errorf("confirm mode: %w", err)
	}
	// The protocol wants the reply-to consumer (no-ack) before the first
	// publish that names amq.rabbitmq.reply-to.
	replies, err := ch.Consume(rabbitReplyTo, "", true, false, false, false, nil)
	if err != nil {
		ch.Close()
		return nil, fmt.Errorf("consume %s: %w", rabbitReplyTo, err)
	}
	rc := &rabbitChan{ch: ch, replies: replies}
	p.mu.Lock()
	p.all = append(p.all, rc)
	p.mu.Unlock()
	return rc, nil
}

// put returns rc to the pool, or closes it when its call failed: a reply
// still on its way would otherwise reach the next request.
func (p *rabbitPool) put(rc *rabbitChan, ok bool) {
	if !ok {
		rc.ch.Close()
		return
	}
	p.mu.Lock()
	p.free = append(p.free, rc)
	p.mu.Unlock()
}

func (p *rabbitPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, rc := range p.all {
		rc.ch.Close()
	}
	p.free, p.all = nil, nil
}

// call publishes a persistent request, waits for the broker's confirm,
// then for the reply with the request's correlation id.
func (rc *rabbitChan) call(ctx context.Context, id string, body []byte) (string, error) {
	dc, err := rc.ch.PublishWithDeferredConfirmWithContext(ctx, "", rabbitQueue, false, false, amqp.Publishing{
		DeliveryMode:  amqp.Persistent,
		CorrelationId: id,
		ReplyTo:       rabbitReplyTo,
		ContentType:   "application/octet-stream",
		Body:          body,
	})
	if err != nil {
		return "", fmt.Errorf("publish: %w", err)
	}
	acked, err := dc.WaitContext(ctx)
	if err != nil {
		return "", fmt.Errorf("await confirm: %w", err)
	}
	if !acked {
		return "", errors.New("request nacked by the broker")
	}
	for {
		select {
		case d, ok := <-rc.replies:
			if !ok {
				return "", errors.New("channel closed while awaiting the reply")
			}
			if d.CorrelationId != id {
				continue // a late duplicate of an earlier request's reply
			}
			return payloadID(d.Body), nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// redactURL hides a URL's password.
func redactURL(s string) string {
	u, err := amqp.ParseURI(s)
	if err != nil {
		return "the AMQP URL"
	}
	return fmt.Sprintf("%s://%s:%d%s", u.Scheme, u.Host, u.Port, u.Vhost)
}
