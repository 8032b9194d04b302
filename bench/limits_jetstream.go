package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// The streams, subjects and headers of rsvp's wire format (docs/wire.md)
// that the raw loop uses.
const (
	wireRequests      = "RSVP_REQUESTS"
	wireReplies       = "RSVP_REPLIES"
	wireSubjRequests  = "rsvp.req."    // + queue
	wireSubjReplies   = "rsvp.reply."  // + correlation id + "." + inbox
	wireSubjNotify    = "rsvp.notify." // + correlation id + "." + inbox
	wireID            = "Rsvp-Id"
	wireCorrelationID = "Rsvp-Correlation-Id"
	wireMsgID         = "Nats-Msg-Id"
)

// rawTimeout bounds the raw loop's calls that have no context of their
// own: a responder's reply, setting up and tearing down.
const rawTimeout = 10 * time.Second

// rawRecheck is how long a request waits for its reply's notification
// before it looks for the stored reply, and then again: a notification is
// best effort (core NATS), as in rsvp's own wait (Config.RecheckInterval).
const rawRecheck = time.Second

// rawPullExpiry is how long the responders' pulls wait at the server
// before they are renewed: a pull lost under load is noticed (two missed
// heartbeats, at half this) after this long, not after the 30s default.
const rawPullExpiry = 5 * time.Second

// LimitJetStream measures the engine under rsvp's round trip: a
// hand-written request → consumer → reply loop with plain nats.go calls on
// rsvp's streams, with none of rsvp's work (no validation, deadlines,
// leases, retries, dead letters). A requester publishes a LimitMessageSize
// request to a queue and waits for its reply's notification (or, if that
// is lost, finds the stored reply a second later); responders
// (max(concurrency, 8) of them, as for rsvp's round trip) pull it from a
// durable consumer, publish the reply, then ack.
//
// The engine is a new embedded one on disk, in a new directory under dir
// ("": the system's temporary directory), removed afterwards. With
// rsvpnats.SyncAlways, a publish counts as done once fsynced by the
// backend's group commit (Backend.Publish), as rsvp's own writes are; with
// SyncInterval, on the acknowledgement. Default labels: limit:jetstream on
// embedded:fsync or embedded:interval.
func LimitJetStream(ctx context.Context, cfg Config, dir string, mode rsvpnats.Sync) (res Result, err error) {
	tmp, remove, err := tempDir(dir, "rsvp-limit-jetstream-*")
	if err != nil {
		return Result{}, err
	}
	defer func() { err = errors.Join(err, remove()) }()
	b, err := rsvpnats.Embedded(tmp, rsvpnats.Options{Sync: mode})
	if err != nil {
		return Result{}, fmt.Errorf("bench: embedded engine: %w", err)
	}
	defer func() { err = errors.Join(err, b.Close()) }()
	l := &rawLoop{label: "embedded:interval", b: b}
	if mode == rsvpnats.SyncAlways {
		l.label = "embedded:fsync"
	}
	return l.run(ctx, cfg, b.Conn())
}

// LimitJetStreamOn runs the loop of LimitJetStream on the engine of b (an
// external server, say), taking a publish as done on its acknowledgement:
// the durability the server's own sync setting gives. It leaves nothing
// behind on the engine. Default labels: limit:jetstream on jetstream.
func LimitJetStreamOn(ctx context.Context, cfg Config, b *rsvpnats.Backend) (Result, error) {
	l := &rawLoop{label: "jetstream"}
	return l.run(ctx, cfg, b.Conn())
}

// rawLoop is one run of the raw JetStream loop.
type rawLoop struct {
	label        string
	b            *rsvpnats.Backend // nil: publish and take the acknowledgement
	js           jetstream.JetStream
	replies      jetstream.Stream
	queue, inbox string
	body         []byte

	mu      sync.Mutex
	waiting map[string]chan string // by correlation id
}

