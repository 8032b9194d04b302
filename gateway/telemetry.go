package gateway

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

const instrumentation = "github.com/rsvp-go/rsvp/gateway"

// telemetry holds the gateway's tracer and instruments.
type telemetry struct {
	tracer   trace.Tracer
	prop     propagation.TextMapPropagator
	streams  metric.Int64UpDownCounter
	webhooks metric.Int64Counter
	httpReqs metric.Int64Counter
}

func newTelemetry(tp trace.TracerProvider, mp metric.MeterProvider) (*telemetry, error) {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	t := &telemetry{tracer: tp.Tracer(instrumentation), prop: propagation.TraceContext{}}
	m := mp.Meter(instrumentation)
	var err, e error
	t.streams, err = m.Int64UpDownCounter("rsvp.gateway.streams", metric.WithDescription("Open long-polls, SSE streams and WebSockets."))
	t.webhooks, e = m.Int64Counter("rsvp.gateway.webhook.deliveries", metric.WithDescription("Webhook delivery attempts, by outcome."))
	if err == nil {
		err = e
	}
	t.httpReqs, e = m.Int64Counter("rsvp.gateway.http.requests", metric.WithDescription("HTTP requests served, by route and status."))
	if err == nil {
		err = e
	}
	return t, err
}

// traced wraps a route's handler in a server span, a child of the
// caller's W3C trace context, and counts the response.
func (g *Gateway) traced(route string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx := g.tel.prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := g.tel.tracer.Start(ctx, route, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("http.route", route),
				attribute.String("url.path", r.URL.Path)))
		defer span.End()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h(sw, r.WithContext(ctx))
		span.SetAttributes(attribute.Int("http.response.status_code", sw.status))
		if sw.status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(sw.status))
		}
		g.tel.httpReqs.Add(ctx, 1, metric.WithAttributes(attribute.String("http.route", route), attribute.Int("http.response.status_code", sw.status)))
	}
}

// statusWriter remembers the status written. Unwrap keeps
// http.ResponseController (Flush, deadlines, hijack) working through it.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// traceOf returns the W3C trace context of ctx's span, its traceparent
// and tracestate (often empty), for a request record.
func (t *telemetry) traceOf(ctx context.Context) (traceparent, tracestate string) {
	c := propagation.MapCarrier{}
	t.prop.Inject(ctx, c)
	return c["traceparent"], c["tracestate"]
}

// recordTrace returns ctx with the span context a record stored: its
// traceparent and tracestate, which vendors' tracers rely on as much (a
// sampling decision, a tenant) and which the spans after carry on.
func (t *telemetry) recordTrace(ctx context.Context, traceparent, tracestate string) context.Context {
	if traceparent == "" {
		return ctx
	}
	c := propagation.MapCarrier{"traceparent": traceparent}
	if tracestate != "" {
		c["tracestate"] = tracestate
	}
	return t.prop.Extract(ctx, c)
}
