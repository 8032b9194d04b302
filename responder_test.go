package rsvp_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

func ctxWithin(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func fastRetry(int) time.Duration { return 20 * time.Millisecond }

func handle(t *testing.T, c *testClient, queue string, opts rsvp.HandleOptions, fn rsvp.HandlerFunc) *rsvp.Responder {
	t.Helper()
	r, err := c.Handle(queue, fn, opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func deadLetters(t *testing.T, c *testClient, queue string) []*backend.DeadLetter {
	t.Helper()
	dls, err := c.be.DeadLetters(ctxWithin(t, 5*time.Second), backend.DeadLetterQuery{Queue: queue, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	return dls
}

func TestRetryThenSucceed(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	var attempts []int
	var mu sync.Mutex
	handle(t, c, "flaky", rsvp.HandleOptions{Backoff: fastRetry}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		mu.Lock()
		attempts = append(attempts, m.Attempt)
		mu.Unlock()
		if m.Attempt < 3 {
			return nil, errors.New("not yet")
		}
		return &rsvp.Reply{Body: []byte("ok")}, nil
	})
	r, err := c.Request(ctxWithin(t, 10*time.Second), "flaky", &rsvp.Message{})
	if err != nil || string(r.Body) != "ok" {
		t.Fatalf("reply %v, %v", r, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != 3 || attempts[0] != 1 || attempts[2] != 3 {
		t.Fatalf("attempts %v, want [1 2 3]", attempts)
	}
}

func TestBackoffIsApplied(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	const delay = 300 * time.Millisecond
	var first time.Time
	var gap atomic.Int64
	handle(t, c, "slowretry", rsvp.HandleOptions{Backoff: func(int) time.Duration { return delay }}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if m.Attempt == 1 {
			first = time.Now()
			return nil, errors.New("once")
		}
		gap.Store(int64(time.Since(first)))
		return nil, nil
	})
	if _, err := c.Request(ctxWithin(t, 10*time.Second), "slowretry", &rsvp.Message{}); err != nil {
		t.Fatal(err)
	}
	if g := time.Duration(gap.Load()); g < delay-50*time.Millisecond {
		t.Fatalf("retried after %s, before the %s backoff", g, delay)
	}
}

func TestDefaultBackoff(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		attempt  int
		min, max time.Duration
	}{{1, 750 * time.Millisecond, 1250 * time.Millisecond}, {2, 1500 * time.Millisecond, 2500 * time.Millisecond}, {4, 6 * time.Second, 10 * time.Second}, {30, 45 * time.Second, 75 * time.Second}} {
		for range 50 {
			if d := rsvp.DefaultBackoff(tc.attempt); d < tc.min || d > tc.max {
				t.Fatalf("DefaultBackoff(%d) = %s, want within [%s, %s]", tc.attempt, d, tc.min, tc.max)
			}
		}
	}
}

func TestAttemptsExhaustedDeadLetters(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	var calls atomic.Int32
	handle(t, c, "broken", rsvp.HandleOptions{MaxAttempts: 3, Backoff: fastRetry}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		calls.Add(1)
		return nil, errors.New("disk on fire")
	})
	r, err := c.Request(ctxWithin(t, 10*time.Second), "broken", &rsvp.Message{Body: []byte("payload")})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || re.Code != rsvp.CodeFailed || !strings.Contains(re.Message, "disk on fire") {
		t.Fatalf("got %v, want a RemoteError with code failed and the last error", err)
	}
	if r == nil || r.Status != backend.StatusFailed {
		t.Fatalf("reply %+v, want the stored failure", r)
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("handler ran %d times, want 3", n)
	}
	dls := deadLetters(t, c, "broken")
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dls))
	}
	dl := dls[0]
	if dl.Reason != rsvp.CodeFailed || dl.Message.Attempt != 3 || !strings.Contains(dl.LastError, "disk on fire") || string(dl.Message.Body) != "payload" {
		t.Fatalf("dead letter %+v", dl)
	}
}

