package rsvp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/rsvp-go/rsvp/backend"
)

// Config configures a Client. The zero value works.
type Config struct {
	// Inbox names this client's reply inbox: replies to requests it sends
	// are addressed there. Default: a new random name per client.
	Inbox string
	// MaxBodySize is the largest request or reply body accepted. Default
	// 1 MiB.
	MaxBodySize int
	// Codec encodes the values of Call and HandleTyped. Default JSON.
	Codec Codec
	// RecheckInterval is how often a waiting Request or Await looks up the
	// stored reply, and a waiting SessionReplies its list, in case a
	// notification was lost to a reconnect.
	// Default 5s.
	RecheckInterval time.Duration
	// Logger receives log lines about requests. Default: discard.
	Logger *slog.Logger
	// TracerProvider makes the spans of sends, requests and handler
	// attempts; their W3C trace context travels with requests and replies
	// (Message.TraceParent, Reply.TraceParent). The spans of Request and
	// of attempts get their attributes when they end, with the outcome, so
	// a sampler sees only their names ("rsvp.request QUEUE", "rsvp.handle
	// QUEUE") and parents. Default: the global provider
	// (otel.GetTracerProvider, a no-op unless set).
	TracerProvider trace.TracerProvider
	// MaxDelay bounds how far ahead Message.NotBefore may schedule a
	// request. Default 90 days.
	MaxDelay time.Duration
	// RequireResponder, if set, makes Request fail at once with
	// ErrNoResponders, storing nothing, when no responder of the queue was
	// active within this window, instead of waiting out its context.
	// Backends that cannot tell (not a backend.ActivityReporter) never fail
	// this way. Default 0: off.
	RequireResponder time.Duration
	// CancelOnAbandon makes Request cancel its request (as Cancel does)
	// when its ctx ends before the reply arrives: a caller that gives up
	// stops the work too. Set Message.Track for the cancellation to reach a
	// running handler. Default false: the request stays, for Await.
	CancelOnAbandon bool
	// MeterProvider makes rsvp's metrics (rsvp.requests.sent, ...).
	// Default: the global provider (otel.GetMeterProvider).
	MeterProvider metric.MeterProvider
	// NoExpiryTasks keeps this client from running the expiry tasks of
	// requests sent with deadlines (ExpiryQueue); other clients on the
	// engine then must. For tools that leave nothing behind, such as
	// benchmarks. Default false: a client runs them once it has sent with a
	// deadline, awaited, gathered, read a reply session, or started a
	// responder.
	NoExpiryTasks bool
}

func (c Config) withDefaults() Config {
	c.MaxBodySize = cmp.Or(c.MaxBodySize, 1<<20)
	c.RecheckInterval = cmp.Or(c.RecheckInterval, 5*time.Second)
	c.MaxDelay = cmp.Or(c.MaxDelay, 90*24*time.Hour)
	if c.Codec == nil {
		c.Codec = JSON
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Inbox == "" {
		c.Inbox = strings.ReplaceAll(NewID(), "-", "")
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if err := backend.ValidateName("inbox", c.Inbox); err != nil {
		errs = append(errs, err)
	}
	if c.MaxBodySize < 0 || c.RecheckInterval < 0 || c.MaxDelay < 0 || c.RequireResponder < 0 {
		errs = append(errs, errors.New("MaxBodySize, RecheckInterval, MaxDelay and RequireResponder must not be negative"))
	}
	return errors.Join(errs...)
}

// Client sends requests, awaits replies and runs responders on one backend.
// It is safe for concurrent use. All replies to requests it sends arrive
// through one shared subscription and are handed to their waiters.
type Client struct {
	b       backend.Backend
	cfg     Config
	sub     backend.Subscription
	waiters waiters
	tel     *telemetry
	active  sync.Map // queue → time.Time: a responder was seen active then (RequireResponder)
	topics  sync.Map // topic → *cachedRegistry: its subscriptions as last read

	noTasksOnce sync.Once // warns, once, that the engine cannot store expiry tasks

	mu         sync.Mutex
	responders map[*Responder]struct{}
	expirer    bool // handles expiry tasks (startExpirer)
	closed     bool
}

// New returns a client on b. The caller keeps ownership of b and closes it
// after the client.
func New(ctx context.Context, b backend.Backend, cfg Config) (*Client, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("rsvp: config: %w", err)
	}
	c := &Client{b: b, cfg: cfg, waiters: waiters{m: make(map[string][]chan *Reply)}, responders: make(map[*Responder]struct{})}
	tel, err := newTelemetry(cfg.TracerProvider, cfg.MeterProvider, &c.waiters)
	if err != nil {
		return nil, fmt.Errorf("rsvp: telemetry: %w", err)
	}
	c.tel = tel
	sub, err := b.SubscribeReplies(ctx, cfg.Inbox, c.waiters.deliver)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("rsvp: subscribe to replies: %w", err), tel.close())
	}
	c.sub = sub
	return c, nil
}

