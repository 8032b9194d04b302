package rsvp

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/rsvp-go/rsvp/backend"
)

// dropSpans is a span exporter that drops everything: the cost measured
// is rsvp's instrumentation and the SDK, not an exporter.
type dropSpans struct{}

func (dropSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (dropSpans) Shutdown(context.Context) error                             { return nil }

// BenchmarkTelemetryCalls runs the telemetry calls of one successful round
// trip (requester and responder, with the SDK's tracer batching to a
// discarding exporter and its meter), without the engine: what telemetry
// adds to a round trip's CPU and allocations.
func BenchmarkTelemetryCalls(b *testing.B) {
	telemetryCalls(b, sdktrace.WithBatcher(dropSpans{}))
}

// BenchmarkTelemetryCallsSync is BenchmarkTelemetryCalls with a synchronous
// span processor: no goroutine takes the spans, so its instruction count
// (bench/instructions.sh) does not move with scheduling, nor with the
// batcher dropping spans when its queue is full (a goroutine that never
// blocks fills it); with GOGC=off, neither with garbage collections.
func BenchmarkTelemetryCallsSync(b *testing.B) {
	telemetryCalls(b, sdktrace.WithSyncer(dropSpans{}))
}

func telemetryCalls(b *testing.B, processor sdktrace.TracerProviderOption) {
	ctx := context.Background()
	tp := sdktrace.NewTracerProvider(processor)
	defer tp.Shutdown(ctx)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(ctx)
	tel, err := newTelemetry(tp, mp, &waiters{m: map[string][]chan *Reply{}})
	if err != nil {
		b.Fatal(err)
	}
	// Collected once, as a program's periodic reader is every so often:
	// the counters count cheaply from then on (telemetry.direct).
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m := &Message{Queue: "echo", ID: "01KB1Q3J7V2H6X8Z9A0B1C2D3E", CreatedAt: time.Now()}
			m.CorrelationID = m.ID
			q := tel.queue(m.Queue)
			rctx, span := tel.startRequest(ctx, q)
			putTraceContext(rctx, &m.TraceParent, &m.TraceState)
			tel.sentOne(q)

			m.Attempt = 1
			actx, aspan := tel.startAttempt(tel.queue(m.Queue), m)
			reply := &Reply{CorrelationID: m.CorrelationID, Status: backend.StatusSucceeded}
			putTraceContext(actx, &reply.TraceParent, &reply.TraceState)
			tel.completedOne(q, reply.Status)
			tel.endAttempt(q, aspan, m, outcomeSucceeded, nil, time.Millisecond)

			tel.endRequest(rctx, span, q, m, reply, nil, 2*time.Millisecond)
		}
	})
}

// TestTraceContextMatchesPropagator: rsvp's own traceparent parser and
// writer agree with propagation.TraceContext on valid, invalid and future
// traceparents, flags (sampled, random, reserved) and tracestates.
func TestTraceContextMatchesPropagator(t *testing.T) {
	tel := &telemetry{prop: propagation.TraceContext{}}
	base := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-"
	for _, tp := range []string{base + "00", base + "01", base + "02", base + "03", base + "04", base + "0A", base + "ff", base + "0g",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", base + "01-x"} {
		for _, ts := range []string{"", "rojo=00f067aa0ba902b7", "bad state"} {
			want := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": tp, "tracestate": ts}))
			got := tel.remote(tp, ts)
			if !got.Equal(want) {
				t.Errorf("%q %q: got %v want %v", tp, ts, got, want)
			}
			if want.IsValid() {
				c := propagation.MapCarrier{}
				propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), want), c)
				if traceparent(want) != c["traceparent"] {
					t.Errorf("format %q, propagator %q", traceparent(want), c["traceparent"])
				}
			}
		}
	}
}