func TestPermanentErrorIsNotRetried(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	var calls atomic.Int32
	handle(t, c, "strict", rsvp.HandleOptions{Backoff: fastRetry}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		calls.Add(1)
		return nil, rsvp.Permanent(&rsvp.RemoteError{Code: "not_found", Message: "no such image"})
	})
	_, err := c.Request(ctxWithin(t, 10*time.Second), "strict", &rsvp.Message{})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || re.Code != "not_found" {
		t.Fatalf("got %v, want RemoteError not_found", err)
	}
	if calls.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1", calls.Load())
	}
	if dls := deadLetters(t, c, "strict"); len(dls) != 1 || dls[0].Reason != "not_found" {
		t.Fatalf("dead letters %+v", dls)
	}
}

func TestExpiredBeforeStart(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	tk, err := c.Send(ctxWithin(t, 5*time.Second), "late", &rsvp.Message{Deadline: time.Now().Add(-time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	handle(t, c, "late", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		calls.Add(1)
		return nil, nil
	})
	r, err := c.Await(ctxWithin(t, 10*time.Second), tk.CorrelationID)
	if !errors.Is(err, rsvp.ErrExpired) {
		t.Fatalf("got %v, want ErrExpired", err)
	}
	if r.Status != backend.StatusExpired || calls.Load() != 0 {
		t.Fatalf("status %s, handler calls %d", r.Status, calls.Load())
	}
	// The expiry task may answer the requester before the responder reaches
	// the request; the responder then dead-letters it.
	waitFor(t, func() bool { return len(deadLetters(t, c, "late")) > 0 })
	if dls := deadLetters(t, c, "late"); len(dls) != 1 || dls[0].Reason != rsvp.CodeExpired {
		t.Fatalf("dead letters %+v", dls)
	}
}

func TestDeadlineTravelsWithRequest(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	got := make(chan time.Time, 1)
	handle(t, c, "timed", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		d, _ := ctx.Deadline()
		got <- d
		return nil, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want, _ := ctx.Deadline()
	if _, err := c.Request(ctx, "timed", &rsvp.Message{}); err != nil {
		t.Fatal(err)
	}
	if d := <-got; d.Sub(want).Abs() > time.Millisecond {
		t.Fatalf("handler deadline %v, requester deadline %v", d, want)
	}
}

func TestDeadlinePassesWhileHandling(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	handle(t, c, "slow", rsvp.HandleOptions{Backoff: fastRetry}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		<-ctx.Done() // the request's deadline
		return nil, ctx.Err()
	})
	tk, err := c.Send(ctxWithin(t, 5*time.Second), "slow", &rsvp.Message{Deadline: time.Now().Add(300 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Await(ctxWithin(t, 10*time.Second), tk.CorrelationID); !errors.Is(err, rsvp.ErrExpired) {
		t.Fatalf("got %v, want ErrExpired", err)
	}
}

func TestLeaseIsExtendedWhileHandling(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	var calls atomic.Int32
	opts := rsvp.HandleOptions{Lease: 300 * time.Millisecond, Concurrency: 2}
	release := make(chan struct{})
	handle(t, c, "long", opts, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		calls.Add(1)
		<-release
		return &rsvp.Reply{Body: []byte("done")}, nil
	})
	tk, err := c.Send(ctxWithin(t, 5*time.Second), "long", &rsvp.Message{})
	if err != nil {
		t.Fatal(err)
	}
	// Hold the handler for five leases; an idle second worker is ready to
	// take a redelivery.
	timer := time.NewTimer(5 * opts.Lease)
	<-timer.C
	close(release)
	r, err := c.Await(ctxWithin(t, 10*time.Second), tk.CorrelationID)
	if err != nil || string(r.Body) != "done" {
		t.Fatalf("reply %v, %v", r, err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times: the lease was not extended", n)
	}
}

func TestPanicBecomesFailure(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	handle(t, c, "panicky", rsvp.HandleOptions{MaxAttempts: 1}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if string(m.Body) == "boom" {
			panic("kaboom")
		}
		return &rsvp.Reply{Body: m.Body}, nil
	})
	_, err := c.Request(ctxWithin(t, 10*time.Second), "panicky", &rsvp.Message{Body: []byte("boom")})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || re.Message != "handler panicked: kaboom" {
		t.Fatalf("got %v, want the panic as a failure (its stack goes to the log only)", err)
	}
	// The responder lives on.
	if r, err := c.Request(ctxWithin(t, 10*time.Second), "panicky", &rsvp.Message{Body: []byte("fine")}); err != nil || string(r.Body) != "fine" {
		t.Fatalf("after a panic: %v, %v", r, err)
	}
}

func TestStopLetsInFlightFinish(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	started := make(chan struct{})
	release := make(chan struct{})
	r := handle(t, c, "drain", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		close(started)
		<-release
		return &rsvp.Reply{Body: []byte("finished")}, nil
	})
	tk, err := c.Send(ctxWithin(t, 5*time.Second), "drain", &rsvp.Message{})
	if err != nil {
		t.Fatal(err)
	}
	receive(t, started, "handler start")
	stopped := make(chan error, 1)
	go func() { stopped <- r.Stop(ctxWithin(t, 10*time.Second)) }()
	close(release)
	if err := receive(t, stopped, "Stop"); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if reply, err := c.Await(ctxWithin(t, 10*time.Second), tk.CorrelationID); err != nil || string(reply.Body) != "finished" {
		t.Fatalf("reply %v, %v", reply, err)
	}
}

func TestHardStopRedelivers(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	started := make(chan struct{}, 1)
	r := handle(t, c, "hard", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		started <- struct{}{}
		<-ctx.Done() // never finishes on its own
		return nil, ctx.Err()
	})
	tk, err := c.Send(ctxWithin(t, 5*time.Second), "hard", &rsvp.Message{})
	if err != nil {
		t.Fatal(err)
	}
	receive(t, started, "handler start")
	hardStop(t, r)
	// Another responder gets it at once, as attempt 2.
	attempt := make(chan int, 1)
	handle(t, c, "hard", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		attempt <- m.Attempt
		return nil, nil
	})
	if _, err := c.Await(ctxWithin(t, 10*time.Second), tk.CorrelationID); err != nil {
		t.Fatal(err)
	}
	if a := <-attempt; a != 2 {
		t.Fatalf("redelivered as attempt %d, want 2", a)
	}
}

func TestDedupe(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	var calls atomic.Int32
	handle(t, c, "once", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		calls.Add(1)
		return &rsvp.Reply{Body: []byte("answer")}, nil
	})
	msg := &rsvp.Message{ID: "order-1234", Body: []byte("x")}
	t1, err := c.Send(ctxWithin(t, 5*time.Second), "once", msg)
	if err != nil {
		t.Fatal(err)
	}
	t2, err := c.Send(ctxWithin(t, 5*time.Second), "once", msg)
	if err != nil || t1 != t2 {
		t.Fatalf("second send: %v, %v vs %v", err, t2, t1)
	}
	if _, err := c.Await(ctxWithin(t, 10*time.Second), t1.CorrelationID); err != nil {
		t.Fatal(err)
	}
	// Request with the same id is answered from the stored reply.
	r, err := c.Request(ctxWithin(t, 10*time.Second), "once", msg)
	if err != nil || string(r.Body) != "answer" {
		t.Fatalf("request with a handled id: %v, %v", r, err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times for one id", n)
	}
}

func TestConcurrentResponders(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	var byA, byB atomic.Int32
	handle(t, c, "shared", rsvp.HandleOptions{Concurrency: 4}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		byA.Add(1)
		return &rsvp.Reply{Body: m.Body}, nil
	})
	handle(t, c, "shared", rsvp.HandleOptions{Concurrency: 4}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		byB.Add(1)
		return &rsvp.Reply{Body: m.Body}, nil
	})
	ctx := ctxWithin(t, 30*time.Second)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := []byte{byte(i)}
			r, err := c.Request(ctx, "shared", &rsvp.Message{Body: body})
			if err != nil || string(r.Body) != string(body) {
				t.Errorf("request %d: %v, %v", i, r, err)
			}
		}()
	}
	wg.Wait()
	if a, b := byA.Load(), byB.Load(); a+b != 200 || a == 0 || b == 0 {
		t.Fatalf("responders handled %d and %d of 200", a, b)
	}
}

