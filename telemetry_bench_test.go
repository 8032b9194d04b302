package rsvp_test

import (
	"context"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// discardExporter is a span exporter that drops everything: the cost
// measured is rsvp's instrumentation and the SDK, not an exporter.
type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

// BenchmarkTelemetryOverhead compares round trips at concurrency 64 (1 KiB,
// durable engine) with telemetry off (the default no-op providers), traces
// only (SDK tracer, sampling everything, batched to a discarding exporter),
// metrics only (SDK meter with a reader), and both. Compare ns/op in one
// run, interleaved several times on a noisy machine.
func BenchmarkTelemetryOverhead(b *testing.B) {
	for _, mode := range []string{"off", "traces", "metrics", "on"} {
		b.Run(mode, func(b *testing.B) {
			be, err := rsvpnats.Embedded(b.TempDir(), rsvpnats.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer be.Close()
			ctx := context.Background()
			cfg := rsvp.Config{}
			if mode == "traces" || mode == "on" {
				tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardExporter{}))
				defer tp.Shutdown(ctx)
				cfg.TracerProvider = tp
			}
			if mode == "metrics" || mode == "on" {
				mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
				defer mp.Shutdown(ctx)
				cfg.MeterProvider = mp
			}
			c, err := rsvp.New(ctx, be, cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close(ctx)
			if _, err := c.Handle("echo", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
				return &rsvp.Reply{Body: m.Body}, nil
			}), rsvp.HandleOptions{Concurrency: 64}); err != nil {
				b.Fatal(err)
			}
			runClosedLoop(b, 64, func() error {
				_, err := c.Request(ctx, "echo", &rsvp.Message{Body: body1K})
				return err
			})
		})
	}
}
