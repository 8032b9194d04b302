package rsvp_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/rsvp-go/rsvp"
)

// TestTraceAcrossClients: a requester and a responder, two clients with
// their own tracer providers, produce one trace: the request (which
// covers its send) → queue wait and each handler attempt, with the attempt
// number and outcome.
func TestTraceAcrossClients(t *testing.T) {
	reqSpans, respSpans := tracetest.NewSpanRecorder(), tracetest.NewSpanRecorder()
	reqTP := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(reqSpans))
	respTP := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(respSpans))
	defer reqTP.Shutdown(context.Background())
	defer respTP.Shutdown(context.Background())
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	requester := setup(t, rsvp.Config{TracerProvider: reqTP})
	responder, err := rsvp.New(context.Background(), requester.be, rsvp.Config{TracerProvider: respTP, MeterProvider: mp})
	if err != nil {
		t.Fatal(err)
	}
	defer responder.Close(context.Background())
	if _, err := responder.Handle("traced", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if m.Attempt == 1 {
			return nil, errors.New("first attempt fails")
		}
		return &rsvp.Reply{Body: []byte("ok")}, nil
	}), rsvp.HandleOptions{Backoff: fastRetry}); err != nil {
		t.Fatal(err)
	}
	if _, err := requester.Request(ctxWithin(t, 10*time.Second), "traced", &rsvp.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	// Stopping the responder waits for its attempts to be settled and ended.
	if err := responder.Close(ctxWithin(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}

	byName := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range append(reqSpans.Ended(), respSpans.Ended()...) {
		byName[s.Name()] = append(byName[s.Name()], s)
	}
	one := func(name string) sdktrace.ReadOnlySpan {
		t.Helper()
		if len(byName[name]) != 1 {
			t.Fatalf("%d spans named %q, want 1; all: %v", len(byName[name]), name, byName)
		}
		return byName[name][0]
	}
	request, wait := one("rsvp.request traced"), one("rsvp.queue_wait")
	attempts := byName["rsvp.handle traced"]
	if len(attempts) != 2 {
		t.Fatalf("%d attempt spans, want 2", len(attempts))
	}
	trace := request.SpanContext().TraceID()
	for _, s := range append([]sdktrace.ReadOnlySpan{wait}, attempts...) {
		if s.SpanContext().TraceID() != trace {
			t.Fatalf("span %s is in trace %s, want %s", s.Name(), s.SpanContext().TraceID(), trace)
		}
	}
	if len(byName["rsvp.send traced"]) != 0 {
		t.Error("Request made a send span of its own")
	}
	for _, s := range append([]sdktrace.ReadOnlySpan{wait}, attempts...) {
		if s.Parent().SpanID() != request.SpanContext().SpanID() || !s.Parent().IsRemote() {
			t.Errorf("%s is not a remote child of the request", s.Name())
		}
	}
	got := map[int64]string{}
	for _, s := range attempts {
		var attempt int64
		var outcome string
		for _, kv := range s.Attributes() {
			switch kv.Key {
			case "rsvp.attempt":
				attempt = kv.Value.AsInt64()
			case "rsvp.outcome":
				outcome = kv.Value.AsString()
			}
		}
		got[attempt] = outcome
		if attempt == 1 && len(s.Events()) == 0 {
			t.Error("the failed attempt recorded no error event")
		}
	}
	if got[1] != "retry" || got[2] != "succeeded" {
		t.Fatalf("attempt outcomes %v", got)
	}
	// Within one trace the attempts are the request's children: it links
	// to none of them.
	if links := request.Links(); len(links) != 0 {
		t.Fatalf("request links %v, want none", links)
	}

	// The responder's metrics.
	sums := metricSums(t, reader)
	if sums["rsvp.handler.retries"] != 1 || sums["rsvp.requests.completed/succeeded"] != 1 || sums["rsvp.handler.in_flight"] != 0 {
		t.Fatalf("metrics %v", sums)
	}
}

// TestMetricsOfClientsSharingAProvider: clients of one process that share a
// MeterProvider all count into the same series, gauges included; a closed
// client's gauges are no longer counted.
func TestMetricsOfClientsSharingAProvider(t *testing.T) {
	t.Parallel()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	c1 := setup(t, rsvp.Config{MeterProvider: mp})
	c2, err := rsvp.New(context.Background(), c1.be, rsvp.Config{MeterProvider: mp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeWithin(t, "close second client", c2.Close) }) // bounded: its handler may be held
	ctx := ctxWithin(t, 10*time.Second)
	const q = "metrics-shared"
	var holding atomic.Bool
	var held atomic.Int32
	release := make(chan struct{})
	hold := func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if holding.Load() {
			held.Add(1)
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return nil, nil
	}
	r1 := handle(t, c1, q, rsvp.HandleOptions{Concurrency: 1}, hold)
	r2, err := c2.Handle(q, rsvp.HandlerFunc(hold), rsvp.HandleOptions{Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*rsvp.Client{c1.Client, c1.Client, c2, c2, c2} {
		if _, err := c.Request(ctx, q, &rsvp.Message{}); err != nil {
			t.Fatal(err)
		}
	}
	// Two requests of c2 held, one by each client's responder.
	holding.Store(true)
	answered := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := c2.Request(ctx, q, &rsvp.Message{})
			answered <- err
		}()
	}
	waitFor(t, func() bool { return held.Load() == 2 })
	if sums := metricSums(t, reader); sums["rsvp.handler.in_flight"] != 2 || sums["rsvp.waiters"] != 2 {
		t.Errorf("while two are handled: metrics %v; want 2 in flight (one per client) and 2 waiters", sums)
	}
	close(release)
	for range 2 {
		if err := <-answered; err != nil {
			t.Fatal(err)
		}
	}
	stop(t, r1) // their attempts are settled and counted
	stop(t, r2)
	sums := metricSums(t, reader)
	if sums["rsvp.requests.sent"] != 7 || sums["rsvp.requests.completed/succeeded"] != 7 || sums["rsvp.handler.in_flight"] != 0 || sums["rsvp.waiters"] != 0 {
		t.Fatalf("metrics %v; want 7 sent and 7 completed by the two clients, none in flight or waiting", sums)
	}
	// A closed client's gauges are gone; the counters keep its counts.
	if err := c2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	actx, cancelAwait := context.WithCancel(ctx)
	waiting := make(chan error, 1)
	go func() {
		_, err := c1.Await(actx, "never-sent")
		waiting <- err
	}()
	waitFor(t, func() bool { return rsvp.WaiterCount(c1.Client) == 1 })
	if sums := metricSums(t, reader); sums["rsvp.waiters"] != 1 || sums["rsvp.requests.sent"] != 7 {
		t.Errorf("after c2 closed: metrics %v; want c1's 1 waiter and 7 sent", sums)
	}
	cancelAwait()
	if err := <-waiting; !errors.Is(err, context.Canceled) {
		t.Fatalf("Await: %v, want context.Canceled", err)
	}
}

// TestCountersOfEveryReader: the sent and completed counters are exact for
// each of a provider's readers, cumulative or delta, at every collection
// and after Close, and nothing is counted twice.
func TestCountersOfEveryReader(t *testing.T) {
	t.Parallel()
	mp, check := twoReaders(t)
	c := setup(t, rsvp.Config{MeterProvider: mp})
	ctx := ctxWithin(t, 10*time.Second)
	const q = "metrics-readers"
	handle(t, c, q, rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) { return nil, nil })
	send := func(n int) {
		t.Helper()
		for range n {
			if _, err := c.Request(ctx, q, &rsvp.Message{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(3)
	check(map[string]int64{"rsvp.requests.sent": 3})
	send(2)
	check(map[string]int64{"rsvp.requests.sent": 5})
	check(map[string]int64{"rsvp.requests.sent": 5})
	send(1)
	if err := c.Close(ctx); err != nil { // waits for the responder, whose last completion is then counted
		t.Fatal(err)
	}
	check(map[string]int64{"rsvp.requests.sent": 6, "rsvp.requests.completed/succeeded": 6})
}

// twoReaders returns a meter provider with a cumulative and a delta reader,
// and a check that the int64 sums named in want (see metricSums) are
// exact in both: each collection of the delta reader adds to a total kept
// across checks, which must match the cumulative reader's.
func twoReaders(t *testing.T) (*sdkmetric.MeterProvider, func(want map[string]int64)) {
	cumulative := sdkmetric.NewManualReader()
	delta := sdkmetric.NewManualReader(sdkmetric.WithTemporalitySelector(func(sdkmetric.InstrumentKind) metricdata.Temporality {
		return metricdata.DeltaTemporality
	}))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(cumulative), sdkmetric.WithReader(delta))
	deltaTotal := map[string]int64{}
	return mp, func(want map[string]int64) {
		t.Helper()
		for k, v := range metricSums(t, delta) {
			deltaTotal[k] += v
		}
		got := metricSums(t, cumulative)
		for name, n := range want {
			if got[name] != n || deltaTotal[name] != n {
				t.Errorf("%s: %d cumulative, %d in deltas; want %d", name, got[name], deltaTotal[name], n)
			}
		}
	}
}

// TestCountsOfFailures: retries, dead letters by reason and failed
// completions reach the counters of every reader; and a lease settled after
// the client closed (no collection of its counts follows) is counted at
// once.
func TestCountsOfFailures(t *testing.T) {
	t.Parallel()
	mp, check := twoReaders(t)
	c := setup(t, rsvp.Config{MeterProvider: mp})
	ctx := ctxWithin(t, 10*time.Second)
	const q = "metrics-failures"
	r := handle(t, c, q, rsvp.HandleOptions{Backoff: func(int) time.Duration { return 0 }}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		switch {
		case string(m.Body) == "gone":
			return nil, rsvp.Permanent(&rsvp.RemoteError{Code: "out_of_stock", Message: "none left"})
		case string(m.Body) == "flaky" && m.Attempt == 1:
			return nil, errors.New("try again")
		}
		return nil, nil
	})
	for _, body := range []string{"gone", "flaky", "gone", "ok"} {
		_, err := c.Request(ctx, q, &rsvp.Message{Body: []byte(body)})
		if want := body == "gone"; (err != nil) != want {
			t.Fatalf("Request %s: %v", body, err)
		}
	}
	stop(t, r) // the last completion is counted
	want := map[string]int64{"rsvp.requests.sent": 4, "rsvp.requests.dead_lettered/out_of_stock": 2,
		"rsvp.requests.completed/failed": 2, "rsvp.requests.completed/succeeded": 2, "rsvp.handler.retries": 1}
	check(want)

	if _, err := c.Send(ctx, q, &rsvp.Message{}); err != nil {
		t.Fatal(err)
	}
	cons, err := c.Consume(ctx, q, rsvp.HandleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	lease, err := cons.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := lease.Reply(ctx, &rsvp.Reply{}); err != nil {
		t.Fatal(err)
	}
	want["rsvp.requests.sent"], want["rsvp.requests.completed/succeeded"] = 5, 3
	check(want)
}

func attemptOf(s sdktrace.ReadOnlySpan) int64 {
	for _, kv := range s.Attributes() {
		if kv.Key == "rsvp.attempt" {
			return kv.Value.AsInt64()
		}
	}
	return 0
}

// metricSums collects reader and returns the sums of the int64 sum
// metrics by name, and by "/outcome" or "/reason" where they have one.
func metricSums(t *testing.T, reader *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	sums := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok {
				for _, dp := range s.DataPoints {
					sums[m.Name+outcomeOf(dp.Attributes)] += dp.Value
				}
			}
		}
	}
	return sums
}

// outcomeOf returns "/" and the outcome or reason label of set, if any.
func outcomeOf(set attribute.Set) string {
	for _, key := range []attribute.Key{"outcome", "reason"} {
		if v, ok := set.Value(key); ok {
			return "/" + v.AsString()
		}
	}
	return ""
}