// TestBadReplyToIsDeadLetteredOnce: a request whose reply address is
// unusable is dead-lettered once, and its history (tracked) ends failed,
// not with the handler's success that could not be stored.
func TestBadReplyToIsDeadLetteredOnce(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	var calls atomic.Int32
	handle(t, c, "misaddressed", rsvp.HandleOptions{Backoff: fastRetry}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		calls.Add(1)
		return &rsvp.Reply{Body: []byte("lost")}, nil
	})
	bad, err := c.Send(ctxWithin(t, 5*time.Second), "misaddressed", &rsvp.Message{ReplyTo: "nowhere", Track: true})
	if err != nil {
		t.Fatal(err)
	}
	// The queue keeps working, and the bad request is dead-lettered once.
	if _, err := c.Request(ctxWithin(t, 10*time.Second), "misaddressed", &rsvp.Message{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(deadLetters(t, c, "misaddressed")) > 0 })
	dls := deadLetters(t, c, "misaddressed")
	if len(dls) != 1 || dls[0].Reason != rsvp.CodeBadReplyTo || dls[0].Message.ReplyTo != "nowhere" {
		t.Fatalf("dead letters %+v", dls)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("handler ran %d times for 2 requests", n)
	}
	evs := waitForFinalEvent(t, c, bad.CorrelationID)
	if last := evs[len(evs)-1]; last.Type != string(backend.StatusFailed) || !strings.Contains(string(last.Data), rsvp.CodeBadReplyTo) {
		t.Fatalf("events %v, the last %s; want it failed with %s", eventTypes(evs), last.Data, rsvp.CodeBadReplyTo)
	}
}

