package bench

// The HTTP workloads: rsvp's gateway (package gateway) served on loopback
// by this process, on the rsvp client given, and driven by HTTP clients in
// this process too. So every figure includes the clients' share of the two
// cores, as limit:http's does.
//
//   HTTPSubmit: POST requests, each answered 202 once stored.
//   HTTPPush:   open event streams on pending requests, answer them, and
//               time each final event from the handler's return to the
//               client's read.
//   HTTPIdle:   hold many long-polls or event streams open, and measure
//               the process's memory and its CPU while they idle.

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/gateway"
)

// HTTPOptions are what the HTTP workloads share.
type HTTPOptions struct {
	// Queue is the queue requests are submitted to. Default "bench".
	Queue string
	// Channel, if not empty, is the Notify-Channel of every request, so
	// that the run's events can be found by channel afterwards (to purge
	// them from a lasting engine).
	Channel string
	// Size is the request body size in bytes.
	Size int
	// Gateway configures the gateway. Its MaxStreams is raised to what the
	// workload opens.
	Gateway gateway.Config
}

func (o HTTPOptions) withDefaults() HTTPOptions {
	o.Queue = cmp.Or(o.Queue, "bench")
	return o
}

// httpSetupConcurrency is how many HTTP calls the workloads' setup (the
// submissions before push and idle runs, the opening of connections) makes
// at once.
const httpSetupConcurrency = 64

// gatewayServer is a gateway served on 127.0.0.1 by this process.
type gatewayServer struct {
	gw   *gateway.Gateway
	srv  *http.Server
	wg   sync.WaitGroup
	addr string // host:port
	base string // http://host:port
}

func startGateway(ctx context.Context, c *rsvp.Client, cfg gateway.Config) (*gatewayServer, error) {
	gw, err := gateway.New(ctx, c, cfg)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, errors.Join(fmt.Errorf("bench: gateway listener: %w", err), gw.Close(ctx))
	}
	s := &gatewayServer{gw: gw, srv: &http.Server{Handler: gw, ReadHeaderTimeout: rawTimeout}, addr: ln.Addr().String()}
	s.base = "http://" + s.addr
	s.wg.Go(func() { _ = s.srv.Serve(ln) }) // returns ErrServerClosed on close
	return s, nil
}

// close shuts the server down, waiting a little for connections under way
// (the workloads have closed theirs), then closes the gateway.
func (s *gatewayServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	s.wg.Wait()
	if err != nil {
		err = fmt.Errorf("bench: gateway server: %w", err)
	}
	return errors.Join(err, s.gw.Close(ctx))
}

// httpTransport returns a client transport for conns connections at once
// to one host, all kept alive.
func httpTransport(conns int) *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: rawTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
}

// submitter posts requests to the gateway.
type submitter struct {
	hc      *http.Client
	url     string
	body    []byte
	channel string
}

func newSubmitter(hc *http.Client, base string, o HTTPOptions) *submitter {
	return &submitter{hc: hc, url: base + "/v1/queues/" + o.Queue + "/requests", body: make([]byte, o.Size), channel: o.Channel}
}