func (l *rawLoop) run(ctx context.Context, cfg Config, nc *nats.Conn) (res Result, err error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return Result{}, fmt.Errorf("bench: jetstream: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, rawTimeout)
	l.replies, err = js.Stream(sctx, wireReplies)
	cancel()
	if err != nil {
		return Result{}, fmt.Errorf("bench: replies stream: %w", err)
	}
	l.js, l.queue, l.inbox = js, "bench_"+token(), "bench"+token()
	l.body, l.waiting = make([]byte, LimitMessageSize), map[string]chan string{}
	sub, err := nc.Subscribe(wireSubjNotify+"*."+l.inbox, l.notified)
	if err != nil {
		return Result{}, fmt.Errorf("bench: subscribe to replies: %w", err)
	}
	// Last, once no responder can reply any more.
	defer func() { err = errors.Join(err, l.unsubscribe(sub)) }()
	if err := nc.Flush(); err != nil {
		return Result{}, fmt.Errorf("bench: subscribe to replies: %w", err)
	}
	stopResponders, err := l.startResponders(ctx, limitWorkers(cfg))
	if err != nil {
		return Result{}, err
	}
	defer func() { err = errors.Join(err, stopResponders()) }()
	return Run(ctx, named(cfg, "limit:jetstream", l.label), l.request)
}

// request is the operation: publish a request, wait for its reply.
func (l *rawLoop) request(ctx context.Context, id string) (string, error) {
	ch := make(chan string, 1)
	l.mu.Lock()
	l.waiting[id] = ch
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.waiting, id)
		l.mu.Unlock()
	}()
	m := &nats.Msg{Subject: wireSubjRequests + l.queue, Header: nats.Header{wireID: {id}, wireMsgID: {id}}, Data: l.body}
	if err := l.publish(ctx, m); err != nil {
		return "", fmt.Errorf("publish request: %w", err)
	}
	recheck := time.NewTicker(rawRecheck)
	defer recheck.Stop()
	for {
		select {
		case got := <-ch:
			return got, nil
		case <-ctx.Done():
			return "", ctx.Err()
		case <-recheck.C:
			if _, err := l.replies.GetLastMsgForSubject(ctx, wireSubjReplies+id+"."+l.inbox); err == nil {
				return id, nil // stored; its notification was lost
			}
		}
	}
}

// publish stores m, through the backend's durable path when there is one.
func (l *rawLoop) publish(ctx context.Context, m *nats.Msg) error {
	if l.b != nil {
		return l.b.Publish(ctx, m)
	}
	_, err := l.js.PublishMsg(ctx, m)
	return err
}

// notified hands a reply's notification to the request waiting for it.
func (l *rawLoop) notified(m *nats.Msg) {
	id := m.Header.Get(wireCorrelationID)
	l.mu.Lock()
	ch := l.waiting[id]
	delete(l.waiting, id) // a second notification finds nobody
	l.mu.Unlock()
	if ch != nil {
		ch <- id
	}
}

// startResponders creates the queue's durable consumer and n goroutines
// answering its requests. The returned function stops them, waits for
// them and deletes the consumer.
func (l *rawLoop) startResponders(ctx context.Context, n int) (func() error, error) {
	cctx, cancel := context.WithTimeout(ctx, rawTimeout)
	defer cancel()
	name := "rsvp_" + l.queue
	cons, err := l.js.CreateOrUpdateConsumer(cctx, wireRequests, jetstream.ConsumerConfig{
		Durable: name, FilterSubject: wireSubjRequests + l.queue,
		AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 100_000,
	})
	if err != nil {
		return nil, fmt.Errorf("bench: create consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(n), jetstream.PullExpiry(rawPullExpiry))
	if err != nil {
		return nil, errors.Join(fmt.Errorf("bench: consume: %w", err), l.deleteConsumer(name))
	}
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { l.respond(it) })
	}
	return func() error {
		it.Stop()
		wg.Wait()
		return errors.Join(l.deleteConsumer(name), l.purge(wireRequests, wireSubjRequests+l.queue))
	}, nil
}

// purge removes subject's messages from stream, so that nothing of the run
// is left on a shared engine: a request whose publish was acknowledged
// only after the run's end stays queued, its responders gone.
func (l *rawLoop) purge(stream, subject string) error {
	ctx, cancel := context.WithTimeout(context.Background(), rawTimeout)
	defer cancel()
	s, err := l.js.Stream(ctx, stream)
	if err == nil {
		err = s.Purge(ctx, jetstream.WithPurgeSubject(subject))
	}
	if err != nil {
		return fmt.Errorf("bench: purge %s of %s: %w", subject, stream, err)
	}
	return nil
}

func (l *rawLoop) deleteConsumer(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), rawTimeout)
	defer cancel()
	if err := l.js.DeleteConsumer(ctx, wireRequests, name); err != nil {
		return fmt.Errorf("bench: delete consumer %s: %w", name, err)
	}
	return nil
}

// respond answers requests until the iterator stops: it publishes the
// reply (the request's body), then acks. A request whose reply failed
// comes back.
func (l *rawLoop) respond(it jetstream.MessagesContext) {
	for {
		m, err := it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return // stopped
		}
		if err != nil {
			continue // a missed heartbeat, say: the iterator pulls again by itself
		}
		id := m.Headers().Get(wireID)
		r := &nats.Msg{Subject: wireSubjReplies + id + "." + l.inbox, Header: nats.Header{wireCorrelationID: {id}}, Data: m.Data()}
		ctx, cancel := context.WithTimeout(context.Background(), rawTimeout)
		err = l.publish(ctx, r)
		cancel()
		if err != nil {
			_ = m.NakWithDelay(100 * time.Millisecond)
			continue
		}
		_ = m.Ack()
	}
}

// unsubscribe ends the reply subscription and purges the loop's replies,
// so that nothing is left on a shared engine.
func (l *rawLoop) unsubscribe(sub *nats.Subscription) error {
	return errors.Join(sub.Unsubscribe(), l.purge(wireReplies, wireSubjReplies+"*."+l.inbox))
}