func TestReservedReplyHeaderFails(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	handle(t, c, "sneaky", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Headers: map[string]string{"nats-expected-stream": "x"}}, nil
	})
	_, err := c.Request(ctxWithin(t, 10*time.Second), "sneaky", &rsvp.Message{})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Message, "reserved") {
		t.Fatalf("got %v, want a failure naming the reserved header", err)
	}
}

func TestUnreadableRequestIsDeadLettered(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	handle(t, c, "raw", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return nil, nil
	})
	// A foreign publisher forgets the id header and sends a bad deadline.
	js, err := jetstream.New(c.be.Conn())
	if err != nil {
		t.Fatal(err)
	}
	bad := &nats.Msg{Subject: "rsvp.req.raw", Header: nats.Header{"Rsvp-Deadline": {"tomorrow"}}, Data: []byte("??")}
	if _, err := js.PublishMsg(ctxWithin(t, 5*time.Second), bad); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(deadLetters(t, c, "raw")) > 0 })
	dl := deadLetters(t, c, "raw")[0]
	if dl.Reason != rsvp.CodeBadRequest || !strings.Contains(dl.LastError, "Rsvp-Deadline") || string(dl.Message.Body) != "??" {
		t.Fatalf("dead letter %+v", dl)
	}
}

// waitFor polls cond until it holds, failing the test after 10s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		<-tick.C
	}
}

