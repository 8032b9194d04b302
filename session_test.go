package rsvp_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// TestSessionsInOrderUnderLoad is the session-order test of the issue:
// 200 keys × 50 requests, 16 workers, random handler delays. Each key's
// handler calls must come strictly in send order, one at a time, while
// keys run in parallel.
func TestSessionsInOrderUnderLoad(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		const keys, per, workers = 200, 50, 16
		requester, responder := e.client(), e.client()
		q := "orders-" + rsvp.NewID()[24:]
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()

		var mu sync.Mutex
		next := make([]int, keys) // the index each key's handler must see next
		running := make([]bool, keys)
		var problems []string
		var busy, maxBusy, handled atomic.Int64
		allDone := make(chan struct{})
		_, err := responder.Handle(q, rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
			k, _ := strconv.Atoi(strings.TrimPrefix(m.SessionKey, "key-"))
			i, _ := strconv.Atoi(string(m.Body))
			mu.Lock()
			if running[k] {
				problems = append(problems, fmt.Sprintf("key %d: #%d started while another of its requests ran", k, i))
			}
			if i != next[k] {
				problems = append(problems, fmt.Sprintf("key %d: got #%d, want #%d", k, i, next[k]))
			}
			running[k], next[k] = true, i+1
			mu.Unlock()
			n := busy.Add(1)
			for m := maxBusy.Load(); n > m && !maxBusy.CompareAndSwap(m, n); m = maxBusy.Load() {
			}
			time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond) // the work
			busy.Add(-1)
			mu.Lock()
			running[k] = false
			mu.Unlock()
			if handled.Add(1) == keys*per {
				close(allDone)
			}
			return &rsvp.Reply{}, nil
		}), rsvp.HandleOptions{Concurrency: workers})
		if err != nil {
			t.Fatal(err)
		}

		start := time.Now()
		var wg sync.WaitGroup
		for s := range workers { // senders; each sends its keys' requests in order
			wg.Go(func() {
				for i := range per {
					for k := s; k < keys; k += workers {
						msg := &rsvp.Message{SessionKey: fmt.Sprintf("key-%d", k), Body: []byte(strconv.Itoa(i))}
						if _, err := requester.Send(ctx, q, msg); err != nil {
							t.Errorf("send: %v", err)
							return
						}
					}
				}
			})
		}
		wg.Wait()
		select {
		case <-allDone:
		case <-ctx.Done():
			t.Fatalf("handled %d of %d requests in time", handled.Load(), keys*per)
		}
		elapsed := time.Since(start)
		mu.Lock()
		defer mu.Unlock()
		if len(problems) > 0 {
			t.Fatalf("%d order violations, first: %s", len(problems), problems[0])
		}
		for k, n := range next {
			if n != per {
				t.Fatalf("key %d: handled up to #%d of %d", k, n, per)
			}
		}
		// Parallelism across keys: most workers were busy at once.
		if maxBusy.Load() < workers/2 {
			t.Fatalf("at most %d handlers ran at once, want at least %d of %d", maxBusy.Load(), workers/2, workers)
		}
		t.Logf("%d requests in %d sessions handled in order in %s (%.0f/s), up to %d handlers at once",
			keys*per, keys, elapsed.Round(time.Millisecond), keys*per/elapsed.Seconds(), maxBusy.Load())
	})
}

