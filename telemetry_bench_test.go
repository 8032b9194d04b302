package rsvp_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

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
				tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(rsvp.DiscardExporter{}))
				defer tp.Shutdown(ctx)
				cfg.TracerProvider = tp
			}
			reader := sdkmetric.NewManualReader()
			if mode == "metrics" || mode == "on" {
				mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
				defer mp.Shutdown(ctx)
				cfg.MeterProvider = mp
			}
			c, err := rsvp.New(ctx, be, cfg)
			if err != nil {
				b.Fatal(err)
			}
			collectOnce(b, reader)
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
// sampled, discarding exporter), metrics (SDK, manual reader), both, or
// both with 1 % or 10 % of the traces sampled ("sampled", "sampled10") on,
// take turns of 250ms of round trips at concurrency 64: 24 pairs of turns,
// in the order off-on, on-off, off-on, ... so that a drift of the machine
// weighs on both. It reports each one's round trips/s over all turns, their
// ratio on/off, and the median of the 24 ratios of a pair's two turns
// (median-on/off), which a burst of noise in one turn cannot move. Run it
// with -benchtime 1x.
func BenchmarkTelemetryInterleaved(b *testing.B) {
	for _, mode := range []string{"traces", "metrics", "both", "sampled", "sampled10"} {
		sample := 1.0
		switch mode {
		case "sampled":
			sample = 0.01
		case "sampled10":
			sample = 0.1
		}
		b.Run(mode, func(b *testing.B) { telemetryInterleaved(b, mode != "metrics", mode != "traces", sample) })
	}
}

// telemetryInterleaved runs BenchmarkTelemetryInterleaved: sample is the
// share of traces sampled.
func telemetryInterleaved(b *testing.B, traces, metrics bool, sample float64) {
	ctx := context.Background()
	type side struct {
		c   *rsvp.Client
		ops int64
		dur time.Duration
		cpu time.Duration // process CPU time during its turns
	}
	open := func(on bool) *side {
		be, err := rsvpnats.Embedded(b.TempDir(), rsvpnats.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { be.Close() })
		cfg := rsvp.Config{}
		if on && traces {
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(rsvp.DiscardExporter{}),
				sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(sample))))
			b.Cleanup(func() { tp.Shutdown(ctx) })
			cfg.TracerProvider = tp
		}
		reader := sdkmetric.NewManualReader()
		if on && metrics {
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			b.Cleanup(func() { mp.Shutdown(ctx) })
			cfg.MeterProvider = mp
		}
		c, err := rsvp.New(ctx, be, cfg)
		if err != nil {
			b.Fatal(err)
		}
		collectOnce(b, reader)
		b.Cleanup(func() { c.Close(ctx) })
		if _, err := c.Handle("echo", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
			return &rsvp.Reply{Body: m.Body}, nil
		}), rsvp.HandleOptions{Concurrency: 64}); err != nil {
			b.Fatal(err)
		}
		return &side{c: c}
	}
	off, on := open(false), open(true)
	// turn runs round trips on s for d and returns their rate.
	turn := func(s *side, d time.Duration) float64 {
		var ops atomic.Int64
		stop := time.Now().Add(d)
		began, cpu := time.Now(), processCPU(b)
		var wg sync.WaitGroup
		for range 64 {
			wg.Go(func() {
				for time.Now().Before(stop) {
					if _, err := s.c.Request(ctx, "echo", &rsvp.Message{Body: body1K}); err != nil {
						b.Error(err)
						return
					}
					ops.Add(1)
				}
			})
		}
		wg.Wait()
		took := time.Since(began)
		s.ops += ops.Load()
		s.dur += took
		s.cpu += processCPU(b) - cpu
		return float64(ops.Load()) / took.Seconds()
	}
	turn(off, 300*time.Millisecond) // warm both up, uncounted
	turn(on, 300*time.Millisecond)
	off.ops, on.ops, off.dur, on.dur, off.cpu, on.cpu = 0, 0, 0, 0, 0, 0
	const pairs, d = 24, 250 * time.Millisecond
	ratios := make([]float64, 0, pairs)
	b.ResetTimer()
	for i := range pairs {
		var offRate, onRate float64
		if i%2 == 0 {
			offRate = turn(off, d)
			onRate = turn(on, d)
		} else {
			onRate = turn(on, d)
			offRate = turn(off, d)
		}
		ratios = append(ratios, onRate/offRate)
	}
	b.StopTimer()
	slices.Sort(ratios)
	offRate := float64(off.ops) / off.dur.Seconds()
	onRate := float64(on.ops) / on.dur.Seconds()
	b.ReportMetric(offRate, "off-ops/s")
	b.ReportMetric(onRate, "on-ops/s")
	b.ReportMetric(onRate/offRate, "on/off")
	b.ReportMetric((ratios[pairs/2-1]+ratios[pairs/2])/2, "median-on/off")
	// CPU per round trip, a steadier view of the same cost: the process's
	// user and system time over a side's turns (the other side idles).
	offCPU := off.cpu.Seconds() * 1e6 / float64(off.ops)
	onCPU := on.cpu.Seconds() * 1e6 / float64(on.ops)
	b.ReportMetric(offCPU, "off-cpu-µs/op")
	b.ReportMetric(onCPU, "on-cpu-µs/op")
}

// processCPU returns the user and system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// collectOnce collects the metrics of reader's provider once, if it has
// one, as a program's periodic reader does every so often: rsvp's counters
// count cheaply once a collection has shown that collections add the
// counts up (see telemetry.direct).
func collectOnce(b *testing.B, reader *sdkmetric.ManualReader) {
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil && !errors.Is(err, sdkmetric.ErrReaderNotRegistered) {
		b.Fatal(err)
	}
}
