package gateway

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/workflow"
)

// Config configures a Gateway. The zero value works: no API keys (every
// caller is the anonymous tenant with every right), no webhooks.
type Config struct {
	// Keys are the API keys callers present as "Authorization: Bearer KEY".
	// None: authentication is off.
	Keys []APIKey
	// Queues holds per-queue settings, by queue name.
	Queues map[string]QueueConfig
	// MaxBodySize is the largest request body accepted (413 above it).
	// Default: the client's MaxBodySize (1 MiB).
	MaxBodySize int
	// BodyTimeout bounds the reading of a request body: a client that
	// sends it slower, or stalls, gets 408 and its handler is freed.
	// Default 1m.
	BodyTimeout time.Duration
	// MaxWait caps the wait of long-polls and of "Prefer: wait". Default 60s.
	MaxWait time.Duration
	// MaxStreams caps the long-lived connections (long-polls, event
	// streams, WebSockets) open at once; more get 429, but for a
	// submission with "Prefer: wait", which is answered 202 without
	// waiting. Default 10000.
	MaxStreams int
	// RetryAfter is the polling interval suggested to clients of pending
	// requests. Default 1s.
	RetryAfter time.Duration
	// Retention is how long the engine keeps request records and replies,
	// stated in Expires headers. Default 24h (the NATS backend's default).
	Retention time.Duration
	// Webhooks configures result delivery to callback URLs.
	Webhooks WebhookConfig
	// Workflows serves the workflow API (/v1/workflows/..., /v1/instances/...)
	// on this engine: starting instances, their status, results, events
	// and push streams, raising events, terminate and purge. The gateway
	// neither starts nor stops it; it needs no Start to serve the API
	// (some engine with Start runs the instances). Default nil: the
	// workflow routes answer 404 (workflows-disabled).
	Workflows *workflow.Engine
	// Logger receives the gateway's log lines. Default: discard.
	Logger *slog.Logger
	// TracerProvider makes a server span per HTTP request (a child of the
	// caller's traceparent and tracestate) and a span per pushed final
	// event (a child of the submission's, with its tracestate). Default:
	// the global provider.
	TracerProvider trace.TracerProvider
	// MeterProvider makes the gateway's metrics. Default: the global
	// provider.
	MeterProvider metric.MeterProvider
}

// QueueConfig holds the settings of one queue.
type QueueConfig struct {
	// RequireIdempotencyKey refuses submissions without an Idempotency-Key.
	RequireIdempotencyKey bool
	// Webhook is the callback URL of requests that name none.
	Webhook string
}

// APIKey is one key and what it may do. The key itself is not kept: only
// its SHA-256.
type APIKey struct {
	// Tenant owns the requests submitted with this key. Keys of one tenant
	// see each other's requests; other tenants get 404 for them.
	Tenant string `json:"tenant"`
	// SHA256 is the hex SHA-256 of the key.
	SHA256 string `json:"sha256"`
	// Grants say what the key may do on which queues.
	Grants []Grant `json:"grants"`
}

// Grant gives rights on a queue ("*": every queue).
type Grant struct {
	Queue string `json:"queue"`
	// Rights: "send" (submit, and read and cancel the tenant's requests),
	// "consume" (the worker API), "admin" (read and cancel any tenant's
	// requests).
	Rights []string `json:"rights"`
}

// Rights a Grant can give.
const (
	RightSend    = "send"
	RightConsume = "consume"
	RightAdmin   = "admin"
)

