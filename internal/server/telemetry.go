package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/rsvp-go/rsvp/backend"
)

// telemetry is what `rsvp serve` reports with: metrics in the Prometheus
// text format at /metrics, always; traces over OTLP when the standard
// OTEL_* environment variables ask for them.
type telemetry struct {
	tracer   trace.TracerProvider
	meter    metric.MeterProvider
	metrics  http.Handler
	shutdown func(context.Context) error // flushes and stops the providers
}

// tracesWanted reports whether the environment configures a trace
// exporter: OTEL_TRACES_EXPORTER=otlp, or an OTLP endpoint, unless
// OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none.
func tracesWanted(getenv func(string) string) bool {
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") {
		return false
	}
	switch strings.ToLower(getenv("OTEL_TRACES_EXPORTER")) {
	case "none":
		return false
	case "otlp":
		return true
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

func newTelemetry(ctx context.Context) (*telemetry, error) {
	// service.name "rsvp" unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES
	// say otherwise: later detectors win.
	res, err := resource.New(ctx, resource.WithAttributes(attribute.String("service.name", "rsvp")),
		resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res))
	t := &telemetry{meter: mp, tracer: noop.NewTracerProvider(),
		metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), shutdown: mp.Shutdown}
	if tracesWanted(os.Getenv) {
		te, err := otlptracehttp.New(ctx) // endpoint, headers, TLS from OTEL_EXPORTER_OTLP_*
		if err != nil {
			_ = mp.Shutdown(ctx)
			return nil, fmt.Errorf("OTLP trace exporter: %w", err)
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(te), sdktrace.WithResource(res)) // sampler from OTEL_TRACES_SAMPLER
		t.tracer = tp
		t.shutdown = func(ctx context.Context) error { return errors.Join(tp.Shutdown(ctx), mp.Shutdown(ctx)) }
	}
	return t, nil
}

// observeQueues reports depth, in-flight, oldest age, dead letters,
// scheduled requests and the requests in and out in the last minute per
// queue, read from the engine at each collection (scrape).
func observeQueues(mp metric.MeterProvider, qs backend.Inspector) error {
	m := mp.Meter("github.com/rsvp-go/rsvp/internal/server")
	depth, err1 := m.Int64ObservableGauge("rsvp.queue.depth", metric.WithDescription("Requests on the queue not finished (waiting, running or waiting for a retry)."))
	inFlight, err2 := m.Int64ObservableGauge("rsvp.queue.in_flight", metric.WithDescription("Requests of the queue delivered to a responder and not settled."))
	oldest, err3 := m.Float64ObservableGauge("rsvp.queue.oldest_age", metric.WithUnit("s"), metric.WithDescription("Age of the oldest request on the queue not finished."))
	dead, err4 := m.Int64ObservableGauge("rsvp.queue.dead_letters", metric.WithDescription("Dead letters of the queue kept."))
	scheduled, err5 := m.Int64ObservableGauge("rsvp.queue.scheduled", metric.WithDescription("Requests of the queue scheduled for later and not yet due (not in the depth)."))
	in, err6 := m.Int64ObservableGauge("rsvp.queue.in_last_minute", metric.WithDescription("Requests stored on the queue in the last minute, by every process."))
	out, err7 := m.Int64ObservableGauge("rsvp.queue.out_last_minute", metric.WithDescription("Requests that left the queue (answered, failed for good, cancelled or expired) in the last minute, by every process."))
	if err := errors.Join(err1, err2, err3, err4, err5, err6, err7); err != nil {
		return err
	}
	_, err := m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		stats, err := qs.Queues(ctx)
		if err != nil {
			return err
		}
		for _, s := range stats {
			at := metric.WithAttributes(attribute.String("messaging.destination.name", s.Queue))
			o.ObserveInt64(depth, int64(s.Depth), at)
			o.ObserveInt64(inFlight, int64(s.InFlight), at)
			o.ObserveInt64(dead, int64(s.DeadLetters), at)
			o.ObserveInt64(scheduled, int64(s.Scheduled), at)
			o.ObserveInt64(in, int64(s.In), at)
			o.ObserveInt64(out, int64(s.Out), at)
			age := 0.0
			if !s.Oldest.IsZero() {
				age = time.Since(s.Oldest).Seconds()
			}
			o.ObserveFloat64(oldest, age, at)
		}
		return nil
	}, depth, inFlight, oldest, dead, scheduled, in, out)
	return err
}