// Backend returns the backend the client runs on.
func (c *Client) Backend() backend.Backend { return c.b }

// Close stops the client's responders (see Responder.Stop) and its reply
// subscription. Waiting calls return when their contexts end. A responder
// already being stopped is waited for, but the outcome of that Stop went
// to its caller: Close reports it only if its own ctx ends first.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	rs := make([]*Responder, 0, len(c.responders))
	for r := range c.responders {
		rs = append(rs, r)
	}
	c.mu.Unlock()
	var errs []error
	for _, r := range rs {
		earlier := r.stopAsked.Load()
		if err := r.Stop(ctx); !earlier || ctx.Err() != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, c.sub.Close(), c.tel.close())
	return errors.Join(errs...)
}

// Send stores a request durably on queue and returns without waiting for
// the reply: await it later with Await and the ticket's CorrelationID. msg
// is not modified.
//
// Sending a message whose ID was sent within the dedupe window stores
// nothing new and returns the same ticket.
func (c *Client) Send(ctx context.Context, queue string, msg *Message) (Ticket, error) {
	m, err := c.prepare(queue, msg)
	if err != nil {
		return Ticket{}, err
	}
	if m.Deadline.IsZero() || m.ReplyTo == "" {
		return c.send(ctx, m, true)
	}
	// Store the request and its expiry task side by side.
	expiry := make(chan error, 1)
	go func() {
		expiry <- c.scheduleExpiry(ctx, expiryOf(m))
	}()
	t, err := c.send(ctx, m, true)
	return t, errors.Join(err, <-expiry)
}

// send stores m. With ownSpan it traces the send in a span of its own;
// Request's span covers its send instead (a span less per round trip).
func (c *Client) send(ctx context.Context, m *Message, ownSpan bool) (Ticket, error) {
	return c.sendWith(ctx, m, ownSpan, c.b.Enqueue)
}

// sendWith is send storing m with store.
func (c *Client) sendWith(ctx context.Context, m *Message, ownSpan bool, store func(context.Context, *Message) error) (Ticket, error) {
	span := trace.SpanFromContext(ctx)
	if ownSpan {
		ctx, span = c.tel.startSend(ctx, m)
		defer span.End()
	}
	putTraceContext(ctx, &m.TraceParent, &m.TraceState)
	if err := store(ctx, m); err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "not stored")
		if errors.Is(err, backend.ErrTooLarge) {
			return Ticket{}, fmt.Errorf("%w: %w", ErrTooLarge, err)
		}
		return Ticket{}, fmt.Errorf("rsvp: send to %s: %w", m.Queue, err)
	}
	c.tel.sentOne(c.tel.queue(m.Queue))
	c.cfg.Logger.DebugContext(ctx, "rsvp: sent", "queue", m.Queue, "id", m.ID, "correlation_id", m.CorrelationID)
	return Ticket{ID: m.ID, CorrelationID: m.CorrelationID, Queue: m.Queue}, nil
}

// Prepare returns the request Send would store for msg on queue: a
// validated copy with the defaults filled in (ID, CorrelationID, ReplyTo to
// this client's inbox, CreatedAt). It is for code that stores requests its
// own way, such as rsvppg.SendTx in a database transaction.
func (c *Client) Prepare(queue string, msg *Message) (*Message, error) { return c.prepare(queue, msg) }

