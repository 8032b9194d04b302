package rsvppg_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

// atomicEnv, set, makes TestAtomicKillChild the worker the kill test
// kills: its value is "<schema> <queue>".
const atomicEnv = "RSVPPG_ATOMIC_CHILD"

// atomicLine is what the child prints once its business write is done, in
// a transaction it will never commit.
const atomicLine = "written "

// ordersTable creates the business table of a test and returns its name.
func ordersTable(t *testing.T, s *setup) string {
	t.Helper()
	table := pgx.Identifier{s.schema, "orders"}.Sanitize()
	if _, err := s.b.Pool().Exec(s.ctx, "CREATE TABLE IF NOT EXISTS "+table+" (id text PRIMARY KEY, attempt int NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	return table
}

// placeOrder is the business write: one row per request, keyed by its body.
func placeOrder(ctx context.Context, tx pgx.Tx, table string, m *rsvp.Message) error {
	_, err := tx.Exec(ctx, "INSERT INTO "+table+" (id, attempt) VALUES ($1, $2)", string(m.Body), m.Attempt)
	return err
}

func countRows(t *testing.T, s *setup, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := s.b.Pool().QueryRow(s.ctx, sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func newClient(t *testing.T, s *setup) *rsvp.Client {
	t.Helper()
	c, err := rsvp.New(s.ctx, s.b, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func handleTx(t *testing.T, c *rsvp.Client, queue string, h rsvppg.TxHandler, opts rsvp.HandleOptions) {
	t.Helper()
	r, err := rsvppg.HandleTx(c, queue, h, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
}

func TestHandleTxCommitsTogether(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	table := ordersTable(t, s)
	c := newClient(t, s)
	q := uniq("q")
	handleTx(t, c, q, func(ctx context.Context, tx pgx.Tx, m *rsvp.Message) (*rsvp.Reply, error) {
		if err := placeOrder(ctx, tx, table, m); err != nil {
			return nil, err
		}
		// Uncommitted: invisible outside the transaction.
		var n int
		if err := s.b.Pool().QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE id = $1", string(m.Body)).Scan(&n); err != nil || n != 0 {
			return nil, rsvp.Permanent(fmt.Errorf("the order is visible before the commit (%d rows, %v)", n, err))
		}
		return &rsvp.Reply{Body: append([]byte("placed "), m.Body...)}, nil
	}, rsvp.HandleOptions{Concurrency: 4})
	for i := range 20 {
		id := fmt.Sprintf("order-%d", i)
		rep, err := c.Request(s.ctx, q, &rsvp.Message{Body: []byte(id)})
		if err != nil {
			t.Fatal(err)
		}
		if string(rep.Body) != "placed "+id {
			t.Fatalf("reply %q, want %q", rep.Body, "placed "+id)
		}
		// The reply implies the order: they committed together.
		if n := countRows(t, s, "SELECT count(*) FROM "+table+" WHERE id = $1", id); n != 1 {
			t.Fatalf("%d rows for %s, want 1", n, id)
		}
	}
	if n := countRows(t, s, "SELECT count(*) FROM "+pgx.Identifier{s.schema, "requests"}.Sanitize()); n != 0 {
		t.Fatalf("%d requests left, want 0 (acknowledged)", n)
	}
}

func TestHandleTxErrorRollsBack(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	table := ordersTable(t, s)
	c := newClient(t, s)
	q := uniq("q")
	var calls atomic.Int32
	handleTx(t, c, q, func(ctx context.Context, tx pgx.Tx, m *rsvp.Message) (*rsvp.Reply, error) {
		calls.Add(1)
		// A write left behind by an earlier attempt would fail this one
		// with a duplicate key.
		if err := placeOrder(ctx, tx, table, m); err != nil {
			return nil, rsvp.Permanent(err)
		}
		switch m.Attempt {
		case 1:
			return nil, errors.New("transient trouble after the business write")
		case 2:
			panic("a handler bug after the business write")
		}
		return &rsvp.Reply{Body: []byte(fmt.Sprint(m.Attempt))}, nil
	}, rsvp.HandleOptions{MaxAttempts: 5, Backoff: func(int) time.Duration { return 10 * time.Millisecond }})
	rep, err := c.Request(s.ctx, q, &rsvp.Message{Body: []byte("order-1")})
	if err != nil {
		t.Fatal(err)
	}
	if string(rep.Body) != "3" || calls.Load() != 3 {
		t.Fatalf("reply %q after %d calls, want attempt 3 after 3 calls", rep.Body, calls.Load())
	}
	if n := countRows(t, s, "SELECT count(*) FROM "+table+" WHERE id = 'order-1' AND attempt = 3"); n != 1 {
		t.Fatalf("%d rows of attempt 3, want 1", n)
	}
	if n := countRows(t, s, "SELECT count(*) FROM "+table); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
}

// A cancelled request's business write is rolled back, whether the
// cancellation stops the handler (a tracked request) or its commit finds
// the cancelled reply (an untracked one), and the request is settled.
func TestHandleTxCancelledRollsBack(t *testing.T) {
	t.Parallel()
	for _, track := range []bool{true, false} {
		t.Run(fmt.Sprintf("track=%v", track), func(t *testing.T) {
			t.Parallel()
			s := newSetup(t)
			table := ordersTable(t, s)
			c := newClient(t, s)
			q := uniq("q")
			written := make(chan struct{})
			release := make(chan struct{})
			handleTx(t, c, q, func(ctx context.Context, tx pgx.Tx, m *rsvp.Message) (*rsvp.Reply, error) {
				if err := placeOrder(ctx, tx, table, m); err != nil {
					return nil, err
				}
				close(written)
				select {
				case <-release:
				case <-ctx.Done():
					return nil, context.Cause(ctx)
				}
				return &rsvp.Reply{Body: []byte("placed")}, nil
			}, rsvp.HandleOptions{})
			tk, err := c.Send(s.ctx, q, &rsvp.Message{Body: []byte("order-1"), Track: track})
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-written:
			case <-s.ctx.Done():
				t.Fatal("the handler never ran")
			}
			if _, err := c.Cancel(s.ctx, tk.CorrelationID); err != nil {
				t.Fatal(err)
			}
			if !track {
				close(release) // a tracked request's handler must stop by itself
			}
			if rep, err := c.Await(s.ctx, tk.CorrelationID); !errors.Is(err, rsvp.ErrCancelled) {
				t.Fatalf("await: %v %v, want the cancellation", rep, err)
			}
			requests := pgx.Identifier{s.schema, "requests"}.Sanitize()
			deadline := time.Now().Add(10 * time.Second)
			for countRows(t, s, "SELECT count(*) FROM "+requests) != 0 {
				if time.Now().After(deadline) {
					t.Fatal("the cancelled request was never acknowledged")
				}
				time.Sleep(20 * time.Millisecond)
			}
			if n := countRows(t, s, "SELECT count(*) FROM "+table); n != 0 {
				t.Fatalf("%d orders of a cancelled request, want 0", n)
			}
		})
	}
}

// TestHandleTxKillBeforeCommit kills a worker (a child process) between
// its business write and its commit: the request is handled again by
// another worker, and the order exists once, with one reply.
func TestHandleTxKillBeforeCommit(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	table := ordersTable(t, s)
	c := newClient(t, s)
	q := uniq("q")
	tk, err := c.Send(s.ctx, q, &rsvp.Message{Body: []byte("order-1")})
	if err != nil {
		t.Fatal(err)
	}

	child := osexec.CommandContext(s.ctx, os.Args[0], "-test.run=^TestAtomicKillChild$", "-test.v")
	child.Env = append(os.Environ(), atomicEnv+"="+s.schema+" "+q, urlEnv+"="+s.url)
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = child.Process.Kill()
			_ = child.Wait()
		}
	})
	lines := bufio.NewScanner(out)
	written := false
	for lines.Scan() {
		if strings.HasPrefix(lines.Text(), atomicLine) {
			written = true
			break
		}
	}
	if !written {
		t.Fatalf("the child ended before its business write: %v", lines.Err())
	}
	// The child's write is not committed.
	if n := countRows(t, s, "SELECT count(*) FROM "+table); n != 0 {
		t.Fatalf("%d orders visible before the commit, want 0", n)
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	_ = child.Wait()

	// A second worker gets the request once the child's lease runs out.
	handleTx(t, c, q, func(ctx context.Context, tx pgx.Tx, m *rsvp.Message) (*rsvp.Reply, error) {
		if err := placeOrder(ctx, tx, table, m); err != nil {
			return nil, rsvp.Permanent(err) // a write of the child's survived
		}
		return &rsvp.Reply{Body: []byte(fmt.Sprintf("placed by parent, attempt %d", m.Attempt))}, nil
	}, rsvp.HandleOptions{Lease: time.Second})
	rep, err := c.Await(s.ctx, tk.CorrelationID)
	if err != nil {
		t.Fatal(err)
	}
	if string(rep.Body) != "placed by parent, attempt 2" {
		t.Fatalf("reply %q, want the parent's on attempt 2", rep.Body)
	}
	if n := countRows(t, s, "SELECT count(*) FROM "+table+" WHERE id = 'order-1' AND attempt = 2"); n != 1 {
		t.Fatalf("%d orders of attempt 2, want 1", n)
	}
	if n := countRows(t, s, "SELECT count(*) FROM "+table); n != 1 {
		t.Fatalf("%d orders, want 1", n)
	}
	if n := countRows(t, s, "SELECT count(*) FROM "+pgx.Identifier{s.schema, "replies"}.Sanitize()+" WHERE correlation_id = $1", tk.CorrelationID); n != 1 {
		t.Fatalf("%d replies, want 1", n)
	}
	requests := pgx.Identifier{s.schema, "requests"}.Sanitize()
	deadline := time.Now().Add(10 * time.Second)
	for countRows(t, s, "SELECT count(*) FROM "+requests) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the request was never acknowledged")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAtomicKillChild is the worker TestHandleTxKillBeforeCommit kills: it
// takes the request, does the business write in the transaction, says so,
// and waits to be killed.
func TestAtomicKillChild(t *testing.T) {
	arg := os.Getenv(atomicEnv)
	if arg == "" {
		t.Skip("runs as the child of TestHandleTxKillBeforeCommit")
	}
	schema, q, _ := strings.Cut(arg, " ")
	ctx := context.Background()
	b := open(t, serverURL(t), rsvppg.Options{Schema: schema})
	c, err := rsvp.New(ctx, b, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	table := pgx.Identifier{schema, "orders"}.Sanitize()
	if _, err := rsvppg.HandleTx(c, q, func(ctx context.Context, tx pgx.Tx, m *rsvp.Message) (*rsvp.Reply, error) {
		if err := placeOrder(ctx, tx, table, m); err != nil {
			return nil, err
		}
		fmt.Printf("%s%s\n", atomicLine, m.ID)
		select {} // killed here, before the commit
	}, rsvp.HandleOptions{Lease: time.Second}); err != nil {
		t.Fatal(err)
	}
	select {}
}

// While a delivery's transaction is open, its request is not delivered
// again, even once the lease ran out; a delivery whose lease was lost
// cannot begin one.
func TestDeliveryBeginLocksRequest(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	q := uniq("q")
	c := consume(t, s.b, q, 200*time.Millisecond)
	m := newMsg(q)
	if err := s.b.Enqueue(s.ctx, m); err != nil {
		t.Fatal(err)
	}
	d := nextWithin(t, c, 5*time.Second).(*rsvppg.Delivery)
	tx, err := d.Begin(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	nothingWithin(t, c, time.Second) // the lease ran out, but the row is locked
	if err := d.Extend(s.ctx); err != nil {
		t.Fatalf("extend beside the transaction: %v", err)
	}
	if err := d.CommitWith(s.ctx, tx, nil); err != nil {
		t.Fatal(err)
	}
	nothingWithin(t, c, 500*time.Millisecond) // acknowledged

	m2 := newMsg(q)
	if err := s.b.Enqueue(s.ctx, m2); err != nil {
		t.Fatal(err)
	}
	first := nextWithin(t, c, 5*time.Second).(*rsvppg.Delivery)
	again := nextWithin(t, c, 5*time.Second) // the lease ran out unextended
	if again.Message().ID != m2.ID {
		t.Fatalf("got %s, want %s", again.Message().ID, m2.ID)
	}
	if _, err := first.Begin(s.ctx); !errors.Is(err, rsvppg.ErrLeaseLost) {
		t.Fatalf("begin on a lost lease: %v, want ErrLeaseLost", err)
	}
}

// TestSendTx: a request sent in a transaction exists if and only if the
// transaction commits; after the commit its requester gets the reply.
func TestSendTx(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	c := newClient(t, s)
	q := uniq("q")
	handled := make(chan string, 4)
	if _, err := c.Handle(q, rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		handled <- string(m.Body)
		return &rsvp.Reply{Body: append([]byte("done:"), m.Body...)}, nil
	}), rsvp.HandleOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, commit := range []bool{false, true} {
		tx, err := s.b.Pool().Begin(s.ctx)
		if err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf("commit=%v", commit)
		ticket, err := rsvppg.SendTx(s.ctx, c, tx, q, &rsvp.Message{Body: []byte(body)})
		if err != nil {
			t.Fatal(err)
		}
		if !commit {
			if err := tx.Rollback(s.ctx); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := tx.Commit(s.ctx); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		r, err := c.Await(ctx, ticket.CorrelationID)
		cancel()
		if err != nil || string(r.Body) != "done:commit=true" {
			t.Fatalf("Await: %v %v", r, err)
		}
	}
	// Only the committed request ran (the queue is FIFO: it came second).
	if got := <-handled; got != "commit=true" {
		t.Fatalf("handled %q first", got)
	}
	if n := len(handled); n != 0 {
		t.Fatalf("%d more requests handled", n)
	}
}

// listed under the request's reply session, as a Handle responder's is.
func TestHandleTxListsReplySession(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	c := newClient(t, s)
	q := uniq("q")
	handleTx(t, c, q, func(ctx context.Context, tx pgx.Tx, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: []byte("ok")}, nil
	}, rsvp.HandleOptions{})
	rep, err := c.Request(s.ctx, q, &rsvp.Message{Body: []byte("x"), ReplySession: "rs-1"})
	if err != nil || string(rep.Body) != "ok" {
		t.Fatalf("request: %v, %v", rep, err)
	}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	got, err := c.SessionReplies(ctx, "rs-1", 0)
	if err != nil {
		t.Fatalf("SessionReplies: %v (the reply of %s was stored, but not listed under its reply session)", err, rep.CorrelationID)
	}
	if len(got) != 1 || got[0].Reply.CorrelationID != rep.CorrelationID {
		t.Fatalf("listed %v, want the reply of %s", got, rep.CorrelationID)
	}
}

// TestHandleTxReplyStoredAtItsWrite: a reply that HandleTx commits with
// the handler's writes is stored at the time it is written, not when the
// handler's transaction began: the clean-up (ReplyRetention) and the
// catch-up after the listening connection was down go by stored_at, and a
// long handler would have its reply look older than it is.
func TestHandleTxReplyStoredAtItsWrite(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	c := newClient(t, s)
	q := uniq("q")
	var handlerDone atomic.Pointer[time.Time]
	handleTx(t, c, q, func(ctx context.Context, tx pgx.Tx, m *rsvp.Message) (*rsvp.Reply, error) {
		// The server's clock at the end of a handler that took a while.
		var at time.Time
		if err := tx.QueryRow(ctx, "SELECT clock_timestamp() FROM (SELECT pg_sleep(0.05)) s").Scan(&at); err != nil {
			return nil, err
		}
		handlerDone.Store(&at)
		return &rsvp.Reply{Body: []byte("ok")}, nil
	}, rsvp.HandleOptions{})
	rep, err := c.Request(s.ctx, q, &rsvp.Message{Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	var stored time.Time
	if err := s.b.Pool().QueryRow(s.ctx, "SELECT stored_at FROM "+pgx.Identifier{s.schema, "replies"}.Sanitize()+
		" WHERE correlation_id = $1", rep.CorrelationID).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if done := *handlerDone.Load(); stored.Before(done) {
		t.Fatalf("reply stored_at %s is %s before the handler ended (%s): the transaction's start, not the write",
			stored.Format(time.RFC3339Nano), done.Sub(stored), done.Format(time.RFC3339Nano))
	}
}

// TestNackBesideOpenTx: a Nack from the pool while the delivery's
// transaction is open does not wait for it (nor does Extend: both update
// only non-key columns, which the transaction's FOR KEY SHARE lock allows),
// but it settles the lease: the transaction's CommitWith then finds the
// lease lost and commits nothing, a later Extend finds it lost too, and
// the request is delivered again only once the transaction ended.
func TestNackBesideOpenTx(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	table := pgx.Identifier{s.schema, "orders"}.Sanitize()
	if _, err := s.b.Pool().Exec(s.ctx, "CREATE TABLE "+table+" (id text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	q := uniq("q")
	c := consume(t, s.b, q, 30*time.Second)
	m := newMsg(q)
	if err := s.b.Enqueue(s.ctx, m); err != nil {
		t.Fatal(err)
	}
	d := nextWithin(t, c, 5*time.Second).(*rsvppg.Delivery)
	tx, err := d.Begin(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(s.ctx, "INSERT INTO "+table+" VALUES ($1)", m.ID); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	if err := d.Nack(ctx, 0); err != nil {
		t.Fatalf("nack beside the transaction: %v", err)
	}
	if err := d.Extend(ctx); !errors.Is(err, rsvppg.ErrLeaseLost) {
		t.Fatalf("extend after the nack: %v, want ErrLeaseLost", err)
	}
	nothingWithin(t, c, 300*time.Millisecond) // due, but locked by the transaction
	if err := d.CommitWith(s.ctx, tx, nil); !errors.Is(err, rsvppg.ErrLeaseLost) {
		t.Fatalf("commit after the nack: %v, want ErrLeaseLost", err)
	}
	if n := countRows(t, s, "SELECT count(*) FROM "+table); n != 0 {
		t.Fatalf("%d business rows committed after the nack, want 0", n)
	}
	if again := nextWithin(t, c, 5*time.Second); again.Message().ID != m.ID {
		t.Fatalf("got %s, want %s again", again.Message().ID, m.ID)
	}
}

// TestSendTxDeadlineExpires: a request sent in a transaction with a
// Deadline expires as Send's does: nobody serves its queue, and Await
// returns ErrExpired soon after the deadline rather than waiting out its
// context. A rolled-back send leaves no expiry behind either.
func TestSendTxDeadlineExpires(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	c := newClient(t, s)
	q := uniq("q")
	var rolledBack string
	for _, commit := range []bool{false, true} {
		tx, err := s.b.Pool().Begin(s.ctx)
		if err != nil {
			t.Fatal(err)
		}
		ticket, err := rsvppg.SendTx(s.ctx, c, tx, q, &rsvp.Message{Deadline: time.Now().Add(time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		if !commit {
			if err := tx.Rollback(s.ctx); err != nil {
				t.Fatal(err)
			}
			rolledBack = ticket.CorrelationID
			continue
		}
		if err := tx.Commit(s.ctx); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		start := time.Now()
		r, err := c.Await(ctx, ticket.CorrelationID)
		cancel()
		if !errors.Is(err, rsvp.ErrExpired) {
			t.Fatalf("Await of a request sent in a transaction with a 1s deadline, nobody serving its queue: %v %v after %s; want ErrExpired",
				r, err, time.Since(start).Round(time.Second))
		}
	}
	// Only the committed send left an expiry task: the queue of tasks is
	// empty once it ran.
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := countRows(t, s, "SELECT count(*) FROM "+pgx.Identifier{s.schema, "requests"}.Sanitize()+" WHERE queue = $1", rsvp.ExpiryQueue)
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d expiry tasks left, want none", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r, err := s.b.GetReply(s.ctx, rolledBack); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("reply to the request of a rolled-back SendTx: %+v %v; want none", r, err)
	}
}

// TestHandleTxCommitAfterLeaseRanOut: the database hangs while HandleTx
// commits, for longer than the lease. The row lock keeps every other
// worker off the request, so the commit that ends the hang stands: the
// reply stored and the request acknowledged. What the responder records
// after a commit must then be recorded too (here: the reply listed under
// its reply session), not dropped because the lease's own clock ran out
// meanwhile.
func TestHandleTxCommitAfterLeaseRanOut(t *testing.T) {
	t.Parallel()
	b, p, schema, ctx := viaProxy(t)
	c, err := rsvp.New(ctx, b, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	q := uniq("q")
	var froze atomic.Bool
	handleTx(t, c, q, func(ctx context.Context, tx pgx.Tx, m *rsvp.Message) (*rsvp.Reply, error) {
		if froze.CompareAndSwap(false, true) {
			p.Freeze() // the commit that follows hangs
		}
		return &rsvp.Reply{Body: []byte("ok")}, nil
	}, rsvp.HandleOptions{Lease: 500 * time.Millisecond})
	ticket, err := c.Send(ctx, q, &rsvp.Message{ReplySession: "rs-1"})
	if err != nil {
		t.Fatal(err)
	}
	// Wait, on a connection of its own, until the request's lease has run
	// out by the database's clock, with a margin for the responder's.
	conn := connect(t, serverURL(t))
	requests := pgx.Identifier{schema, "requests"}.Sanitize()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var out bool
		err := conn.QueryRow(ctx, "SELECT coalesce(bool_and(lease_until < now() - interval '300ms'), false) FROM "+requests+
			" WHERE id = $1", ticket.ID).Scan(&out)
		if err != nil {
			p.Thaw()
			t.Fatal(err)
		}
		if out && froze.Load() {
			break
		}
		if time.Now().After(deadline) {
			p.Thaw()
			t.Fatal("the lease did not run out while the database hung")
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.Thaw()
	rep, err := c.Await(ctx, ticket.CorrelationID)
	if err != nil || string(rep.Body) != "ok" {
		t.Fatalf("Await: %v %v", rep, err)
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	got, err := c.SessionReplies(lctx, "rs-1", 0)
	if err != nil || len(got) != 1 {
		t.Fatalf("reply session after a commit that outlasted the lease: %v, %v; want the reply of %s listed", got, err, ticket.CorrelationID)
	}
}

// TestHandleTxLeavesWritesTheirConnections: as many HandleTx handlers as
// the backend has connections per pool (MaxConns) run at once, each in its
// transaction. Their rsvp.Progress calls, which append events, and any
// other durable write of the process (Send, a Handle responder's reply)
// must not wait for a handler to end, as they would if the handlers'
// transactions held every connection those writes use.
func TestHandleTxLeavesWritesTheirConnections(t *testing.T) {
	t.Parallel()
	url := serverURL(t)
	b := open(t, url, rsvppg.Options{Schema: freshSchema(t, url), MaxConns: 2, Timeout: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := rsvp.New(ctx, b, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	q := uniq("q")
	const n = 2
	var inside atomic.Int32
	all := make(chan struct{})
	errs := make(chan error, n)
	handleTx(t, c, q, func(ctx context.Context, tx pgx.Tx, m *rsvp.Message) (*rsvp.Reply, error) {
		if inside.Add(1) == n {
			close(all)
		}
		select { // every handler holds its transaction open
		case <-all:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		start := time.Now()
		if err := rsvp.Progress(pctx, "half"); err != nil {
			errs <- fmt.Errorf("Progress with %d handlers in their transactions (MaxConns %d): %w after %s", n, n, err, time.Since(start).Round(100*time.Millisecond))
		} else {
			errs <- nil
		}
		return &rsvp.Reply{Body: []byte("ok")}, nil
	}, rsvp.HandleOptions{Concurrency: n})
	for range n {
		if _, err := c.Send(ctx, q, &rsvp.Message{Track: true}); err != nil {
			t.Fatal(err)
		}
	}
	for range n {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatal("the handlers did not all run")
		}
	}
}

// TestHandleTxSucceededLateIsDeadLettered: a HandleTx handler that succeeds
// after its request's expiry task stored the expired reply ends as a
// Handle responder's does: the expired reply stands, its writes are rolled
// back, and the request, which ended expired, is dead-lettered as expired.
func TestHandleTxSucceededLateIsDeadLettered(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	c := newClient(t, s)
	table := ordersTable(t, s)
	q := uniq("q")
	expired := make(chan struct{})
	handleTx(t, c, q, func(ctx context.Context, tx pgx.Tx, m *rsvp.Message) (*rsvp.Reply, error) {
		<-expired // past the deadline, ignoring its context
		if err := placeOrder(context.Background(), tx, table, m); err != nil {
			return nil, err
		}
		return &rsvp.Reply{Body: []byte("late")}, nil
	}, rsvp.HandleOptions{})
	tk, err := c.Send(s.ctx, q, &rsvp.Message{Body: []byte("late-order"), Deadline: time.Now().Add(300 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Await(s.ctx, tk.CorrelationID); !errors.Is(err, rsvp.ErrExpired) {
		t.Fatalf("Await: %v, want ErrExpired from the expiry task", err)
	}
	close(expired)
	var dls []*backend.DeadLetter
	for deadline := time.Now().Add(10 * time.Second); len(dls) == 0; {
		if dls, err = s.b.DeadLetters(s.ctx, backend.DeadLetterQuery{Queue: q}); err != nil {
			t.Fatal(err)
		}
		if len(dls) == 0 && time.Now().After(deadline) {
			t.Fatalf("no dead letter of %s within 10s after its handler succeeded past its deadline, "+
				"want one with reason expired as a Handle responder stores", tk.CorrelationID)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, with a deadline
	}
	if dl := dls[0]; dl.Reason != rsvp.CodeExpired || dl.Message.CorrelationID != tk.CorrelationID || !strings.Contains(dl.LastError, "succeeded after") {
		t.Fatalf("dead letter %s of %s (%q), want reason expired for %s, the handler's late success", dl.Reason, dl.Message.CorrelationID, dl.LastError, tk.CorrelationID)
	}
	if _, err := c.Await(s.ctx, tk.CorrelationID); !errors.Is(err, rsvp.ErrExpired) {
		t.Fatalf("Await after the late success: %v, want ErrExpired", err)
	}
	if n := countRows(t, s, "SELECT count(*) FROM "+table); n != 0 {
		t.Fatalf("%d orders written, want the late handler's write rolled back", n)
	}
}
