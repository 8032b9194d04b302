package workflow_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/workflow"
)

// BenchmarkSequential3 measures workflows of three sequential no-op
// activities, from StartInstance to the completed status seen by Await,
// on an embedded engine on disk (fsync on every write), with 1 and 100
// instances in flight. It reports completed workflows/s and the latency
// percentiles.
func BenchmarkSequential3(b *testing.B) {
	for _, conc := range []int{1, 100} {
		b.Run(fmt.Sprintf("c=%d", conc), func(b *testing.B) {
			be, err := rsvpnats.Embedded(b.TempDir(), rsvpnats.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer be.Close()
			ctx := context.Background()
			c, err := rsvp.New(ctx, be, rsvp.Config{})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close(ctx)
			r, err := c.Handle("noop", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
				return &rsvp.Reply{Body: m.Body, ContentType: "application/json"}, nil
			}), rsvp.HandleOptions{Concurrency: 64})
			if err != nil {
				b.Fatal(err)
			}
			defer r.Stop(ctx)
			e, err := workflow.New(c, workflow.Config{})
			if err != nil {
				b.Fatal(err)
			}
			_ = workflow.Register(e, "seq3", func(ctx workflow.Context, n int) (int, error) {
				for range 3 {
					var err error
					if n, err = workflow.CallActivity[int](ctx, "noop", n+1, workflow.ActivityOptions{}).Get(ctx); err != nil {
						return 0, err
					}
				}
				return n, nil
			})
			if err := e.Start(ctx); err != nil {
				b.Fatal(err)
			}
			defer e.Stop(ctx)

			var next atomic.Int64
			lat := make([][]time.Duration, conc)
			b.ResetTimer()
			began := time.Now()
			var wg sync.WaitGroup
			for w := range conc {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						t0 := time.Now()
						st, err := e.StartInstance(ctx, "seq3", 0, workflow.StartOptions{})
						if err != nil {
							b.Error(err)
							return
						}
						if n, err := workflow.Result[int](ctx, e, st.ID); err != nil || n != 3 {
							b.Errorf("result %d, %v", n, err)
							return
						}
						lat[w] = append(lat[w], time.Since(t0))
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(began)
			b.StopTimer()
			all := slices.Concat(lat...)
			slices.Sort(all)
			if len(all) == 0 {
				return
			}
			b.ReportMetric(float64(len(all))/elapsed.Seconds(), "workflows/s")
			b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