// TestSessionRetryHoldsOnlyItsKey: a failing request holds up its own
// session while it is retried, not the others; when it is dead-lettered,
// its session goes on.
func TestSessionRetryHoldsOnlyItsKey(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		requester, responder := e.client(), e.client()
		q := "retry-" + rsvp.NewID()[24:]
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var mu sync.Mutex
		var log []string
		_, err := responder.Handle(q, rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
			entry := fmt.Sprintf("%s/%s#%d", m.SessionKey, m.Body, m.Attempt)
			mu.Lock()
			log = append(log, entry)
			mu.Unlock()
			if string(m.Body) == "0" && m.SessionKey == "bad" {
				return nil, errors.New("not today")
			}
			return &rsvp.Reply{Body: m.Body}, nil
		}), rsvp.HandleOptions{Concurrency: 4, MaxAttempts: 3, Backoff: func(int) time.Duration { return 300 * time.Millisecond }})
		if err != nil {
			t.Fatal(err)
		}
		var tickets []rsvp.Ticket
		for i := range 3 {
			for _, k := range []string{"bad", "good"} {
				tk, err := requester.Send(ctx, q, &rsvp.Message{SessionKey: k, Body: []byte(strconv.Itoa(i))})
				if err != nil {
					t.Fatal(err)
				}
				tickets = append(tickets, tk)
			}
		}
		for i, tk := range tickets {
			_, err := requester.Await(ctx, tk.CorrelationID)
			var re *rsvp.RemoteError
			if i == 0 {
				if !errors.As(err, &re) {
					t.Fatalf("bad/0: got %v, want its failure", err)
				}
			} else if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		got := strings.Join(log, " ")
		bad := filter(log, "bad/")
		if strings.Join(bad, " ") != "bad/0#1 bad/0#2 bad/0#3 bad/1#1 bad/2#1" {
			t.Fatalf("session bad ran as %v, want its first request's 3 attempts before the rest (all: %s)", bad, got)
		}
		if good := filter(log, "good/"); strings.Join(good, " ") != "good/0#1 good/1#1 good/2#1" {
			t.Fatalf("session good ran as %v (all: %s)", good, got)
		}
		// "good" finished while "bad" #0 was still being retried.
		if strings.Index(got, "good/2#1") > strings.Index(got, "bad/0#3") {
			t.Fatalf("session good waited for session bad's retries: %s", got)
		}
	})
}

func filter(log []string, prefix string) []string {
	var out []string
	for _, s := range log {
		if strings.HasPrefix(s, prefix) {
			out = append(out, s)
		}
	}
	return out
}

// TestReplySession: replies to requests sent with a reply session are read
// in order, from a cursor, and a read waits for the next one.
func TestReplySession(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		requester, responder := e.client(), e.client()
		q := "rs-" + rsvp.NewID()[24:]
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		serve(t, responder, q, replyWith("done"))
		session := "cart 17/ü" // any text without control characters
		var ids []string
		for i := range 5 {
			tk, err := requester.Send(ctx, q, &rsvp.Message{SessionKey: session, ReplySession: session, Body: []byte(strconv.Itoa(i))})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, tk.CorrelationID)
		}
		var got []string
		var after uint64
		for len(got) < 5 {
			rs, err := requester.SessionReplies(ctx, session, after)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rs {
				if r.Seq <= after {
					t.Fatalf("position %d after %d", r.Seq, after)
				}
				after = r.Seq
				got = append(got, r.Reply.CorrelationID)
				if want := "done:" + strconv.Itoa(len(got)-1); string(r.Reply.Body) != want {
					t.Fatalf("reply %d is %q, want %q", len(got)-1, r.Reply.Body, want)
				}
			}
		}
		if strings.Join(got, ",") != strings.Join(ids, ",") {
			t.Fatalf("replies listed as %v, sent %v", got, ids)
		}
		// Nothing more: the read waits, and returns the next reply once it is made.
		wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := requester.SessionReplies(wctx, session, after)
		wcancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("read past the end: %v, want it to wait", err)
		}
		done := make(chan []rsvp.SessionReply)
		go func() {
			rs, _ := requester.SessionReplies(ctx, session, after)
			done <- rs
		}()
		tk, err := requester.Send(ctx, q, &rsvp.Message{ReplySession: session, Body: []byte("late")})
		if err != nil {
			t.Fatal(err)
		}
		if rs := <-done; len(rs) != 1 || rs[0].Reply.CorrelationID != tk.CorrelationID {
			t.Fatalf("waiting read got %+v, want the late reply", rs)
		}
	})
}

func TestSessionBadInput(t *testing.T) {
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 10*time.Second) // a wrongly accepted SessionReplies would wait
	for _, tc := range []struct {
		name string
		msg  rsvp.Message
		want string
	}{
		{"long key", rsvp.Message{SessionKey: strings.Repeat("k", backend.MaxSessionKeyLen+1)}, "longer than 256"},
		{"control character", rsvp.Message{SessionKey: "a\tb"}, "control character"},
		{"not UTF-8", rsvp.Message{SessionKey: "\xff"}, "not valid UTF-8"},
		{"bad reply session", rsvp.Message{ReplySession: "x\ny"}, "control character"},
		{"scheduled", rsvp.Message{SessionKey: "k", NotBefore: time.Now().Add(time.Minute)}, "cannot be scheduled"},
	} {
		_, err := c.Send(ctx, "q", &tc.msg)
		if !errors.Is(err, rsvp.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want ErrInvalid saying %q", tc.name, err, tc.want)
		}
	}
	if _, err := c.SessionReplies(ctx, "", 0); !errors.Is(err, rsvp.ErrInvalid) {
		t.Errorf("empty reply session: got %v, want ErrInvalid", err)
	}
	nothingQueued(t, c, "q") // nothing refused was stored
}