// ValidateKeys checks API keys as New does: each has a tenant, the hex
// SHA-256 of its key (64 hex digits; not the key itself), at least one
// grant, and each grant a queue name or "*" and known rights; no two keys
// share a hash.
func ValidateKeys(keys []APIKey) error {
	var errs []error
	seen := make(map[string]int)
	for i, k := range keys {
		name := fmt.Sprintf("key %d (tenant %q)", i, k.Tenant)
		if k.Tenant == "" {
			errs = append(errs, fmt.Errorf("key %d has no tenant", i))
		}
		h := strings.ToLower(k.SHA256)
		if _, err := hex.DecodeString(h); err != nil || len(h) != 64 {
			errs = append(errs, fmt.Errorf("%s: sha256 must be the 64 hex digits of the key's SHA-256, not the key itself", name))
		} else if j, ok := seen[h]; ok {
			errs = append(errs, fmt.Errorf("%s has the same sha256 as key %d", name, j))
		}
		seen[h] = i
		if len(k.Grants) == 0 {
			errs = append(errs, fmt.Errorf("%s has no grants: it could do nothing", name))
		}
		for _, g := range k.Grants {
			if g.Queue != "*" {
				if err := backend.ValidateName("queue", g.Queue); err != nil {
					errs = append(errs, fmt.Errorf(`%s: grant queue is neither "*" nor a valid name: %w`, name, err))
				}
			}
			if len(g.Rights) == 0 {
				errs = append(errs, fmt.Errorf("%s: the grant on queue %q has no rights", name, g.Queue))
			}
			for _, r := range g.Rights {
				if r != RightSend && r != RightConsume && r != RightAdmin {
					errs = append(errs, fmt.Errorf("%s: unknown right %q (want send, consume or admin)", name, r))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// HashKey returns the SHA256 value of an APIKey for key.
func HashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

func (c Config) withDefaults(client *rsvp.Client) Config {
	c.MaxBodySize = cmp.Or(c.MaxBodySize, client.MaxBodySize())
	c.BodyTimeout = cmp.Or(c.BodyTimeout, time.Minute)
	c.MaxWait = cmp.Or(c.MaxWait, 60*time.Second)
	c.MaxStreams = cmp.Or(c.MaxStreams, 10000)
	c.RetryAfter = cmp.Or(c.RetryAfter, time.Second)
	c.Retention = cmp.Or(c.Retention, 24*time.Hour)
	c.Webhooks = c.Webhooks.withDefaults()
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.MaxBodySize < 1 || c.MaxWait < time.Second || c.MaxStreams < 1 || c.RetryAfter < time.Second || c.Retention < time.Minute || c.BodyTimeout < 0 {
		errs = append(errs, errors.New("MaxBodySize and MaxStreams must be positive, MaxWait and RetryAfter at least 1s, Retention at least 1m, BodyTimeout not negative"))
	}
	if len(c.Keys) > 0 {
		errs = append(errs, ValidateKeys(c.Keys))
	}
	for q, qc := range c.Queues {
		if err := backend.ValidateName("queue", q); err != nil {
			errs = append(errs, fmt.Errorf("queues: %w", err))
		}
		if qc.Webhook != "" && !c.Webhooks.Enabled() {
			errs = append(errs, fmt.Errorf("queue %s has a webhook, but no webhook secret is configured", q))
		}
	}
	errs = append(errs, c.Webhooks.Validate())
	return errors.Join(errs...)
}

// Gateway is the HTTP front door: an http.Handler serving the API in
// docs/openapi.yaml on an rsvp client. Any number of gateways may serve one
// engine; each answers for every request.
type Gateway struct {
	c       *rsvp.Client
	b       backend.Backend
	cfg     Config
	keys    map[string]*APIKey // by SHA256
	mux     *http.ServeMux
	hub     *hub
	hooks   *webhookSender
	waits   chan struct{} // waiting permits of webhook jobs (startWebhooks)
	tel     *telemetry
	streams chan struct{} // a slot per open long-lived connection
	workers *workers      // the worker API's consumers and leases
	log     *slog.Logger

	life    context.Context // ends at Close: long-lived calls end with it
	end     context.CancelFunc
	mu      sync.Mutex
	closers []func(ctx context.Context) error
}

// New returns a gateway on client. Close it before the client.
func New(ctx context.Context, client *rsvp.Client, cfg Config) (*Gateway, error) {
	cfg = cfg.withDefaults(client)
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("gateway: config: %w", err)
	}
	g := &Gateway{c: client, b: client.Backend(), cfg: cfg, keys: make(map[string]*APIKey),
		streams: make(chan struct{}, cfg.MaxStreams), log: cfg.Logger}
	g.life, g.end = context.WithCancel(context.Background())
	for i := range cfg.Keys {
		g.keys[strings.ToLower(cfg.Keys[i].SHA256)] = &cfg.Keys[i]
	}
	var err error
	if g.tel, err = newTelemetry(cfg.TracerProvider, cfg.MeterProvider); err != nil {
		return nil, fmt.Errorf("gateway: telemetry: %w", err)
	}
	if g.hub, err = newHub(ctx, g.b); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.closers = append(g.closers, func(context.Context) error { return g.hub.close() })
	g.workers = newWorkers(client, cfg.Logger)
	g.closers = append(g.closers, g.workers.close)
	if cfg.Webhooks.Enabled() {
		if g.hooks, err = newWebhookSender(cfg.Webhooks); err != nil {
			_ = g.Close(ctx)
			return nil, fmt.Errorf("gateway: %w", err)
		}
		if err := g.startWebhooks(); err != nil {
			_ = g.Close(ctx)
			return nil, fmt.Errorf("gateway: %w", err)
		}
	}
	g.routes()
	return g, nil
}

// Close stops the gateway's background work (event fan-out, webhook
// delivery), waiting for running deliveries (POSTs under way) until ctx
// ends; webhook jobs that wait for their request's result or for their
// next attempt's time end at once, and come back to a running gateway.
// Open streams end.
func (g *Gateway) Close(ctx context.Context) error {
	g.end()
	g.mu.Lock()
	closers := g.closers
	g.closers = nil
	g.mu.Unlock()
	var errs []error
	for i := len(closers) - 1; i >= 0; i-- {
		errs = append(errs, closers[i](ctx))
	}
	if g.hooks != nil {
		g.hooks.close()
	}
	return errors.Join(errs...)
}

func (g *Gateway) routes() {
	m := http.NewServeMux()
	m.HandleFunc("POST /v1/queues/{queue}/requests", g.traced("POST /v1/queues/{queue}/requests", g.submit))
	m.HandleFunc("GET /v1/requests/{id}", g.traced("GET /v1/requests/{id}", g.status))
	m.HandleFunc("GET /v1/requests/{id}/result", g.traced("GET /v1/requests/{id}/result", g.result))
	m.HandleFunc("DELETE /v1/requests/{id}", g.traced("DELETE /v1/requests/{id}", g.cancel))
	m.HandleFunc("GET /v1/requests/{id}/events", g.traced("GET /v1/requests/{id}/events", g.requestEvents))
	m.HandleFunc("GET /v1/channels/{channel}/events", g.traced("GET /v1/channels/{channel}/events", g.channelEvents))
	m.HandleFunc("GET /v1/ws", g.traced("GET /v1/ws", g.websocket))
	m.HandleFunc("POST /v1/queues/{queue}/leases", g.traced("POST /v1/queues/{queue}/leases", g.lease))
	m.HandleFunc("POST /v1/leases/{lease}/reply", g.traced("POST /v1/leases/{lease}/reply", g.leaseReply))
	m.HandleFunc("POST /v1/leases/{lease}/fail", g.traced("POST /v1/leases/{lease}/fail", g.leaseFail))
	m.HandleFunc("POST /v1/leases/{lease}/extend", g.traced("POST /v1/leases/{lease}/extend", g.leaseExtend))
	m.HandleFunc("POST /v1/leases/{lease}/progress", g.traced("POST /v1/leases/{lease}/progress", g.leaseProgress))
	m.HandleFunc("POST /v1/workflows/{name}/instances", g.traced("POST /v1/workflows/{name}/instances", g.startInstance))
	m.HandleFunc("GET /v1/instances", g.traced("GET /v1/instances", g.listInstances))
	m.HandleFunc("GET /v1/instances/{id}", g.traced("GET /v1/instances/{id}", g.getInstance))
	m.HandleFunc("DELETE /v1/instances/{id}", g.traced("DELETE /v1/instances/{id}", g.purgeInstance))
	m.HandleFunc("GET /v1/instances/{id}/result", g.traced("GET /v1/instances/{id}/result", g.instanceResult))
	m.HandleFunc("GET /v1/instances/{id}/events", g.traced("GET /v1/instances/{id}/events", g.instanceEvents))
	m.HandleFunc("POST /v1/instances/{id}/events/{event}", g.traced("POST /v1/instances/{id}/events/{event}", g.raiseEvent))
	m.HandleFunc("POST /v1/instances/{id}/terminate", g.traced("POST /v1/instances/{id}/terminate", g.terminateInstance))
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	m.HandleFunc("GET /readyz", g.ready)
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if allow := allowed(m, r); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			problem(w, http.StatusMethodNotAllowed, "method-not-allowed", "Method not allowed",
				r.Method+" is not allowed on "+r.URL.Path+"; allowed: "+strings.Join(allow, ", "))
			return
		}
		problem(w, http.StatusNotFound, "not-found", "No such endpoint", r.Method+" "+r.URL.Path+" is not part of the API (see docs/openapi.yaml)")
	})
	g.mux = m
}

// allowed lists the methods m serves r's path with, other than the
// catch-all.
func allowed(m *http.ServeMux, r *http.Request) []string {
	var out []string
	for _, method := range []string{"GET", "POST", "DELETE"} {
		probe := r.Clone(r.Context())
		probe.Method = method
		if _, pattern := m.Handler(probe); pattern != "/" && pattern != "" {
			out = append(out, method)
		}
	}
	return out
}

// ServeHTTP implements http.Handler. Every response says
// "X-Content-Type-Options: nosniff": a result is a body a worker stored
// with the content type it chose, which a browser must not guess over (an
// application/octet-stream body taken for HTML).
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	g.mux.ServeHTTP(w, r)
}

