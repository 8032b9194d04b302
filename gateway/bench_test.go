package gateway_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/gateway"
)

// The gateway's Go benchmarks. `rsvp bench http submit|push|idle` measures
// the same paths end to end, on disk with fsync; these run on the memory
// engine:
//
//	go test -run '^$' -bench . ./gateway

// benchGateway is a gateway over real HTTP on a fresh in-memory engine,
// closed when b ends.
type benchGateway struct {
	url  string
	addr string // host:port
}

func newBenchGateway(b *testing.B, cfg gateway.Config) *benchGateway {
	b.Helper()
	be, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	c, err := rsvp.New(ctx, be, rsvp.Config{})
	if err != nil {
		_ = be.Close()
		b.Fatal(err)
	}
	gw, err := gateway.New(ctx, c, cfg)
	if err != nil {
		_ = c.Close(ctx)
		_ = be.Close()
		b.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	b.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := gw.Close(ctx); err != nil {
			b.Errorf("gateway close: %v", err)
		}
		if err := c.Close(ctx); err != nil {
			b.Errorf("client close: %v", err)
		}
		_ = be.Close()
	})
	return &benchGateway{url: srv.URL, addr: strings.TrimPrefix(srv.URL, "http://")}
}

// benchTransport keeps conns connections to the gateway alive.
func benchTransport(conns int) *http.Transport {
	return &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, DisableCompression: true}
}

// submit posts body to queue and returns the accepted request's id.
func (g *benchGateway) submit(hc *http.Client, queue string, body []byte) (string, error) {
	resp, err := hc.Post(g.url+"/v1/queues/"+queue+"/requests", "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("submit: status %s", resp.Status)
	}
	return strings.TrimPrefix(resp.Header.Get("Location"), "/v1/requests/"), nil
}

// BenchmarkSubmit posts 1 KiB requests from parallel clients (8 per
// GOMAXPROCS) that keep their connections alive; an operation is one 202.
// The memory engine scans its event log for each request's events, so
// ns/op grows with the number of requests stored (b.N).
func BenchmarkSubmit(b *testing.B) {
	g := newBenchGateway(b, gateway.Config{})
	const parallelism = 8
	tr := benchTransport(parallelism * runtime.GOMAXPROCS(0))
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	body := bytes.Repeat([]byte("x"), 1024)
	b.SetParallelism(parallelism)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := g.submit(hc, "bench", body); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkLongPollWaiters measures what a waiting long-poll costs: each
// operation opens n long-polls (GET /v1/requests/{id}?wait=60s on pending
// requests) from raw TCP clients that send their request and never read,
// waits until the gateway holds them all, and closes them. bytes/waiter is
// the growth of live heap and goroutine stacks (after a GC) per waiter,
// server and the clients' few hundred bytes of socket state together;
// goroutines/waiter the growth of goroutines.
func BenchmarkLongPollWaiters(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			g := newBenchGateway(b, gateway.Config{MaxStreams: n + 16})
			ids := g.submitMany(b, n)
			var bytesPer, goroutinesPer float64
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				mem0, g0 := liveMemory(), runtime.NumGoroutine()
				b.StartTimer()
				conns := g.openLongPolls(b, ids)
				// Each waiting long-poll holds its connection's goroutine and
				// the server's background reader of it.
				waitFor(b, "the long-polls to arrive", func() bool { return runtime.NumGoroutine() >= g0+2*n })
				waitQuiet(b)
				b.StopTimer()
				bytesPer += float64(liveMemory()-mem0) / float64(n)
				goroutinesPer += float64(runtime.NumGoroutine()-g0) / float64(n)
				checkWaiting(b, conns)
				for _, c := range conns {
					_ = c.Close()
				}
				waitFor(b, "the long-polls to end", func() bool { return runtime.NumGoroutine() <= g0+2 })
				b.StartTimer()
			}
			b.ReportMetric(bytesPer/float64(b.N), "bytes/waiter")
			b.ReportMetric(goroutinesPer/float64(b.N), "goroutines/waiter")
		})
	}
}

// submitMany submits n requests that nobody answers.
func (g *benchGateway) submitMany(b *testing.B, n int) []string {
	b.Helper()
	const workers = 16
	tr := benchTransport(workers)
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	ids := make([]string, n)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				id, err := g.submit(hc, "waiting", []byte("x"))
				if err != nil {
					errs <- err
					return
				}
				ids[i] = id
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return ids
}

// openLongPolls opens a long-poll on each of ids from a raw TCP client.
func (g *benchGateway) openLongPolls(b *testing.B, ids []string) []net.Conn {
	b.Helper()
	conns := make([]net.Conn, 0, len(ids))
	for _, id := range ids {
		c, err := net.Dial("tcp", g.addr)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := fmt.Fprintf(c, "GET /v1/requests/%s?wait=60s HTTP/1.1\r\nHost: %s\r\n\r\n", id, g.addr); err != nil {
			b.Fatal(err)
		}
	}
	return conns
}

// checkWaiting fails b unless every long-poll is still waiting: nothing to
// read on its connection.
func checkWaiting(b *testing.B, conns []net.Conn) {
	b.Helper()
	buf := make([]byte, 512)
	deadline := time.Now().Add(5 * time.Millisecond)
	for _, c := range conns {
		_ = c.SetReadDeadline(deadline)
		n, err := c.Read(buf)
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() || n > 0 {
			b.Fatalf("a long-poll ended early: %q, %v", buf[:n], err)
		}
	}
}

// liveMemory is the live heap and the goroutine stacks, after a GC.
func liveMemory() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc + m.StackInuse)
}

// waitFor polls cond until it holds, for 30s at most.
func waitFor(b *testing.B, what string, cond func() bool) {
	b.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			b.Fatalf("waited 30s for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
}

// waitQuiet waits until the process's CPU use over 50ms falls under 5% of
// a core: the gateway has done its work for the requests that arrived.
func waitQuiet(b *testing.B) {
	b.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		c0, t0 := cpuTime(), time.Now()
		time.Sleep(50 * time.Millisecond) // sampling CPU use
		if float64(cpuTime()-c0) < 0.05*float64(time.Since(t0)) {
			return
		}
	}
	b.Fatal("CPU use did not fall quiet within 30s")
}

// cpuTime is the user and system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