// nothingQueued asserts that queue has no request to hand out.
func nothingQueued(t *testing.T, c *testClient, queue string) {
	t.Helper()
	cons, err := c.Consume(context.Background(), queue, rsvp.HandleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if l, err := cons.Next(ctx); err == nil {
		t.Fatalf("queue %s has request %s", queue, l.Message().ID)
	}
}

// the engine's dedupe window.
func TestExpiredRepliesListedInTheirReplySessions(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 30*time.Second)
	q := "nobody-" + rsvp.NewID()[24:]
	for _, session := range []string{"cart A", "cart B"} {
		rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := c.Request(rctx, q, &rsvp.Message{Body: []byte("x"), ReplySession: session})
		cancel()
		if !errors.Is(err, rsvp.ErrExpired) {
			t.Fatalf("%s: Request got %v, want ErrExpired", session, err)
		}
	}
	for _, session := range []string{"cart A", "cart B"} {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		rs, err := c.SessionReplies(sctx, session, 0)
		cancel()
		if err != nil {
			t.Errorf("reply session %q: %v; its expired reply is not listed", session, err)
			continue
		}
		if len(rs) != 1 || rs[0].Reply.Status != "expired" {
			t.Errorf("reply session %q lists %+v, want one expired reply", session, rs)
		}
	}
}

// and dead-letters it as expired.
func TestExpiredReplyListedOnce(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 30*time.Second)
	q := "later-" + rsvp.NewID()[24:]
	const session = "cart C"
	rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := c.Request(rctx, q, &rsvp.Message{Body: []byte("x"), ReplySession: session})
	cancel()
	if !errors.Is(err, rsvp.ErrExpired) {
		t.Fatalf("Request got %v, want ErrExpired", err)
	}
	rs, err := c.SessionReplies(ctx, session, 0)
	if err != nil || len(rs) != 1 {
		t.Fatalf("before a responder: %+v, %v; want the expired reply", rs, err)
	}
	// A responder starts and reaches the request: it dead-letters it as expired.
	handle(t, c, q, rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return nil, nil
	})
	for deadline := time.Now().Add(10 * time.Second); len(deadLetters(t, c, q)) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("not dead-lettered")
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, with a deadline
	}
	// Anything listed after the first reply?
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	defer scancel()
	more, err := c.SessionReplies(sctx, session, rs[0].Seq)
	if err == nil {
		t.Fatalf("the reply of %s is listed again at %d (first at %d): %d entries for one request",
			rs[0].Reply.CorrelationID, more[0].Seq, rs[0].Seq, 1+len(more))
	}
}

