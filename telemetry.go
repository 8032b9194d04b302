package rsvp

import (
	"context"
	"maps"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// instrumentation is the name rsvp's tracer and meter report.
const instrumentation = "github.com/rsvp-go/rsvp"

// Outcomes of a handler attempt, as span attributes and metric labels.
const (
	outcomeSucceeded = "succeeded"
	outcomeFailed    = "failed"
	outcomeExpired   = "expired"
	outcomeCancelled = "cancelled"
	outcomeRetry     = "retry"
	outcomeReleased  = "released"
)

// telemetry holds a client's tracer, propagator and instruments. With the
// default (global, by default no-op) providers it costs next to nothing.
type telemetry struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	labels sync.Map // label values → metric.MeasurementOption, built once

	sent         metric.Int64Counter
	completed    metric.Int64Counter
	roundTrip    metric.Float64Histogram
	handlerTime  metric.Float64Histogram
	retries      metric.Int64Counter
	deadLettered metric.Int64Counter
	inFlight     metric.Int64UpDownCounter
}

func newTelemetry(tp trace.TracerProvider, mp metric.MeterProvider, w *waiters) (*telemetry, error) {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	t := &telemetry{tracer: tp.Tracer(instrumentation), prop: propagation.TraceContext{}}
	m := mp.Meter(instrumentation)
	var err error
	must := func(e error) {
		if err == nil {
			err = e
		}
	}
	var e error
	t.sent, e = m.Int64Counter("rsvp.requests.sent", metric.WithDescription("Requests stored on a queue."))
	must(e)
	t.completed, e = m.Int64Counter("rsvp.requests.completed", metric.WithDescription("Requests given a final reply by a responder, by outcome."))
	must(e)
	t.roundTrip, e = m.Float64Histogram("rsvp.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Round trip of Request, from send to reply, by outcome."), metric.WithExplicitBucketBoundaries(latencyBuckets...))
	must(e)
	t.handlerTime, e = m.Float64Histogram("rsvp.handler.duration", metric.WithUnit("s"),
		metric.WithDescription("Time a handler attempt took, by outcome."), metric.WithExplicitBucketBoundaries(latencyBuckets...))
	must(e)
	t.retries, e = m.Int64Counter("rsvp.handler.retries", metric.WithDescription("Failed attempts that will be retried."))
	must(e)
	t.deadLettered, e = m.Int64Counter("rsvp.requests.dead_lettered", metric.WithDescription("Requests dead-lettered, by reason."))
	must(e)
	t.inFlight, e = m.Int64UpDownCounter("rsvp.handler.in_flight", metric.WithDescription("Handler attempts running now."))
	must(e)
	_, e = m.Int64ObservableGauge("rsvp.waiters", metric.WithDescription("Calls of this client waiting for a reply."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(int64(w.len()))
			return nil
		}))
	must(e)
	return t, err
}

// latencyBuckets are histogram bounds in seconds, from 0.5 ms to 1 min.
var latencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

func queueAttr(queue string) attribute.KeyValue {
	return attribute.String("messaging.destination.name", queue)
}

type labelKey struct{ queue, key, value string }

// onQueue returns the metric labels of queue, plus key=value if key is
// set. The label sets are made once and reused: making one per
// measurement is a noticeable share of a round trip's CPU.
func (t *telemetry) onQueue(queue, key, value string) metric.MeasurementOption {
	k := labelKey{queue, key, value}
	if o, ok := t.labels.Load(k); ok {
		return o.(metric.MeasurementOption)
	}
	attrs := []attribute.KeyValue{queueAttr(queue)}
	if key != "" {
		attrs = append(attrs, attribute.String(key, value))
	}
	o, _ := t.labels.LoadOrStore(k, metric.WithAttributeSet(attribute.NewSet(attrs...)))
	return o.(metric.MeasurementOption)
}

// inject writes ctx's trace context (W3C traceparent, tracestate) into a
// copy of *headers.
func (t *telemetry) inject(ctx context.Context, headers *map[string]string) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	h := make(map[string]string, len(*headers)+2)
	maps.Copy(h, *headers)
	t.prop.Inject(ctx, propagation.MapCarrier(h))
	*headers = h
}

// extract returns ctx with the remote span context carried by headers.
func (t *telemetry) extract(ctx context.Context, headers map[string]string) context.Context {
	return t.prop.Extract(ctx, propagation.MapCarrier(headers))
}

// startAttempt starts the span of one handler attempt as a child of the
// requester's span, after a span for the time the request waited in the
// queue (first attempts only: from its creation to now).
func (t *telemetry) startAttempt(m *Message) (context.Context, trace.Span) {
	parent := t.extract(context.Background(), m.Headers)
	attrs := []attribute.KeyValue{
		attribute.String("messaging.system", "rsvp"), queueAttr(m.Queue),
		attribute.String("messaging.message.id", m.ID), attribute.String("rsvp.correlation_id", m.CorrelationID),
		attribute.Int("rsvp.attempt", m.Attempt),
	}
	if m.Attempt == 1 && !m.CreatedAt.IsZero() {
		// Its parent, the requester's span, has the request's attributes.
		_, wait := t.tracer.Start(parent, "rsvp.queue_wait", trace.WithTimestamp(m.CreatedAt))
		wait.End()
	}
	return t.tracer.Start(parent, "rsvp.handle "+m.Queue, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...))
}

// endAttempt records an attempt's outcome on its span and metrics.
func (t *telemetry) endAttempt(span trace.Span, m *Message, outcome string, err error, took time.Duration) {
	span.SetAttributes(attribute.String("rsvp.outcome", outcome))
	if err != nil {
		span.RecordError(err)
	}
	if outcome != outcomeSucceeded {
		span.SetStatus(codes.Error, outcome)
	}
	span.End()
	if took > 0 {
		t.handlerTime.Record(context.Background(), took.Seconds(), t.onQueue(m.Queue, "outcome", outcome))
	}
}
