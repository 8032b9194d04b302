package rsvp_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// metered opens a client on b with a meter provider of its own, both
// closed with the test, and returns it and the provider's reader.
func metered(t *testing.T, ctx context.Context, b backend.Backend) (*rsvp.Client, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	c, err := rsvp.New(ctx, b, rsvp.Config{MeterProvider: mp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeWithin(t, "close client", c.Close) })
	return c, reader
}

// failDeadLetterOnce is an engine whose first DeadLetter call fails.
type failDeadLetterOnce struct {
	backend.Backend
	failed atomic.Bool
}

func (b *failDeadLetterOnce) DeadLetter(ctx context.Context, dl *backend.DeadLetter) error {
	if b.failed.CompareAndSwap(false, true) {
		return errors.New("dead letters are unavailable for now")
	}
	return b.Backend.DeadLetter(ctx, dl)
}

// TestDeadLetteredCountedOnceStored: a request whose dead letter could not
// be stored at first comes back and is dead-lettered on a later attempt;
// rsvp.requests.dead_lettered counts it once, when it was stored.
func TestDeadLetteredCountedOnceStored(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		const queue = "dl-count"
		ctx := ctxWithin(t, 30*time.Second)
		c, reader := metered(t, ctx, &failDeadLetterOnce{Backend: e.b})
		r, err := c.Handle(queue, rsvp.HandlerFunc(func(context.Context, *rsvp.Message) (*rsvp.Reply, error) {
			return nil, rsvp.Permanent(&rsvp.RemoteError{Code: "gone", Message: "none left"})
		}), rsvp.HandleOptions{Backoff: func(int) time.Duration { return 0 }})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Request(ctx, queue, &rsvp.Message{Body: []byte("x")}); err == nil {
			t.Fatal("Request succeeded, want its failure")
		}
		if err := r.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		sums := metricSums(t, reader)
		if got := sums["rsvp.requests.dead_lettered/gone"]; got != 1 {
			t.Fatalf("rsvp.requests.dead_lettered/gone = %d, want 1 (one dead letter stored); metrics %v", got, sums)
		}
	})
}

// TestStaleAttemptNotCountedAsCompleted: a handler whose lease ran out
// (its renewal was held) while another worker answered the request
// finishes afterwards; its reply loses to the stored one, and the request
// is counted once in rsvp.requests.completed, by the worker that answered.
func TestStaleAttemptNotCountedAsCompleted(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		const queue = "stale-count"
		ctx := ctxWithin(t, 30*time.Second)
		c, reader := metered(t, ctx, e.b)

		stalled, finish := make(chan struct{}), make(chan struct{})
		var first atomic.Bool
		hold := func(ctx context.Context) { // holds the first renewal until the handler returned
			if first.CompareAndSwap(false, true) {
				close(stalled)
				<-ctx.Done()
			}
		}
		r, err := c.Handle(queue, rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
			<-finish
			return &rsvp.Reply{Body: []byte("stale")}, nil
		}), rsvp.WithBeforeExtend(rsvp.HandleOptions{Lease: lostLease}, hold))
		if err != nil {
			t.Fatal(err)
		}
		cons, err := c.Consume(ctx, queue, rsvp.HandleOptions{Lease: lostLease})
		if err != nil {
			t.Fatal(err)
		}
		defer cons.Close()
		tk, err := c.Send(ctx, queue, &rsvp.Message{Body: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		<-stalled
		l, err := cons.Next(ctx) // once the handler's lease ran out
		if err != nil {
			t.Fatal(err)
		}
		if m := l.Message(); m.ID != tk.ID || m.Attempt != 2 {
			t.Fatalf("leased %s attempt %d, want %s attempt 2", m.ID, m.Attempt, tk.ID)
		}
		if err := l.Reply(ctx, &rsvp.Reply{Body: []byte("fresh")}); err != nil {
			t.Fatal(err)
		}
		close(finish)
		if err := r.Stop(ctx); err != nil { // waits for the stale attempt's outcome
			t.Fatal(err)
		}
		if rep, err := c.Await(ctx, tk.CorrelationID); err != nil || string(rep.Body) != "fresh" {
			t.Fatalf("Await: %+v, %v; want the second worker's reply", rep, err)
		}
		sums := metricSums(t, reader)
		if got := sums["rsvp.requests.completed/succeeded"]; got != 1 {
			t.Fatalf("rsvp.requests.completed/succeeded = %d, want 1 (one request answered); metrics %v", got, sums)
		}
	})
}