// consumer gets it before then.
func TestHeldSessionLeaseLastsUntilExpires(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 30*time.Second)
	q := "held-" + rsvp.NewID()[24:]
	for _, body := range []string{"1", "2"} {
		if _, err := c.Send(ctx, q, &rsvp.Message{SessionKey: "k", Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	const lease = 3 * time.Second
	cons := consumer(t, c, q, rsvp.HandleOptions{Lease: lease})
	l1 := next(t, cons)
	if string(l1.Message().Body) != "1" {
		t.Fatalf("first lease: %q", l1.Message().Body)
	}
	got2 := make(chan *rsvp.Lease, 1)
	go func() {
		l, err := cons.Next(ctx)
		if err != nil {
			t.Errorf("Next: %v", err)
		}
		got2 <- l
	}()
	// Wait until request 2 was pulled (and held: its turn has not come).
	js, err := jetstream.New(c.be.Conn())
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		jc, err := js.Consumer(ctx, "RSVP_REQUESTS", "rsvp_"+q)
		if err != nil {
			t.Fatal(err)
		}
		if info, err := jc.Info(ctx); err == nil && info.NumAckPending == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("request 2 not pulled")
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
	}
	// Request 1 is worked on for a while (less than a third of the lease),
	// then answered: request 2's turn comes.
	time.Sleep(900 * time.Millisecond) // the work on request 1, not a synchronisation
	if err := l1.Reply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	var l2 *rsvp.Lease
	select {
	case l2 = <-got2:
	case <-ctx.Done():
		t.Fatal("request 2 not handed out")
	}
	if l2 == nil || string(l2.Message().Body) != "2" {
		t.Fatalf("second lease: %+v", l2)
	}
	expires := l2.Expires()
	// Another worker of the queue must not get request 2 before l2 expires.
	other := consumer(t, c, q, rsvp.HandleOptions{Lease: lease})
	octx, cancel := context.WithDeadline(ctx, expires.Add(-300*time.Millisecond))
	defer cancel()
	if l, err := other.Next(octx); err == nil {
		t.Fatalf("another consumer leased request %q (attempt %d) %s before the first lease's Expires (%s after it was handed out)",
			l.Message().Body, l.Message().Attempt, time.Until(expires).Round(time.Millisecond), lease)
	}
	if err := l2.Reply(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

// TestAbandonedPullLeaseLastsUntilExpires: a request pulled for a Next
// call whose ctx ended before it arrived waits in the consumer with its
// lease running. Taken later, it is handed out with a lease that lasts
// until Lease.Expires: renewed while its lease may still run (0.6 of the
// lease later: attempt 1, no attempt used up), else left to run out and
// taken when delivered again (past the lease: attempt 2). No other Next
// gets it before Expires.
func TestAbandonedPullLeaseLastsUntilExpires(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		lease   time.Duration
		after   time.Duration // taken this long after it arrived
		attempt int
	}{{"renewed", 3 * time.Second, 1800 * time.Millisecond, 1}, {"ran out", time.Second, 1100 * time.Millisecond, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			abandonedPull(t, tc.lease, tc.after, tc.attempt)
		})
	}
}

func abandonedPull(t *testing.T, lease, after time.Duration, attempt int) {
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 30*time.Second)
	q := "abandoned-" + rsvp.NewID()[24:]
	cons := consumer(t, c, q, rsvp.HandleOptions{Lease: lease})
	js, err := jetstream.New(c.be.Conn())
	if err != nil {
		t.Fatal(err)
	}
	info := func() *jetstream.ConsumerInfo {
		jc, err := js.Consumer(ctx, "RSVP_REQUESTS", "rsvp_"+q)
		if err != nil {
			t.Fatal(err)
		}
		i, err := jc.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); {
			if time.Now().After(deadline) {
				t.Fatalf("not %s", what)
			}
			time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
		}
	}
	// A worker waits for a request, then gives up (an HTTP long-poll whose
	// client went away, say).
	nctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := cons.Next(nctx)
		done <- err
	}()
	waitFor("pulling", func() bool { return info().NumWaiting == 1 })
	cancel()
	if err := <-done; err == nil {
		t.Fatal("Next returned a lease")
	}
	// A request comes while the pull is still open at the server.
	if _, err := c.Send(ctx, q, &rsvp.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	waitFor("delivered", func() bool { return info().NumAckPending == 1 })
	deliveredAt := time.Now()
	waitFor("the time to take it", func() bool { return time.Since(deliveredAt) > after })
	// The next Next call, later, and another worker's after it.
	l := next(t, cons)
	if l.Message().Attempt != attempt {
		t.Fatalf("taken %s after it arrived: attempt %d, want %d", after, l.Message().Attempt, attempt)
	}
	expires := l.Expires()
	octx, ocancel := context.WithDeadline(ctx, expires.Add(-300*time.Millisecond))
	defer ocancel()
	if l2, err := cons.Next(octx); err == nil {
		t.Fatalf("request %s leased twice at once: attempt %d, then attempt %d %s before the first lease's Expires",
			l.Message().ID, l.Message().Attempt, l2.Message().Attempt, time.Until(expires).Round(time.Millisecond))
	}
}