func TestAnsweredCorrelationIDIsFoundAtOnce(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{RecheckInterval: time.Hour})
	handle(t, c, "corr", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: []byte("first")}, nil
	})
	msg := &rsvp.Message{CorrelationID: "order-77"}
	if _, err := c.Request(ctxWithin(t, 10*time.Second), "corr", msg); err != nil {
		t.Fatal(err)
	}
	// A second request with the same correlation id is answered from the
	// stored reply, not after a recheck an hour away.
	r, err := c.Request(ctxWithin(t, 10*time.Second), "corr", msg)
	if err != nil || string(r.Body) != "first" {
		t.Fatalf("second request: %v, %v", r, err)
	}
}

func TestReplyTooLargeForEngineFailsOnce(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{MaxBodySize: 16 << 20}) // above the engine's 8 MiB
	var calls atomic.Int32
	handle(t, c, "huge", rsvp.HandleOptions{Backoff: fastRetry}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		calls.Add(1)
		return &rsvp.Reply{Body: make([]byte, 9<<20)}, nil
	})
	_, err := c.Request(ctxWithin(t, 20*time.Second), "huge", &rsvp.Message{})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || re.Code != rsvp.CodeFailed || !strings.Contains(re.Message, "does not fit") {
		t.Fatalf("got %v, want a failure saying the reply does not fit", err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times; a reply that cannot fit must not be retried", n)
	}
}

func TestSecondStopHonoursItsContext(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	started, release := make(chan struct{}), make(chan struct{})
	r := handle(t, c, "slowstop", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		close(started)
		<-release
		return nil, nil
	})
	if _, err := c.Send(ctxWithin(t, 5*time.Second), "slowstop", &rsvp.Message{}); err != nil {
		t.Fatal(err)
	}
	receive(t, started, "handler start")
	// Two Stops at once, in either order: the one with a short deadline
	// returns at its deadline, not when the handler finishes.
	patient := make(chan error, 1)
	go func() { patient <- r.Stop(context.Background()) }()
	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := r.Stop(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("short Stop: %v, want its own deadline", err)
	}
	close(release)
	err := receive(t, patient, "the patient Stop") // nil, or the short deadline if that Stop ran the stop
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("patient Stop: %v", err)
	}
	// Later Stops report the same outcome at once.
	if again := r.Stop(context.Background()); !errors.Is(again, err) && again != err {
		t.Fatalf("Stop after stopping: %v, want %v", again, err)
	}
}

