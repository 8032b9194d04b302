package bench

import (
	"context"
	"fmt"
	"runtime"

	"github.com/nats-io/nats.go"

	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// idHeader carries the harness id in the limits' NATS and HTTP messages.
const idHeader = "Bench-Id"

// LimitNATSRequest measures NATS core request-reply, with no JetStream:
// nc.Request to a subject that subscribers on the same connection answer
// with the message they got (LimitMessageSize bytes and the id in a
// header). The server is an in-memory embedded engine (rsvpnats.Embedded
// with Memory) reached in-process, as rsvp's embedded engine is; one queue
// subscriber per CPU answers. Default labels: limit:nats-request on
// embedded:mem.
func LimitNATSRequest(ctx context.Context, cfg Config) (res Result, err error) {
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		return Result{}, fmt.Errorf("bench: embedded engine: %w", err)
	}
	defer func() {
		if cerr := b.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("bench: close engine: %w", cerr)
		}
	}()
	nc := b.Conn()
	subject := "bench.echo." + token()
	unsubscribe, err := echoSubscribers(nc, subject, runtime.GOMAXPROCS(0))
	if err != nil {
		return Result{}, err
	}
	defer unsubscribe()
	body := make([]byte, LimitMessageSize)
	return Run(ctx, named(cfg, "limit:nats-request", "embedded:mem"), func(ctx context.Context, id string) (string, error) {
		m := &nats.Msg{Subject: subject, Header: nats.Header{idHeader: {id}}, Data: body}
		r, err := nc.RequestMsgWithContext(ctx, m)
		if err != nil {
			return "", err
		}
		return r.Header.Get(idHeader), nil
	})
}

// echoSubscribers subscribes n queue subscribers to subject that answer
// each request with its own headers and data. The returned function
// unsubscribes them.
func echoSubscribers(nc *nats.Conn, subject string, n int) (func(), error) {
	var subs []*nats.Subscription
	unsubscribe := func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}
	for range n {
		s, err := nc.QueueSubscribe(subject, "echo", func(m *nats.Msg) {
			_ = m.RespondMsg(&nats.Msg{Header: m.Header, Data: m.Data})
		})
		if err != nil {
			unsubscribe()
			return nil, fmt.Errorf("bench: subscribe %s: %w", subject, err)
		}
		subs = append(subs, s)
	}
	if err := nc.Flush(); err != nil {
		unsubscribe()
		return nil, fmt.Errorf("bench: subscribe %s: %w", subject, err)
	}
	return unsubscribe, nil
}
