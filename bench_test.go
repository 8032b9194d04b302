package rsvp_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// BenchmarkRoundTrip measures Send → handler → reply → Await with 1 KiB
// bodies on an embedded engine on disk, at concurrency 1 and 64, with fsync
// on every write (always) and on an interval. It reports round trips/s and
// the latency percentiles.
func BenchmarkRoundTrip(b *testing.B) {
	for _, sync := range []struct {
		name string
		mode rsvpnats.Sync
	}{{"always", rsvpnats.SyncAlways}, {"interval", rsvpnats.SyncInterval}} {
		for _, conc := range []int{1, 64} {
			b.Run(fmt.Sprintf("sync=%s/c=%d", sync.name, conc), func(b *testing.B) {
				ctx := context.Background()
				c := echoClient(b, rsvpnats.Options{Sync: sync.mode}, max(conc, 8))
				runClosedLoop(b, conc, func() error {
					_, err := c.Request(ctx, "echo", &rsvp.Message{Body: body1K})
					return err
				})
			})
		}
	}
}

var body1K = make([]byte, 1024)

// echoClient returns a client on a fresh embedded engine on disk with a
// responder of the queue "echo" that answers with the request's body, all
// closed when b ends.
func echoClient(b *testing.B, opts rsvpnats.Options, concurrency int) *rsvp.Client {
	b.Helper()
	be, err := rsvpnats.Embedded(b.TempDir(), opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Close() })
	c, err := rsvp.New(context.Background(), be, rsvp.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close(context.Background()) })
	_, err = c.Handle("echo", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: m.Body}, nil
	}), rsvp.HandleOptions{Concurrency: concurrency})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// runClosedLoop runs b.N calls of op from conc goroutines and reports
// throughput and latency percentiles.
func runClosedLoop(b *testing.B, conc int, op func() error) {
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
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkRawJetStream is the engine's limit for BenchmarkRoundTrip: a
// hand-written request → consumer → reply loop with plain nats.go calls on
// the same embedded server and streams, with none of rsvp's work (no
// validation, deadlines, leases, dead letters, group commit). Publishes are
// acknowledged by the server; in sync=interval mode that is the same
// durability as rsvp's interval mode.
func BenchmarkRawJetStream(b *testing.B) {
	for _, conc := range []int{1, 64} {
		b.Run(fmt.Sprintf("sync=interval/c=%d", conc), func(b *testing.B) {
			be, err := rsvpnats.Embedded(b.TempDir(), rsvpnats.Options{Sync: rsvpnats.SyncInterval})
			if err != nil {
				b.Fatal(err)
			}
			defer be.Close()
			nc := be.Conn()
			js, err := jetstream.New(nc)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()

			// Responder: a pull consumer feeding as many workers as rsvp's
			// responder has; each replies, then acks.
			cons, err := js.CreateOrUpdateConsumer(ctx, "RSVP_REQUESTS", jetstream.ConsumerConfig{
				Durable: "raw", FilterSubject: "rsvp.req.raw", AckPolicy: jetstream.AckExplicitPolicy})
			if err != nil {
				b.Fatal(err)
			}
			workers := max(conc, 8)
			it, err := cons.Messages(jetstream.PullMaxMessages(workers))
			if err != nil {
				b.Fatal(err)
			}
			var wg sync.WaitGroup
			defer wg.Wait()
			defer it.Stop()
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						m, err := it.Next()
						if err != nil {
							return
						}
						id := m.Headers().Get("Rsvp-Id")
						reply := &nats.Msg{Subject: "rsvp.reply." + id + ".raw", Header: nats.Header{"Rsvp-Correlation-Id": {id}}, Data: m.Data()}
						if _, err := js.PublishMsg(ctx, reply); err != nil {
							b.Error(err)
						}
						_ = m.Ack()
					}
				}()
			}

			// Requester: one subscription for all replies, a map of waiters.
			var mu sync.Mutex
			waiting := map[string]chan struct{}{}
			sub, err := nc.Subscribe("rsvp.notify.*.raw", func(m *nats.Msg) {
				mu.Lock()
				ch := waiting[m.Header.Get("Rsvp-Correlation-Id")]
				mu.Unlock()
				if ch != nil {
					close(ch)
				}
			})
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Unsubscribe()
			runClosedLoop(b, conc, func() error {
				id := rsvp.NewID()
				ch := make(chan struct{})
				mu.Lock()
				waiting[id] = ch
				mu.Unlock()
				req := &nats.Msg{Subject: "rsvp.req.raw", Header: nats.Header{"Rsvp-Id": {id}, "Nats-Msg-Id": {id}}, Data: body1K}
				if _, err := js.PublishMsg(ctx, req); err != nil {
					return err
				}
				<-ch
				mu.Lock()
				delete(waiting, id)
				mu.Unlock()
				return nil
			})
		})
	}
}

// BenchmarkWaiters measures the waiter map: register, deliver, unregister,
// from parallel goroutines, as Request does for every call.
func BenchmarkWaiters(b *testing.B) {
	w := rsvp.NewWaiters()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := rsvp.NewID()
			ch := w.Add(id)
			w.Deliver(&rsvp.Reply{CorrelationID: id})
			<-ch
			w.Remove(id, ch)
		}
	})
}

// BenchmarkSessions measures round trips at concurrency 64 (durable
// engine on disk) without session keys, and with keys: 64, each request in
// a session no other request is in at that moment (so what it costs is the
// session machinery's own work), and 8 shared by all callers in turn (at
// most 8 requests run at once, by design).
func BenchmarkSessions(b *testing.B) {
	for _, keys := range []int{0, 64, 8} {
		b.Run(fmt.Sprintf("keys=%d", keys), func(b *testing.B) {
			ctx := context.Background()
			c := echoClient(b, rsvpnats.Options{}, 64)
			free := make(chan string, 64) // keys=64: each request takes a session no other is in
			for i := range 64 {
				free <- fmt.Sprintf("key-%d", i)
			}
			var n atomic.Int64
			runClosedLoop(b, 64, func() error {
				msg := &rsvp.Message{Body: body1K}
				switch keys {
				case 64:
					msg.SessionKey = <-free
					defer func() { free <- msg.SessionKey }()
				case 8:
					msg.SessionKey = fmt.Sprintf("key-%d", n.Add(1)%8)
				}
				_, err := c.Request(ctx, "echo", msg)
				return err
			})
		})
	}
}