// TestCancelledBeforeStartCounted: requests cancelled while queued are
// counted in rsvp.requests.completed as cancelled when a responder reaches
// them, tracked or not.
func TestCancelledBeforeStartCounted(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		const queue = "cancel-count"
		ctx := ctxWithin(t, 30*time.Second)
		c, reader := metered(t, ctx, e.b)
		for _, track := range []bool{false, true} {
			tk, err := c.Send(ctx, queue, &rsvp.Message{Body: []byte("x"), Track: track})
			if err != nil {
				t.Fatal(err)
			}
			if rep, err := c.Cancel(ctx, tk.CorrelationID); err != nil || rep.Status != backend.StatusCancelled {
				t.Fatalf("Cancel: %+v, %v", rep, err)
			}
		}
		r, err := c.Handle(queue, rsvp.HandlerFunc(func(context.Context, *rsvp.Message) (*rsvp.Reply, error) {
			return nil, nil
		}), rsvp.HandleOptions{Concurrency: 1})
		if err != nil {
			t.Fatal(err)
		}
		// Taken in order: once this one is answered, the cancelled ones were settled.
		if _, err := c.Request(ctx, queue, &rsvp.Message{Body: []byte("last")}); err != nil {
			t.Fatal(err)
		}
		if err := r.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		sums := metricSums(t, reader)
		if got := sums["rsvp.requests.completed/cancelled"]; got != 2 {
			t.Fatalf("rsvp.requests.completed/cancelled = %d, want 2 (an untracked and a tracked request cancelled); metrics %v", got, sums)
		}
	})
}

// TestExpiredRequestOutcome: a Request whose deadline passes with no
// reply (it stores the expired reply itself) records the outcome expired
// on its span and its round-trip histogram, as it does when a responder
// dead-lettered it as expired, not "error".
func TestExpiredRequestOutcome(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx := ctxWithin(t, 30*time.Second)
		spans := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
		defer tp.Shutdown(context.Background())
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer mp.Shutdown(context.Background())
		c, err := rsvp.New(ctx, e.b, rsvp.Config{TracerProvider: tp, MeterProvider: mp})
		if err != nil {
			t.Fatal(err)
		}
		defer closeWithin(t, "close client", c.Close)
		_, err = c.Request(ctx, "nobody-home", &rsvp.Message{Deadline: time.Now().Add(100 * time.Millisecond)})
		if !errors.Is(err, rsvp.ErrExpired) {
			t.Fatalf("Request: %v, want rsvp.ErrExpired", err)
		}
		var outcome string
		for _, s := range spans.Ended() {
			if s.Name() == "rsvp.request nobody-home" {
				for _, kv := range s.Attributes() {
					if kv.Key == "rsvp.outcome" {
						outcome = kv.Value.AsString()
					}
				}
			}
		}
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		var recorded []string
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				if h, ok := m.Data.(metricdata.Histogram[float64]); ok && m.Name == "rsvp.request.duration" {
					for _, dp := range h.DataPoints {
						recorded = append(recorded, outcomeOf(dp.Attributes))
					}
				}
			}
		}
		if outcome != "expired" || len(recorded) != 1 || recorded[0] != "/expired" {
			t.Fatalf("request span outcome %q, rsvp.request.duration outcomes %v; want expired", outcome, recorded)
		}
	})
}

// failEnqueues is an engine whose Enqueue fails once fail is set.
type failEnqueues struct {
	backend.Backend
	fail atomic.Bool
}

func (b *failEnqueues) Enqueue(ctx context.Context, m *backend.Message) error {
	if b.fail.Load() {
		return errors.New("the engine stores nothing for now")
	}
	return b.Backend.Enqueue(ctx, m)
}

// TestPublishSpanOfFailure: a Publish or RequestAll whose copies could not
// be stored ends its span with an error status, as Send's does.
func TestPublishSpanOfFailure(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx := ctxWithin(t, 30*time.Second)
		spans := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
		defer tp.Shutdown(context.Background())
		fb := &failEnqueues{Backend: e.b}
		c, err := rsvp.New(ctx, fb, rsvp.Config{TracerProvider: tp})
		if err != nil {
			t.Fatal(err)
		}
		defer closeWithin(t, "close client", c.Close)
		subscribeAll(t, ctx, c, "spanfail", "a")
		fb.fail.Store(true)
		if _, err := c.Publish(ctx, "spanfail", &rsvp.Message{Body: []byte("x")}); err == nil {
			t.Fatal("Publish succeeded with an engine that stores nothing")
		}
		if _, err := c.RequestAll(ctx, "spanfail", &rsvp.Message{Body: []byte("x")}, rsvp.GatherOptions{}); err == nil {
			t.Fatal("RequestAll succeeded with an engine that stores nothing")
		}
		for _, name := range []string{"rsvp.publish spanfail", "rsvp.request_all spanfail"} {
			found := false
			for _, s := range spans.Ended() {
				if s.Name() == name {
					found = true
					if s.Status().Code != codes.Error {
						t.Errorf("span %s of a failure: status %v, want an error", name, s.Status())
					}
				}
			}
			if !found {
				t.Errorf("no span %s", name)
			}
		}
	})
}