// prepare validates msg and returns a copy with the defaults filled in.
func (c *Client) prepare(queue string, msg *Message) (*Message, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	if msg == nil {
		return nil, fmt.Errorf("%w: nil message", ErrInvalid)
	}
	m := *msg
	m.Queue = queue
	m.Attempt = 0
	if m.ID == "" {
		m.ID = NewID()
	}
	m.CorrelationID = cmp.Or(m.CorrelationID, m.ID)
	if m.CreatedAt.IsZero() {
		m.CreatedAt = time.Now()
	}
	if m.ReplyTo == "" {
		m.ReplyTo = c.b.ReplyAddress(c.cfg.Inbox, m.CorrelationID)
	}
	if !m.NotBefore.IsZero() && !m.NotBefore.After(m.CreatedAt) {
		m.NotBefore = time.Time{} // due already: at once
	}
	errs := []error{backend.ValidateName("queue", queue), backend.ValidateName("id", m.ID),
		backend.ValidateName("correlation id", m.CorrelationID), checkHeaders(m.Headers, "Message.ContentType"),
		checkText("Message.Type", m.Type), checkText("Message.ContentType", m.ContentType),
		checkTraceContext(m.TraceParent, m.TraceState)}
	if err := backend.CheckSession(&m); err != nil {
		errs = append(errs, err)
	}
	if d := time.Until(m.NotBefore); d > c.cfg.MaxDelay {
		errs = append(errs, fmt.Errorf("NotBefore is %s ahead, more than Config.MaxDelay %s", d.Round(time.Second), c.cfg.MaxDelay))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if len(m.Body) > c.cfg.MaxBodySize {
		return nil, fmt.Errorf("%w: body is %d bytes, limit %d", ErrTooLarge, len(m.Body), c.cfg.MaxBodySize)
	}
	return &m, nil
}

// checkHeaders reports application headers that the wire format cannot
// carry: reserved names, and keys that are not printable ASCII without ':'.
func checkHeaders(h map[string]string, contentTypeField string) error {
	var errs []error
	for k, v := range h {
		switch {
		case strings.EqualFold(k, "traceparent") || strings.EqualFold(k, "tracestate"):
			errs = append(errs, fmt.Errorf("header %q is reserved: rsvp sets the trace context from the context's span", k))
		case backend.ReservedHeader(k):
			errs = append(errs, fmt.Errorf("header %q uses a reserved prefix (Rsvp-, Nats-) or name (Content-Type: use %s)", k, contentTypeField))
		case !validHeaderKey(k):
			errs = append(errs, fmt.Errorf("header key %q must be printable ASCII without spaces or ':'", k))
		case strings.ContainsAny(v, "\r\n"):
			errs = append(errs, fmt.Errorf("header %q has a line break in its value", k))
		default:
			errs = append(errs, checkText("header "+strconv.Quote(k), v))
		}
	}
	return errors.Join(errs...)
}

// checkText reports a text field of a request or reply (a type, a content
// type, a header value) that the engines cannot all store as it is: with a
// line break (a NATS header), or not UTF-8 text without NUL bytes
// (PostgreSQL), which would otherwise be refused on every attempt.
func checkText(what, s string) error {
	switch {
	case strings.ContainsAny(s, "\r\n"):
		return fmt.Errorf("%s %.40q has a line break", what, s)
	case !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("%s %.40q is not UTF-8 text without NUL bytes", what, s)
	}
	return nil
}

// checkTraceContext reports a trace context (Message.TraceParent and
// TraceState, or Reply's) set by hand that the wire format cannot carry.
// rsvp writes them from the context's span; one given by hand travels only
// when the context has no span.
func checkTraceContext(parent, state string) error {
	if strings.ContainsAny(parent+state, "\r\n") {
		return errors.New("TraceParent or TraceState has a line break")
	}
	return nil
}

func validHeaderKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Request sends msg to queue and waits for its reply. The context's
// deadline, if any, travels with the request as its Deadline (unless
// msg.Deadline is earlier): a responder does not start it after that. A
// failed or expired request returns the stored reply and a *RemoteError.
// When that deadline passes with no reply (the context's or msg.Deadline,
// whichever is earlier), Request stops waiting, stores the expired reply
// itself (unless a reply just came) and returns ErrExpired: Await in any
// process then knows, even if no responder ever took the request. As a
// responder does with the replies it stores, it records the final event of
// a tracked request and lists the reply under its reply session. A Request
// given up before its deadline (ctx cancelled) leaves an expiry task
// instead, which stores the expired reply at the deadline unless the
// request has a reply by then.
//
// A Request with an ID or CorrelationID of the caller's choosing gets the
// reply to that id, whoever sent it first: it may have been answered
// already, or be under way for another client.
func (c *Client) Request(ctx context.Context, queue string, msg *Message) (*Reply, error) {
	m, err := c.prepare(queue, msg)
	if err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok && (m.Deadline.IsZero() || d.Before(m.Deadline)) {
		m.Deadline = d
	}
	if err := c.checkResponders(ctx, queue); err != nil {
		return nil, err
	}
	tq := c.tel.queue(queue)
	ctx, span := c.tel.startRequest(ctx, tq)
	start := time.Now()
	ch := c.waiters.add(m.CorrelationID)
	defer c.waiters.remove(m.CorrelationID, ch)
	// A caller-chosen id may have been sent before, by another client too
	// (a requester repeating its Request after a restart): the request
	// stored then (dedupe), or its reply, goes to that client's inbox. Such
	// a Request watches for the reply whatever its inbox, and looks it up
	// at once, as Await does; one with a new id needs neither.
	lookNow := msg.ID != "" || msg.CorrelationID != ""
	if lookNow {
		sub, err := c.b.WatchReply(ctx, m.CorrelationID, c.waiters.deliver)
		if err != nil {
			c.tel.endRequestSpan(span, tq, m, nil, "error")
			return nil, fmt.Errorf("rsvp: request %s: watch for its reply: %w", m.CorrelationID, err)
		}
		defer sub.Close()
	}
	if _, err := c.send(ctx, m, false); err != nil {
		c.abandon(ctx, m, err) // stored all the same if only its acknowledgement was cut short
		c.tel.endRequestSpan(span, tq, m, nil, "error")
		return nil, err
	}
	wctx := ctx
	if d, ok := ctx.Deadline(); !m.Deadline.IsZero() && (!ok || m.Deadline.Before(d)) {
		// Message.Deadline comes first: the request is over then, reply
		// or not.
		var cancel context.CancelFunc
		wctx, cancel = context.WithDeadline(ctx, m.Deadline)
		defer cancel()
	}
	r, err := c.wait(wctx, m.CorrelationID, ch, lookNow)
	if r == nil && err != nil && !m.Deadline.IsZero() {
		switch {
		case time.Now().Before(m.Deadline): // the caller gave up first
			c.leaveExpiry(ctx, m)
		case wctx.Err() != nil:
			// The request's own deadline passed without a reply: it expired
			// (a responder that reaches it dead-letters it as expired).
			r, err = c.expireRequest(ctx, m, err)
		}
	}
	c.abandon(ctx, m, err)
	c.tel.endRequest(ctx, span, tq, m, r, err, time.Since(start))
	return r, err
}

// abandon cancels m's request (see Cancel) when the caller's ctx ended a
// Request with err and Config.CancelOnAbandon is set.
func (c *Client) abandon(ctx context.Context, m *Message, err error) {
	if err == nil || ctx.Err() == nil || !c.cfg.CancelOnAbandon {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, cerr := c.Cancel(cctx, m.CorrelationID); cerr != nil {
		c.cfg.Logger.WarnContext(ctx, "rsvp: cancelling an abandoned request failed", "queue", m.Queue, "id", m.ID,
			"correlation_id", m.CorrelationID, "err", cerr)
	}
}

// leaveExpiry schedules the expiry task of m, whose Request stopped
// waiting before its deadline (the caller gave up): whoever handles it
// stores the expired reply then, unless m has a reply by then.
func (c *Client) leaveExpiry(ctx context.Context, m *Message) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := c.scheduleExpiry(ctx, expiryOf(m)); err != nil {
		c.cfg.Logger.WarnContext(ctx, "rsvp: leaving the expiry of an abandoned request failed", "queue", m.Queue, "id", m.ID,
			"correlation_id", m.CorrelationID, "err", err)
	}
}

// expireRequest stores the final reply of m, whose deadline passed with no
// reply (waitErr): expired, so that Await finds it in any process even if
// no responder ever takes m (see expire). A reply stored just before wins,
// and is returned as Request returns replies.
func (c *Client) expireRequest(ctx context.Context, m *Message, waitErr error) (*Reply, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	r, err := c.expire(ctx, expiryOf(m))
	if r != nil {
		return r, replyError(r)
	}
	if err != nil && !errors.Is(err, backend.ErrReplyExists) {
		c.cfg.Logger.WarnContext(ctx, "rsvp: storing the expiry of a request failed", "queue", m.Queue, "id", m.ID,
			"correlation_id", m.CorrelationID, "err", err)
	}
	return nil, fmt.Errorf("%w: %w", ErrExpired, waitErr)
}

// Await waits for the reply to the request with correlationID, sent by this
// or any other client on the same engine (a requester that restarted, say),
// for as long as the backend retains replies. Its span records the outcome,
// and links to the span that replied when that is in another trace.
func (c *Client) Await(ctx context.Context, correlationID string) (*Reply, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	if err := backend.ValidateName("correlation id", correlationID); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	ctx, span := c.tel.tracer.Start(ctx, "rsvp.await", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("messaging.system", "rsvp"), attribute.String("rsvp.correlation_id", correlationID)))
	defer span.End()
	c.startExpirer() // the request may need its expiry task run
	ch := c.waiters.add(correlationID)
	defer c.waiters.remove(correlationID, ch)
	// The reply may be addressed to another client's inbox.
	sub, err := c.b.WatchReply(ctx, correlationID, c.waiters.deliver)
	if err != nil {
		return nil, fmt.Errorf("rsvp: await %s: %w", correlationID, err)
	}
	defer sub.Close()
	r, err := c.wait(ctx, correlationID, ch, true)
	c.tel.endAwait(span, r, err)
	return r, err
}

