package gateway

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// The worker API lets a program in any language respond to a queue over
// HTTP: it leases requests (POST /v1/queues/{queue}/leases), then settles
// each lease once with reply or fail, extending it while it works.
//
// Leases live in the memory of the gateway that handed them out; another
// gateway does not know them. The gateway keeps its own clock for each: the
// engine's lease (that of the gateway's one consumer per queue, the
// HandleOptions default) is renewed while the gateway's lease lasts, and a
// gateway lease that runs out gives its request back at once, for the next
// lease call. So leases of any length share one engine consumer per queue:
// the engine's lease duration is a setting of the queue's consumer, which
// every consumer of the queue shares.

// Lease is one leased request in the response of
// POST /v1/queues/{queue}/leases.
type Lease struct {
	// Lease is the opaque id to settle or extend the lease with.
	Lease         string            `json:"lease"`
	ID            string            `json:"id"`
	CorrelationID string            `json:"correlation_id"`
	Queue         string            `json:"queue"`
	Type          string            `json:"type,omitempty"`
	Attempt       int               `json:"attempt"`
	ContentType   string            `json:"content_type"`
	Headers       map[string]string `json:"headers"`
	Body          []byte            `json:"body"` // base64 in JSON
	CreatedAt     time.Time         `json:"created_at"`
	Deadline      time.Time         `json:"deadline,omitzero"`
	SessionKey    string            `json:"session_key,omitempty"`
	// TraceParent and TraceState are the W3C trace context of the
	// attempt's span (rsvp.handle, in the requester's trace), if any, for
	// the worker's spans to be its children.
	TraceParent string `json:"traceparent,omitempty"`
	TraceState  string `json:"tracestate,omitempty"`
	// ExpiresAt is when the lease runs out unless extended: the request is
	// then handed out again, and the lease id is no longer known.
	ExpiresAt time.Time `json:"expires_at"`
}

// Failure is the body of POST /v1/leases/{lease}/fail.
type Failure struct {
	// Error is the error text the requester sees if this was the last
	// attempt.
	Error string `json:"error"`
	// Permanent fails the request at once, without retries.
	Permanent bool `json:"permanent,omitempty"`
	// Code is the rsvp error code of the failure (default "failed").
	Code string `json:"code,omitempty"`
}

// Limits of the worker API.
const (
	defaultLease = 30 * time.Second
	minLease     = time.Second
	maxLease     = 10 * time.Minute
	maxBatch     = 100
	// moreWait is how long a lease call looks for more requests once it has
	// one: the engine's consumers fetch on demand, so "available now" means
	// "arrives within a round trip or so".
	moreWait = 50 * time.Millisecond
	// batchBytes stops a batch from growing once its bodies add up to this.
	batchBytes = 8 << 20
	// tombstoneTTL is how long a settled lease id is remembered, so that a
	// second settlement gets 409 rather than 404.
	tombstoneTTL = time.Minute
	// settleTimeout bounds the engine calls that record an outcome; they do
	// not end when the worker's HTTP request does.
	settleTimeout = 30 * time.Second
	maxCodeLen    = 64
	// maxFailureSize bounds the body of a fail call. Error texts are cut
	// to 1 KiB when stored anyway.
	maxFailureSize = 64 << 10
)

var (
	errLeaseUnknown  = errors.New("unknown or expired lease")
	errLeaseSettled  = errors.New("lease already settled")
	errLeaseLost     = errors.New("engine lease lost") // answered as errLeaseUnknown, with its own detail
	errCancelled     = errors.New("request cancelled") // the lease is settled as cancelled
	errWorkersClosed = errors.New("gateway closed")
)

// workers is the state of the worker API: one consumer per queue, and the
// leases handed out.
type workers struct {
	c   *rsvp.Client
	log *slog.Logger

	consMu    sync.Mutex // held while a consumer is made
	consumers map[string]*rsvp.Consumer

	mu     sync.Mutex
	closed bool
	leases map[string]*leased
	firing sync.WaitGroup // lease timers running their callback
}

func newWorkers(c *rsvp.Client, log *slog.Logger) *workers {
	return &workers{c: c, log: log, consumers: make(map[string]*rsvp.Consumer), leases: make(map[string]*leased)}
}

