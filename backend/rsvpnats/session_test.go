package rsvpnats_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/internal/natstest"
	"github.com/rsvp-go/rsvp/internal/tcpproxy"
)

func sessionEnqueue(t *testing.T, ctx context.Context, b backend.Backend, q, id, key string) {
	t.Helper()
	m := &backend.Message{ID: id, CorrelationID: id, Queue: q, SessionKey: key, Body: []byte(id), CreatedAt: time.Now()}
	if err := b.Enqueue(ctx, m); err != nil {
		t.Fatal(err)
	}
}

func sessionConsume(t *testing.T, ctx context.Context, b backend.Backend, q string, lease time.Duration) backend.Consumer {
	t.Helper()
	c, err := b.Consume(ctx, q, backend.ConsumeParams{Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func nextWithin(c backend.Consumer, d time.Duration) (backend.Delivery, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return c.Next(ctx)
}

// A consumer that holds a session request (it was pulled before its turn)
// gives it back when its turn comes and no worker waits in Next there, so
// that another consumer takes it: the HTTP gateway keeps consumers open
// between lease calls.
func TestSessionTurnWithoutWorkerGoesBack(t *testing.T) {
	b, ctx := statsSetup(t)
	sessionEnqueue(t, ctx, b, "gw", "h1", "k")
	sessionEnqueue(t, ctx, b, "gw", "h2", "k")
	a := sessionConsume(t, ctx, b, "gw", 2*time.Second)
	other := sessionConsume(t, ctx, b, "gw", 2*time.Second)
	d1, err := nextWithin(a, 5*time.Second)
	if err != nil || d1.Message().ID != "h1" {
		t.Fatalf("first: %v, %v", d1, err)
	}
	if d, err := nextWithin(a, 300*time.Millisecond); err == nil { // pulls h2 and holds it
		t.Fatalf("h2 was handed out before its turn: %s", d.Message().ID)
	}
	if err := d1.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	d, err := nextWithin(other, 8*time.Second)
	if err != nil || d.Message().ID != "h2" || d.Message().Attempt != 1 {
		t.Fatalf("other consumer: %v, %v; want h2 at attempt 1, given back by the consumer that held it", d, err)
	}
}

// Hand-backs are not attempts: a session request held and given back by
// consumers that closed (restarts while the request before it ran) is
// attempt 1 when it finally runs.
func TestSessionHandBacksAreNotAttempts(t *testing.T) {
	b, ctx := statsSetup(t)
	sessionEnqueue(t, ctx, b, "deploys", "h1", "k")
	sessionEnqueue(t, ctx, b, "deploys", "h2", "k")
	first := sessionConsume(t, ctx, b, "deploys", 30*time.Second)
	d1, err := nextWithin(first, 5*time.Second)
	if err != nil || d1.Message().ID != "h1" {
		t.Fatalf("first: %v, %v", d1, err)
	}
	for range 5 { // five restarts while h1 runs
		c, err := b.Consume(ctx, "deploys", backend.ConsumeParams{Lease: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if d, err := nextWithin(c, 300*time.Millisecond); err == nil {
			t.Fatalf("h2 was handed out before its turn: %s", d.Message().ID)
		}
		c.Close()
	}
	if err := d1.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	c := sessionConsume(t, ctx, b, "deploys", 30*time.Second)
	d, err := nextWithin(c, 5*time.Second)
	if err != nil || d.Message().ID != "h2" {
		t.Fatalf("after the restarts: %v, %v", d, err)
	}
	if d.Message().Attempt != 1 {
		t.Fatalf("h2 never ran, yet its attempt is %d", d.Message().Attempt)
	}
	// A real retry still counts.
	if err := d.Nack(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if d, err = nextWithin(c, 5*time.Second); err != nil || d.Message().ID != "h2" || d.Message().Attempt != 2 {
		t.Fatalf("retry: %v, %v; want h2 at attempt 2", d, err)
	}
}

// A foreign request on a session subject whose Rsvp-Session header does not
// match the subject is unreadable: dead-lettered as bad_request, not
// delivered again for ever.
func TestSessionSubjectMismatchIsBadRequest(t *testing.T) {
	b, ctx := statsSetup(t)
	m := nats.NewMsg("rsvp.ses.mismatch." + base64.RawURLEncoding.EncodeToString([]byte("a")))
	m.Header.Set("Nats-Msg-Id", "bad-1")
	m.Header.Set("Rsvp-Id", "bad-1")
	m.Header.Set("Rsvp-Session", "b")
	if err := b.Publish(ctx, m); err != nil {
		t.Fatal(err)
	}
	c := sessionConsume(t, ctx, b, "mismatch", 30*time.Second)
	if d, err := nextWithin(c, 500*time.Millisecond); err == nil {
		t.Fatalf("handed out %s", d.Message().ID)
	}
	dls, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: "mismatch"})
	if err != nil || len(dls) != 1 || dls[0].Reason != "bad_request" || !strings.Contains(dls[0].LastError, "does not carry the Rsvp-Session header") {
		t.Fatalf("dead letters %+v, %v", dls, err)
	}
}

// A held session request's lease counts as renewed only when the engine
// confirmed the renewal. Cut off from the engine by a network partition
// (the connection stays open, and nats.go reports each renewal as sent),
// the consumer that held it must not take its lease for kept: the lease
// runs out at the engine, which delivers the request to another consumer,
// and the first must not also hand it to a worker of its own once the
// partition ends and its turn has come.
func TestSessionHeldLeaseNeedsConfirmedRenewals(t *testing.T) {
	url := natstest.Start(t)
	p := tcpproxy.Start(t, strings.TrimPrefix(url, "nats://"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	open := func(url string) *rsvpnats.Backend {
		b, err := rsvpnats.Connect(ctx, url, rsvpnats.Options{Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	cut, other := open("nats://"+p.Addr()), open(url)
	sessionEnqueue(t, ctx, other, "q", "h1", "k")
	sessionEnqueue(t, ctx, other, "q", "h2", "k")
	const lease = 2 * time.Second
	held := sessionConsume(t, ctx, cut, "q", lease)
	if d, err := nextWithin(held, 5*time.Second); err != nil || d.Message().ID != "h1" {
		t.Fatalf("first: %v, %v", d, err)
	}
	if d, err := nextWithin(held, 300*time.Millisecond); err == nil { // pulls h2 and holds it
		t.Fatalf("h2 was handed out before its turn: %s", d.Message().ID)
	}

	p.Freeze()
	// At the engine, the leases of h1 and h2 run out: the other consumer
	// gets them, in turn.
	c := sessionConsume(t, ctx, other, "q", lease)
	e1, err := nextWithin(c, 10*time.Second)
	if err != nil || e1.Message().ID != "h1" {
		t.Fatalf("other consumer, first: %v, %v", e1, err)
	}
	if err := e1.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	e2, err := nextWithin(c, 10*time.Second)
	if err != nil || e2.Message().ID != "h2" {
		t.Fatalf("other consumer, second: %v, %v", e2, err)
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() { // e2's lease is kept while the first consumer is watched
		defer close(stopped)
		tick := time.NewTicker(lease / 4)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if err := e2.Extend(ctx); err != nil {
					t.Errorf("extending h2 at the other consumer: %v", err)
				}
			}
		}
	}()
	defer func() { close(stop); <-stopped }()

	// A worker waits at the first consumer as the partition ends.
	type result struct {
		d   backend.Delivery
		err error
	}
	got := make(chan result, 1)
	go func() {
		d, err := nextWithin(held, 3*time.Second)
		got <- result{d, err}
	}()
	p.Thaw()
	if r := <-got; r.err == nil {
		t.Fatalf("%s (attempt %d) was handed to a worker of the consumer that was cut off, while another consumer had it",
			r.d.Message().ID, r.d.Message().Attempt)
	}
}

// A worker's Next that takes a held session request whose turn came, and
// ends (its responder stopping) while the renewal that starts the
// request's lease afresh is under way, leaves the request held, so that
// the consumer hands it back when it closes: another consumer gets it at
// once, not after its lease, and its session does not wait that long.
func TestSessionTurnTakenAsWorkerLeavesGoesBack(t *testing.T) {
	url := natstest.Start(t)
	renewing, release := make(chan struct{}), make(chan struct{})
	var armed atomic.Bool
	p := tcpproxy.Start(t, strings.TrimPrefix(url, "nats://"), func() tcpproxy.Watcher {
		return func(toServer bool, chunk []byte) bool {
			if toServer && armed.Load() && strings.Contains(string(chunk), "+WPI") && armed.CompareAndSwap(true, false) {
				close(renewing)
				<-release // the renewal waits at the proxy
			}
			return false
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	open := func(url string) *rsvpnats.Backend {
		b, err := rsvpnats.Connect(ctx, url, rsvpnats.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	proxied, other := open("nats://"+p.Addr()), open(url)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	sessionEnqueue(t, ctx, other, "q", "h1", "k")
	sessionEnqueue(t, ctx, other, "q", "h2", "k")
	const lease = 30 * time.Second
	held := sessionConsume(t, ctx, proxied, "q", lease)
	d1, err := nextWithin(held, 5*time.Second)
	if err != nil || d1.Message().ID != "h1" {
		t.Fatalf("first: %v, %v", d1, err)
	}
	if d, err := nextWithin(held, 300*time.Millisecond); err == nil { // pulls h2 and holds it
		t.Fatalf("h2 was handed out before its turn: %s", d.Message().ID)
	}
	if err := d1.Ack(ctx); err != nil { // h2's turn
		t.Fatal(err)
	}
	armed.Store(true)
	worker, leave := context.WithCancel(ctx)
	defer leave()
	got := make(chan error, 1)
	go func() {
		d, err := held.Next(worker)
		if err == nil {
			err = fmt.Errorf("got %s", d.Message().ID)
		}
		got <- err
	}()
	select {
	case <-renewing:
	case <-time.After(10 * time.Second):
		t.Fatal("the worker did not take h2 for its turn within 10s")
	}
	leave() // the responder stops
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("Next that left while taking h2: %v, want context.Canceled", err)
	}
	close(release)
	held.Close()
	d, err := nextWithin(sessionConsume(t, ctx, other, "q", lease), 5*time.Second)
	if err != nil || d.Message().ID != "h2" {
		t.Fatalf("other consumer after the first closed: %v, %v; want h2 at once (its lease is %s)", d, err, lease)
	}
}