// submit posts one request and returns the id the gateway gave it.
func (s *submitter) submit(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(s.body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if s.channel != "" {
		req.Header.Set("Notify-Channel", s.channel)
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var errBody []byte
	if resp.StatusCode != http.StatusAccepted {
		errBody, _ = io.ReadAll(io.LimitReader(resp.Body, 512))
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil { // so the connection is reused
		return "", fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("submit: status %s, want 202: %s", resp.Status, bytes.TrimSpace(errBody))
	}
	id, ok := strings.CutPrefix(resp.Header.Get("Location"), "/v1/requests/")
	if !ok || id == "" {
		return "", fmt.Errorf("submit: 202 with Location %q, want /v1/requests/ID", resp.Header.Get("Location"))
	}
	return id, nil
}

// submitMany submits n requests, httpSetupConcurrency at a time, and
// returns their ids.
func (s *submitter) submitMany(ctx context.Context, n int) ([]string, error) {
	ids := make([]string, n)
	var next atomic.Int64
	errs := make([]error, httpSetupConcurrency)
	var wg sync.WaitGroup
	for w := range httpSetupConcurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				id, err := s.submit(ctx)
				if err != nil {
					errs[w] = err
					return
				}
				ids[i] = id
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("bench: submitting %d requests: %w", n, err)
	}
	return ids, ctx.Err()
}

// HTTPSubmit measures the gateway's front door: POST
// /v1/queues/{queue}/requests with a body of o.Size bytes, from
// cfg.Concurrency clients that keep their connections alive, each call
// done when the gateway answers 202 Accepted (the request stored, as the
// engine's durability says). Nobody answers the requests. An id that the
// gateway gives twice counts as a duplicate. Default labels: http:submit.
func HTTPSubmit(ctx context.Context, cfg Config, c *rsvp.Client, o HTTPOptions) (res Result, err error) {
	o = o.withDefaults()
	if err := cfg.withDefaults().validate(); err != nil {
		return Result{}, fmt.Errorf("bench: %w", err)
	}
	s, err := startGateway(ctx, c, o.Gateway)
	if err != nil {
		return Result{}, err
	}
	defer func() { err = errors.Join(err, s.close()) }()
	tr := httpTransport(inFlight(cfg))
	defer tr.CloseIdleConnections()
	sub := newSubmitter(&http.Client{Transport: tr}, s.base, o)
	var seen sync.Map // the gateway's ids
	return Run(ctx, named(cfg, "http:submit", ""), func(ctx context.Context, id string) (string, error) {
		gwID, err := sub.submit(ctx)
		if err != nil {
			return "", err
		}
		if _, dup := seen.LoadOrStore(gwID, true); dup {
			return "gateway id " + gwID + " again", nil
		}
		return id, nil
	})
}

// PushConfig describes a run of HTTPPush.
type PushConfig struct {
	Workload string  // label; default "http:push"
	Engine   string  // label
	Streams  int     // event streams open at once, one per pending request; default 1000
	Rate     float64 // requests answered per second; default 500
	Handlers int     // how many requests the responder handles at once; default 16
	// Timeout bounds opening the streams, and the wait for the last final
	// event after the last answer. Default 30s.
	Timeout  time.Duration
	Progress io.Writer // a line per phase; nil: none
}

func (c PushConfig) withDefaults() PushConfig {
	c.Workload = cmp.Or(c.Workload, "http:push")
	c.Streams = cmp.Or(c.Streams, 1000)
	c.Rate = cmp.Or(c.Rate, 500)
	c.Handlers = cmp.Or(c.Handlers, 16)
	c.Timeout = cmp.Or(c.Timeout, 30*time.Second)
	return c
}

func (c PushConfig) validate() error {
	if c.Streams < 1 || c.Handlers < 1 || !(c.Rate > 0) || math.IsInf(c.Rate, 0) || c.Timeout < 0 {
		return errors.New("streams and handlers must be at least 1, the rate a positive number, the timeout not negative")
	}
	return nil
}

// PushResult is what HTTPPush measured. Its latencies (P50ms...) run from
// the reply stored to the client's read of the final event: from the final
// event's own time ("at"), which the responder takes once the reply is
// stored, just before it appends the event. Ops counts the streams that
// got the right final event; Lost, those that got none in time.
// ThroughputPerS is the answers per second.
type PushResult struct {
	Result
	Streams      int     `json:"streams"`  // open when answering began
	SetupSeconds float64 `json:"setup_s"`  // submitting and opening the streams
	Answered     int64   `json:"answered"` // by the responder
	// HandlerP50ms and HandlerP99ms time the same reads from the handler's
	// return, so they include storing the reply.
	HandlerP50ms float64 `json:"handler_p50_ms"`
	HandlerP99ms float64 `json:"handler_p99_ms"`
	// GatewayP50ms and GatewayP99ms time them from the engine's notice of
	// the stored final event, which the gateway waits for: the gateway's
	// own part (reading the event and the status, writing the event).
	GatewayP50ms float64 `json:"gateway_p50_ms"`
	GatewayP99ms float64 `json:"gateway_p99_ms"`
}

// JSON returns r as one line of JSON.
func (r PushResult) JSON() string {
	b, _ := json.Marshal(r) // plain fields: cannot fail
	return string(b)
}

func (r PushResult) String() string {
	s := fmt.Sprintf("%s on %s, %d event streams, answered at %.0f/s, %.1fs (setup %.1fs)\n",
		r.Workload, r.Engine, r.Streams, r.Rate, r.Seconds, r.SetupSeconds)
	s += fmt.Sprintf("  %d final events; reply stored -> client read: p50 %.3fms p90 %.3fms p99 %.3fms p99.9 %.3fms max %.3fms\n",
		r.Ops, r.P50ms, r.P90ms, r.P99ms, r.P999ms, r.MaxMs)
	s += fmt.Sprintf("  handler return -> client read: p50 %.3fms p99 %.3fms; engine notice -> client read (the gateway's part): p50 %.3fms p99 %.3fms\n",
		r.HandlerP50ms, r.HandlerP99ms, r.GatewayP50ms, r.GatewayP99ms)
	s += fmt.Sprintf("  CPU %.3fs per 1000 answers; errors %d, lost %d, duplicates %d", r.CPUPer1000, r.Errors, r.Lost, r.Duplicates)
	if r.FirstError != "" {
		s += "\n  first error: " + r.FirstError
	}
	if r.OK() {
		s += "\n  every stream got exactly one final event, its own"
	}
	return s
}

// sseStream is one client's event stream in HTTPPush.
type sseStream struct {
	id      string
	opened  bool
	final   string    // the final event's type
	finalID string    // the request id it carried
	finalAt time.Time // when the client had read it
	madeAt  time.Time // its "at": when the reply had been stored
	finals  int       // final events read
	err     error
}

// sseEvent is the part of a stream event HTTPPush reads.
type sseEvent struct {
	Type string    `json:"type"`
	ID   string    `json:"id"`
	At   time.Time `json:"at"`
}

// HTTPPush measures push latency: it submits cfg.Streams requests to
// o.Queue, opens an event stream (GET /v1/requests/{id}/events) on each and
// waits for its first event, then starts a responder that answers them at
// cfg.Rate per second, and times each request's final event from its reply
// stored to the client's read. Every stream stays open until its own final
// event, so the last answers go out with fewer streams open.
func HTTPPush(ctx context.Context, cfg PushConfig, c *rsvp.Client, o HTTPOptions) (res PushResult, err error) {
	cfg, o = cfg.withDefaults(), o.withDefaults()
	if err := cfg.validate(); err != nil {
		return PushResult{}, fmt.Errorf("bench: %w", err)
	}
	o.Gateway.MaxStreams = max(o.Gateway.MaxStreams, cfg.Streams+httpSetupConcurrency)
	s, err := startGateway(ctx, c, o.Gateway)
	if err != nil {
		return PushResult{}, err
	}
	defer func() { err = errors.Join(err, s.close()) }()
	tr := httpTransport(cfg.Streams + httpSetupConcurrency)
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	say := func(format string, args ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, "%s: "+format+"\n", append([]any{cfg.Workload}, args...)...)
		}
	}

	setup := time.Now()
	ids, err := newSubmitter(hc, s.base, o).submitMany(ctx, cfg.Streams)
	if err != nil {
		return PushResult{}, err
	}
	say("%d requests submitted in %.1fs", len(ids), time.Since(setup).Seconds())

	// Open the streams, httpSetupConcurrency at a time, each until its
	// first event.
	sctx, stopStreams := context.WithCancel(ctx)
	defer stopStreams()
	streams := make([]*sseStream, len(ids))
	opening := make(chan struct{}, httpSetupConcurrency)
	var opened, done sync.WaitGroup
	for i, id := range ids {
		st := &sseStream{id: id}
		streams[i] = st
		opening <- struct{}{}
		opened.Add(1)
		done.Go(func() { st.follow(sctx, hc, s.base, cfg.Timeout, func() { <-opening; opened.Done() }) })
	}
	if !waitGroupWithin(&opened, cfg.Timeout) {
		stopStreams()
		done.Wait()
		return PushResult{}, fmt.Errorf("bench: %d event streams did not open within %s", cfg.Streams, cfg.Timeout)
	}
	res.Streams = 0
	for _, st := range streams {
		if st.opened {
			res.Streams++
		}
	}
	res.SetupSeconds = time.Since(setup).Seconds()
	say("%d event streams open after %.1fs; answering at %.0f/s", res.Streams, res.SetupSeconds, cfg.Rate)

	// Answer at cfg.Rate, noting when each handler returns, and when the
	// engine tells of each final event.
	var answered, noticed sync.Map // request id -> time.Time
	var nAnswered atomic.Int64
	notices, err := c.Backend().SubscribeEvents(ctx, func(ev *backend.Event) {
		if isFinal(ev.Type) {
			noticed.LoadOrStore(ev.CorrelationID, time.Now())
		}
	})
	if err != nil {
		stopStreams()
		done.Wait()
		return PushResult{}, fmt.Errorf("bench: subscribe to events: %w", err)
	}
	defer func() { _ = notices.Close() }()
	tokens := make(chan struct{})
	pctx, stopPacer := context.WithCancel(ctx)
	var pacer sync.WaitGroup
	pacer.Go(func() { pace(pctx, tokens, cfg.Rate, len(ids)) })
	handler := rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		select {
		case <-tokens:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		nAnswered.Add(1)
		answered.Store(m.ID, time.Now())
		return &rsvp.Reply{ContentType: "text/plain", Body: []byte("ok")}, nil
	})
	cpu0, start := cpuTime(), time.Now()
	responder, err := c.Handle(o.Queue, handler, rsvp.HandleOptions{Concurrency: cfg.Handlers})
	if err != nil {
		stopPacer()
		pacer.Wait()
		stopStreams()
		done.Wait()
		return PushResult{}, fmt.Errorf("bench: start responder: %w", err)
	}
	budget := time.Duration(float64(len(ids))/cfg.Rate*float64(time.Second)) + cfg.Timeout
	finished := waitGroupWithin(&done, budget)
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	stopPacer()
	pacer.Wait()
	stopStreams()
	done.Wait()
	sctx2, cancel := context.WithTimeout(context.WithoutCancel(ctx), rawTimeout)
	defer cancel()
	if err := responder.Stop(sctx2); err != nil {
		return PushResult{}, fmt.Errorf("bench: stop responder: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return PushResult{}, err
	}

	hist, handlers, gw := newHist(), newHist(), newHist()
	t := &tally{}
	for _, st := range streams {
		at, ok := answered.Load(st.id)
		seen, _ := noticed.Load(st.id)
		switch {
		case !st.opened:
			t.errs++
			t.noteErr(fmt.Errorf("stream of %s did not open: %v", st.id, st.err))
		case st.finals > 1 || st.finals == 1 && st.finalID != st.id:
			t.dups++
			t.noteErr(fmt.Errorf("stream of %s: %d final events, the last of %q", st.id, st.finals, st.finalID))
		case st.finals == 0 && st.err != nil && !errors.Is(st.err, context.Canceled):
			t.errs++
			t.noteErr(fmt.Errorf("stream of %s: %w", st.id, st.err))
		case st.finals == 0:
			t.lost++
			t.noteErr(fmt.Errorf("stream of %s: no final event within %s", st.id, budget))
		case st.final != gateway.StateSucceeded || !ok:
			t.errs++
			t.noteErr(fmt.Errorf("stream of %s: final event %q, answered %v", st.id, st.final, ok))
		default:
			t.ops++
			_ = hist.RecordValue(max(st.finalAt.Sub(st.madeAt).Microseconds(), 1))
			_ = handlers.RecordValue(max(st.finalAt.Sub(at.(time.Time)).Microseconds(), 1))
			if seen, ok := seen.(time.Time); ok {
				_ = gw.RecordValue(max(st.finalAt.Sub(seen).Microseconds(), 1))
			}
		}
	}
	if !finished && t.lost == 0 {
		t.noteErr(fmt.Errorf("the streams did not end within %s", budget))
	}
	res.Result = resultOf(hist, t, cfg.Workload, cfg.Engine, elapsed, cpu)
	res.Mode, res.Concurrency, res.Rate = "push", res.Streams, cfg.Rate
	res.Answered = nAnswered.Load()
	res.HandlerP50ms, res.HandlerP99ms = ms(handlers.ValueAtQuantile(50)), ms(handlers.ValueAtQuantile(99))
	res.GatewayP50ms, res.GatewayP99ms = ms(gw.ValueAtQuantile(50)), ms(gw.ValueAtQuantile(99))
	return res, nil
}