// leased is a lease handed out. Its timer gives it back when it runs out,
// renews the engine's lease meanwhile, and forgets it some time after it
// was settled.
type leased struct {
	id, queue, tenant string
	w                 *workers

	mu       sync.Mutex
	l        *rsvp.Lease // nil once settled, expired or given back
	dur      time.Duration
	expires  time.Time
	renewed  time.Time // when the engine's lease was last renewed
	forgetAt time.Time // once settled: when the id is forgotten
	timer    *time.Timer
}

// consumer returns the gateway's consumer of queue, making it on first use.
func (w *workers) consumer(ctx context.Context, queue string) (*rsvp.Consumer, error) {
	w.consMu.Lock()
	defer w.consMu.Unlock()
	if w.isClosed() {
		return nil, errWorkersClosed
	}
	if c := w.consumers[queue]; c != nil {
		return c, nil
	}
	c, err := w.c.Consume(ctx, queue, rsvp.HandleOptions{})
	if err != nil {
		return nil, err
	}
	w.consumers[queue] = c
	return c, nil
}

func (w *workers) isClosed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closed
}

// take waits up to wait for a request of cons, then takes what else is
// available now, up to n in all. It returns the error of the first Next
// only: later ones end the batch.
func (w *workers) take(ctx context.Context, cons *rsvp.Consumer, n int, wait time.Duration) ([]*rsvp.Lease, error) {
	var out []*rsvp.Lease
	size := 0
	for len(out) < n && size < batchBytes {
		d := moreWait
		if len(out) == 0 {
			d = max(wait, moreWait)
		}
		nctx, cancel := context.WithTimeout(ctx, d)
		l, err := cons.Next(nctx)
		cancel()
		switch {
		case err == nil:
			out = append(out, l)
			size += len(l.Message().Body)
		case len(out) > 0 || errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			return out, nil // nothing (more) for now
		default:
			return nil, err
		}
	}
	return out, nil
}

// add registers a lease taken for a caller and returns its entry. After
// Close the lease is given back and add returns errWorkersClosed.
func (w *workers) add(l *rsvp.Lease, queue, tenant string, dur time.Duration) (*leased, error) {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails, per crypto/rand
	now := time.Now()
	e := &leased{id: hex.EncodeToString(b[:]), queue: queue, tenant: tenant, w: w, l: l, dur: dur,
		expires: now.Add(dur), renewed: now}
	e.mu.Lock() // the timer waits for the entry to be complete
	defer e.mu.Unlock()
	e.timer = time.AfterFunc(e.nextFire(now), func() { w.fire(e) })
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		e.timer.Stop()
		e.l = nil
		ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
		defer cancel()
		_ = l.Release(ctx)
		return nil, errWorkersClosed
	}
	w.leases[e.id] = e
	w.mu.Unlock()
	return e, nil
}

// nextFire is how long from now the timer of a live lease is due: at its
// end, or when the engine's lease needs renewing.
func (e *leased) nextFire(now time.Time) time.Duration {
	at := e.expires
	if renew := e.renewed.Add(e.l.Duration() / 3); renew.Before(at) {
		at = renew
	}
	return at.Sub(now)
}

// fire is a lease's timer: it gives back a lease that ran out, renews the
// engine's lease of one that has not, and forgets a settled one.
func (w *workers) fire(e *leased) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.firing.Add(1)
	w.mu.Unlock()
	defer w.firing.Done()

	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	switch {
	case e.l == nil && now.Before(e.forgetAt):
		e.timer.Reset(e.forgetAt.Sub(now))
	case e.l == nil:
		w.forget(e)
	case !now.Before(e.expires):
		m := e.l.Message()
		w.log.Info("gateway: lease ran out; the request goes back to the queue", "queue", e.queue, "id", m.ID,
			"correlation_id", m.CorrelationID, "attempt", m.Attempt, "tenant", e.tenant)
		if err := e.l.Release(ctx); err != nil && !errors.Is(err, rsvp.ErrSettled) {
			w.log.Warn("gateway: giving back a lease that ran out failed; the engine's lease will end it",
				"queue", e.queue, "id", m.ID, "correlation_id", m.CorrelationID, "err", err)
		}
		e.l = nil
		w.forget(e)
	default:
		if now.Sub(e.renewed) >= e.l.Duration()/3 {
			err := e.l.Extend(ctx)
			if errors.Is(err, backend.ErrLeaseLost) {
				e.lost(ctx)
				return
			}
			if err != nil {
				w.log.Warn("gateway: renewing the engine's lease failed", "queue", e.queue,
					"id", e.l.Message().ID, "correlation_id", e.l.Message().CorrelationID, "err", err)
			}
			e.renewed = now
		}
		e.timer.Reset(e.nextFire(now))
	}
}

