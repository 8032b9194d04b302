package rsvp_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// tracedClient returns a client whose spans go to the returned recorder.
func tracedClient(t *testing.T) (*testClient, *tracetest.SpanRecorder, trace.Tracer) {
	t.Helper()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return setup(t, rsvp.Config{TracerProvider: tp}), spans, tp.Tracer("test")
}

// endedSpan returns the one ended span named name.
func endedSpan(t *testing.T, spans *tracetest.SpanRecorder, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	var found []sdktrace.ReadOnlySpan
	for _, s := range spans.Ended() {
		if s.Name() == name {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d ended spans named %q, want 1", len(found), name)
	}
	return found[0]
}

// TestLeaseFailReplyCarriesTheAttemptsTrace: the failure reply of a lease
// failed for good carries the attempt's span, as a handler's and
// Lease.Reply's replies do (docs/wire.md section 5), not the span of the
// caller of Fail (the gateway's POST /v1/leases/{lease}/fail, say); the
// request's span, in the same trace, links to nothing.
func TestLeaseFailReplyCarriesTheAttemptsTrace(t *testing.T) {
	t.Parallel()
	c, spans, tracer := tracedClient(t)
	const q = "trace-lease-fail"
	cons := consumer(t, c, q, rsvp.HandleOptions{})
	ctx := ctxWithin(t, 10*time.Second)
	type result struct {
		r   *rsvp.Reply
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := c.Request(ctx, q, &rsvp.Message{})
		done <- result{r, err}
	}()
	l := next(t, cons)
	// The worker's own span, in a trace of its own.
	wctx, worker := tracer.Start(context.Background(), "worker fails it")
	if err := l.Fail(wctx, rsvp.Permanent(errors.New("cannot do it"))); err != nil {
		t.Fatal(err)
	}
	worker.End()
	res := receive(t, done, "reply")
	var re *rsvp.RemoteError
	if res.r == nil || !errors.As(res.err, &re) {
		t.Fatalf("Request: %v, %v; want the failure reply", res.r, res.err)
	}
	attempt := endedSpan(t, spans, "rsvp.handle "+q)
	if got, want := res.r.TraceParent, "00-"+attempt.SpanContext().TraceID().String()+"-"+attempt.SpanContext().SpanID().String()+"-01"; got != want {
		t.Errorf("reply traceparent %q, want the attempt's %q (the worker's span is %s)", got, want, worker.SpanContext().SpanID())
	}
	if links := endedSpan(t, spans, "rsvp.request "+q).Links(); len(links) != 0 {
		t.Errorf("request span links to %v, want none: the attempt is its child", links[0].SpanContext.SpanID())
	}
}

// TestCountersWithTheGaugesDropped: the counters are exact at every
// collection when a View drops the gauges (rsvp.handler.in_flight and
// rsvp.waiters), not only once the client is closed.
func TestCountersWithTheGaugesDropped(t *testing.T) {
	t.Parallel()
	reader := sdkmetric.NewManualReader()
	drop := sdkmetric.NewView(sdkmetric.Instrument{Kind: sdkmetric.InstrumentKindObservableUpDownCounter},
		sdkmetric.Stream{Aggregation: sdkmetric.AggregationDrop{}})
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader), sdkmetric.WithView(drop))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	c := setup(t, rsvp.Config{MeterProvider: mp})
	const q = "metrics-gauges-dropped"
	r := handle(t, c, q, rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) { return nil, nil })
	ctx := ctxWithin(t, 10*time.Second)
	for range 3 {
		if _, err := c.Request(ctx, q, &rsvp.Message{}); err != nil {
			t.Fatal(err)
		}
	}
	stop(t, r) // its last completion is counted
	sums := metricSums(t, reader)
	if sums["rsvp.requests.sent"] != 3 || sums["rsvp.requests.completed/succeeded"] != 3 {
		t.Fatalf("metrics %v; want 3 sent and 3 completed", sums)
	}
	if _, ok := sums["rsvp.waiters"]; ok {
		t.Fatalf("metrics %v: the View did not drop rsvp.waiters", sums)
	}
}

// logLines is a slog handler's output, as JSON lines, safe for concurrent
// use.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// withMsg returns the records logged with msg, as maps.
func (l *logLines) withMsg(t *testing.T, msg string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var found []map[string]any
	for line := range bytes.Lines(l.buf.Bytes()) {
		var rec map[string]any
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec["msg"] == msg {
			found = append(found, rec)
		}
	}
	return found
}

