package rsvp_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// BenchmarkTelemetryInterleaved measures the cost of telemetry as a ratio
// taken fairly on a noisy machine: two clients, each on its own durable
// engine, one with telemetry off and one with traces (SDK, everything
// sampled, discarding exporter), metrics (SDK, manual reader) or both on,
// take turns of 500ms of
// round trips at concurrency 64, ten turns each. It reports each one's
// round trips/s and on/off. Run it with -benchtime 1x.
func BenchmarkTelemetryInterleaved(b *testing.B) {
	for _, mode := range []string{"traces", "metrics", "both"} {
		b.Run(mode, func(b *testing.B) { telemetryInterleaved(b, mode != "metrics", mode != "traces") })
	}
}

func telemetryInterleaved(b *testing.B, traces, metrics bool) {
	ctx := context.Background()
	type side struct {
		c   *rsvp.Client
		ops atomic.Int64
		dur time.Duration
	}
	open := func(on bool) *side {
		be, err := rsvpnats.Embedded(b.TempDir(), rsvpnats.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { be.Close() })
		cfg := rsvp.Config{}
		if on && traces {
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardExporter{}))
			b.Cleanup(func() { tp.Shutdown(ctx) })
			cfg.TracerProvider = tp
		}
		if on && metrics {
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			b.Cleanup(func() { mp.Shutdown(ctx) })
			cfg.MeterProvider = mp
		}
		c, err := rsvp.New(ctx, be, cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close(ctx) })
		if _, err := c.Handle("echo", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
			return &rsvp.Reply{Body: m.Body}, nil
		}), rsvp.HandleOptions{Concurrency: 64}); err != nil {
			b.Fatal(err)
		}
		return &side{c: c}
	}
	off, on := open(false), open(true)
	turn := func(s *side, d time.Duration) {
		stop := time.Now().Add(d)
		began := time.Now()
		var wg sync.WaitGroup
		for range 64 {
			wg.Go(func() {
				for time.Now().Before(stop) {
					if _, err := s.c.Request(ctx, "echo", &rsvp.Message{Body: body1K}); err != nil {
						b.Error(err)
						return
					}
					s.ops.Add(1)
				}
			})
		}
		wg.Wait()
		s.dur += time.Since(began)
	}
	turn(off, 300*time.Millisecond) // warm both up, uncounted
	turn(on, 300*time.Millisecond)
	off.ops.Store(0)
	on.ops.Store(0)
	off.dur, on.dur = 0, 0
	b.ResetTimer()
	for range 10 {
		turn(off, 500*time.Millisecond)
		turn(on, 500*time.Millisecond)
	}
	b.StopTimer()
	offRate := float64(off.ops.Load()) / off.dur.Seconds()
	onRate := float64(on.ops.Load()) / on.dur.Seconds()
	b.ReportMetric(offRate, "off-ops/s")
	b.ReportMetric(onRate, "on-ops/s")
	b.ReportMetric(onRate/offRate, "on/off")
}