func (g *Gateway) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if _, err := g.b.GetReply(ctx, "readyz-probe"); err != nil && !errors.Is(err, backend.ErrNotFound) {
		// Not err to whoever asks (no key needed): see engineDown.
		g.log.Warn("gateway: not ready", "err", err)
		problem(w, http.StatusServiceUnavailable, "not-ready", "The engine is not reachable", engineFailed)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// caller is who made a request: a tenant with its key's grants.
type caller struct {
	tenant string
	key    *APIKey // nil when authentication is off
}

// may reports whether the caller has right on queue.
func (c caller) may(right, queue string) bool {
	if c.key == nil {
		return true
	}
	for _, gr := range c.key.Grants {
		if gr.Queue == "*" || gr.Queue == queue {
			for _, r := range gr.Rights {
				if r == right {
					return true
				}
			}
		}
	}
	return false
}

// sees reports whether the caller may read and cancel a request of tenant
// on queue.
func (c caller) sees(tenant, queue string) bool {
	return c.may(RightAdmin, queue) || c.tenant == tenant && c.may(RightSend, queue)
}

// seesEveryQueue reports whether the caller may read the requests of its
// tenant on every queue.
func (c caller) seesEveryQueue() bool {
	return c.may(RightSend, "*") || c.may(RightAdmin, "*")
}

// Admin serves h only to callers whose API key has the admin right on
// every queue ("*"), when the gateway has keys (without keys, to anyone):
// for what spans tenants and queues, such as the server's metrics.
func (g *Gateway) Admin(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff") // as ServeHTTP
		c, ok := g.authenticate(w, r)
		if !ok {
			return
		}
		if !c.may(RightAdmin, "*") {
			forbidden(w, RightAdmin, "*")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// authenticate finds the caller, or writes 401 and returns false.
func (g *Gateway) authenticate(w http.ResponseWriter, r *http.Request) (caller, bool) {
	if len(g.keys) == 0 {
		return caller{}, true
	}
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "Bearer") || token == "" { // the scheme in any case (RFC 9110, section 11.1)
		w.Header().Set("WWW-Authenticate", `Bearer realm="rsvp"`)
		problem(w, http.StatusUnauthorized, "unauthenticated", "API key required", `send "Authorization: Bearer <key>"`)
		return caller{}, false
	}
	k := g.keys[HashKey(token)] // a map lookup by hash: no timing leak of the key
	if k == nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="rsvp", error="invalid_token"`)
		problem(w, http.StatusUnauthorized, "unauthenticated", "Unknown API key", "the key is not configured on this gateway")
		return caller{}, false
	}
	return caller{tenant: k.Tenant, key: k}, true
}

// forbidden writes 403 for a missing right.
func forbidden(w http.ResponseWriter, right, queue string) {
	problem(w, http.StatusForbidden, "forbidden", "Not allowed", fmt.Sprintf("the API key lacks the %q right on queue %q", right, queue))
}

// Problem is an RFC 9457 problem details object.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
	Code     string `json:"code,omitempty"` // rsvp error code of a failed request
}

// problemType is the base of the problem type URIs.
const problemType = "https://rsvp.dev/problems/"

// readBody reads a request body of at most limit bytes within
// Config.BodyTimeout, writing 413, 408 or 400 and returning ok false when
// it cannot.
func (g *Gateway) readBody(w http.ResponseWriter, r *http.Request, limit int) ([]byte, bool) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(g.cfg.BodyTimeout)) // not supported: no bound
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(limit)))
	_ = rc.SetReadDeadline(time.Time{})
	if err != nil {
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			problem(w, http.StatusRequestEntityTooLarge, "too-large", "Body too large", fmt.Sprintf("the limit is %d bytes", limit))
		case errors.Is(err, os.ErrDeadlineExceeded):
			w.Header().Set("Connection", "close")
			problem(w, http.StatusRequestTimeout, "body-timeout", "Body too slow",
				fmt.Sprintf("the body was not received within %s", g.cfg.BodyTimeout))
		default:
			problem(w, http.StatusBadRequest, "unreadable-body", "Body could not be read", err.Error())
		}
		return nil, false
	}
	return body, true
}

func problem(w http.ResponseWriter, status int, typ, title, detail string) {
	writeProblem(w, &Problem{Type: problemType + typ, Title: title, Status: status, Detail: detail})
}

func writeProblem(w http.ResponseWriter, p *Problem) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// acquireStream takes a slot for a long-lived connection, or writes 429.
func (g *Gateway) acquireStream(w http.ResponseWriter) (release func(), ok bool) {
	if release, ok := g.tryStream(); ok {
		return release, true
	}
	w.Header().Set("Retry-After", strconv.Itoa(int(g.cfg.RetryAfter.Seconds())*5))
	problem(w, http.StatusTooManyRequests, "too-many-streams", "Too many open streams",
		fmt.Sprintf("this gateway holds %d long-polls and streams, its limit; retry later", g.cfg.MaxStreams))
	return nil, false
}

// tryStream takes a slot for a long-lived connection if one is free.
func (g *Gateway) tryStream() (release func(), ok bool) {
	select {
	case g.streams <- struct{}{}:
		g.tel.streams.Add(context.Background(), 1)
		return func() {
			g.tel.streams.Add(context.Background(), -1)
			<-g.streams
		}, true
	default:
		return nil, false
	}
}

// streamCtx is the context of a long-lived call: it ends when the client
// leaves or the gateway closes.
func (g *Gateway) streamCtx(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	stop := context.AfterFunc(g.life, cancel)
	return ctx, func() { stop(); cancel() }
}

// parseWait reads a wait duration: Go syntax ("30s") or whole seconds,
// capped at MaxWait.
func (g *Gateway) parseWait(s string) (time.Duration, error) {
	d, err := parseSeconds("wait", s)
	if err != nil {
		return 0, err
	}
	if d < 0 {
		return 0, fmt.Errorf("wait %q is negative", s)
	}
	return min(d, g.cfg.MaxWait), nil
}

// parseSeconds reads a duration parameter named kind: Go syntax ("30s") or
// whole seconds; 0 when s is empty.
func parseSeconds(kind, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return d, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil && !errors.Is(err, strconv.ErrRange) { // out of range: n is the nearest int, clamped below
		return 0, fmt.Errorf("%s %q is neither a duration (30s) nor whole seconds", kind, s)
	}
	// More seconds than a Duration holds would wrap around: clamp them
	// (to some 292 years), which every caller caps or refuses.
	const most = math.MaxInt64 / int64(time.Second)
	return time.Duration(max(min(int64(n), most), -most)) * time.Second, nil
}

// queueCall authenticates a call on the queue in its path and checks the
// caller's right on it, writing the error response and returning ok false
// on failure.
func (g *Gateway) queueCall(w http.ResponseWriter, r *http.Request, right string) (c caller, queue string, ok bool) {
	if c, ok = g.authenticate(w, r); !ok {
		return c, "", false
	}
	queue = r.PathValue("queue")
	if err := backend.ValidateName("queue", queue); err != nil {
		problem(w, http.StatusBadRequest, "invalid-queue", "Invalid queue name", err.Error())
		return c, "", false
	}
	if strings.HasPrefix(queue, internalPrefix) {
		problem(w, http.StatusBadRequest, "invalid-queue", "Reserved queue name", "queue names starting with "+internalPrefix+" are the gateway's own")
		return c, "", false
	}
	if !c.may(right, queue) {
		forbidden(w, right, queue)
		return c, "", false
	}
	return c, queue, true
}
