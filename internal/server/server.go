// Package server is the composition root of `rsvp serve`: it puts a client,
// a workflow engine, the HTTP gateway and, with Config.Demo, the demo
// responders and workflows on an engine and serves the gateway over HTTP
// until its context ends.
package server

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/gateway"
	"github.com/rsvp-go/rsvp/workflow"
)

// DefaultAddr is the address served when Config.Addr is empty.
const DefaultAddr = "127.0.0.1:8080"

// ErrUnprotected is returned by Run, before it listens, when it is asked to
// serve a non-loopback address without API keys.
var ErrUnprotected = errors.New("server: refusing to serve without API keys")

// ErrInvalid is wrapped by Run's errors about Config itself.
var ErrInvalid = errors.New("server: invalid config")

// Config configures Run. Only Backend is required.
type Config struct {
	// Backend is the engine. Required. Run does not close it.
	Backend backend.Backend
	// EngineLost, if not nil, is closed when the engine is gone for good
	// (rsvpnats.Backend.Done); Run then shuts down and returns an error.
	EngineLost <-chan struct{}
	// Addr is the TCP address to listen on; port 0 picks a free port (see
	// Ready). Without API keys (Gateway.Keys) it must be a loopback
	// address, else Run returns ErrUnprotected. Default DefaultAddr.
	Addr string
	// Gateway configures the gateway. Its MaxBodySize is also the client's
	// (default 1 MiB); its Logger defaults to Logger.
	Gateway gateway.Config
	// Demo runs the demo responders (queues "thumbnail" and "flaky", see
	// DemoHelp) on the gateway's client, and the demo workflows
	// (DemoApprovalWorkflow, DemoThumbnailsWorkflow) with the responders of
	// their activities.
	//
	// The server always serves the workflow API with a workflow engine on
	// the client. With Demo the engine runs the demo workflows, and only
	// they can be started over HTTP. Without Demo it runs none: it starts
	// instances of any workflow name (workflow.Config.StartUnregistered)
	// for the worker processes that register and run them, and steers
	// them (status, events, terminate, purge); it consumes no workflow
	// tasks, so it never takes an instance it cannot run.
	Demo bool
	// ShutdownTimeout bounds the graceful shutdown once ctx ends: open
	// requests may finish, responders drain. Then connections are closed
	// and running handlers cancelled (their requests are delivered again).
	// Default (0) 30s; negative: no wait. Telemetry is flushed afterwards,
	// within flushTimeout of its own.
	ShutdownTimeout time.Duration
	// ReadHeaderTimeout and IdleTimeout are those of the http.Server.
	// Defaults 10s and 2m. There is no write timeout: event streams and
	// long-polls stay open as long as their clients want.
	ReadHeaderTimeout, IdleTimeout time.Duration
	// TLS, if not nil, makes the server speak HTTPS only, with this
	// configuration (certificates, client certificates). Without it API
	// keys travel in clear text: terminate TLS in front of a server that
	// other machines reach.
	TLS *tls.Config
	// Ready, if not nil, is called once the server listens, with its base
	// URL ("http://127.0.0.1:8080", the real port when Addr's is 0;
	// "https://..." with TLS).
	Ready func(baseURL string)
	// Logger receives the server's, client's and gateway's log lines.
	// Default: discard.
	Logger *slog.Logger

	streamStarted func() // test hook: a long-lived request reached the handler
}

// flushTimeout bounds the export of the telemetry still buffered at exit.
const flushTimeout = 5 * time.Second

