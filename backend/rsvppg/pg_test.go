package rsvppg_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

func uniq(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func newMsg(queue string) *backend.Message {
	id := uniq("id-")
	return &backend.Message{ID: id, CorrelationID: id, Queue: queue, Body: []byte("body of " + id)}
}

// nextWithin takes the next delivery of c, failing t if none comes within d.
func nextWithin(t *testing.T, c backend.Consumer, d time.Duration) backend.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	dl, err := c.Next(ctx)
	if err != nil {
		t.Fatalf("no delivery within %s: %v", d, err)
	}
	return dl
}

func consume(t *testing.T, b backend.Backend, queue string, lease time.Duration) backend.Consumer {
	t.Helper()
	c, err := b.Consume(context.Background(), queue, backend.ConsumeParams{Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func nothingWithin(t *testing.T, c backend.Consumer, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if dl, err := c.Next(ctx); err == nil {
		t.Fatalf("unexpected delivery of %s", dl.Message().ID)
	}
}

func TestEnqueueTx(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	q := uniq("q")
	c := consume(t, s.b, q, 10*time.Second)
	for _, commit := range []bool{false, true} {
		m := newMsg(q)
		tx, err := s.b.Pool().Begin(s.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.b.EnqueueTx(s.ctx, tx, m); err != nil {
			t.Fatal(err)
		}
		// Not visible before the commit.
		nothingWithin(t, c, 300*time.Millisecond)
		if !commit {
			if err := tx.Rollback(s.ctx); err != nil {
				t.Fatal(err)
			}
			nothingWithin(t, c, 500*time.Millisecond)
			// Rolled back, the id is not taken either.
			if err := s.b.Enqueue(s.ctx, m); err != nil {
				t.Fatal(err)
			}
			d := nextWithin(t, c, 5*time.Second)
			if d.Message().ID != m.ID {
				t.Fatalf("got %s, want %s", d.Message().ID, m.ID)
			}
			_ = d.Ack(s.ctx)
			continue
		}
		if err := tx.Commit(s.ctx); err != nil {
			t.Fatal(err)
		}
		// The commit's notification wakes the consumer at once (its idle
		// recheck is a minute away).
		d := nextWithin(t, c, 2*time.Second)
		if d.Message().ID != m.ID || string(d.Message().Body) != string(m.Body) {
			t.Fatalf("got %+v, want %+v", d.Message(), m)
		}
		_ = d.Ack(s.ctx)
	}
}

func TestEnqueueTxWithBusinessWrite(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	conn := connect(t, s.url)
	table := pgx.Identifier{s.schema, "orders"}.Sanitize()
	if _, err := conn.Exec(s.ctx, "CREATE TABLE "+table+" (id text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	q := uniq("q")
	m := newMsg(q)
	// A failing business write rolls the request back with it.
	err := pgx.BeginFunc(s.ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(s.ctx, "INSERT INTO "+table+" VALUES ('o1')"); err != nil {
			return err
		}
		if err := s.b.EnqueueTx(s.ctx, tx, m); err != nil {
			return err
		}
		_, err := tx.Exec(s.ctx, "INSERT INTO "+table+" VALUES ('o1')") // duplicate key
		return err
	})
	if err == nil {
		t.Fatal("the duplicate order was accepted")
	}
	c := consume(t, s.b, q, 10*time.Second)
	nothingWithin(t, c, 500*time.Millisecond)
	// The same on a connection whose search_path does not include the schema.
	if err := pgx.BeginFunc(s.ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(s.ctx, "SET LOCAL search_path TO pg_catalog"); err != nil {
			return err
		}
		if _, err := tx.Exec(s.ctx, "INSERT INTO "+table+" VALUES ('o2')"); err != nil {
			return err
		}
		return s.b.EnqueueTx(s.ctx, tx, m)
	}); err != nil {
		t.Fatal(err)
	}
	if d := nextWithin(t, c, 2*time.Second); d.Message().ID != m.ID {
		t.Fatalf("got %s, want %s", d.Message().ID, m.ID)
	}
}

// queryCounter counts the statements a backend sends.
type queryCounter struct{ n atomic.Int64 }

func (q *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	q.n.Add(1)
	return ctx
}
func (q *queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (q *queryCounter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	q.n.Add(1)
	return ctx
}
func (q *queryCounter) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (q *queryCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

func TestIdleIssuesNoQueries(t *testing.T) {
	t.Parallel()
	url := serverURL(t)
	var count queryCounter
	b := open(t, url, rsvppg.Options{Schema: freshSchema(t, url), ConnConfig: func(c *pgx.ConnConfig) { c.Tracer = &count }})
	ctx := context.Background()
	q := uniq("q")
	c := consume(t, b, q, 0)
	sub, err := b.SubscribeReplies(ctx, "inbox1", func(*backend.Reply) {})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	evs, err := b.SubscribeEvents(ctx, func(*backend.Event) {})
	if err != nil {
		t.Fatal(err)
	}
	defer evs.Close()
	// Four workers wait on the queue.
	waitCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{}, 4)
	for range 4 {
		go func() {
			_, _ = c.Next(waitCtx)
			done <- struct{}{}
		}()
	}
	time.Sleep(200 * time.Millisecond) // the first look at the empty queue
	before := count.n.Load()
	const idle = 3 * time.Second
	time.Sleep(idle)
	if n := count.n.Load() - before; n != 0 {
		t.Errorf("%d statements in %s of idling", n, idle)
	}
	t.Logf("idle for %s: %d statements (one consumer with 4 waiting workers, a reply and an event subscription)", idle, count.n.Load()-before)
	// And a request still gets through at once.
	m := newMsg(q)
	if err := b.Enqueue(ctx, m); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("the enqueued request did not wake a worker")
	}
	stop()
	for range 3 {
		<-done
	}
}

// terminate ends the server sessions of the schema's listening connection.
func terminateListener(t *testing.T, url, schema string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int
	err := connect(t, url).QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE query = $1 AND pid <> pg_backend_pid()`, "LISTEN "+pgx.Identifier{"rsvp:" + schema}.Sanitize()).Scan(&n)
	if err != nil || n != 1 {
		t.Fatalf("terminate the listener: %d terminated, %v", n, err)
	}
}

func TestListenerReconnects(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	q := uniq("q")
	c := consume(t, s.b, q, 10*time.Second)
	replies := make(chan *backend.Reply, 1)
	sub, err := s.b.SubscribeReplies(s.ctx, "inbox1", func(r *backend.Reply) { replies <- r })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	terminateListener(t, s.url, s.schema)
	// Whether the listener is back yet or not, a request gets through: by
	// polling, then by notification.
	for i := range 3 {
		m := newMsg(q)
		if err := s.b.Enqueue(s.ctx, m); err != nil {
			t.Fatal(err)
		}
		if d := nextWithin(t, c, 3*time.Second); d.Message().ID != m.ID {
			t.Fatalf("round %d: got %s, want %s", i, d.Message().ID, m.ID)
		} else {
			_ = d.Ack(s.ctx)
		}
		time.Sleep(300 * time.Millisecond)
	}
	// Replies are notified again once it is back.
	deadline := time.Now().Add(10 * time.Second)
	for {
		id := uniq("id-")
		if err := s.b.PutReply(s.ctx, s.b.ReplyAddress("inbox1", id), &backend.Reply{CorrelationID: id, Status: backend.StatusSucceeded}); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-replies:
			if r.CorrelationID == id {
				return
			}
		case <-time.After(500 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("reply notifications did not come back after the listening connection was cut")
		}
	}
}

func TestRetention(t *testing.T) {
	t.Parallel()
	url := serverURL(t)
	b := open(t, url, rsvppg.Options{Schema: freshSchema(t, url), ReplyRetention: time.Second, DedupeWindow: time.Second,
		DeadLetterRetention: time.Second, CleanupInterval: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q := uniq("q")
	id := uniq("id-")
	if err := b.PutReply(ctx, b.ReplyAddress("in", id), &backend.Reply{CorrelationID: id, Status: backend.StatusSucceeded}); err != nil {
		t.Fatal(err)
	}
	ev := &backend.Event{CorrelationID: id, Type: backend.EventQueued, DedupeKey: id}
	if err := b.AppendEvent(ctx, ev); err != nil || ev.Seq == 0 {
		t.Fatalf("append: seq %d, %v", ev.Seq, err)
	}
	if err := b.DeadLetter(ctx, &backend.DeadLetter{Message: newMsg(q), Reason: "failed"}); err != nil {
		t.Fatal(err)
	}
	m := newMsg(q)
	if err := b.Enqueue(ctx, m); err != nil {
		t.Fatal(err)
	}
	c := consume(t, b, q, 10*time.Second)
	_ = nextWithin(t, c, 5*time.Second).Ack(ctx)
	time.Sleep(1500 * time.Millisecond)
	// Past the window, the same id is a new request, and the same event key
	// a new event.
	if err := b.Enqueue(ctx, m); err != nil {
		t.Fatal(err)
	}
	if d := nextWithin(t, c, 5*time.Second); d.Message().ID != m.ID {
		t.Fatalf("got %s, want %s again", d.Message().ID, m.ID)
	}
	for {
		_, errReply := b.GetReply(ctx, id)
		evs, _ := b.Events(ctx, backend.EventQuery{CorrelationID: id})
		dls, _ := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: q, Limit: 10})
		if errors.Is(errReply, backend.ErrNotFound) && len(evs) == 0 && len(dls) == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("expired rows not deleted: reply %v, %d events, %d dead letters", errReply, len(evs), len(dls))
		}
		time.Sleep(100 * time.Millisecond)
	}
	ev = &backend.Event{CorrelationID: id, Type: backend.EventQueued, DedupeKey: id}
	if err := b.AppendEvent(ctx, ev); err != nil || ev.Seq == 0 {
		t.Fatalf("append after the window: seq %d, %v", ev.Seq, err)
	}
}

func TestLeaseRules(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	q := uniq("q")
	m := newMsg(q)
	if err := s.b.Enqueue(s.ctx, m); err != nil {
		t.Fatal(err)
	}
	c := consume(t, s.b, q, 500*time.Millisecond)
	first := nextWithin(t, c, 5*time.Second)
	second := nextWithin(t, c, 5*time.Second) // after the first lease ran out
	if second.Message().Attempt != 2 {
		t.Fatalf("redelivery has attempt %d, want 2", second.Message().Attempt)
	}
	// The first delivery's lease is gone: it settles nothing.
	for name, err := range map[string]error{"ack": first.Ack(s.ctx), "nack": first.Nack(s.ctx, 0), "extend": first.Extend(s.ctx)} {
		if !errors.Is(err, rsvppg.ErrLeaseLost) {
			t.Errorf("%s of a lost lease: %v, want ErrLeaseLost", name, err)
		}
	}
	if err := second.Ack(s.ctx); err != nil {
		t.Fatal(err)
	}
	if err := second.Ack(s.ctx); !errors.Is(err, rsvppg.ErrLeaseLost) {
		t.Errorf("second ack: %v, want ErrLeaseLost", err)
	}
}

func TestNextThatLeavesTakesNothing(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	q := uniq("q")
	c := consume(t, s.b, q, time.Minute)
	// Many callers give up soon while requests arrive. A request is either
	// delivered to a caller still waiting, or goes back as if never taken:
	// none is lost to a caller that left, nor counted as an attempt.
	delivered := make(chan backend.Delivery, 40)
	for range 20 {
		go func() {
			ctx, cancel := context.WithTimeout(s.ctx, 15*time.Millisecond)
			defer cancel()
			if d, err := c.Next(ctx); err == nil {
				delivered <- d
			}
		}()
	}
	var ids []string
	for range 20 {
		m := newMsg(q)
		ids = append(ids, m.ID)
		if err := s.b.Enqueue(s.ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		for {
			ctx, cancel := context.WithTimeout(s.ctx, 3*time.Second)
			d, err := c.Next(ctx)
			cancel()
			if err != nil {
				return
			}
			delivered <- d
		}
	}()
	got := map[string]int{}
	for len(got) < len(ids) {
		select {
		case d := <-delivered:
			if got[d.Message().ID] != 0 {
				t.Fatalf("%s delivered twice", d.Message().ID)
			}
			got[d.Message().ID] = d.Message().Attempt
			_ = d.Ack(s.ctx)
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d requests delivered", len(got), len(ids))
		}
	}
	for id, attempt := range got {
		if attempt != 1 {
			t.Errorf("%s came with attempt %d, want 1: a caller that left counted", id, attempt)
		}
	}
}

// logBuffer collects log lines.
type logBuffer struct {
	mu    sync.Mutex
	lines []string
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, string(p))
	return len(p), nil
}

func (l *logBuffer) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

func TestConnectionsCutMidRun(t *testing.T) {
	t.Parallel()
	url := serverURL(t)
	schema := freshSchema(t, url)
	var logs logBuffer
	app := "rsvp_" + schema
	b := open(t, url, rsvppg.Options{Schema: schema, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		ConnConfig: func(c *pgx.ConnConfig) { c.RuntimeParams["application_name"] = app }})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := rsvp.New(ctx, b, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Handle("echo", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: m.Body}, nil
	}), rsvp.HandleOptions{Concurrency: 8}); err != nil {
		t.Fatal(err)
	}
	const n, workers = 300, 8
	var done atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				body := fmt.Sprintf("request %d", i)
				r, err := c.Request(ctx, "echo", &rsvp.Message{Body: []byte(body)})
				if err != nil || string(r.Body) != body {
					t.Errorf("request %d: %v, %v", i, r, err)
					return
				}
				done.Add(1)
			}
		}()
	}
	for done.Load() < n/3 {
		time.Sleep(5 * time.Millisecond)
	}
	// Every connection of the backend is cut, as by a server restart.
	var cut int
	err = connect(t, url).QueryRow(ctx, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", app).Scan(&cut)
	if err != nil || cut == 0 {
		t.Fatalf("cut connections: %d, %v", cut, err)
	}
	// Replies stored while the listening connection was down reach their
	// waiters by the catch-up, not by the client's recheck (5s).
	start := time.Now()
	wg.Wait()
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("the requests took %s after the cut", took)
	}
	if got := done.Load(); got != n {
		t.Fatalf("%d of %d requests answered after %d connections were cut", got, n, cut)
	}
	if !logs.has("reconnecting") && !logs.has("listening connection broke") {
		t.Errorf("no log line tells of the broken connections:\n%s", strings.Join(logs.lines, ""))
	}
	t.Logf("%d connections cut; all %d requests answered", cut, n)
}
