package peers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// rawJetStream is a hand-written request → pull consumer → reply loop on
// the engine rsvp embeds, opened as rsvp opens it in interval mode: the
// server fsyncs its files every second.
var rawJetStream = Peer{
	Name:   "raw-jetstream",
	Server: "embedded nats-server",
	start: func(ctx context.Context, o Options) (*instance, error) {
		dir, err := os.MkdirTemp("", "rsvp-peer-jetstream-*")
		if err != nil {
			return nil, err
		}
		be, err := rsvpnats.Embedded(dir, rsvpnats.Options{Sync: rsvpnats.SyncInterval})
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		in, err := startRawLoop(ctx, be.Conn(), o)
		if err != nil {
			return nil, errors.Join(err, be.Close(), os.RemoveAll(dir))
		}
		in.engine = "raw-jetstream:fsync-every-1s"
		stop := in.close
		in.close = func() error { return errors.Join(stop(), be.Close(), os.RemoveAll(dir)) }
		return in, nil
	},
}

// rawJetStreamFsync is the same loop on a server of its own that fsyncs
// every write before acknowledging it (SyncAlways), one write at a time.
var rawJetStreamFsync = Peer{
	Name:   "raw-jetstream-fsync",
	Server: "embedded nats-server",
	start: func(ctx context.Context, o Options) (*instance, error) {
		es, err := startServer(0)
		if err != nil {
			return nil, err
		}
		nc, err := es.connect("peer-raw-jetstream")
		if err != nil {
			return nil, errors.Join(err, es.stop())
		}
		in, err := startRawLoop(ctx, nc, o)
		if err != nil {
			nc.Close()
			return nil, errors.Join(err, es.stop())
		}
		in.engine = "raw-jetstream-fsync:fsync"
		stop := in.close
		in.close = func() error {
			err := stop()
			nc.Close()
			return errors.Join(err, es.stop())
		}
		return in, nil
	},
}

// embeddedServer is a nats-server with JetStream running in this process
// on a temporary directory.
type embeddedServer struct {
	ns  *server.Server
	dir string
}