func (c Config) withDefaults() Config {
	c.Addr = cmp.Or(c.Addr, DefaultAddr)
	c.Gateway.MaxBodySize = cmp.Or(c.Gateway.MaxBodySize, 1<<20)
	c.ShutdownTimeout = max(cmp.Or(c.ShutdownTimeout, 30*time.Second), 0)
	c.ReadHeaderTimeout = cmp.Or(c.ReadHeaderTimeout, 10*time.Second)
	c.IdleTimeout = cmp.Or(c.IdleTimeout, 2*time.Minute)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Gateway.Logger == nil {
		c.Gateway.Logger = c.Logger
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.Backend == nil {
		errs = append(errs, errors.New("Backend is nil"))
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("Addr %q is not HOST:PORT: %w", c.Addr, err))
	}
	if c.Gateway.MaxBodySize < 1 {
		errs = append(errs, fmt.Errorf("Gateway.MaxBodySize %d is below 1", c.Gateway.MaxBodySize))
	}
	if c.ReadHeaderTimeout < 0 || c.IdleTimeout < 0 {
		errs = append(errs, errors.New("ReadHeaderTimeout and IdleTimeout must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// Run serves the gateway on cfg.Backend until ctx ends, then shuts down
// gracefully (see Config.ShutdownTimeout) and returns nil. It returns an
// error, without serving, for a bad Config (ErrInvalid), for a non-loopback
// Addr without keys (ErrUnprotected) or when it cannot listen; and, after
// shutting down, when the engine is lost or the server fails.
func Run(ctx context.Context, cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	log := cfg.Logger
	protected := len(cfg.Gateway.Keys) > 0
	if err := CheckExposure(ctx, cfg.Addr, protected); err != nil {
		return err
	}

	tel, err := newTelemetry(ctx)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	// One deadline for the whole shutdown, from its start (or from a
	// failed start).
	closeCtx := sync.OnceValues(func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	})
	defer func() { _, cancel := closeCtx(); cancel() }()
	defer func() {
		// Last, with time of its own: the drain may have used up closeCtx.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flushTimeout)
		defer cancel()
		if err := tel.shutdown(ctx); err != nil {
			log.Warn("server: flushing telemetry", "err", err)
		}
	}()
	if qs, ok := cfg.Backend.(backend.Inspector); ok {
		if err := observeQueues(tel.meter, qs); err != nil {
			return fmt.Errorf("server: queue metrics: %w", err)
		}
	}
	client, err := rsvp.New(ctx, cfg.Backend, rsvp.Config{MaxBodySize: cfg.Gateway.MaxBodySize, Logger: log,
		TracerProvider: tel.tracer, MeterProvider: tel.meter})
	if err != nil {
		return fmt.Errorf("server: start client: %w", err)
	}
	defer func() {
		ctx, _ := closeCtx()
		if err := client.Close(ctx); err != nil {
			log.Warn("server: closing the client", "err", err)
		}
	}()
	wf, err := workflow.New(client, workflow.Config{Logger: log, StartUnregistered: !cfg.Demo})
	if err != nil {
		return fmt.Errorf("server: workflow engine: %w", err)
	}
	if cfg.Demo {
		if err := registerDemoWorkflows(wf); err != nil {
			return fmt.Errorf("server: demo workflows: %w", err)
		}
		// An engine runs any instance whose task it takes, and fails those
		// of workflows it lacks: so only an engine with workflows runs.
		if err := wf.Start(ctx); err != nil {
			return fmt.Errorf("server: start the workflow engine: %w", err)
		}
	}
	defer func() { // after the gateway (its streams use the engine), before the client
		ctx, _ := closeCtx()
		if err := wf.Stop(ctx); err != nil {
			log.Warn("server: stopping the workflow engine; its instances go on when an engine runs again", "err", err)
		}
	}()
	cfg.Gateway.Workflows = wf
	cfg.Gateway.TracerProvider, cfg.Gateway.MeterProvider = tel.tracer, tel.meter
	gw, err := gateway.New(ctx, client, cfg.Gateway)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	defer func() {
		ctx, _ := closeCtx()
		if err := gw.Close(ctx); err != nil {
			log.Warn("server: closing the gateway", "err", err)
		}
	}()
	if cfg.Demo {
		stop, err := startDemo(client)
		if err != nil {
			return fmt.Errorf("server: start demo responders: %w", err)
		}
		defer func() {
			ctx, _ := closeCtx()
			if err := stop(ctx); err != nil {
				log.Warn("server: demo responders did not stop in time; their requests will be delivered again", "err", err)
			}
		}()
		stopActivities, err := startDemoActivities(client)
		if err != nil {
			return fmt.Errorf("server: start demo activities: %w", err)
		}
		defer func() {
			ctx, _ := closeCtx()
			if err := stopActivities(ctx); err != nil {
				log.Warn("server: demo activities did not stop in time; their requests will be delivered again", "err", err)
			}
		}()
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	if !protected && !addr.IP.IsLoopback() { // cannot happen after CheckExposure; belt and braces
		ln.Close()
		return fmt.Errorf("%w: %s", ErrUnprotected, addr)
	}
	streams := newStreamCanceller(cfg.streamStarted)
	handler := withMetrics(gw, gw.Admin(tel.metrics))
	if !protected {
		host, _, _ := net.SplitHostPort(cfg.Addr) // validated
		handler = localOnly(handler, host)
	}
	srv := &http.Server{
		Handler:           streams.wrap(handler),
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	baseURL := "http://" + addr.String()
	if cfg.TLS != nil {
		ln, baseURL = tls.NewListener(ln, cfg.TLS), "https://"+addr.String()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	log.Info("listening on "+baseURL, "addr", addr.String(), "api_keys", len(cfg.Gateway.Keys),
		"webhooks", cfg.Gateway.Webhooks.Enabled(), "demo", cfg.Demo)
	if w := exposureWarning(addr, protected, cfg.TLS != nil); w != "" {
		log.Warn(w)
	}
	if cfg.Demo {
		log.Info("demo responders on queues " + DemoThumbnailQueue + " and " + DemoFlakyQueue +
			"; demo workflows " + DemoApprovalWorkflow + " and " + DemoThumbnailsWorkflow)
	}
	if cfg.Ready != nil {
		cfg.Ready(baseURL)
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	case <-cfg.EngineLost:
		runErr = errors.New("server: lost the engine (the process that ran it exited?)")
		log.Error("lost the engine; shutting down")
	case err := <-served:
		return fmt.Errorf("server: %w", err) // never http.ErrServerClosed: nobody shut it down
	}

	// Stop accepting, end the long-lived streams (long-polls answer with the
	// current status, event streams close: clients resume elsewhere), and
	// give the other requests until the timeout.
	shutCtx, _ := closeCtx()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(shutCtx) }()
	streams.cancelAll()
	if err := <-shut; err != nil {
		log.Warn("server: requests still open after the shutdown timeout; closing their connections", "err", err)
		_ = srv.Close()
	}
	<-served
	return runErr
}

// withMetrics serves GET /metrics (Prometheus text format) beside h.
// With API keys, metrics needs a key with the admin right on "*"
// (Gateway.Admin): it names every queue.
func withMetrics(h, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.Handle("/", h)
	return mux
}

// localOnly guards a server without API keys, which only its loopback
// address protects, from the web pages of the user's browser: a request
// naming another host than the server's (a DNS name of the page's site,
// rebound to 127.0.0.1) or sent by a page of another site (its Origin)
// could otherwise use every queue. Such requests get 403. The server's
// hosts are loopback addresses, localhost, and the host of its Addr.
func localOnly(h http.Handler, addrHost string) http.Handler {
	local := func(host string) bool {
		if ip, err := netip.ParseAddr(host); err == nil {
			return ip.Unmap().IsLoopback()
		}
		return host != "" && (strings.EqualFold(host, "localhost") || strings.EqualFold(host, addrHost))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.Host)
		if err != nil {
			host = r.Host // no port
		}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		origin, hasOrigin := "", false
		if o := r.Header.Values("Origin"); len(o) > 0 {
			hasOrigin = true
			if u, err := url.Parse(o[0]); err == nil {
				origin = u.Hostname()
			}
		}
		if !local(host) || hasOrigin && !local(origin) {
			w.Header().Set("Content-Type", "application/problem+json")
			w.Header().Set("Cache-Control", "no-store")
			w.Header().Set("X-Content-Type-Options", "nosniff") // as the gateway's answers
			w.WriteHeader(http.StatusForbidden)
			_, _ = io.WriteString(w, `{"type":"https://rsvp.dev/problems/forbidden","title":"Not allowed","status":403,`+
				`"detail":"this server has no API keys: it serves only requests to its loopback address, not from web pages of other sites"}`+"\n")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// exposureWarning says what is exposed on addr, if anything: everything
// without keys (on loopback only), or keys in clear text without TLS on
// an address other machines reach.
func exposureWarning(addr *net.TCPAddr, protected, tls bool) string {
	switch {
	case !protected:
		return fmt.Sprintf("no API keys: anyone who can reach %s can use every queue", addr)
	case !tls && !addr.IP.IsLoopback():
		return "no TLS: API keys and payloads travel in clear text; serve with a certificate, or terminate TLS in front of " + addr.String()
	}
	return ""
}

// CheckExposure returns an error wrapping ErrUnprotected when a server
// without API keys (haveKeys false) would listen on addr and addr's host is
// not a loopback address or a name that resolves to loopback addresses
// only. Run checks this itself; callers may check earlier, before opening
// the engine.
func CheckExposure(ctx context.Context, addr string, haveKeys bool) error {
	if haveKeys {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: address %q is not HOST:PORT: %w", ErrInvalid, addr, err)
	}
	refuse := func() error {
		where := addr
		if host == "" {
			where += " (every interface)"
		}
		return fmt.Errorf("%w on %s, which other machines can reach: anyone who reaches it could use every queue; "+
			"configure API keys, or listen on a loopback address such as %s", ErrUnprotected, where, DefaultAddr)
	}
	if host == "" {
		return refuse()
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if !ip.Unmap().IsLoopback() {
			return refuse()
		}
		return nil
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return fmt.Errorf("server: resolve %s: %w", host, err)
	}
	for _, ip := range ips {
		if !ip.Unmap().IsLoopback() {
			return refuse()
		}
	}
	return nil
}

// streamCanceller cancels the contexts of the long-lived requests (long
// polls, event streams, WebSockets, lease polls) when the server shuts
// down: http.Server.Shutdown waits for active requests, which these would
// hold open for as long as their clients like. Other requests keep their
// context, so that a submission in flight is stored or refused cleanly.
type streamCanceller struct {
	ctx     context.Context
	cancel  context.CancelFunc
	started func() // test hook: a long-lived request reached the handler
}

func newStreamCanceller(started func()) *streamCanceller {
	ctx, cancel := context.WithCancel(context.Background())
	return &streamCanceller{ctx: ctx, cancel: cancel, started: started}
}

func (s *streamCanceller) cancelAll() { s.cancel() }

func (s *streamCanceller) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !longLived(r) {
			h.ServeHTTP(w, r)
			return
		}
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		stop := context.AfterFunc(s.ctx, cancel)
		defer stop()
		if s.started != nil {
			s.started()
		}
		tw := &trackWriter{ResponseWriter: w}
		h.ServeHTTP(tw, r.WithContext(ctx))
		if !tw.wrote && s.ctx.Err() != nil && r.Context().Err() == nil {
			// Cut by the shutdown before it could answer (the gateway
			// writes nothing for a request whose context ended).
			w.Header().Set("Content-Type", "application/problem+json")
			w.Header().Set("Retry-After", "1")
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"type":"https://rsvp.dev/problems/shutting-down","title":"The server is shutting down","status":503,"detail":"retry, on this or another server"}`+"\n")
		}
	})
}

// trackWriter records whether a handler answered (or took the connection
// over). It unwraps for http.ResponseController (flushes, deadlines).
type trackWriter struct {
	http.ResponseWriter
	wrote bool
}

func (w *trackWriter) WriteHeader(code int) {
	w.wrote = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *trackWriter) Write(p []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(p)
}

// Hijack serves WebSockets; found by type assertion, before Unwrap.
func (w *trackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.wrote = true
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (w *trackWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// longLived reports whether r may stay open for long: a status long-poll
// (?wait=), an event stream, a WebSocket or a worker's lease poll.
func longLived(r *http.Request) bool {
	p := r.URL.Path
	switch {
	case r.Method == http.MethodGet && r.URL.Query().Has("wait"),
		r.Method == http.MethodGet && strings.HasSuffix(p, "/events"),
		p == "/v1/ws",
		r.Method == http.MethodPost && strings.HasPrefix(p, "/v1/queues/") && strings.HasSuffix(p, "/leases"):
		return true
	}
	return false
}

// stopAll stops the responders rs, each until ctx ends.
func stopAll(ctx context.Context, rs ...*rsvp.Responder) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, r := range rs {
		wg.Go(func() {
			if err := r.Stop(ctx); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