func (w *workers) forget(e *leased) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.leases[e.id] == e {
		delete(w.leases, e.id)
	}
}

// find returns the lease id names, if the caller may use it; otherwise it
// writes the error response and returns nil.
// leaseCall authenticates a call on the lease in its path and finds the
// lease, writing the error response and returning nil on failure.
func (g *Gateway) leaseCall(w http.ResponseWriter, r *http.Request) *leased {
	c, ok := g.authenticate(w, r)
	if !ok {
		return nil
	}
	return g.workers.find(w, r, c)
}

func (w *workers) find(rw http.ResponseWriter, r *http.Request, c caller) *leased {
	id := r.PathValue("lease")
	w.mu.Lock()
	e := w.leases[id]
	w.mu.Unlock()
	if e == nil || e.tenant != c.tenant { // another tenant's lease is unknown to the caller, as its requests are
		problem(rw, http.StatusNotFound, "unknown-lease", "Unknown or expired lease",
			"the lease ran out, was never handed out by this gateway, or is long settled")
		return nil
	}
	if !c.may(RightConsume, e.queue) {
		forbidden(rw, RightConsume, e.queue)
		return nil
	}
	return e
}

// settle runs fn on the live lease of e and marks e settled. If e's
// request was cancelled, fn does not run (see uncancelled).
func (e *leased) settle(ctx context.Context, fn func(*rsvp.Lease) error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	l, err := e.uncancelled(ctx)
	if err != nil {
		return err
	}
	if err := fn(l); err != nil {
		return e.leaseErr(ctx, err)
	}
	e.settled()
	// A cancel that came after the check above may have stored its
	// outcome first: then fn's was dropped (rsvp.Lease does not say so).
	if r, err := e.w.c.Backend().GetReply(ctx, l.Message().CorrelationID); err == nil && r.Status == backend.StatusCancelled {
		return errCancelled
	}
	return nil
}

// leaseErr returns the error of a call on e's engine lease that failed with
// err: errLeaseSettled for rsvp.ErrSettled, and errLeaseLost, after ending
// e (lost), for a lost engine lease. Call with e.mu held.
func (e *leased) leaseErr(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, rsvp.ErrSettled):
		return errLeaseSettled
	case errors.Is(err, backend.ErrLeaseLost):
		e.lost(ctx)
		return errLeaseLost
	}
	return err
}

// lost ends e, whose engine lease was lost (backend.ErrLeaseLost): the
// engine may have given its request to another worker, which the worker
// of e must leave it to. So e ends as a lease that ran out does: forgotten
// (its id is then unknown). Its attempt is ended already when the loss
// came from Extend (rsvp.Lease settles a lease it finds lost); Release
// ends it otherwise (its Nack finds the engine's lease lost and sends
// nothing). Call with e.mu held.
func (e *leased) lost(ctx context.Context) {
	m := e.l.Message()
	e.w.log.Info("gateway: the engine's lease was lost; the request may be with another worker", "queue", e.queue,
		"id", m.ID, "correlation_id", m.CorrelationID, "attempt", m.Attempt, "tenant", e.tenant)
	if err := e.l.Release(ctx); err != nil && !errors.Is(err, rsvp.ErrSettled) && !errors.Is(err, backend.ErrLeaseLost) {
		e.w.log.Warn("gateway: ending the attempt of a lost lease failed", "queue", e.queue, "id", m.ID,
			"correlation_id", m.CorrelationID, "err", err)
	}
	e.l = nil
	e.timer.Stop()
	e.w.forget(e)
}

// settled marks e's lease settled. Call with e.mu held.
func (e *leased) settled() {
	e.l = nil
	e.forgetAt = time.Now().Add(tombstoneTTL)
	e.timer.Reset(tombstoneTTL)
}