// follow opens st's event stream and reads it until its final event, the
// end of the stream, or ctx. It calls opened once, when the first event has
// arrived or the stream failed to open, within timeout.
func (st *sseStream) follow(ctx context.Context, hc *http.Client, base string, timeout time.Duration, opened func()) {
	once := sync.OnceFunc(opened)
	defer once()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	openTimer := time.AfterFunc(timeout, cancel)
	defer openTimer.Stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/requests/"+st.id+"/events", nil)
	if err != nil {
		st.err = err
		return
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := hc.Do(req)
	if err != nil {
		st.err = err
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		st.err = fmt.Errorf("status %s, want 200: %s", resp.Status, bytes.TrimSpace(body))
		return
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 4096), 4<<20)
	var typ string
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case len(line) == 0: // the end of an event
			if typ == "" && data == nil {
				continue
			}
			now := time.Now()
			if !st.opened && openTimer.Stop() {
				st.opened = true
				once()
			}
			if isFinal(typ) {
				var ev sseEvent
				if err := json.Unmarshal(data, &ev); err != nil {
					st.err = fmt.Errorf("final event data: %w", err)
					return
				}
				st.finals++
				st.final, st.finalID, st.finalAt, st.madeAt = typ, ev.ID, now, ev.At
			}
			typ, data = "", nil
		case line[0] == ':': // a comment: heartbeat
		default:
			field, value, _ := bytes.Cut(line, []byte(":"))
			value = bytes.TrimPrefix(value, []byte(" "))
			switch string(field) {
			case "event":
				typ = string(value)
			case "data":
				data = append(data, value...)
			}
		}
	}
	if err := sc.Err(); err != nil && st.finals == 0 {
		st.err = err
	}
}