func (c *Client) wait(ctx context.Context, id string, ch chan *Reply, lookNow bool) (*Reply, error) {
	recheck := time.NewTimer(c.cfg.RecheckInterval)
	defer recheck.Stop()
	for rechecks := 0; ; rechecks++ {
		if lookNow {
			r, err := c.b.GetReply(ctx, id)
			switch {
			case err == nil:
				return r, replyError(r)
			case errors.Is(err, backend.ErrNotFound):
			case rechecks == 0:
				return nil, fmt.Errorf("rsvp: await %s: %w", id, err)
			default:
				// A recheck during a reconnect, say: keep waiting; only ctx ends the wait.
				c.cfg.Logger.WarnContext(ctx, "rsvp: looking up a reply failed; still waiting", "correlation_id", id, "err", err)
			}
		}
		select {
		case r := <-ch:
			return r, replyError(r)
		case <-ctx.Done():
			return nil, fmt.Errorf("rsvp: await %s: %w", id, context.Cause(ctx))
		case <-recheck.C:
			recheck.Reset(c.cfg.RecheckInterval)
			lookNow = true
		}
	}
}

// waiters maps correlation ids to the channels of calls awaiting them.
type waiters struct {
	mu sync.Mutex
	m  map[string][]chan *Reply
	n  int // channels in m: the calls waiting (an id may have several)
}

