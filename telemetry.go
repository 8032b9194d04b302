package rsvp

import (
	"context"
	"encoding/hex"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/rsvp-go/rsvp/backend"
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
	outcomeLeaseLost = "lease_lost" // the lease was lost while working: no outcome recorded
)

// telemetry holds a client's tracer, propagator and instruments. With the
// default (global, by default no-op) providers it costs next to nothing.
type telemetry struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	queues sync.Map // queue name → *queueTel
	labels sync.Map // labelKey → metric.MeasurementOption, built once
	counts sync.Map // labelKey → *count: completed (key outcome) and dead-lettered (key reason) counts queueTel has no place for

	roundTrip   metric.Float64Histogram
	handlerTime metric.Float64Histogram

	// The counters get their counts when metrics are collected (see
	// count), and at close. direct says they get them at once instead:
	// until the first collection (a View that drops both gauges drops the
	// callback that flushes, so that none may come) and after close.
	sent, completed, retries, deadLettered metric.Int64Counter
	direct                                 atomic.Bool

	// The gauges, observed from this client's counts when metrics are
	// collected; unregistered by close.
	inFlight, waiters metric.Int64ObservableUpDownCounter
	observing         metric.Registration
}

// count is a number of events not yet added to its counter instrument.
// Events are counted with an atomic add, and the counter gets the sum when
// metrics are collected: an instrument call per event is a noticeable
// share of a round trip's CPU. Counters added to while metrics are
// collected are in that collection, for every reader of the provider.
// Until the first collection the counter gets each event at once
// (telemetry.direct).
type count struct {
	n       atomic.Int64
	counter metric.Int64Counter
	labels  metric.MeasurementOption
}

// flush adds what was counted since the last flush to the counter.
func (c *count) flush() {
	if n := c.n.Swap(0); n != 0 {
		c.counter.Add(context.Background(), n, c.labels)
	}
}

// queueTel is what telemetry keeps per queue, made once: span names and
// attributes, metric labels, and counts. Making them per call is a
// noticeable share of a round trip's CPU.
type queueTel struct {
	name                    string
	requestSpan, handleSpan string
	attr                    attribute.KeyValue       // messaging.destination.name
	labels                  metric.MeasurementOption // the queue alone
	byStatus                [len(statuses)]metric.MeasurementOption
	inFlight                atomic.Int64 // handler attempts running now
	sent, retries           count
	completed               [len(statuses)]count
}

// statuses are the final statuses a reply (and a final event) can have,
// the outcomes of rsvp.requests.completed.
var statuses = [...]backend.Status{backend.StatusSucceeded, backend.StatusFailed, backend.StatusExpired, backend.StatusCancelled}

// queue returns the telemetry of the named queue.
func (t *telemetry) queue(name string) *queueTel {
	if q, ok := t.queues.Load(name); ok {
		return q.(*queueTel)
	}
	q := &queueTel{name: name, requestSpan: "rsvp.request " + name, handleSpan: "rsvp.handle " + name, attr: queueAttr(name)}
	q.labels = metric.WithAttributeSet(attribute.NewSet(q.attr))
	q.sent.counter, q.sent.labels = t.sent, q.labels
	q.retries.counter, q.retries.labels = t.retries, q.labels
	for i, st := range statuses {
		q.byStatus[i] = metric.WithAttributeSet(attribute.NewSet(q.attr, attribute.String("outcome", string(st))))
		q.completed[i].counter, q.completed[i].labels = t.completed, q.byStatus[i]
	}
	got, _ := t.queues.LoadOrStore(name, q)
	return got.(*queueTel)
}