func isFinal(typ string) bool {
	switch typ {
	case gateway.StateSucceeded, gateway.StateFailed, gateway.StateExpired, gateway.StateCancelled:
		return true
	}
	return false
}

// pace sends n tokens at rate per second, until ctx ends.
func pace(ctx context.Context, tokens chan<- struct{}, rate float64, n int) {
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for i := range n {
		timer.Reset(time.Until(start.Add(time.Duration(i) * interval)))
		select {
		case <-timer.C:
		case <-ctx.Done():
			return
		}
		select {
		case tokens <- struct{}{}:
		case <-ctx.Done():
			return
		}
	}
}

// waitGroupWithin waits for wg up to d, and reports whether it ended.
func waitGroupWithin(wg *sync.WaitGroup, d time.Duration) bool {
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(10*time.Minute/time.Microsecond), 3)
}

// resultOf fills a Result from a histogram of microseconds and the counts
// of t.
func resultOf(h *hdrhistogram.Histogram, t *tally, workload, engine string, elapsed, cpu time.Duration) Result {
	r := Result{Workload: workload, Engine: engine, Ops: t.ops, Errors: t.errs, Lost: t.lost, Duplicates: t.dups,
		Seconds: elapsed.Seconds(), FirstError: t.firstErr,
		P50ms: ms(h.ValueAtQuantile(50)), P90ms: ms(h.ValueAtQuantile(90)), P99ms: ms(h.ValueAtQuantile(99)),
		P999ms: ms(h.ValueAtQuantile(99.9)), MaxMs: ms(h.Max())}
	if elapsed > 0 {
		r.ThroughputPerS = float64(t.ops) / elapsed.Seconds()
	}
	if t.ops > 0 {
		r.CPUPer1000 = cpu.Seconds() / float64(t.ops) * 1000
	}
	return r
}

// IdleConfig describes a run of HTTPIdle.
type IdleConfig struct {
	Workload string        // label; default "http:idle"
	Engine   string        // label
	Conns    int           // connections held open, one per pending request; default 10,000
	SSE      bool          // event streams instead of long-polls
	Wait     time.Duration // the long-polls' wait; default 60s
	Window   time.Duration // how long CPU use is measured while they idle; default 10s
	// Timeout bounds opening one connection, and the wait for the process
	// to settle after opening them all. Default 30s.
	Timeout time.Duration
	// Clients, if not nil, makes the command of the process that holds the
	// clients' ends of the connections: one that runs ServeIdleClients on
	// its standard input and output (the rsvp command runs itself). Nil:
	// this process holds them, so it needs twice the open files, and its
	// RSS and CPU include the clients'.
	Clients  func(ctx context.Context) *exec.Cmd
	Progress io.Writer // a line per phase, and the client process's errors; nil: none
}

func (c IdleConfig) withDefaults() IdleConfig {
	c.Workload = cmp.Or(c.Workload, "http:idle")
	c.Conns = cmp.Or(c.Conns, 10_000)
	c.Wait = cmp.Or(c.Wait, 60*time.Second)
	c.Window = cmp.Or(c.Window, 10*time.Second)
	c.Timeout = cmp.Or(c.Timeout, 30*time.Second)
	return c
}

func (c IdleConfig) validate() error {
	if c.Conns < 1 || c.Wait < time.Second || c.Window < 0 || c.Timeout < 0 {
		return errors.New("conns must be at least 1, the wait at least 1s, durations not negative")
	}
	return nil
}

// kind names the connections.
func (c IdleConfig) kind() string {
	if c.SSE {
		return "sse"
	}
	return "longpoll"
}