// TestHandlerLogLinesNameTheRequest: the lines a responder logs about a
// request while its handler runs (here: the handler panicked) carry the
// request's queue, id and correlation id, as its other lines do.
func TestHandlerLogLinesNameTheRequest(t *testing.T) {
	t.Parallel()
	var logs logLines
	c := setup(t, rsvp.Config{Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	const q = "log-panic"
	handle(t, c, q, rsvp.HandleOptions{MaxAttempts: 1}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		panic("boom")
	})
	r, _ := c.Request(ctxWithin(t, 10*time.Second), q, &rsvp.Message{ID: "panic-1", CorrelationID: "corr-1"})
	if r == nil || r.Status != "failed" {
		t.Fatalf("reply %+v, want a failure", r)
	}
	lines := logs.withMsg(t, "rsvp: handler panicked")
	if len(lines) != 1 {
		t.Fatalf("%d lines about the panic, want 1", len(lines))
	}
	for k, want := range map[string]any{"queue": q, "id": "panic-1", "correlation_id": "corr-1", "attempt": 1.0} {
		if got := lines[0][k]; got != want {
			t.Errorf("the panic's line has %s %v, want %v", k, got, want)
		}
	}
}

// TestReplayQueueWaitStartsAtTheReplay: the queue wait of a replayed dead
// letter's first attempt starts when the replay sent it, not when the
// original request was made (hours or days before, and before its parent,
// the replay's send span).
func TestReplayQueueWaitStartsAtTheReplay(t *testing.T) {
	t.Parallel()
	c, spans, _ := tracedClient(t)
	const q = "trace-replay"
	var fixed atomic.Bool
	handle(t, c, q, rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if !fixed.Load() {
			return nil, rsvp.Permanent(errors.New("broken"))
		}
		return nil, nil
	})
	ctx := ctxWithin(t, 10*time.Second)
	first, _ := c.Request(ctx, q, &rsvp.Message{})
	if first == nil || first.Status != "failed" {
		t.Fatalf("reply %+v, want a failure", first)
	}
	var dls []*backend.DeadLetter
	waitFor(t, func() bool { dls = deadLetters(t, c, q); return len(dls) == 1 })
	fixed.Store(true)
	replayedAt := time.Now()
	tk, err := c.Replay(ctx, q, dls[0].Key)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := c.Await(ctx, tk.CorrelationID); err != nil || r.Status != "succeeded" {
		t.Fatalf("Await: %+v, %v", r, err)
	}
	var waits []sdktrace.ReadOnlySpan
	waitFor(t, func() bool {
		waits = waits[:0]
		for _, s := range spans.Ended() {
			if s.Name() == "rsvp.queue_wait" {
				waits = append(waits, s)
			}
		}
		return len(waits) == 2
	})
	send := endedSpan(t, spans, "rsvp.send "+q) // the replay's
	for _, w := range waits {
		if w.Parent().SpanID() == send.SpanContext().SpanID() && w.StartTime().Before(replayedAt) {
			t.Errorf("the replay's queue wait starts %v before the replay", replayedAt.Sub(w.StartTime()))
		}
	}
}

// TestAwaitSpanRecordsTheOutcome: the span of an Await (a requester that
// restarted, say) records the request's outcome, with an error status for
// a failed request, as Request's span does, and links to the span that
// replied, which is in the original requester's trace.
func TestAwaitSpanRecordsTheOutcome(t *testing.T) {
	t.Parallel()
	c, spans, _ := tracedClient(t)
	const q = "trace-await"
	handle(t, c, q, rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return nil, rsvp.Permanent(errors.New("broken"))
	})
	ctx := ctxWithin(t, 10*time.Second)
	tk, err := c.Send(ctx, q, &rsvp.Message{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Await(ctx, tk.CorrelationID)
	var re *rsvp.RemoteError
	if r == nil || !errors.As(err, &re) {
		t.Fatalf("Await: %+v, %v; want the failure", r, err)
	}
	await := endedSpan(t, spans, "rsvp.await")
	if await.Status().Code != codes.Error {
		t.Errorf("await span status %v, want an error", await.Status())
	}
	outcome := ""
	for _, kv := range await.Attributes() {
		if kv.Key == "rsvp.outcome" {
			outcome = kv.Value.AsString()
		}
	}
	if outcome != "failed" {
		t.Errorf("await span outcome %q, want failed", outcome)
	}
	waitFor(t, func() bool { return len(spans.Ended()) == 4 }) // send, queue wait, attempt, await
	attempt := endedSpan(t, spans, "rsvp.handle "+q)
	if links := await.Links(); len(links) != 1 || links[0].SpanContext.SpanID() != attempt.SpanContext().SpanID() {
		t.Errorf("await span links %v, want the attempt %s", links, attempt.SpanContext().SpanID())
	}
}