func newTelemetry(tp trace.TracerProvider, mp metric.MeterProvider, w *waiters) (*telemetry, error) {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	t := &telemetry{tracer: tp.Tracer(instrumentation), prop: propagation.TraceContext{}}
	t.direct.Store(true) // until the callback shows that collections flush
	m := mp.Meter(instrumentation)
	var err error
	must := func(e error) {
		if err == nil {
			err = e
		}
	}
	var e error
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
	t.sent, e = m.Int64Counter("rsvp.requests.sent", metric.WithDescription("Requests stored on a queue."))
	must(e)
	t.completed, e = m.Int64Counter("rsvp.requests.completed", metric.WithDescription("Requests given a final reply by a responder, by outcome."))
	must(e)
	// The gauges are counted here and observed at collection time: an
	// instrument call per attempt costs more than the count. Each client
	// registers its own callback, so clients sharing a MeterProvider add up
	// (these are up-down counters, whose observations are summed).
	t.inFlight, e = m.Int64ObservableUpDownCounter("rsvp.handler.in_flight", metric.WithDescription("Handler attempts running now."))
	must(e)
	t.waiters, e = m.Int64ObservableUpDownCounter("rsvp.waiters", metric.WithDescription("Calls waiting for a reply."))
	must(e)
	if err != nil {
		return nil, err
	}
	t.observing, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(t.waiters, int64(w.len()))
		t.queues.Range(func(_, v any) bool {
			q := v.(*queueTel)
			o.ObserveInt64(t.inFlight, q.inFlight.Load(), q.labels)
			return true
		})
		// Collections flush from now on. close unregisters the callback
		// (the SDK waits for a collection under way) before it sets direct.
		t.direct.Store(false)
		t.flush()
		return nil
	}, t.inFlight, t.waiters)
	return t, err
}

// add counts an event on c.
func (t *telemetry) add(c *count) {
	c.n.Add(1)
	if t.direct.Load() { // no collection flushes it
		c.flush()
	}
}

// flush adds every count to its counter.
func (t *telemetry) flush() {
	t.queues.Range(func(_, v any) bool {
		q := v.(*queueTel)
		q.sent.flush()
		q.retries.flush()
		for i := range q.completed {
			q.completed[i].flush()
		}
		return true
	})
	t.counts.Range(func(_, c any) bool {
		c.(*count).flush()
		return true
	})
}

// close stops the observation of this client's gauges, and adds the
// counts to their counters, from now on at once.
func (t *telemetry) close() error {
	err := t.observing.Unregister() // the callback no longer runs, nor sets direct
	t.direct.Store(true)
	t.flush()
	return err
}

// countOf returns the count of counter on q with the label key=value, in
// telemetry.counts.
func (t *telemetry) countOf(counter metric.Int64Counter, q *queueTel, key, value string) *count {
	k := labelKey{q.name, key, value}
	if c, ok := t.counts.Load(k); ok {
		return c.(*count)
	}
	c, _ := t.counts.LoadOrStore(k, &count{counter: counter, labels: t.onQueue(q.name, key, value)})
	return c.(*count)
}

// sentOne counts a request stored on q.
func (t *telemetry) sentOne(q *queueTel) { t.add(&q.sent) }

// retryOne counts a failed attempt on q that will be retried.
func (t *telemetry) retryOne(q *queueTel) { t.add(&q.retries) }

// deadLetteredOne counts a request of q dead-lettered for reason.
func (t *telemetry) deadLetteredOne(q *queueTel, reason string) {
	t.add(t.countOf(t.deadLettered, q, "reason", reason))
}

// latencyBuckets are histogram bounds in seconds, from 0.5 ms to 1 min.
var latencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

func queueAttr(queue string) attribute.KeyValue {
	return attribute.String("messaging.destination.name", queue)
}

type labelKey struct{ queue, key, value string }

// onQueue returns the metric labels of queue plus key=value. The label
// sets are made once and reused: making one per measurement is a
// noticeable share of a round trip's CPU.
func (t *telemetry) onQueue(queue, key, value string) metric.MeasurementOption {
	k := labelKey{queue, key, value}
	if o, ok := t.labels.Load(k); ok {
		return o.(metric.MeasurementOption)
	}
	o, _ := t.labels.LoadOrStore(k, metric.WithAttributeSet(attribute.NewSet(queueAttr(queue), attribute.String(key, value))))
	return o.(metric.MeasurementOption)
}

// startSend starts the span of Send for m.
func (t *telemetry) startSend(ctx context.Context, m *Message) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, "rsvp.send "+m.Queue, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(messageAttrs(t.queue(m.Queue), m)...))
}