// IdleResult is what HTTPIdle measured. Ops counts the connections still
// open and waiting at the end, Lost those that ended or were answered
// before, Errors those that failed to open; the latencies are of opening
// one (a long-poll: dial and request written; an event stream: until its
// first event is read), and ThroughputPerS is the connections opened per
// second. Seconds is the idle window.
//
// The clients are raw TCP connections that have written their request and
// do not read: no goroutine or buffer of their own. In a process of their
// own (IdleConfig.Clients), the server's figures are this process's alone.
type IdleResult struct {
	Result
	Kind            string  `json:"kind"`               // longpoll or sse
	Clients         string  `json:"clients"`            // "process" or "in-process"
	RSSBaselineMB   float64 `json:"rss_baseline_mb"`    // before opening: engine, gateway, rsvp client
	RSSMB           float64 `json:"rss_mb"`             // at the end of the idle window
	RSSPeakMB       float64 `json:"rss_peak_mb"`        // the high-water mark
	ServerMB        float64 `json:"server_mb"`          // RSSMB - RSSBaselineMB: what the connections cost the server
	ServerKBPerConn float64 `json:"server_kb_per_conn"` // ServerMB per connection
	// The client process's RSS at the end and its growth per connection;
	// 0 when the clients are in this process.
	ClientRSSMB     float64 `json:"client_rss_mb"`
	ClientKBPerConn float64 `json:"client_kb_per_conn"`
	TotalRSSMB      float64 `json:"total_rss_mb"` // server and client processes
	HeapMB          float64 `json:"heap_mb"`      // Go heap in use at the end (this process)
	// RSSAfterGCMB and HeapLiveMB are measured after the window, once a
	// garbage collection has run and returned what it freed to the system:
	// the floor under RSSMB.
	RSSAfterGCMB       float64 `json:"rss_after_gc_mb"`
	HeapLiveMB         float64 `json:"heap_live_mb"`
	StackMB            float64 `json:"stack_mb"`            // goroutine stacks at the end
	Goroutines         int     `json:"goroutines"`          // at the end
	GoroutinesBaseline int     `json:"goroutines_baseline"` // before opening
	IdleCPUSeconds     float64 `json:"idle_cpu_s"`          // this process's user+system CPU over the window
	IdleCPUPercent     float64 `json:"idle_cpu_percent"`    // of one core
	ClientCPUPercent   float64 `json:"client_cpu_percent"`  // the client process's, over the window
	OpenSeconds        float64 `json:"open_s"`              // opening them all
	SettleSeconds      float64 `json:"settle_s"`            // then until this process's CPU use fell quiet
}

// JSON returns r as one line of JSON.
func (r IdleResult) JSON() string {
	b, _ := json.Marshal(r) // plain fields: cannot fail
	return string(b)
}

func (r IdleResult) String() string {
	s := fmt.Sprintf("%s on %s, %d idle %s connections, clients %s, %.1fs window\n", r.Workload, r.Engine, r.Concurrency, r.Kind, r.Clients, r.Seconds)
	s += fmt.Sprintf("  opened in %.1fs (%.0f/s; p50 %.3fms p99 %.3fms), settled in %.1fs; %d still open at the end\n",
		r.OpenSeconds, r.ThroughputPerS, r.P50ms, r.P99ms, r.SettleSeconds, r.Ops)
	s += fmt.Sprintf("  server RSS %.0f MB (baseline %.0f MB, peak %.0f MB, %.0f MB after a GC): %.0f MB for the connections, %.1f KB each\n",
		r.RSSMB, r.RSSBaselineMB, r.RSSPeakMB, r.RSSAfterGCMB, r.ServerMB, r.ServerKBPerConn)
	if r.Clients == "process" {
		s += fmt.Sprintf("  client RSS %.0f MB (%.1f KB per connection); total %.0f MB\n", r.ClientRSSMB, r.ClientKBPerConn, r.TotalRSSMB)
	} else {
		s += "  the clients are in this process: its RSS includes theirs\n"
	}
	s += fmt.Sprintf("  Go heap %.0f MB in use (%.0f MB live after a GC), stacks %.0f MB, %d goroutines (%d before)\n",
		r.HeapMB, r.HeapLiveMB, r.StackMB, r.Goroutines, r.GoroutinesBaseline)
	s += fmt.Sprintf("  server CPU while idle: %.3fs in %.1fs, %.2f%% of a core", r.IdleCPUSeconds, r.Seconds, r.IdleCPUPercent)
	if r.Clients == "process" {
		s += fmt.Sprintf(" (clients %.2f%%)", r.ClientCPUPercent)
	}
	s += fmt.Sprintf("; errors %d, lost %d", r.Errors, r.Lost)
	if r.FirstError != "" {
		s += "\n  first error: " + r.FirstError
	}
	if r.OK() {
		s += "\n  every connection stayed open"
	}
	return s
}