func (w *waiters) add(id string) chan *Reply {
	ch := make(chan *Reply, 1)
	w.mu.Lock()
	w.m[id] = append(w.m[id], ch)
	w.n++
	w.mu.Unlock()
	return ch
}

// remove forgets ch. A reply delivered to it afterwards is not delivered to
// anyone: it stays stored for Await.
func (w *waiters) remove(id string, ch chan *Reply) {
	w.mu.Lock()
	defer w.mu.Unlock()
	chs := w.m[id]
	for i, c := range chs {
		if c == ch {
			chs = append(chs[:i], chs[i+1:]...)
			w.n--
			break
		}
	}
	if len(chs) == 0 {
		delete(w.m, id)
	} else {
		w.m[id] = chs
	}
}

// deliver hands r to every call waiting for it and forgets them.
func (w *waiters) deliver(r *Reply) {
	w.mu.Lock()
	chs := w.m[r.CorrelationID]
	delete(w.m, r.CorrelationID)
	w.n -= len(chs)
	w.mu.Unlock()
	for _, ch := range chs {
		ch <- r // buffered 1, and each channel is delivered to once
	}
}

// len returns the number of calls waiting: rsvp.waiters.
func (w *waiters) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// Cancel cancels the request with correlationID, sent by any client: it
// stores a final reply with status cancelled (code CodeCancelled), so the
// requester's Request or Await returns ErrCancelled, and a reply the
// responder sends later is discarded. For a tracked request (Message.Track)
// the cancellation also reaches the responders: one that has not started
// the request never does, and a running handler's ctx is cancelled with
// cause ErrCancelled (at once; within a second if the responder could not
// watch for it and looks instead).
//
// Cancel returns the request's final reply: the cancellation, or the reply
// it already had, which stands (check its Status). A requester of another
// client learns of the cancellation within Config.RecheckInterval.
func (c *Client) Cancel(ctx context.Context, correlationID string) (*Reply, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	if err := backend.ValidateName("correlation id", correlationID); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	r := &Reply{CorrelationID: correlationID, Status: backend.StatusCancelled, ErrorCode: CodeCancelled,
		ErrorMessage: "cancelled by the requester", CreatedAt: time.Now()}
	err := c.b.PutReply(ctx, c.b.ReplyAddress(c.cfg.Inbox, correlationID), r)
	if errors.Is(err, backend.ErrReplyExists) {
		if r, err = c.b.GetReply(ctx, correlationID); err == nil {
			return r, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("rsvp: cancel %s: %w", correlationID, err)
	}
	// End the request's event log, under its channel if it has one, with
	// the final event of its current run.
	ev := &backend.Event{CorrelationID: correlationID, Type: string(backend.StatusCancelled), At: r.CreatedAt,
		Data: []byte(`{"code":"cancelled","message":"cancelled by the requester"}`)}
	ev.DedupeKey, ev.Channel, err = c.currentRun(ctx, correlationID)
	if err == nil {
		err = c.b.AppendEvent(ctx, ev)
	}
	if err != nil {
		c.cfg.Logger.WarnContext(ctx, "rsvp: cancelled, but recording the event failed", "correlation_id", correlationID, "err", err)
	}
	return r, nil
}

// currentRun reads the event log of correlationID's request and returns
// the dedupe key of the final event of its current run, and the channel
// its log is listed under. The key is "<id>:final" of its last replay if
// it was replayed, else "<correlation id>:final": Cancel, which knows only
// the correlation id, records its cancelled event under it, and so does a
// responder that finds the request cancelled (finalKey differs for a first
// run whose id is not its correlation id).
func (c *Client) currentRun(ctx context.Context, correlationID string) (key, channel string, err error) {
	key = correlationID + ":final"
	first := true
	err = c.eachEvent(ctx, correlationID, func(e *backend.Event) bool {
		if first {
			channel, first = e.Channel, false
		}
		if id := replayedID(e); e.Type == backend.EventReplayed && id != "" {
			key = id + ":final"
		}
		return true
	})
	return key, channel, err
}

// MaxDelay returns how far ahead Message.NotBefore may schedule a request.
func (c *Client) MaxDelay() time.Duration { return c.cfg.MaxDelay }

// MaxBodySize returns the largest request or reply body the client accepts.
func (c *Client) MaxBodySize() int { return c.cfg.MaxBodySize }

// checkResponders returns ErrNoResponders if Config.RequireResponder is set
// and no responder of queue was active within it. A sighting is trusted for
// a tenth of the window, so that most requests cost no look-up.
func (c *Client) checkResponders(ctx context.Context, queue string) error {
	window := c.cfg.RequireResponder
	ar, ok := c.b.(backend.ActivityReporter)
	if window == 0 || !ok {
		return nil
	}
	if seen, ok := c.active.Load(queue); ok && time.Since(seen.(time.Time)) < window/10 {
		return nil
	}
	last, err := ar.LastActive(ctx, queue)
	if err != nil {
		return fmt.Errorf("rsvp: request on %s: looking for responders: %w", queue, err)
	}
	if time.Since(last) > window {
		return fmt.Errorf("%w: none active on queue %s within %s", ErrNoResponders, queue, window)
	}
	c.active.Store(queue, time.Now())
	return nil
}