// A request answered before whose acknowledgement was lost comes back: it is
// settled without running the handler or dead-lettering it.
func TestRedeliveredAnsweredRequestIsSettled(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 10*time.Second)
	tk, err := c.Send(ctx, "lostack", &rsvp.Message{Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	// A worker answers it and dies before acknowledging: the request comes
	// back as attempt 2.
	cons, err := c.be.Consume(ctx, "lostack", backend.ConsumeParams{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := cons.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.be.PutReply(ctx, d.Message().ReplyTo, &backend.Reply{CorrelationID: tk.CorrelationID, Status: backend.StatusSucceeded, Body: []byte("done")}); err != nil {
		t.Fatal(err)
	}
	_ = cons.Close()
	_ = d.Nack(ctx, 0)
	var calls atomic.Int32
	handle(t, c, "lostack", rsvp.HandleOptions{MaxAttempts: 1}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		calls.Add(1)
		return nil, nil
	})
	// The queue drains: a marker request behind it gets through.
	if _, err := c.Request(ctx, "lostack", &rsvp.Message{}); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times; want once, for the marker only", n)
	}
	if dls := deadLetters(t, c, "lostack"); len(dls) != 0 {
		t.Fatalf("an answered request was dead-lettered: %+v", dls[0])
	}
	if r, err := c.Await(ctx, tk.CorrelationID); err != nil || string(r.Body) != "done" {
		t.Fatalf("reply %v, %v", r, err)
	}
}

func TestClosedClientRefuses(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx := ctxWithin(t, 5*time.Second)
	if _, err := c.Send(ctx, "q", &rsvp.Message{}); !errors.Is(err, rsvp.ErrClosed) {
		t.Errorf("Send after Close: %v", err)
	}
	if _, err := c.Request(ctx, "q", &rsvp.Message{}); !errors.Is(err, rsvp.ErrClosed) {
		t.Errorf("Request after Close: %v", err)
	}
	if _, err := c.Await(ctx, "some-id"); !errors.Is(err, rsvp.ErrClosed) {
		t.Errorf("Await after Close: %v", err)
	}
	if _, err := c.SessionReplies(ctx, "some-session", 0); !errors.Is(err, rsvp.ErrClosed) {
		t.Errorf("SessionReplies after Close: %v", err)
	}
}

func TestHeaderKeysValidated(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	for _, h := range []map[string]string{{"bad key": "v"}, {"a:b": "v"}, {"": "v"}, {"Ok": "line\nbreak"}} {
		_, err := c.Send(ctxWithin(t, 5*time.Second), "q", &rsvp.Message{Headers: h})
		if !errors.Is(err, rsvp.ErrInvalid) {
			t.Errorf("headers %q: %v, want ErrInvalid", h, err)
		}
	}
}

// TestCloseAfterHardStop: Close waits for a responder whose hard stop is
// still under way, without reporting that Stop's outcome: it went to the
// caller of Stop.
func TestCloseAfterHardStop(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	started, release := make(chan struct{}), make(chan struct{})
	r := handle(t, c, "hardclose", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		close(started)
		<-release // ignores ctx: the hard stop stays under way
		return nil, nil
	})
	if _, err := c.Send(ctxWithin(t, 5*time.Second), "hardclose", &rsvp.Message{}); err != nil {
		t.Fatal(err)
	}
	receive(t, started, "handler start")
	hardStop(t, r)
	closed := make(chan error, 1)
	go func() { closed <- c.Close(ctxWithin(t, 10*time.Second)) }()
	close(release)
	if err := receive(t, closed, "Close"); err != nil {
		t.Fatalf("Close: %v, want nil: the hard stop's outcome went to its caller", err)
	}
	select {
	case <-r.Stopped():
	default:
		t.Fatal("Close returned before the responder stopped")
	}
}

// hardStop stops r with a context that has ended: Stop returns at once,
// and the contexts of r's running handlers are cancelled.
func hardStop(t *testing.T, r *rsvp.Responder) {
	t.Helper()
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.Stop(expired); !errors.Is(err, context.Canceled) {
		t.Fatalf("stop: %v, want context.Canceled", err)
	}
}

// slowConsume is an engine whose Consume of queue waits until release is
// closed, after it has signalled entered.
type slowConsume struct {
	*rsvpnats.Backend
	queue            string
	entered, release chan struct{}
}

func (s slowConsume) Consume(ctx context.Context, queue string, p backend.ConsumeParams) (backend.Consumer, error) {
	if queue == s.queue {
		close(s.entered)
		<-s.release
	}
	return s.Backend.Consume(ctx, queue, p)
}

// TestHandleWaitingOnTheEngineBlocksNothing: while Handle waits for the
// engine to set up its consumer, the client's other calls go on.
func TestHandleWaitingOnTheEngineBlocksNothing(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 20*time.Second)
	slow := slowConsume{Backend: c.be, queue: "slow-consumer", entered: make(chan struct{}), release: make(chan struct{})}
	sc, err := rsvp.New(ctx, slow, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeWithin(t, "close the slow client", sc.Close) })
	handled := make(chan error, 1)
	go func() {
		_, err := sc.Handle("slow-consumer", rsvp.HandlerFunc(echoHandler), rsvp.HandleOptions{})
		handled <- err
	}()
	receive(t, slow.entered, "Consume to be called")
	sent := make(chan error, 1)
	go func() {
		_, err := sc.Send(ctx, "elsewhere", &rsvp.Message{Body: []byte("x")})
		sent <- err
	}()
	select {
	case err := <-sent:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second): // a bound on a call that should not wait at all
		close(slow.release)
		t.Fatal("Send waited for another queue's Handle")
	}
	close(slow.release)
	if err := receive(t, handled, "Handle to return"); err != nil {
		t.Fatal(err)
	}
}