// messageAttrs are the span attributes of a request.
func messageAttrs(q *queueTel, m *Message, more ...attribute.KeyValue) []attribute.KeyValue {
	attrs := make([]attribute.KeyValue, 0, 4+len(more))
	attrs = append(attrs, attribute.String("messaging.system", "rsvp"), q.attr,
		attribute.String("messaging.message.id", m.ID), attribute.String("rsvp.correlation_id", m.CorrelationID))
	return append(attrs, more...)
}

// The start options of the spans of a round trip, made once. These spans
// get their attributes when they end, with their outcome, in one call:
// setting them at the start as well costs several allocations per span.
var (
	producerSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer)}
	consumerSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer)}
)

// startRequest starts the span of Request on q; endRequest ends it.
func (t *telemetry) startRequest(ctx context.Context, q *queueTel) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, q.requestSpan, producerSpan...)
}

// endRequest records the outcome of Request for m on its span, and ends
// it, and on metrics: r is the reply, if any, and took the round trip.
func (t *telemetry) endRequest(ctx context.Context, span trace.Span, q *queueTel, m *Message, r *Reply, err error, took time.Duration) {
	outcome := "error"
	switch {
	case r != nil:
		outcome = string(r.Status)
	case errors.Is(err, ErrExpired): // Request stored the expired reply itself
		outcome = outcomeExpired
	}
	if span.IsRecording() && err != nil {
		span.SetStatus(codes.Error, outcome)
	}
	t.endRequestSpan(span, q, m, r, outcome)
	t.roundTrip.Record(ctx, took.Seconds(), t.outcome(q, outcome))
}

// endRequestSpan sets the attributes of Request's span for m, with the
// reply r if any, and ends it. A request that was not stored ends here:
// it was no round trip.
func (t *telemetry) endRequestSpan(span trace.Span, q *queueTel, m *Message, r *Reply, outcome string) {
	if span.IsRecording() {
		span.SetAttributes(messageAttrs(q, m, attribute.String("rsvp.outcome", outcome))...)
		if r != nil && !sameTrace(r.TraceParent, m.TraceParent) {
			// The reply came from another trace (a responder that started
			// one of its own): link to the span that replied. Within the
			// trace, the attempts are this span's children already.
			span.AddLink(trace.Link{SpanContext: t.remote(r.TraceParent, r.TraceState)})
		}
	}
	span.End()
}

// endAwait records the outcome of Await on its span: r is the reply, if
// any, and err Await's error. The span is ended by Await.
func (t *telemetry) endAwait(span trace.Span, r *Reply, err error) {
	if !span.IsRecording() {
		return
	}
	outcome := "error"
	if r != nil {
		outcome = string(r.Status)
		// The request's trace is the requester's, not this call's (a
		// requester that restarted, say): link to the span that replied.
		if sc := t.remote(r.TraceParent, r.TraceState); sc.IsValid() && sc.TraceID() != span.SpanContext().TraceID() {
			span.AddLink(trace.Link{SpanContext: sc})
		}
	}
	span.SetAttributes(attribute.String("rsvp.outcome", outcome))
	if err != nil {
		span.SetStatus(codes.Error, outcome)
	}
}

// completedOne counts a final reply stored for a request of q.
func (t *telemetry) completedOne(q *queueTel, status backend.Status) {
	if i := slices.Index(statuses[:], status); i >= 0 {
		t.add(&q.completed[i])
		return
	}
	t.add(t.countOf(t.completed, q, "outcome", string(status)))
}

// outcome returns the metric labels of q with outcome.
func (t *telemetry) outcome(q *queueTel, outcome string) metric.MeasurementOption {
	if i := slices.Index(statuses[:], backend.Status(outcome)); i >= 0 {
		return q.byStatus[i]
	}
	return t.onQueue(q.name, "outcome", outcome)
}

// putTraceContext sets *parent and *state (Message.TraceParent and
// TraceState, or Reply's) to ctx's W3C trace context, if ctx has a valid
// span context; otherwise it leaves them as they are.
func putTraceContext(ctx context.Context, parent, state *string) {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		*parent, *state = traceparent(sc), sc.TraceState().String()
	}
}

// sameTrace reports whether two W3C traceparents (version 00) have the same
// trace id; traceparents of other versions are never the same.
func sameTrace(a, b string) bool {
	return len(a) == 55 && len(b) == 55 && a[:3] == "00-" && a[:35] == b[:35]
}