// HTTPIdle measures what idle connections cost: it submits cfg.Conns
// requests to o.Queue (nobody answers them), has the clients open a
// long-poll (GET /v1/requests/{id}?wait=) or an event stream on each,
// waits until this process's CPU use falls quiet, and then measures its
// RSS and CPU use over cfg.Window. It raises the process's limit of open
// files to what the connections need, if it must (and can).
func HTTPIdle(ctx context.Context, cfg IdleConfig, c *rsvp.Client, o HTTPOptions) (res IdleResult, err error) {
	cfg, o = cfg.withDefaults(), o.withDefaults()
	if err := cfg.validate(); err != nil {
		return IdleResult{}, fmt.Errorf("bench: %w", err)
	}
	res.Kind, res.Concurrency, res.Mode, res.Clients = cfg.kind(), cfg.Conns, "idle", "process"
	files := cfg.Conns + 1024
	if cfg.Clients == nil {
		res.Clients, files = "in-process", 2*cfg.Conns+1024
	}
	if err := raiseFileLimit(uint64(files), cfg.Clients == nil); err != nil {
		return IdleResult{}, err
	}
	o.Gateway.MaxStreams = max(o.Gateway.MaxStreams, cfg.Conns+httpSetupConcurrency)
	o.Gateway.MaxWait = max(o.Gateway.MaxWait, cfg.Wait)
	s, err := startGateway(ctx, c, o.Gateway)
	if err != nil {
		return IdleResult{}, err
	}
	defer func() { err = errors.Join(err, s.close()) }()
	if cfg.Progress != nil {
		// The client process writes its errors there too.
		cfg.Progress = &lockedWriter{w: cfg.Progress}
	}
	say := func(format string, args ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, "%s: "+format+"\n", append([]any{cfg.Workload}, args...)...)
		}
	}

	tr := httpTransport(httpSetupConcurrency)
	t0 := time.Now()
	ids, err := newSubmitter(&http.Client{Transport: tr}, s.base, o).submitMany(ctx, cfg.Conns)
	tr.CloseIdleConnections()
	if err != nil {
		return IdleResult{}, err
	}
	say("%d requests submitted in %.1fs", len(ids), time.Since(t0).Seconds())

	cl, err := startIdleClients(ctx, cfg)
	if err != nil {
		return IdleResult{}, err
	}
	defer func() { err = errors.Join(err, cl.stop()) }()
	debug.FreeOSMemory()
	res.RSSBaselineMB = procStatusMB("VmRSS")
	res.GoroutinesBaseline = runtime.NumGoroutine()

	if err := cl.enc.Encode(idleOrder{Addr: s.addr, IDs: ids, SSE: cfg.SSE, Wait: cfg.Wait, Timeout: cfg.Timeout}); err != nil {
		return IdleResult{}, fmt.Errorf("bench: idle clients: %w", err)
	}
	var opened idleOpened
	if err := cl.dec.Decode(&opened); err != nil {
		return IdleResult{}, fmt.Errorf("bench: idle clients: %w", errors.Join(err, ctx.Err()))
	}
	openedAt := time.Now()
	res.OpenSeconds = opened.Seconds
	say("%d %s connections opened in %.1fs, %d failed", opened.Opened, res.Kind, opened.Seconds, opened.Errors)

	settled := time.Now()
	if !settle(ctx, cfg.Timeout) && ctx.Err() == nil {
		say("CPU use did not fall quiet within %s; measuring all the same", cfg.Timeout)
	}
	res.SettleSeconds = time.Since(settled).Seconds()
	say("settled in %.1fs; measuring %s of idling", res.SettleSeconds, cfg.Window)

	if err := cl.enc.Encode(idleCommand{Op: "window"}); err != nil {
		return IdleResult{}, fmt.Errorf("bench: idle clients: %w", err)
	}
	cpu0, w0 := cpuTime(), time.Now()
	select {
	case <-time.After(cfg.Window):
	case <-ctx.Done():
		return IdleResult{}, ctx.Err()
	}
	cpu, window := cpuTime()-cpu0, time.Since(w0)
	res.RSSMB, res.RSSPeakMB = procStatusMB("VmRSS"), procStatusMB("VmHWM")
	res.Goroutines = runtime.NumGoroutine()
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	res.HeapMB, res.StackMB = float64(mem.HeapInuse)/(1<<20), float64(mem.StackInuse)/(1<<20)
	res.IdleCPUSeconds = cpu.Seconds()
	res.IdleCPUPercent = 100 * cpu.Seconds() / window.Seconds()

	debug.FreeOSMemory()
	res.RSSAfterGCMB = procStatusMB("VmRSS")
	runtime.ReadMemStats(&mem)
	res.HeapLiveMB = float64(mem.HeapAlloc) / (1 << 20)

	if err := cl.enc.Encode(idleCommand{Op: "check"}); err != nil {
		return IdleResult{}, fmt.Errorf("bench: idle clients: %w", err)
	}
	var checked idleChecked
	if err := cl.dec.Decode(&checked); err != nil {
		return IdleResult{}, fmt.Errorf("bench: idle clients: %w", errors.Join(err, ctx.Err()))
	}
	if !cfg.SSE && time.Since(openedAt) > cfg.Wait {
		say("warning: the long-polls' wait of %s ran out before the end of the window", cfg.Wait)
	}

	hist := newHist()
	for _, us := range opened.LatenciesUS {
		_ = hist.RecordValue(max(us, 1))
	}
	t := &tally{ops: int64(checked.Open), lost: int64(checked.Lost), errs: int64(opened.Errors), firstErr: cmp.Or(opened.FirstError, checked.FirstError)}
	m := resultOf(hist, t, cfg.Workload, cfg.Engine, window, 0)
	m.Mode, m.Concurrency = res.Mode, res.Concurrency
	if opened.Seconds > 0 {
		m.ThroughputPerS = float64(opened.Opened) / opened.Seconds
	}
	res.Result = m
	res.ServerMB = max(res.RSSMB-res.RSSBaselineMB, 0)
	res.ServerKBPerConn = res.ServerMB * 1024 / float64(cfg.Conns)
	res.TotalRSSMB = res.RSSMB
	if cfg.Clients != nil {
		res.ClientRSSMB = checked.RSSMB
		res.ClientKBPerConn = max(checked.RSSMB-opened.RSSBaselineMB, 0) * 1024 / float64(cfg.Conns)
		res.TotalRSSMB += checked.RSSMB
		if checked.Seconds > 0 {
			res.ClientCPUPercent = 100 * checked.CPUSeconds / checked.Seconds
		}
	}
	return res, nil
}