// uncancelled is live, unless e's request was cancelled: then e is
// settled as cancelled (rsvp.Lease.Cancelled), as a Handler's outcome after
// a cancel is, with no retry or dead letter, and the error is
// errCancelled. Call with e.mu held.
func (e *leased) uncancelled(ctx context.Context) (*rsvp.Lease, error) {
	l, err := e.live()
	if err != nil {
		return nil, err
	}
	if gone, err := l.Cancelled(ctx); err != nil || gone {
		if gone {
			e.settled()
			return nil, errCancelled
		}
		return nil, err
	}
	return l, nil
}

// live returns e's lease if it can still be settled. Call with e.mu held.
func (e *leased) live() (*rsvp.Lease, error) {
	switch {
	case e.l == nil && !e.forgetAt.IsZero():
		return nil, errLeaseSettled
	case e.l == nil || !time.Now().Before(e.expires):
		return nil, errLeaseUnknown // the timer is about to give it back
	}
	return e.l, nil
}

// progress records v as the progress of e's request. If e's request was
// cancelled, e is settled instead (see uncancelled): the worker learns to
// stop, as from extend.
func (e *leased) progress(ctx context.Context, v json.RawMessage) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	l, err := e.uncancelled(ctx)
	if err != nil {
		return err
	}
	return rsvp.Progress(l.WithProgress(ctx), v)
}

// extend renews e for dur (0: its duration so far) and returns its new end.
// If e's request was cancelled, e is settled instead (see uncancelled).
func (e *leased) extend(ctx context.Context, dur time.Duration) (time.Time, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	l, err := e.uncancelled(ctx)
	if err != nil {
		return time.Time{}, err
	}
	if err := l.Extend(ctx); err != nil {
		return time.Time{}, e.leaseErr(ctx, err)
	}
	now := time.Now()
	if dur > 0 {
		e.dur = dur
	}
	e.expires, e.renewed = now.Add(e.dur), now
	e.timer.Reset(e.nextFire(now))
	return e.expires, nil
}

// close closes the consumers and gives back the leases not settled, so
// their requests go to other workers at once.
func (w *workers) close(ctx context.Context) error {
	w.mu.Lock()
	w.closed = true
	leases := w.leases
	w.leases = map[string]*leased{}
	w.mu.Unlock()

	w.consMu.Lock()
	var errs []error
	for q, c := range w.consumers {
		if err := c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("consumer of %s: %w", q, err))
		}
	}
	w.consumers = map[string]*rsvp.Consumer{}
	w.consMu.Unlock()

	// No timer callback gets past its closed check from now on.
	w.firing.Wait()
	for _, e := range leases {
		e.mu.Lock()
		e.timer.Stop()
		if e.l != nil {
			if err := e.l.Release(ctx); err != nil && !errors.Is(err, rsvp.ErrSettled) {
				w.log.Warn("gateway: giving back a lease on close failed; the engine's lease will end it",
					"queue", e.queue, "id", e.l.Message().ID, "correlation_id", e.l.Message().CorrelationID, "err", err)
			}
			e.l = nil
		}
		e.mu.Unlock()
	}
	return errors.Join(errs...)
}

