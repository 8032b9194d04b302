package rsvppg_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

// The benchmarks compare this backend with the embedded NATS engine (on
// disk, fsync before every acknowledgement) in the same run, through the
// root package, with 1 KiB bodies at concurrency 64:
//
//	RSVP_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test?sslmode=disable \
//		go test -run '^$' -bench . -benchtime 20000x ./backend/rsvppg/
//
// PostgreSQL runs with its defaults (synchronous_commit on, fsync on).

var body1K = make([]byte, 1024)

const benchConc = 64

// engines opens each engine for a benchmark and closes it after.
var engines = []struct {
	name string
	open func(b *testing.B) backend.Backend
}{
	{"postgres", func(b *testing.B) backend.Backend {
		url := serverURL(b)
		return open(b, url, rsvppg.Options{Schema: freshSchema(b, url)})
	}},
	{"nats-embedded", func(b *testing.B) backend.Backend {
		be, err := rsvpnats.Embedded(b.TempDir(), rsvpnats.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = be.Close() })
		return be
	}},
}

// BenchmarkRoundTrip: Request → responder → reply, closed loop.
func BenchmarkRoundTrip(b *testing.B) {
	for _, e := range engines {
		b.Run(e.name+fmt.Sprintf("/c=%d", benchConc), func(b *testing.B) {
			c := client(b, e.open(b))
			ctx := context.Background()
			_, err := c.Handle("echo", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
				return &rsvp.Reply{Body: m.Body}, nil
			}), rsvp.HandleOptions{Concurrency: benchConc})
			if err != nil {
				b.Fatal(err)
			}
			closedLoop(b, benchConc, func() error {
				_, err := c.Request(ctx, "echo", &rsvp.Message{Body: body1K})
				return err
			})
		})
	}
}

// BenchmarkEnqueue: Send only, closed loop.
func BenchmarkEnqueue(b *testing.B) {
	for _, e := range engines {
		b.Run(e.name+fmt.Sprintf("/c=%d", benchConc), func(b *testing.B) {
			c := client(b, e.open(b))
			ctx := context.Background()
			closedLoop(b, benchConc, func() error {
				_, err := c.Send(ctx, "sink", &rsvp.Message{Body: body1K})
				return err
			})
		})
	}
}

func client(b *testing.B, be backend.Backend) *rsvp.Client {
	ctx := context.Background()
	c, err := rsvp.New(ctx, be, rsvp.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close(ctx) })
	return c
}

// closedLoop runs b.N calls of op from conc goroutines and reports
// throughput and latency percentiles.
func closedLoop(b *testing.B, conc int, op func() error) {
	b.Helper()
	var next atomic.Int64
	lat := make([]time.Duration, b.N)
	var wg sync.WaitGroup
	var failed atomic.Value
	b.ResetTimer()
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				t := time.Now()
				if err := op(); err != nil {
					failed.Store(err)
					return
				}
				lat[i] = time.Since(t)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