// traceFlags are the trace flags W3C Trace Context defines, the ones
// propagated: sampled and random.
const traceFlags = trace.FlagsSampled | trace.FlagsRandom

// traceparent formats sc as a W3C traceparent (version 00). It is what
// propagation.TraceContext writes, without its carrier and allocations.
func traceparent(sc trace.SpanContext) string {
	var b [55]byte
	tid, sid, flags := sc.TraceID(), sc.SpanID(), [1]byte{byte(sc.TraceFlags() & traceFlags)}
	copy(b[:], "00-")
	hex.Encode(b[3:35], tid[:])
	b[35] = '-'
	hex.Encode(b[36:52], sid[:])
	b[52] = '-'
	hex.Encode(b[53:], flags[:])
	return string(b[:])
}

// remote returns the span context of a traceparent and tracestate (from
// Message or Reply), or an invalid one if there is none. Version 00
// traceparents, the ones rsvp writes, are parsed here; others go through
// propagation.TraceContext, which knows the rules for versions to come.
func (t *telemetry) remote(tp, ts string) trace.SpanContext {
	if tp == "" {
		return trace.SpanContext{}
	}
	if len(tp) != 55 || tp[:3] != "00-" || tp[35] != '-' || tp[52] != '-' {
		carrier := propagation.MapCarrier{"traceparent": tp, "tracestate": ts}
		return trace.SpanContextFromContext(t.prop.Extract(context.Background(), carrier))
	}
	tid, err1 := trace.TraceIDFromHex(tp[3:35])
	sid, err2 := trace.SpanIDFromHex(tp[36:52])
	flags, ok := hexByte(tp[53], tp[54])
	if err1 != nil || err2 != nil || !ok || flags > 3 { // version 00 reserves the other flag bits
		return trace.SpanContext{}
	}
	cfg := trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.TraceFlags(flags) & traceFlags, Remote: true}
	if ts != "" {
		// A malformed tracestate is dropped; the traceparent stands.
		cfg.TraceState, _ = trace.ParseTraceState(ts)
	}
	return trace.NewSpanContext(cfg)
}

// hexByte decodes two lower-case hex digits, as W3C Trace Context writes
// them.
func hexByte(hi, lo byte) (byte, bool) {
	digit := func(c byte) (byte, bool) {
		switch {
		case '0' <= c && c <= '9':
			return c - '0', true
		case 'a' <= c && c <= 'f':
			return c - 'a' + 10, true
		}
		return 0, false
	}
	h, ok1 := digit(hi)
	l, ok2 := digit(lo)
	return h<<4 | l, ok1 && ok2
}

// startAttempt starts the span of one handler attempt as a child of the
// requester's span, after a span for the time the request waited in the
// queue (first attempts only: from its creation to now).
func (t *telemetry) startAttempt(q *queueTel, m *Message) (context.Context, trace.Span) {
	q.inFlight.Add(1)
	parent := trace.ContextWithRemoteSpanContext(context.Background(), t.remote(m.TraceParent, m.TraceState))
	if m.Attempt == 1 && !m.CreatedAt.IsZero() {
		// Its parent, the requester's span, has the request's attributes.
		_, wait := t.tracer.Start(parent, "rsvp.queue_wait", trace.WithTimestamp(m.CreatedAt))
		wait.End()
	}
	return t.tracer.Start(parent, q.handleSpan, consumerSpan...)
}

// endAttempt records an attempt's outcome on its span, and ends it, and on
// metrics.
func (t *telemetry) endAttempt(q *queueTel, span trace.Span, m *Message, outcome string, err error, took time.Duration) {
	q.inFlight.Add(-1)
	if span.IsRecording() {
		span.SetAttributes(messageAttrs(q, m, attribute.Int("rsvp.attempt", m.Attempt), attribute.String("rsvp.outcome", outcome))...)
		if err != nil {
			span.RecordError(err)
		}
		if outcome != outcomeSucceeded {
			span.SetStatus(codes.Error, outcome)
		}
	}
	span.End()
	if took > 0 {
		t.handlerTime.Record(context.Background(), took.Seconds(), t.outcome(q, outcome))
	}
}