// lease: POST /v1/queues/{queue}/leases[?wait=30s][&max=10][&lease=60s].
func (g *Gateway) lease(w http.ResponseWriter, r *http.Request) {
	c, queue, ok := g.queueCall(w, r, RightConsume)
	if !ok {
		return
	}
	q := r.URL.Query()
	wait, err1 := g.parseWait(q.Get("wait"))
	n, err2 := parseMax(q.Get("max"))
	dur, err3 := parseLease(q.Get("lease"))
	if err := errors.Join(err1, err2, err3); err != nil {
		problem(w, http.StatusBadRequest, "invalid-request", "Invalid request", err.Error())
		return
	}
	if dur == 0 {
		dur = defaultLease
	}
	if wait > 0 {
		release, ok := g.acquireStream(w)
		if !ok {
			return
		}
		defer release()
	}
	cons, err := g.workers.consumer(r.Context(), queue)
	if err == nil {
		var ls []*rsvp.Lease
		ls, err = g.workers.take(r.Context(), cons, n, wait)
		if err == nil && r.Context().Err() != nil {
			err = r.Context().Err() // the worker left: give back what it would have got
		}
		out := make([]Lease, 0, len(ls))
		for i, l := range ls {
			var e *leased
			if err == nil {
				e, err = g.workers.add(l, queue, c.tenant, dur)
			}
			if err != nil {
				ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), settleTimeout)
				for _, l := range ls[i:] {
					_ = l.Release(ctx)
				}
				cancel()
				break
			}
			m := l.Message()
			g.log.Debug("gateway: leased", "queue", queue, "id", m.ID, "correlation_id", m.CorrelationID,
				"attempt", m.Attempt, "tenant", c.tenant)
			hdr := m.Headers
			if hdr == nil {
				hdr = map[string]string{}
			}
			tp, ts := l.TraceContext()
			out = append(out, Lease{Lease: e.id, ID: m.ID, CorrelationID: m.CorrelationID, Queue: m.Queue, Type: m.Type,
				Attempt: m.Attempt, ContentType: m.ContentType, Headers: hdr, Body: m.Body, CreatedAt: m.CreatedAt.UTC(),
				Deadline: m.Deadline.UTC(), SessionKey: m.SessionKey, TraceParent: tp, TraceState: ts,
				ExpiresAt: e.expires.UTC()})
		}
		if err == nil {
			writeJSON(w, http.StatusOK, map[string][]Lease{"leases": out})
			return
		}
	}
	switch {
	case r.Context().Err() != nil:
		// The worker left.
	case errors.Is(err, errWorkersClosed) || errors.Is(err, backend.ErrClosed) || errors.Is(err, rsvp.ErrClosed):
		w.Header().Set("Retry-After", "1")
		problem(w, http.StatusServiceUnavailable, "closing", "The gateway is shutting down", "retry, on another gateway")
	default:
		g.engineDown(w, r, err)
	}
}

// parseMax reads the max parameter: 1 to maxBatch (larger values are
// capped); default 1.
func parseMax(s string) (int, error) {
	if s == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(s)
	if errors.Is(err, strconv.ErrRange) && n > 0 {
		return maxBatch, nil // beyond int: capped as any value over maxBatch
	}
	if err != nil || n < 1 {
		return 0, fmt.Errorf("max %q is not a positive integer", s)
	}
	return min(n, maxBatch), nil
}

// parseLease reads a lease duration: Go syntax ("60s") or whole seconds,
// from minLease to maxLease; 0 when s is empty.
func parseLease(s string) (time.Duration, error) {
	d, err := parseSeconds("lease", s)
	if err != nil || s == "" {
		return d, err
	}
	if d < minLease || d > maxLease {
		return 0, fmt.Errorf("lease %q is not between %s and %s", s, minLease, maxLease)
	}
	return d, nil
}

// settleProblem writes the response of a settle or extend call that
// failed with err.
func (g *Gateway) settleProblem(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, errCancelled):
		problem(w, http.StatusGone, "request-cancelled", "The request was cancelled",
			"stop working on it: the lease is settled, and a reply, fail or extend now is 409")
	case errors.Is(err, errLeaseSettled):
		problem(w, http.StatusConflict, "lease-settled", "Lease already settled",
			"this lease was replied to or failed already; each lease is settled once")
	case errors.Is(err, errLeaseLost) || errors.Is(err, backend.ErrLeaseLost):
		// As a lease that ran out: the engine is fine, but the request may
		// be another worker's now, and no retry can help.
		problem(w, http.StatusNotFound, "unknown-lease", "Unknown or expired lease",
			"the engine gave the request to another worker (its lease with the engine ran out): stop working on it")
	case errors.Is(err, errLeaseUnknown):
		problem(w, http.StatusNotFound, "unknown-lease", "Unknown or expired lease",
			"the lease ran out, was never handed out by this gateway, or is long settled")
	default:
		g.engineDown(w, r, err)
	}
}

// settleContext is the context of an engine call that records an outcome:
// it outlives the worker's HTTP request.
func settleContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(r.Context()), settleTimeout)
}

