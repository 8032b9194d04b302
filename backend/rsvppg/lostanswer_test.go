package rsvppg_test

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
	"github.com/rsvp-go/rsvp/internal/tcpproxy"
)

// cutProxy forwards TCP connections to a PostgreSQL server. Armed with a
// marker, it watches for a connection that sends SQL containing the
// marker (the Parse of a statement) and, once that connection's server
// answers a statement with the command tag `tag` (which the server sends
// only with ReadyForQuery, that is after the implicit transaction
// committed), it cuts the connection instead of forwarding the answer:
// the statement committed, the client sees a broken connection. It fires
// once.
type cutProxy struct {
	*tcpproxy.Proxy
	marker, tag []byte
	armed       atomic.Bool
	fired       atomic.Bool
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	p := &cutProxy{}
	p.Proxy = tcpproxy.Start(t, target, func() tcpproxy.Watcher {
		var flagged atomic.Bool // this connection sent the marker
		return func(toServer bool, b []byte) bool {
			if toServer {
				if p.armed.Load() && !p.fired.Load() && bytes.Contains(b, p.marker) {
					flagged.Store(true)
				}
				return false
			}
			return flagged.Load() && bytes.Contains(b, p.tag) && p.fired.CompareAndSwap(false, true)
		}
	})
	return p
}

func (p *cutProxy) arm(marker, tag string) {
	p.marker, p.tag = []byte(marker), []byte(tag)
	p.armed.Store(true)
}

// viaProxy opens a backend on a fresh schema of the test server, through
// a cutProxy, and returns it with the proxy, the schema and a context for
// the test.
func viaProxy(t *testing.T) (*rsvppg.Backend, *cutProxy, string, context.Context) {
	t.Helper()
	u, err := url.Parse(serverURL(t))
	if err != nil {
		t.Fatal(err)
	}
	p := newCutProxy(t, u.Host)
	u.Host = p.Addr()
	schema := freshSchema(t, serverURL(t))
	b := open(t, u.String(), rsvppg.Options{Schema: schema})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return b, p, schema, ctx
}

// TestPutReplyAnswerLost: PutReply runs its batch again after a
// connection error. When the first run committed and only its answer was
// lost, the second finds the reply stored: PutReply still returns nil for
// the reply it stored itself, not ErrReplyExists.
func TestPutReplyAnswerLost(t *testing.T) {
	t.Parallel()
	b, p, _, ctx := viaProxy(t)
	id := uniq("c")
	rep := &backend.Reply{CorrelationID: id, Status: backend.StatusSucceeded, Body: []byte("mine")}
	p.arm(".replies (correlation_id", "SELECT 1\x00")
	err := b.PutReply(ctx, b.ReplyAddress("inbox1", id), rep)
	if !p.fired.Load() {
		t.Fatal("the proxy did not cut the connection; the test proves nothing")
	}
	got, gerr := b.GetReply(ctx, id)
	if gerr != nil {
		t.Fatalf("no reply stored: %v (PutReply: %v)", gerr, err)
	}
	if errors.Is(err, backend.ErrReplyExists) {
		t.Fatalf("PutReply returned %v, but the stored reply is its own (body %q): nothing else was ever stored under %s", err, got.Body, id)
	}
	if err != nil {
		t.Fatalf("PutReply: %v", err)
	}
}