// A handler's *RemoteError without a Code fails as CodeFailed, with its
// Message: the requester and the dead letter both say "failed", not an
// empty code or reason.
func TestRemoteErrorWithoutCode(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	handle(t, c, "nocode", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return nil, rsvp.Permanent(&rsvp.RemoteError{Message: "out of stock"})
	})
	r, err := c.Request(ctxWithin(t, 10*time.Second), "nocode", &rsvp.Message{Body: []byte("x")})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || re.Code != rsvp.CodeFailed || re.Message != "out of stock" || r.ErrorCode != rsvp.CodeFailed {
		t.Fatalf("Request: %+v, %v; want code failed with the message", r, err)
	}
	if dls := deadLetters(t, c, "nocode"); len(dls) != 1 || dls[0].Reason != rsvp.CodeFailed || dls[0].LastError != "out of stock" {
		t.Fatalf("dead letters: %+v; want one with reason failed", dls)
	}
}

// A handler's error text that is not UTF-8, or holds NUL bytes, reaches the
// requester and the dead letter with each such byte as U+FFFD, on every
// engine: PostgreSQL stores no other text, and refused the dead letter and
// the reply, so that a permanent failure ran again and again.
func TestErrorTextNotUTF8(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		c := e.client()
		ctx := ctxWithin(t, 20*time.Second)
		var runs atomic.Int32
		if _, err := c.Handle("raw", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
			runs.Add(1)
			return nil, rsvp.Permanent(errors.New("bad \xff byte, \x00 NUL"))
		}), rsvp.HandleOptions{MaxAttempts: 3, Backoff: fastRetry}); err != nil {
			t.Fatal(err)
		}
		_, err := c.Request(ctx, "raw", &rsvp.Message{Body: []byte("x")})
		var re *rsvp.RemoteError
		if !errors.As(err, &re) || re.Code != rsvp.CodeFailed || re.Message != "bad \uFFFD byte, \uFFFD NUL" {
			t.Fatalf("Request: %v; want failed with the text made storable", err)
		}
		dls, err := c.DeadLetters(ctx, rsvp.DeadLetterQuery{Queue: "raw"})
		if err != nil || len(dls) != 1 || dls[0].LastError != "bad \uFFFD byte, \uFFFD NUL" {
			t.Fatalf("dead letters: %+v, %v; want one with the text made storable", dls, err)
		}
		if n := runs.Load(); n != 1 {
			t.Fatalf("the handler ran %d times for a permanent failure", n)
		}
	})
}

// TestRequestTextValidated: a request's type, content type and header
// values that no engine can store as text (a line break in the type or
// content type, bytes that are not UTF-8, a NUL) are refused at Send with
// ErrInvalid, on every engine alike; before, NATS turned line breaks into
// spaces and PostgreSQL refused the others with an error of its own.
func TestRequestTextValidated(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	for name, m := range map[string]*rsvp.Message{
		"type with a line break":         {Type: "a.v1\nb"},
		"content type with a line break": {ContentType: "text/plain\r\nX: y"},
		"type not UTF-8":                 {Type: "a.v1\xff"},
		"content type with a NUL":        {ContentType: "text/plain\x00"},
		"header value not UTF-8":         {Headers: map[string]string{"K": "v\xfe"}},
		"header value with a NUL":        {Headers: map[string]string{"K": "v\x00"}},
	} {
		if _, err := c.Send(ctxWithin(t, 5*time.Second), "q", m); !errors.Is(err, rsvp.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}