// leaseReply: POST /v1/leases/{lease}/reply. The body is the reply's body,
// its Content-Type the reply's content type.
func (g *Gateway) leaseReply(w http.ResponseWriter, r *http.Request) {
	e := g.leaseCall(w, r)
	if e == nil {
		return
	}
	ct := r.Header.Get("Content-Type")
	if ct != "" {
		if _, _, err := mime.ParseMediaType(ct); err != nil {
			problem(w, http.StatusBadRequest, "invalid-request", "Invalid request", fmt.Sprintf("Content-Type %q: %v", ct, err))
			return
		}
	}
	body, ok := g.readBody(w, r, min(g.cfg.MaxBodySize, g.c.MaxBodySize()))
	if !ok {
		return
	}
	g.answerLease(w, r, func(ctx context.Context) error {
		return e.settle(ctx, func(l *rsvp.Lease) error { return l.Reply(ctx, &rsvp.Reply{ContentType: ct, Body: body}) })
	})
}

// leaseFail: POST /v1/leases/{lease}/fail with a Failure as JSON.
func (g *Gateway) leaseFail(w http.ResponseWriter, r *http.Request) {
	e := g.leaseCall(w, r)
	if e == nil {
		return
	}
	body, ok := g.readBody(w, r, maxFailureSize)
	if !ok {
		return
	}
	var f Failure
	if len(body) > 0 {
		if err := json.Unmarshal(body, &f); err != nil {
			problem(w, http.StatusBadRequest, "invalid-request", "Invalid request", "the body is not a JSON failure object: "+err.Error())
			return
		}
	}
	if len(f.Code) > maxCodeLen || strings.ContainsFunc(f.Code, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
		problem(w, http.StatusBadRequest, "invalid-request", "Invalid request",
			fmt.Sprintf("code must be at most %d printable ASCII characters without spaces", maxCodeLen))
		return
	}
	switch f.Code {
	case rsvp.CodeExpired, rsvp.CodeCancelled, rsvp.CodeAttemptsExhausted, codeNotAccepted:
		// An expired or cancelled code would end the request in that state
		// (504, 410) rather than failed; the others are rsvp's own verdicts.
		problem(w, http.StatusBadRequest, "invalid-request", "Invalid request",
			fmt.Sprintf("code %q names an outcome only rsvp decides; use failed or a code of your own", f.Code))
		return
	}
	f.Error = cmp.Or(f.Error, "the worker reported a failure")
	var err error = errors.New(f.Error)
	if f.Code != "" {
		err = &rsvp.RemoteError{Code: f.Code, Message: f.Error}
	}
	if f.Permanent {
		err = rsvp.Permanent(err)
	}
	g.answerLease(w, r, func(ctx context.Context) error {
		return e.settle(ctx, func(l *rsvp.Lease) error { return l.Fail(ctx, err) })
	})
}

// leaseProgress: POST /v1/leases/{lease}/progress with a JSON body: the
// request's progress (custom status), as rsvp.Progress records it.
func (g *Gateway) leaseProgress(w http.ResponseWriter, r *http.Request) {
	e := g.leaseCall(w, r)
	if e == nil {
		return
	}
	body, ok := g.readBody(w, r, maxFailureSize)
	if !ok {
		return
	}
	if !json.Valid(body) {
		problem(w, http.StatusBadRequest, "invalid-request", "Invalid request", "the body is not JSON")
		return
	}
	g.answerLease(w, r, func(ctx context.Context) error { return e.progress(ctx, json.RawMessage(body)) })
}

// answerLease runs op on a lease with a settle context and answers 204, or
// the problem its error calls for.
func (g *Gateway) answerLease(w http.ResponseWriter, r *http.Request, op func(ctx context.Context) error) {
	ctx, cancel := settleContext(r)
	defer cancel()
	if err := op(ctx); err != nil {
		g.settleProblem(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// leaseExtend: POST /v1/leases/{lease}/extend[?lease=60s].
func (g *Gateway) leaseExtend(w http.ResponseWriter, r *http.Request) {
	e := g.leaseCall(w, r)
	if e == nil {
		return
	}
	dur, err := parseLease(r.URL.Query().Get("lease"))
	if err != nil {
		problem(w, http.StatusBadRequest, "invalid-request", "Invalid request", err.Error())
		return
	}
	ctx, cancel := settleContext(r)
	defer cancel()
	expires, err := e.extend(ctx, dur)
	if err != nil {
		g.settleProblem(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]time.Time{"expires_at": expires.UTC()})
}
