package rsvp_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// consumer returns a Consumer of queue, closed with the test.
func consumer(t *testing.T, c *testClient, queue string, opts rsvp.HandleOptions) *rsvp.Consumer {
	t.Helper()
	cons, err := c.Consume(ctxWithin(t, 5*time.Second), queue, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cons.Close() })
	return cons
}

// next leases the next request of cons, waiting up to 10s for it.
func next(t *testing.T, cons *rsvp.Consumer) *rsvp.Lease {
	t.Helper()
	l, err := cons.Next(ctxWithin(t, 10*time.Second))
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return l
}

func TestLeaseReply(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	cons := consumer(t, c, "pull", rsvp.HandleOptions{})
	ctx := ctxWithin(t, 10*time.Second)
	tk, err := c.Send(ctx, "pull", &rsvp.Message{ContentType: "text/plain", Body: []byte("ping")})
	if err != nil {
		t.Fatal(err)
	}
	l := next(t, cons)
	if m := l.Message(); m.ID != tk.ID || m.Attempt != 1 || string(m.Body) != "ping" || m.ContentType != "text/plain" {
		t.Fatalf("leased %+v", m)
	}
	if l.Duration() != 30*time.Second || time.Until(l.Expires()) < 20*time.Second {
		t.Fatalf("lease duration %s, expires at %s", l.Duration(), l.Expires())
	}
	if err := l.Extend(ctx); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if err := l.Reply(ctx, &rsvp.Reply{ContentType: "text/plain", Body: []byte("pong")}); err != nil {
		t.Fatal(err)
	}
	r, err := c.Await(ctx, tk.CorrelationID)
	if err != nil || string(r.Body) != "pong" || r.ContentType != "text/plain" || r.Status != backend.StatusSucceeded {
		t.Fatalf("Await: %+v, %v", r, err)
	}
}

func TestLeaseFailRetriesThenDeadLetters(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	cons := consumer(t, c, "pullfail", rsvp.HandleOptions{MaxAttempts: 3, Backoff: fastRetry})
	ctx := ctxWithin(t, 10*time.Second)
	tk, err := c.Send(ctx, "pullfail", &rsvp.Message{Body: []byte("payload")})
	if err != nil {
		t.Fatal(err)
	}
	for attempt := 1; attempt <= 3; attempt++ {
		l := next(t, cons)
		if got := l.Message().Attempt; got != attempt {
			t.Fatalf("attempt %d, want %d", got, attempt)
		}
		if err := l.Fail(ctx, errors.New("disk on fire")); err != nil {
			t.Fatal(err)
		}
	}
	_, err = c.Await(ctx, tk.CorrelationID)
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || re.Code != rsvp.CodeFailed || re.Message != "disk on fire" {
		t.Fatalf("Await: %v, want the last failure", err)
	}
	dls := deadLetters(t, c, "pullfail")
	if len(dls) != 1 || dls[0].Reason != rsvp.CodeFailed || dls[0].Message.Attempt != 3 || !strings.Contains(dls[0].LastError, "disk on fire") {
		t.Fatalf("dead letters %+v", dls)
	}
}

func TestLeasePermanentFail(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	cons := consumer(t, c, "pullperm", rsvp.HandleOptions{Backoff: fastRetry})
	ctx := ctxWithin(t, 10*time.Second)
	tk, err := c.Send(ctx, "pullperm", &rsvp.Message{})
	if err != nil {
		t.Fatal(err)
	}
	if err := next(t, cons).Fail(ctx, rsvp.Permanent(&rsvp.RemoteError{Code: "not_found", Message: "no such image"})); err != nil {
		t.Fatal(err)
	}
	_, err = c.Await(ctx, tk.CorrelationID)
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || re.Code != "not_found" || re.Message != "no such image" {
		t.Fatalf("Await: %v, want RemoteError not_found", err)
	}
	if dls := deadLetters(t, c, "pullperm"); len(dls) != 1 || dls[0].Reason != "not_found" || dls[0].Message.Attempt != 1 {
		t.Fatalf("dead letters %+v", dls)
	}
}

func TestLeaseRelease(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	// A long backoff: only Release can bring the request back this soon.
	cons := consumer(t, c, "pullrelease", rsvp.HandleOptions{Backoff: func(int) time.Duration { return time.Hour }})
	ctx := ctxWithin(t, 10*time.Second)
	tk, err := c.Send(ctx, "pullrelease", &rsvp.Message{})
	if err != nil {
		t.Fatal(err)
	}
	l := next(t, cons)
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	l2 := next(t, cons)
	if m := l2.Message(); m.ID != tk.ID || m.Attempt != 2 {
		t.Fatalf("after Release: %+v, want attempt 2 of %s", m, tk.ID)
	}
	if err := l.Reply(ctx, nil); !errors.Is(err, rsvp.ErrSettled) {
		t.Fatalf("Reply on a released lease: %v, want ErrSettled", err)
	}
	if err := l2.Reply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Await(ctx, tk.CorrelationID); err != nil || r.Status != backend.StatusSucceeded {
		t.Fatalf("Await: %+v, %v", r, err)
	}
}