// TestEnqueueAnswerLost: Enqueue runs its batch again after a connection
// error. When the first run committed, the second finds the id in the
// dedupe window and stores nothing; the waiting consumer is still told,
// and does not wait for its idle recheck a minute later.
func TestEnqueueAnswerLost(t *testing.T) {
	t.Parallel()
	b, p, schema, ctx := viaProxy(t)
	q := uniq("q")
	c := consume(t, b, q, 30*time.Second)
	got := make(chan backend.Delivery, 1)
	nctx, ncancel := context.WithTimeout(ctx, 10*time.Second)
	defer ncancel()
	go func() {
		if d, err := c.Next(nctx); err == nil {
			got <- d
		}
		close(got)
	}()
	// Wait for the consumer's first look: it found the queue empty (its
	// nextDue ran, the last statement of a look) and now waits for a
	// notification.
	conn := connect(t, serverURL(t))
	for {
		var idle bool
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_stat_activity
			WHERE state = 'idle' AND query LIKE '%min(not_before)%' AND query LIKE '%' || $1 || '%')`, schema).Scan(&idle)
		if err != nil {
			t.Fatal(err)
		}
		if idle {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the consumer never looked")
		}
		time.Sleep(10 * time.Millisecond)
	}
	m := newMsg(q)
	p.arm(".requests (queue", "SELECT 1\x00")
	if err := b.Enqueue(ctx, m); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	if !p.fired.Load() {
		t.Fatal("the proxy did not cut the connection; the test proves nothing")
	}
	start := time.Now()
	select {
	case d, ok := <-got:
		if ok {
			_ = d.Ack(ctx)
			return
		}
	case <-time.After(5 * time.Second):
	}
	var stored int
	_ = conn.QueryRow(ctx, "SELECT count(*) FROM "+schema+".requests WHERE id = $1", m.ID).Scan(&stored)
	t.Fatalf("the enqueued request (stored %d time) was not delivered to the waiting consumer within %s: the consumer was not notified",
		stored, time.Since(start).Round(time.Millisecond))
}

// TestAckAnswerLost: the ack batch, too, runs again after a connection
// error. When the first run committed, Ack returns nil for the ack that
// removed the request, not ErrLeaseLost.
func TestAckAnswerLost(t *testing.T) {
	t.Parallel()
	b, p, schema, ctx := viaProxy(t)
	q := uniq("q")
	m := newMsg(q)
	if err := b.Enqueue(ctx, m); err != nil {
		t.Fatal(err)
	}
	c := consume(t, b, q, 30*time.Second)
	d := nextWithin(t, c, 5*time.Second)
	p.arm(".requests WHERE seq = $1 AND attempt = $2", "DELETE 1\x00")
	err := d.Ack(ctx)
	if !p.fired.Load() {
		t.Fatal("the proxy did not cut the connection; the test proves nothing")
	}
	var left int
	if err := connect(t, serverURL(t)).QueryRow(ctx, "SELECT count(*) FROM "+schema+".requests WHERE id = $1", m.ID).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left == 0 && err != nil {
		t.Fatalf("Ack returned %v, but it deleted the request (no one else held a lease on it)", err)
	}
}

// TestNackAnswerLost: Nack runs its statement again after a connection
// error. When the first run committed and only its answer was lost, the
// second finds the lease settled by the first: Nack returns nil, not
// ErrLeaseLost.
func TestNackAnswerLost(t *testing.T) {
	t.Parallel()
	b, p, schema, ctx := viaProxy(t)
	q := uniq("q")
	m := newMsg(q)
	if err := b.Enqueue(ctx, m); err != nil {
		t.Fatal(err)
	}
	c := consume(t, b, q, 30*time.Second)
	d := nextWithin(t, c, 5*time.Second)
	p.arm("lease_until = NULL\n\tWHERE seq = $1 AND attempt = $2", "SELECT 1\x00")
	err := d.Nack(ctx, time.Hour)
	if !p.fired.Load() {
		t.Fatal("the proxy did not cut the connection; the test proves nothing")
	}
	var leased bool
	var attempt int
	if err := connect(t, serverURL(t)).QueryRow(ctx, "SELECT lease_until IS NOT NULL, attempt FROM "+schema+".requests WHERE id = $1", m.ID).Scan(&leased, &attempt); err != nil {
		t.Fatal(err)
	}
	if !leased && attempt == d.Message().Attempt && err != nil {
		t.Fatalf("Nack returned %v, but its own first run nacked the request (lease cleared, attempt %d unchanged, nobody else touched it)", err, attempt)
	}
}