// startServer runs a server that fsyncs every syncInterval, or every write
// before acknowledging it when syncInterval is 0.
func startServer(syncInterval time.Duration) (*embeddedServer, error) {
	dir, err := os.MkdirTemp("", "rsvp-peer-nats-*")
	if err != nil {
		return nil, err
	}
	ns, err := server.NewServer(&server.Options{
		ServerName:   "rsvp-peer",
		JetStream:    true,
		StoreDir:     dir,
		SyncAlways:   syncInterval == 0,
		SyncInterval: syncInterval,
		DontListen:   true,
		NoSigs:       true,
		NoLog:        true,
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		ns.WaitForShutdown()
		os.RemoveAll(dir)
		return nil, errors.New("embedded nats-server did not start within 10s")
	}
	return &embeddedServer{ns: ns, dir: dir}, nil
}

// connect opens an in-process connection to the server.
func (s *embeddedServer) connect(name string) (*nats.Conn, error) {
	nc, err := nats.Connect("", nats.InProcessServer(s.ns), nats.Name(name))
	if err != nil {
		return nil, fmt.Errorf("connect to embedded nats-server: %w", err)
	}
	return nc, nil
}

func (s *embeddedServer) stop() error {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	return os.RemoveAll(s.dir)
}

// Subjects, streams and the header of the raw loop.
const (
	rawRequests     = "PEER_REQUESTS"
	rawReplies      = "PEER_REPLIES"
	rawSubjRequest  = "peer.request"
	rawSubjReply    = "peer.reply."  // + id
	rawSubjNotify   = "peer.notify." // + id: the replies stream republishes here
	rawHeaderID     = "Peer-Id"
	rawReplyMaxAge  = time.Hour
	rawDedupeWindow = 2 * time.Minute
)

// startRawLoop sets up the raw JetStream workload on nc: requests go to a
// work-queue stream, read by a durable pull consumer feeding o.Workers
// workers; each worker publishes the reply to a second stream (and waits
// for the server's acknowledgement), then acks the request. The replies
// stream republishes each stored reply to a core subject, where the
// requester's single subscription hands it to the waiting request.
func startRawLoop(ctx context.Context, nc *nats.Conn, o Options) (*instance, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: rawRequests, Subjects: []string{rawSubjRequest}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Duplicates: rawDedupeWindow,
	}); err != nil {
		return nil, fmt.Errorf("create requests stream: %w", err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: rawReplies, Subjects: []string{rawSubjReply + "*"}, Storage: jetstream.FileStorage, MaxAge: rawReplyMaxAge,
		RePublish: &jetstream.RePublish{Source: rawSubjReply + "*", Destination: rawSubjNotify + "{{wildcard(1)}}"},
	}); err != nil {
		return nil, fmt.Errorf("create replies stream: %w", err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, rawRequests, jetstream.ConsumerConfig{
		Durable: "echo", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("create consumer: %w", err)
	}

	// Requester: one subscription for every reply, a waiter per request.
	w := newWaiters[[]byte]()
	sub, err := nc.Subscribe(rawSubjNotify+"*", func(m *nats.Msg) {
		w.deliver(m.Header.Get(rawHeaderID), m.Data)
	})
	if err != nil {
		return nil, err
	}

	// Responder. A pull the server lost is noticed by its missing
	// heartbeats, and made again, within seconds rather than the default
	// 30 (a request waiting that long counts as lost).
	it, err := cons.Messages(jetstream.PullMaxMessages(o.Workers), jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		sub.Unsubscribe()
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				m, err := it.Next()
				if errors.Is(err, jetstream.ErrNoHeartbeat) {
					continue // the iterator pulls again
				}
				if err != nil {
					return // stopped
				}
				id := m.Headers().Get(rawHeaderID)
				reply := &nats.Msg{Subject: rawSubjReply + id, Header: nats.Header{rawHeaderID: {id}}, Data: m.Data()}
				if _, err := js.PublishMsg(rctx, reply); err != nil {
					_ = m.Nak() // redelivered: the requester waits
					continue
				}
				_ = m.Ack()
			}
		}()
	}

	op := func(ctx context.Context, id string) (string, error) {
		ch := w.add(id)
		defer w.remove(id)
		req := &nats.Msg{Subject: rawSubjRequest, Header: nats.Header{rawHeaderID: {id}, jetstream.MsgIDHeader: {id}}, Data: payload(id, o.Size)}
		if _, err := js.PublishMsg(ctx, req); err != nil {
			return "", fmt.Errorf("publish request: %w", err)
		}
		select {
		case body := <-ch:
			return payloadID(body), nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	return &instance{op: op, close: func() error {
		it.Stop()
		cancel()
		wg.Wait()
		return sub.Unsubscribe()
	}}, nil
}

// waiters maps ids to the requests waiting for their reply.
type waiters[T any] struct {
	mu sync.Mutex
	m  map[string]chan T
}

func newWaiters[T any]() *waiters[T] { return &waiters[T]{m: map[string]chan T{}} }

func (w *waiters[T]) add(id string) <-chan T {
	ch := make(chan T, 1)
	w.mu.Lock()
	w.m[id] = ch
	w.mu.Unlock()
	return ch
}

func (w *waiters[T]) remove(id string) {
	w.mu.Lock()
	delete(w.m, id)
	w.mu.Unlock()
}

// deliver hands v to the request waiting for id; it drops v if none is
// (the request gave up) or if one was delivered already (a redelivery).
func (w *waiters[T]) deliver(id string, v T) {
	w.mu.Lock()
	ch := w.m[id]
	w.mu.Unlock()
	if ch != nil {
		select {
		case ch <- v:
		default:
		}
	}
}