func TestLeaseSettledOnce(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	cons := consumer(t, c, "pullonce", rsvp.HandleOptions{})
	ctx := ctxWithin(t, 10*time.Second)
	tk, err := c.Send(ctx, "pullonce", &rsvp.Message{})
	if err != nil {
		t.Fatal(err)
	}
	l := next(t, cons)
	if err := l.Reply(ctx, &rsvp.Reply{Body: []byte("first")}); err != nil {
		t.Fatal(err)
	}
	for name, settle := range map[string]func() error{
		"Reply":   func() error { return l.Reply(ctx, &rsvp.Reply{Body: []byte("second")}) },
		"Fail":    func() error { return l.Fail(ctx, errors.New("late")) },
		"Release": func() error { return l.Release(ctx) },
		"Extend":  func() error { return l.Extend(ctx) },
	} {
		if err := settle(); !errors.Is(err, rsvp.ErrSettled) {
			t.Errorf("%s after Reply: %v, want ErrSettled", name, err)
		}
	}
	if r, err := c.Await(ctx, tk.CorrelationID); err != nil || string(r.Body) != "first" {
		t.Fatalf("Await: %+v, %v; want the first reply", r, err)
	}
}

func TestLeaseSkipsCancelled(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 10*time.Second)
	doomed, err := c.Send(ctx, "pullcancel", &rsvp.Message{Track: true, Body: []byte("doomed")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Cancel(ctx, doomed.CorrelationID); err != nil {
		t.Fatal(err)
	}
	marker, err := c.Send(ctx, "pullcancel", &rsvp.Message{Track: true, Body: []byte("marker")})
	if err != nil {
		t.Fatal(err)
	}
	cons := consumer(t, c, "pullcancel", rsvp.HandleOptions{})
	// FIFO: the cancelled request comes first, and is settled on the way.
	if m := next(t, cons).Message(); m.ID != marker.ID {
		t.Fatalf("leased %s (%s), want the marker %s", m.ID, m.Body, marker.ID)
	}
	evs := waitForFinalEvent(t, c, doomed.CorrelationID)
	if types := eventTypes(evs); len(types) != 1 || types[0] != string(backend.StatusCancelled) {
		t.Fatalf("events of the cancelled request %v, want only cancelled", types)
	}
}

// TestLeaseCancelled: a pull consumer learns that the request it holds was
// cancelled, and its lease is settled then as a cancelled Handler's is.
func TestLeaseCancelled(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	cons := consumer(t, c, "pullcancelled", rsvp.HandleOptions{})
	ctx := ctxWithin(t, 10*time.Second)
	tk, err := c.Send(ctx, "pullcancelled", &rsvp.Message{Track: true, Body: []byte("long work")})
	if err != nil {
		t.Fatal(err)
	}
	l := next(t, cons)
	if gone, err := l.Cancelled(ctx); gone || err != nil {
		t.Fatalf("Cancelled before any cancel: %v, %v", gone, err)
	}
	if _, err := c.Cancel(ctx, tk.CorrelationID); err != nil {
		t.Fatal(err)
	}
	if gone, err := l.Cancelled(ctx); !gone || err != nil {
		t.Fatalf("Cancelled after Client.Cancel: %v, %v; want true", gone, err)
	}
	if err := l.Reply(ctx, &rsvp.Reply{Body: []byte("too late")}); !errors.Is(err, rsvp.ErrSettled) {
		t.Fatalf("Reply after the cancellation: %v, want ErrSettled", err)
	}
	if _, err := c.Await(ctx, tk.CorrelationID); !errors.Is(err, rsvp.ErrCancelled) {
		t.Fatalf("Await: %v, want ErrCancelled", err)
	}
	evs := waitForFinalEvent(t, c, tk.CorrelationID)
	if types := eventTypes(evs); types[len(types)-1] != string(backend.StatusCancelled) {
		t.Fatalf("events %v, want the last cancelled", types)
	}
	// Settled: nothing comes back.
	if _, err := cons.Next(ctxWithin(t, 500*time.Millisecond)); err == nil {
		t.Fatal("the cancelled request was delivered again")
	}
}

// TestLeaseRunsOut: a lease left unsettled past its expiry is settled as
// lost: its attempt leaves the in-flight count with outcome lease_lost,
// Reply then returns ErrSettled, and the request comes back. A lease that
// is extended is not.
func TestLeaseRunsOut(t *testing.T) {
	t.Parallel()
	reader := sdkmetric.NewManualReader()
	c := setup(t, rsvp.Config{MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})
	const lease = 300 * time.Millisecond
	cons := consumer(t, c, "runs-out", rsvp.HandleOptions{Lease: lease})
	ctx := ctxWithin(t, 20*time.Second)
	if _, err := c.Send(ctx, "runs-out", &rsvp.Message{Body: []byte("forgotten")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(ctx, "runs-out", &rsvp.Message{Body: []byte("extended")}); err != nil {
		t.Fatal(err)
	}
	forgotten, extended := next(t, cons), next(t, cons)
	if string(forgotten.Message().Body) != "forgotten" {
		forgotten, extended = extended, forgotten
	}
	if sums := metricSums(t, reader); sums["rsvp.handler.in_flight"] != 2 {
		t.Fatalf("in flight with two leases: %d", sums["rsvp.handler.in_flight"])
	}
	// Extended every lease/3, the second lease outlives the first.
	stopExtending := make(chan struct{})
	extending := make(chan error, 1)
	go func() {
		tick := time.NewTicker(lease / 3)
		defer tick.Stop()
		for {
			select {
			case <-stopExtending:
				extending <- nil
				return
			case <-tick.C:
				if err := extended.Extend(ctx); err != nil {
					extending <- err
					return
				}
			}
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for metricSums(t, reader)["rsvp.handler.in_flight"] != 1 {
		if time.Now().After(deadline) {
			t.Fatal("a lease that ran out still counts as in flight after 10s")
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
	}
	if err := forgotten.Reply(ctx, nil); !errors.Is(err, rsvp.ErrSettled) {
		t.Fatalf("Reply after the lease ran out: %v, want ErrSettled", err)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	lost := uint64(0)
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if h, ok := m.Data.(metricdata.Histogram[float64]); ok && m.Name == "rsvp.handler.duration" {
				for _, dp := range h.DataPoints {
					if outcomeOf(dp.Attributes) == "/lease_lost" {
						lost += dp.Count
					}
				}
			}
		}
	}
	if lost != 1 {
		t.Fatalf("attempts timed with outcome lease_lost: %d, want 1", lost)
	}
	again := next(t, cons)
	if string(again.Message().Body) != "forgotten" || again.Message().Attempt != 2 {
		t.Fatalf("after the lease ran out, leased %q attempt %d; want forgotten again, attempt 2", again.Message().Body, again.Message().Attempt)
	}
	close(stopExtending)
	if err := <-extending; err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if err := extended.Reply(ctx, nil); err != nil {
		t.Fatalf("Reply on the lease that was extended: %v", err)
	}
	if err := again.Reply(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

// slowExtend is an engine whose deliveries' Extend calls return only after
// wait: the engine renewed the lease, and its answer comes late.
type slowExtend struct {
	backend.Backend
	wait func()
}

func (b slowExtend) Consume(ctx context.Context, queue string, p backend.ConsumeParams) (backend.Consumer, error) {
	c, err := b.Backend.Consume(ctx, queue, p)
	if err != nil {
		return nil, err
	}
	return slowExtendConsumer{c, b.wait}, nil
}

type slowExtendConsumer struct {
	backend.Consumer
	wait func()
}

func (c slowExtendConsumer) Next(ctx context.Context) (backend.Delivery, error) {
	d, err := c.Consumer.Next(ctx)
	if err != nil {
		return nil, err
	}
	return slowExtendDelivery{d, c.wait}, nil
}

type slowExtendDelivery struct {
	backend.Delivery
	wait func()
}

func (d slowExtendDelivery) Extend(ctx context.Context) error {
	err := d.Delivery.Extend(ctx)
	d.wait()
	return err
}

// TestLeaseExtendRacesRunningOut: an Extend whose answer comes after the
// lease's timer settled it as lost does not report success: the attempt
// is recorded as lost, and Reply returns ErrSettled, so Extend returns
// ErrLeaseLost for the caller to stop working on the request.
func TestLeaseExtendRacesRunningOut(t *testing.T) {
	t.Parallel()
	reader := sdkmetric.NewManualReader()
	be, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	ranOut := func() { // until the lease's timer recorded the attempt as lost
		deadline := time.Now().Add(10 * time.Second)
		for metricSums(t, reader)["rsvp.handler.in_flight"] != 0 {
			if time.Now().After(deadline) {
				t.Error("the lease did not run out within 10s")
				return
			}
			time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
		}
	}
	ctx := ctxWithin(t, 20*time.Second)
	c, err := rsvp.New(ctx, slowExtend{be, ranOut}, rsvp.Config{MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})
	if err != nil {
		t.Fatal(err)
	}
	defer closeWithin(t, "close client", c.Close)
	cons, err := c.Consume(ctx, "slow-extend", rsvp.HandleOptions{Lease: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	if _, err := c.Send(ctx, "slow-extend", &rsvp.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	l, err := cons.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	extendErr := l.Extend(ctx)
	replyErr := l.Reply(ctx, nil)
	if !errors.Is(extendErr, rsvp.ErrLeaseLost) || !errors.Is(replyErr, rsvp.ErrSettled) {
		t.Fatalf("Extend answered after the lease ran out: %v, then Reply: %v; want ErrLeaseLost, then ErrSettled", extendErr, replyErr)
	}
}

// TestCancelledThenExpiredNotDeadLettered: an untracked request cancelled
// before it started, and taken only after its deadline, is settled as the
// cancelled request it is: not dead-lettered as expired (a replay of that
// dead letter would run the cancelled request).
func TestCancelledThenExpiredNotDeadLettered(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 10*time.Second)
	const q = "cancelexpire"
	deadline := time.Now().Add(300 * time.Millisecond)
	doomed, err := c.Send(ctx, q, &rsvp.Message{Deadline: deadline, Body: []byte("doomed")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Cancel(ctx, doomed.CorrelationID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(deadline)) // the request's deadline passes: wall time, not a synchronisation
	marker, err := c.Send(ctx, q, &rsvp.Message{Body: []byte("marker")})
	if err != nil {
		t.Fatal(err)
	}
	cons := consumer(t, c, q, rsvp.HandleOptions{})
	// FIFO: the cancelled request comes first, and is settled on the way.
	if m := next(t, cons).Message(); m.ID != marker.ID {
		t.Fatalf("leased %s (%s), want the marker %s", m.ID, m.Body, marker.ID)
	}
	dls, err := c.DeadLetters(ctx, rsvp.DeadLetterQuery{Queue: q})
	if err != nil || len(dls) != 0 {
		t.Fatalf("dead letters of the cancelled request: %d, %v; want none", len(dls), err)
	}
	if r, err := c.Await(ctx, doomed.CorrelationID); !errors.Is(err, rsvp.ErrCancelled) {
		t.Fatalf("Await of the cancelled request: %+v, %v; want ErrCancelled", r, err)
	}
}

// TestPermanentFailAfterCancelNotDeadLettered: a lease failed for good
// after its request was cancelled ends as the cancelled request it is:
// not dead-lettered (a replay of that dead letter would run the cancelled
// request).
func TestPermanentFailAfterCancelNotDeadLettered(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 10*time.Second)
	const q = "cancelfail"
	tk, err := c.Send(ctx, q, &rsvp.Message{Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	l := next(t, consumer(t, c, q, rsvp.HandleOptions{}))
	if _, err := c.Cancel(ctx, tk.CorrelationID); err != nil {
		t.Fatal(err)
	}
	if err := l.Fail(ctx, rsvp.Permanent(errors.New("gave up"))); err != nil {
		t.Fatal(err)
	}
	dls, err := c.DeadLetters(ctx, rsvp.DeadLetterQuery{Queue: q})
	if err != nil || len(dls) != 0 {
		t.Fatalf("dead letters of the cancelled request: %d, %v; want none", len(dls), err)
	}
	if _, err := c.Await(ctx, tk.CorrelationID); !errors.Is(err, rsvp.ErrCancelled) {
		t.Fatalf("Await: %v, want ErrCancelled", err)
	}
}

// TestLeaseMessageIsACopy: changing the leased request (its type, say, as
// an in-place upgrade would) does not change the dead letter, whose replay
// must run the request as it was sent.
func TestLeaseMessageIsACopy(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 10*time.Second)
	const q = "leasecopy"
	if _, err := c.Send(ctx, q, &rsvp.Message{Type: "resize.v1", Headers: map[string]string{"K": "v"}, Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	l := next(t, consumer(t, c, q, rsvp.HandleOptions{}))
	m := l.Message()
	m.Type, m.Headers["K"] = "resize.v2", "changed"
	if err := l.Fail(ctx, rsvp.Permanent(errors.New("no luck"))); err != nil {
		t.Fatal(err)
	}
	dls := deadLetters(t, c, q)
	if len(dls) != 1 || dls[0].Message.Type != "resize.v1" || dls[0].Message.Headers["K"] != "v" {
		t.Fatalf("dead letters %+v; want the request as sent (resize.v1, K=v)", dls)
	}
}