// The protocol between HTTPIdle and ServeIdleClients: JSON values, one a
// line. HTTPIdle sends an idleOrder; the clients open the connections and
// answer idleOpened. HTTPIdle sends idleCommand "window" when the idle
// window starts and "check" when it ends; the clients answer "check" with
// idleChecked. Then HTTPIdle closes their input, and they close the
// connections and end.
type idleOrder struct {
	Addr    string        `json:"addr"`
	IDs     []string      `json:"ids"`
	SSE     bool          `json:"sse"`
	Wait    time.Duration `json:"wait"`
	Timeout time.Duration `json:"timeout"`
}

type idleOpened struct {
	Opened        int     `json:"opened"`
	Errors        int     `json:"errors"`
	FirstError    string  `json:"first_error,omitempty"`
	Seconds       float64 `json:"seconds"`
	LatenciesUS   []int64 `json:"latencies_us"`
	RSSBaselineMB float64 `json:"rss_baseline_mb"` // the clients' process before opening
}

type idleCommand struct {
	Op string `json:"op"` // window, check
}

type idleChecked struct {
	Open       int     `json:"open"`
	Lost       int     `json:"lost"`
	FirstError string  `json:"first_error,omitempty"`
	RSSMB      float64 `json:"rss_mb"`
	CPUSeconds float64 `json:"cpu_s"`   // over the window
	Seconds    float64 `json:"seconds"` // the window
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// idleClients is the other end of the protocol.
type idleClients struct {
	enc  *json.Encoder
	dec  *json.Decoder
	stop func() error // closes their input and waits for them to end
}

// startIdleClients starts the clients' process, or runs ServeIdleClients
// in this one.
func startIdleClients(ctx context.Context, cfg IdleConfig) (*idleClients, error) {
	if cfg.Clients == nil {
		inR, inW := io.Pipe()
		outR, outW := io.Pipe()
		var wg sync.WaitGroup
		var serveErr error
		wg.Go(func() {
			serveErr = ServeIdleClients(ctx, inR, outW)
			_ = outW.CloseWithError(cmp.Or(serveErr, io.EOF))
		})
		return &idleClients{enc: json.NewEncoder(inW), dec: json.NewDecoder(outR), stop: func() error {
			_ = inW.Close()
			_ = outR.Close()
			wg.Wait()
			return serveErr
		}}, nil
	}
	cmd := cfg.Clients(ctx)
	if cfg.Progress != nil {
		cmd.Stderr = cfg.Progress
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("bench: idle clients: %w", err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("bench: idle clients: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start idle clients %s: %w", cmd.Path, err)
	}
	return &idleClients{enc: json.NewEncoder(in), dec: json.NewDecoder(out), stop: func() error {
		_ = in.Close()
		if err := cmd.Wait(); err != nil && ctx.Err() == nil {
			return fmt.Errorf("bench: idle clients: %w", err)
		}
		return nil
	}}, nil
}

// ServeIdleClients is the client side of HTTPIdle, run in a process of its
// own (IdleConfig.Clients) or in HTTPIdle's: it reads HTTPIdle's orders
// from in and answers on out, opening the connections it is told to and
// holding them, without reading, until in ends.
func ServeIdleClients(ctx context.Context, in io.Reader, out io.Writer) error {
	dec, enc := json.NewDecoder(in), json.NewEncoder(out)
	var o idleOrder
	if err := dec.Decode(&o); err != nil {
		return fmt.Errorf("bench: idle clients: read order: %w", err)
	}
	if err := raiseFileLimit(uint64(len(o.IDs)+256), false); err != nil {
		return err
	}
	conns := make([]net.Conn, len(o.IDs))
	defer func() {
		for _, c := range conns {
			closeNow(c)
		}
	}()
	debug.FreeOSMemory()
	opened := idleOpened{RSSBaselineMB: procStatusMB("VmRSS"), LatenciesUS: make([]int64, 0, len(o.IDs))}
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range httpSetupConcurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(o.IDs) || ctx.Err() != nil {
					return
				}
				began := time.Now()
				c, err := openIdle(ctx, o, o.IDs[i])
				lat := time.Since(began)
				mu.Lock()
				conns[i] = c
				if err != nil {
					opened.Errors++
					opened.FirstError = cmp.Or(opened.FirstError, err.Error())
				} else {
					opened.Opened++
					opened.LatenciesUS = append(opened.LatenciesUS, lat.Microseconds())
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	opened.Seconds = time.Since(start).Seconds()
	if err := enc.Encode(opened); err != nil {
		return fmt.Errorf("bench: idle clients: %w", err)
	}
	var cpu0 time.Duration
	var w0 time.Time
	for {
		var cmd idleCommand
		if err := dec.Decode(&cmd); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) {
				return nil // done: close the connections
			}
			return fmt.Errorf("bench: idle clients: %w", err)
		}
		switch cmd.Op {
		case "window":
			cpu0, w0 = cpuTime(), time.Now()
		case "check":
			ch := idleChecked{RSSMB: procStatusMB("VmRSS")}
			if !w0.IsZero() {
				ch.CPUSeconds, ch.Seconds = (cpuTime() - cpu0).Seconds(), time.Since(w0).Seconds()
			}
			ch.Open, ch.Lost, ch.FirstError = checkIdle(conns, o.SSE)
			if err := enc.Encode(ch); err != nil {
				return fmt.Errorf("bench: idle clients: %w", err)
			}
		default:
			return fmt.Errorf("bench: idle clients: unknown command %q", cmd.Op)
		}
	}
}

// openIdle dials o.Addr and sends the request of an idle connection on
// request id: a long-poll, or an event stream whose first event it reads.
// It returns the connection, which nobody reads after that.
func openIdle(ctx context.Context, o idleOrder, id string) (net.Conn, error) {
	d := net.Dialer{Timeout: o.Timeout}
	conn, err := d.DialContext(ctx, "tcp", o.Addr)
	if err != nil {
		return nil, err
	}
	path := "/v1/requests/" + id + "?wait=" + strconv.Itoa(int(o.Wait.Seconds())) + "s"
	accept := "application/json"
	if o.SSE {
		path, accept = "/v1/requests/"+id+"/events", "text/event-stream"
	}
	_ = conn.SetDeadline(time.Now().Add(o.Timeout))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: %s\r\nUser-Agent: rsvp-bench\r\n\r\n", path, o.Addr, accept); err != nil {
		closeNow(conn)
		return nil, err
	}
	if o.SSE {
		// The status line, the headers, and the first event (queued).
		var got []byte
		buf := make([]byte, 4096)
		for !firstEventIn(got) {
			n, err := conn.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				closeNow(conn)
				return nil, fmt.Errorf("event stream of %s: %w after %q", id, err, firstLine(got))
			}
			if bytes.Contains(got, []byte("\r\n\r\n")) && !bytes.HasPrefix(got, []byte("HTTP/1.1 200 ")) {
				closeNow(conn)
				return nil, fmt.Errorf("event stream of %s: %q", id, firstLine(got))
			}
		}
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// firstEventIn reports whether p, the start of an event stream's
// response, holds a whole event.
func firstEventIn(p []byte) bool {
	i := bytes.Index(p, []byte("\nevent: "))
	return i >= 0 && bytes.Contains(p[i:], []byte("\n\n"))
}

// checkIdle counts the connections still open and waiting, and those the
// server ended or answered (lost); nil ones failed to open. An event
// stream may have sent heartbeats, nothing else.
func checkIdle(conns []net.Conn, sse bool) (open, lost int, firstErr string) {
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(len(conns), 1000) {
		wg.Go(func() {
			buf := make([]byte, 4096)
			for {
				i := int(next.Add(1) - 1)
				if i >= len(conns) {
					return
				}
				if conns[i] == nil {
					continue
				}
				err := idleVerdict(conns[i], sse, buf)
				mu.Lock()
				if err != nil {
					lost++
					if firstErr == "" {
						firstErr = err.Error()
					}
				} else {
					open++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return open, lost, firstErr
}

// idleVerdict reads what the server sent on conn while it idled: nil if
// the connection is still open and waiting.
func idleVerdict(conn net.Conn, sse bool, buf []byte) error {
	var got []byte
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	for {
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		var ne net.Error
		switch {
		case err == nil:
			continue
		case errors.As(err, &ne) && ne.Timeout():
			if len(got) == 0 || sse && onlyHeartbeats(got) {
				return nil
			}
			return fmt.Errorf("the server sent %q while it should wait", brief(got))
		default:
			return fmt.Errorf("connection ended (%v) after %q", err, firstLine(got))
		}
	}
}

// onlyHeartbeats reports whether an event stream's chunked bytes hold
// nothing but SSE comments.
func onlyHeartbeats(p []byte) bool {
	return !bytes.Contains(p, []byte("event:")) && !bytes.Contains(p, []byte("HTTP/1.1"))
}

// brief returns a response's status line and, for a problem, its detail.
func brief(p []byte) string {
	s := firstLine(p)
	if i := bytes.Index(p, []byte(`"detail":"`)); i >= 0 {
		d, _, _ := bytes.Cut(p[i+len(`"detail":"`):], []byte(`"`))
		s += ": " + string(d)
	}
	return s
}

func firstLine(p []byte) string {
	line, _, _ := bytes.Cut(p, []byte("\n"))
	return string(bytes.TrimSpace(line))
}

// closeNow closes conn without lingering in TIME_WAIT, so that tens of
// thousands of loopback connections do not use up the ephemeral ports.
func closeNow(conn net.Conn) {
	if conn == nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// settle waits until this process's CPU use over 500ms falls under 5% of
// a core, or d passes, and reports whether it did.
func settle(ctx context.Context, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		c0, t0 := cpuTime(), time.Now()
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			return false
		}
		if float64(cpuTime()-c0) < 0.05*float64(time.Since(t0)) {
			return true
		}
	}
	return false
}

// procStatusMB reads a field of /proc/self/status given in kB (VmRSS,
// VmHWM), in MB; 0 where there is no such file.
func procStatusMB(field string) float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// raiseFileLimit makes the process's soft limit of open files at least
// need, raising the hard limit too if it must (which needs privilege).
// bothEnds says that both ends of every connection are in this process.
func raiseFileLimit(need uint64, bothEnds bool) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("bench: open file limit: %w", err)
	}
	if lim.Cur >= need {
		return nil
	}
	want := syscall.Rlimit{Cur: need, Max: max(lim.Max, need)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		why := ""
		if bothEnds {
			why = " (both ends of every connection are in this process)"
		}
		return fmt.Errorf("bench: %d open files needed%s, the limit is %d (hard %d) and cannot be raised: %w; raise ulimit -n or open fewer connections",
			need, why, lim.Cur, lim.Max, err)
	}
	return nil
}