// TestCancelledBeforeStartListedInReplySession: a tracked request cancelled
// before any responder started it has its cancelled reply listed under its
// reply session, in order with the session's other replies, on every engine.
func TestCancelledBeforeStartListedInReplySession(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		c := e.client()
		q := "rs-cancel-" + rsvp.NewID()[24:]
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		session := "cart " + rsvp.NewID()
		first, err := c.Send(ctx, q, &rsvp.Message{Track: true, ReplySession: session, Body: []byte("cancelled")})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Cancel(ctx, first.CorrelationID); err != nil {
			t.Fatal(err)
		}
		serve(t, c, q, replyWith("done"))
		second, err := c.Send(ctx, q, &rsvp.Message{Track: true, ReplySession: session, Body: []byte("answered")})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Await(ctx, second.CorrelationID); err != nil {
			t.Fatal(err)
		}
		var got []string
		var after uint64
		for !slices.Contains(got, second.CorrelationID) {
			rs, err := c.SessionReplies(ctx, session, after)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rs {
				after = r.Seq
				got = append(got, r.Reply.CorrelationID)
			}
		}
		if want := []string{first.CorrelationID, second.CorrelationID}; !slices.Equal(got, want) {
			t.Fatalf("reply session lists %v, want %v (the cancelled request, then the answered one)", got, want)
		}
	})
}

// deafEvents is an engine whose event notifications are all lost (the
// seam allows it: delivery is best effort, a reconnect drops some). It
// closes read after the first read of an event log that finds nothing.
type deafEvents struct {
	backend.Backend
	once sync.Once
	read chan struct{}
}

func (d *deafEvents) SubscribeEvents(ctx context.Context, fn func(*backend.Event)) (backend.Subscription, error) {
	return d.Backend.SubscribeEvents(ctx, func(*backend.Event) {})
}

func (d *deafEvents) Events(ctx context.Context, q backend.EventQuery) ([]*backend.Event, error) {
	evs, err := d.Backend.Events(ctx, q)
	if err == nil && len(evs) == 0 {
		d.once.Do(func() { close(d.read) })
	}
	return evs, err
}

// TestSessionRepliesNotificationLost: a SessionReplies waiting for a reply
// whose notification is lost still returns it, within
// Config.RecheckInterval, as Request and Await do.
func TestSessionRepliesNotificationLost(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	deaf := &deafEvents{Backend: c.be, read: make(chan struct{})}
	reader, err := rsvp.New(context.Background(), deaf, rsvp.Config{RecheckInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeWithin(t, "close reader", reader.Close) })
	handle(t, c, "rs-lost", rsvp.HandleOptions{}, func(context.Context, *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{}, nil
	})
	session := "rs-lost-" + rsvp.NewID()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan []rsvp.SessionReply, 1)
	go func() {
		rs, _ := reader.SessionReplies(ctx, session, 0)
		got <- rs
	}()
	receive(t, deaf.read, "first read of the reply session")
	tk, err := c.Send(ctx, "rs-lost", &rsvp.Message{ReplySession: session})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Await(ctxWithin(t, 10*time.Second), tk.CorrelationID); err != nil {
		t.Fatal(err)
	}
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	select {
	case rs := <-got:
		if len(rs) != 1 || rs[0].Reply.CorrelationID != tk.CorrelationID {
			t.Fatalf("SessionReplies: %+v, want the reply", rs)
		}
	case <-timer.C:
		cancel()
		t.Fatalf("SessionReplies still waiting 5s after the reply was listed (RecheckInterval 100ms); cancelled, it returned %v", <-got)
	}
}

// TestSessionRepliesAfterRestartListsExpired: a requester that sent with a
// reply session and a Deadline, and restarted before the deadline, reads
// the session's expired reply with SessionReplies alone: as Await does,
// SessionReplies runs the expiry tasks its requests may need, which no
// other client on the engine may be running.
func TestSessionRepliesAfterRestartListsExpired(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx := ctxWithin(t, 60*time.Second)
		c := e.client()
		q := "nobody-" + rsvp.NewID()[24:]
		session := "cart " + q
		deadline := time.Now().Add(time.Second)
		if _, err := c.Send(ctx, q, &rsvp.Message{Body: []byte("x"), ReplySession: session, Deadline: deadline}); err != nil {
			t.Fatal(err)
		}
		e.restart() // the requester's process ends before the deadline
		c = e.client()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		rs, err := c.SessionReplies(sctx, session, 0)
		if err != nil {
			t.Fatalf("reply session after a restart, %s after the deadline: %v; want its expired reply listed",
				time.Since(deadline).Round(time.Second), err)
		}
		if len(rs) != 1 || rs[0].Reply.Status != "expired" {
			t.Fatalf("reply session lists %+v, want one expired reply", rs)
		}
	})
}
