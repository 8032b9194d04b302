package gateway

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// record is what the gateway keeps about a request it accepted: the data
// of the request's first event (backend.EventQueued).
type record struct {
	ID          string    `json:"id"`
	Queue       string    `json:"queue"`
	Tenant      string    `json:"tenant,omitempty"`
	ContentType string    `json:"content_type,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	Deadline    time.Time `json:"deadline,omitzero"`
	NotBefore   time.Time `json:"not_before,omitzero"` // scheduled: not handed out before
	Callback    string    `json:"callback,omitempty"`
	// QueueWebhook: Callback is the queue's default webhook
	// (QueueConfig.Webhook when the request was submitted), the
	// operator's, not a Callback-URL of the submitter's.
	QueueWebhook bool   `json:"queue_webhook,omitempty"`
	Channel      string `json:"channel,omitempty"`
	// SessionKey is the session of the queue the request joined
	// (Session-Key header): Message.SessionKey.
	SessionKey string `json:"session_key,omitempty"`
	// Digest identifies the submission (queue, content type, session key,
	// body) for Idempotency-Key checks.
	Digest string `json:"digest"`
	// Trace and TraceState are the W3C trace context (traceparent,
	// tracestate) of the submission, parent of the spans of later pushes.
	Trace      string `json:"trace,omitempty"`
	TraceState string `json:"tracestate,omitempty"`
}

// States of a request, as the API shows them.
const (
	StateQueued    = "queued"
	StateRunning   = "running"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateExpired   = "expired"
	StateCancelled = "cancelled"
)

func finalState(s string) bool {
	return s == StateSucceeded || s == StateFailed || s == StateExpired || s == StateCancelled
}

// Status is the status resource of a request.
type Status struct {
	ID         string           `json:"id"`
	Queue      string           `json:"queue"`
	State      string           `json:"state"`
	CreatedAt  time.Time        `json:"created_at"`
	UpdatedAt  time.Time        `json:"updated_at"`
	StartedAt  *time.Time       `json:"started_at,omitempty"`
	FinishedAt *time.Time       `json:"finished_at,omitempty"`
	RetryAt    *time.Time       `json:"retry_at,omitempty"`
	NotBefore  *time.Time       `json:"not_before,omitempty"`
	ExpiresAt  time.Time        `json:"expires_at"`
	Attempts   int              `json:"attempts"`
	Progress   json.RawMessage  `json:"progress,omitempty"`
	Error      *Problem         `json:"error,omitempty"`
	Channel    string           `json:"channel,omitempty"`
	SessionKey string           `json:"session_key,omitempty"`
	Webhooks   []WebhookAttempt `json:"webhooks,omitempty"`
	Links      Links            `json:"links"`
	// Seq is the position of the last event that changed the status; a
	// long-poll returns once a later one exists. Events that change nothing
	// shown (handed_back, a stale attempt's) do not count.
	Seq uint64 `json:"-"`
	// replayed: sent again from its dead letter, without the deadline of
	// the submission.
	replayed bool
}

// Links are the URLs of a request's resources.
type Links struct {
	Status string `json:"status"`
	Result string `json:"result"`
	Events string `json:"events"`
	Cancel string `json:"cancel"`
}

// WebhookAttempt is one delivery attempt of the result to the callback URL.
type WebhookAttempt struct {
	Attempt   int       `json:"attempt"`
	At        time.Time `json:"at"`
	Delivered bool      `json:"delivered"`
	Status    int       `json:"status,omitempty"` // HTTP status of the response, if any
	Error     string    `json:"error,omitempty"`
}

func links(id string) Links {
	base := "/v1/requests/" + id
	return Links{Status: base, Result: base + "/result", Events: base + "/events", Cancel: base}
}

// eventData is the union of the fields events carry.
type eventData struct {
	Attempt   int             `json:"attempt"`
	Error     string          `json:"error"`
	RetryAt   time.Time       `json:"retry_at"`
	Code      string          `json:"code"`
	Message   string          `json:"message"`
	Status    int             `json:"status"`
	Delivered bool            `json:"delivered"`
	Progress  json.RawMessage `json:"-"`
}

// fold computes a request's status from its record, its events and its
// reply (nil while there is none). The reply, when present, decides the
// final state.
func (g *Gateway) fold(rec *record, evs []*backend.Event, reply *backend.Reply) *Status {
	s := &Status{ID: rec.ID, Queue: rec.Queue, State: StateQueued, CreatedAt: rec.CreatedAt, UpdatedAt: rec.CreatedAt,
		ExpiresAt: rec.CreatedAt.Add(g.cfg.Retention), Channel: rec.Channel, SessionKey: rec.SessionKey, Links: links(rec.ID)}
	if !rec.NotBefore.IsZero() {
		s.NotBefore = &rec.NotBefore
	}
	for _, ev := range evs {
		if finalState(s.State) && ev.Type != backend.EventWebhook && ev.Type != backend.EventReplayed {
			continue // a late event of a stale attempt
		}
		var d eventData
		if len(ev.Data) > 0 && ev.Type != backend.EventProgress {
			_ = json.Unmarshal(ev.Data, &d) // tolerate what a foreign writer stored
		}
		at := ev.At
		switch ev.Type {
		case backend.EventQueued, backend.EventHandedBack:
			continue
		case backend.EventReplayed: // sent again after its dead letter: what came before is over
			s.State, s.RetryAt, s.FinishedAt, s.Error = StateQueued, nil, nil, nil
			s.replayed = true
		case backend.EventRunning:
			s.State, s.RetryAt, s.Error = StateRunning, nil, nil
			s.Attempts = max(s.Attempts, d.Attempt)
			if s.StartedAt == nil {
				s.StartedAt = &at
			}
		case backend.EventRetrying:
			if d.Attempt < s.Attempts {
				continue // of an attempt given back late, after the next one began
			}
			s.State = StateQueued
			s.RetryAt = &d.RetryAt
			s.Error = &Problem{Type: problemType + "attempt-failed", Title: "Attempt failed, will retry", Status: http.StatusOK,
				Detail: d.Error, Code: rsvp.CodeFailed}
		case backend.EventProgress:
			s.Progress = json.RawMessage(ev.Data)
		case backend.EventWebhook:
			s.Webhooks = append(s.Webhooks, WebhookAttempt{Attempt: d.Attempt, At: at, Delivered: d.Delivered, Status: d.Status, Error: d.Error})
			s.Seq = ev.Seq
			continue // not a change of the request's own state
		default: // a final status
			s.State = ev.Type
			s.RetryAt = nil
			s.FinishedAt = &at
			s.Error = nil
			if ev.Type != StateSucceeded {
				s.Error = failureProblem(rec.ID, ev.Type, d.Code, d.Message)
			}
		}
		s.UpdatedAt, s.Seq = at, ev.Seq
	}
	if reply != nil && (!finalState(s.State) || s.State != string(reply.Status)) {
		// The reply is stored before its event: it is the truth.
		at := reply.CreatedAt
		s.State, s.RetryAt, s.FinishedAt, s.UpdatedAt, s.Error = string(reply.Status), nil, &at, at, nil
		if reply.Status != backend.StatusSucceeded {
			s.Error = failureProblem(rec.ID, string(reply.Status), reply.ErrorCode, reply.ErrorMessage)
		}
	}
	return s
}

func failureProblem(id, state, code, msg string) *Problem {
	p := &Problem{Type: problemType + "request-" + state, Status: resultStatus(state), Code: code, Detail: msg,
		Instance: "/v1/requests/" + id}
	switch state {
	case StateFailed:
		p.Title = "The request failed"
	case StateExpired:
		p.Title = "The request expired before it was done"
	case StateCancelled:
		p.Title = "The request was cancelled"
	}
	return p
}

// resultStatus is the HTTP status of the result of a finished request.
func resultStatus(state string) int {
	switch state {
	case StateFailed:
		return http.StatusBadGateway
	case StateExpired:
		return http.StatusGatewayTimeout
	case StateCancelled:
		return http.StatusGone
	}
	return http.StatusOK
}

var errUnknown = errors.New("no such request")

// load reads a request's record and events after seq 0, and its reply.
func (g *Gateway) load(ctx context.Context, id string) (*record, []*backend.Event, *backend.Reply, error) {
	if backend.ValidateName("id", id) != nil {
		return nil, nil, nil, errUnknown
	}
	var evs []*backend.Event
	for after := uint64(0); ; {
		page, err := g.b.Events(ctx, backend.EventQuery{CorrelationID: id, After: after, Limit: 256})
		if err != nil {
			return nil, nil, nil, err
		}
		evs = append(evs, page...)
		if len(page) < 256 {
			break
		}
		after = page[len(page)-1].Seq
	}
	if len(evs) == 0 || evs[0].Type != backend.EventQueued {
		return nil, nil, nil, errUnknown
	}
	rec := new(record)
	if err := json.Unmarshal(evs[0].Data, rec); err != nil || rec.ID != id {
		return nil, nil, nil, errUnknown
	}
	reply, err := g.b.GetReply(ctx, id)
	if errors.Is(err, backend.ErrNotFound) {
		reply, err = nil, nil
	}
	if err != nil {
		return nil, nil, nil, err
	}
	return rec, evs, reply, nil
}

// lookup loads a request for a caller, writing the error response (404
// also for another tenant's request) and returning ok false on failure.
func (g *Gateway) lookup(w http.ResponseWriter, r *http.Request, c caller) (*record, *Status, *backend.Reply, bool) {
	id := r.PathValue("id")
	rec, evs, reply, err := g.load(r.Context(), id)
	if err == nil && !c.sees(rec.Tenant, rec.Queue) {
		err = errUnknown
	}
	switch {
	case errors.Is(err, errUnknown):
		problem(w, http.StatusNotFound, "unknown-request", "No such request", fmt.Sprintf("request %q is unknown, purged, or not yours", id))
		return nil, nil, nil, false
	case err != nil:
		g.engineDown(w, r, err)
		return nil, nil, nil, false
	}
	st := g.fold(rec, evs, reply)
	if st.State == StateQueued && !rec.Deadline.IsZero() && time.Now().After(rec.Deadline) && !st.replayed {
		// Nobody started it in time: expire it now rather than show it
		// queued until a responder comes by.
		if reply, err = g.expire(r.Context(), rec); err == nil {
			_, evs, _, _ = g.load(r.Context(), id)
			st = g.fold(rec, evs, reply)
		}
	}
	return rec, st, reply, true
}

// expire stores the expired reply of a request past its deadline (or
// finds the reply that beat it) and ends its event log.
func (g *Gateway) expire(ctx context.Context, rec *record) (*backend.Reply, error) {
	reply := &backend.Reply{CorrelationID: rec.ID, Status: backend.StatusExpired, ErrorCode: rsvp.CodeExpired,
		ErrorMessage: "deadline passed before the request was started", CreatedAt: time.Now()}
	err := g.storeFinal(ctx, rec, reply)
	if errors.Is(err, backend.ErrReplyExists) {
		return g.b.GetReply(ctx, rec.ID)
	}
	return reply, err
}

// storeFinal stores reply, an outcome the gateway decided for rec's
// request, then the final event that ends its log, as a responder would:
// it wakes the watchers (webhook job, streams, long-polls). It returns
// backend.ErrReplyExists if a reply was stored first.
func (g *Gateway) storeFinal(ctx context.Context, rec *record, reply *backend.Reply) error {
	if err := g.b.PutReply(ctx, g.b.ReplyAddress(gatewayInbox, rec.ID), reply); err != nil {
		return err
	}
	return g.b.AppendEvent(ctx, finalEvent(rec, reply, reply.CreatedAt, rec.ID+":final"))
}

// finalEvent is the final event of rec's request for its reply, at at,
// with dedupe key key.
func finalEvent(rec *record, reply *backend.Reply, at time.Time, key string) *backend.Event {
	ev := &backend.Event{CorrelationID: rec.ID, Channel: scopedChannel(rec.Tenant, rec.Channel), Type: string(reply.Status),
		At: at, DedupeKey: key}
	if reply.Status != backend.StatusSucceeded {
		ev.Data, _ = json.Marshal(map[string]string{"code": reply.ErrorCode, "message": reply.ErrorMessage}) // plain strings always encode
	}
	return ev
}

// engineDown answers a call whose engine call failed with err: 503, and
// err in the log only. An engine's errors are the operator's business, and
// may name its configuration: a PostgreSQL engine that cannot connect says
// "failed to connect to `user=rsvp database=prod`: 10.1.2.3:5432 ...".
func (g *Gateway) engineDown(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client left
	}
	g.log.Error("gateway: engine call failed", "method", r.Method, "path", r.URL.Path, "err", err)
	w.Header().Set("Retry-After", "1")
	problem(w, http.StatusServiceUnavailable, "engine-unavailable", "The engine is not reachable", engineFailed+"; retry")
}

// engineFailed is what callers read of an engine call that failed; the
// gateway's log has the error.
const engineFailed = "the engine failed or could not be reached (the gateway's log has the cause)"

// submit: POST /v1/queues/{queue}/requests.
func (g *Gateway) submit(w http.ResponseWriter, r *http.Request) {
	c, queue, ok := g.queueCall(w, r, RightSend)
	if !ok {
		return
	}
	qc := g.cfg.Queues[queue]
	rec := &record{Queue: queue, Tenant: c.tenant, ContentType: r.Header.Get("Content-Type"), CreatedAt: time.Now().UTC(),
		Channel: r.Header.Get("Notify-Channel"), Callback: cmp.Or(r.Header.Get("Callback-URL"), qc.Webhook)}
	rec.QueueWebhook = rec.Callback != "" && r.Header.Get("Callback-URL") == ""
	var errs []error
	if rec.ContentType != "" {
		if _, _, err := mime.ParseMediaType(rec.ContentType); err != nil {
			errs = append(errs, fmt.Errorf("Content-Type %q: %w", rec.ContentType, err))
		}
	}
	if rec.Channel != "" {
		if err := checkChannel(rec.Channel); err != nil {
			errs = append(errs, fmt.Errorf("Notify-Channel: %w", err))
		}
	}
	if rec.Callback != "" {
		if g.hooks == nil {
			errs = append(errs, errors.New("Callback-URL: this gateway has no webhook secret configured, so it sends no webhooks"))
		} else if err := g.hooks.checkURL(rec.Callback); err != nil {
			errs = append(errs, fmt.Errorf("Callback-URL: %w", err))
		}
	}
	if t := r.URL.Query().Get("timeout"); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("timeout %q is not a positive duration such as 30s", t))
		} else {
			rec.Deadline = rec.CreatedAt.Add(d)
		}
	}
	if d := r.URL.Query().Get("delay"); d != "" {
		delay, err := time.ParseDuration(d)
		switch {
		case err != nil || delay < 0:
			errs = append(errs, fmt.Errorf("delay %q is not a duration such as 90s", d))
		case delay > g.c.MaxDelay():
			errs = append(errs, fmt.Errorf("delay %s is more than the most allowed, %s", d, g.c.MaxDelay()))
		case delay > 0:
			rec.NotBefore = rec.CreatedAt.Add(delay)
		}
	}
	switch ks := r.Header.Values("Session-Key"); {
	case len(ks) > 1:
		errs = append(errs, fmt.Errorf("Session-Key is given %d times; a request joins one session", len(ks)))
	case len(ks) == 1: // present, if empty
		rec.SessionKey = ks[0]
		if err := backend.ValidateSessionKey("Session-Key", rec.SessionKey); err != nil {
			errs = append(errs, err)
		}
		if !rec.NotBefore.IsZero() {
			errs = append(errs, errors.New("Session-Key with delay: a request of a session cannot be scheduled, it would hold up its session"))
		}
	}
	var wait time.Duration
	if pw, ok := preferWait(r.Header.Values("Prefer")); ok {
		var err error
		if wait, err = g.parseWait(pw); err != nil {
			errs = append(errs, fmt.Errorf("Prefer: %w", err))
		}
	}
	key := r.Header.Get("Idempotency-Key")
	switch n := len(r.Header.Values("Idempotency-Key")); {
	case n > 1:
		errs = append(errs, fmt.Errorf("Idempotency-Key is given %d times; a submission has one key", n))
	case key == "" && qc.RequireIdempotencyKey:
		errs = append(errs, fmt.Errorf("queue %s requires an Idempotency-Key header", queue))
	case len(key) > 255:
		errs = append(errs, errors.New("Idempotency-Key is longer than 255 bytes"))
	}
	if err := errors.Join(errs...); err != nil {
		problem(w, http.StatusBadRequest, "invalid-request", "Invalid request", err.Error())
		return
	}
	body, ok := g.readBody(w, r, g.cfg.MaxBodySize)
	if !ok {
		return
	}
	rec.Digest = digest(queue, rec.ContentType, rec.SessionKey, body)
	rec.Trace, rec.TraceState = g.tel.traceOf(r.Context())
	if key != "" {
		rec.ID = idempotentID(c.tenant, key)
	} else {
		rec.ID = rsvp.NewID()
	}
	stored, err := g.store(r.Context(), rec, body)
	switch {
	case errors.Is(err, errConflict):
		problem(w, http.StatusUnprocessableEntity, "idempotency-key-reused", "Idempotency-Key reused",
			"this key was used for a different request (other queue, content type, session key or body)")
		return
	case errors.Is(err, rsvp.ErrTooLarge):
		problem(w, http.StatusRequestEntityTooLarge, "too-large", "Body too large", err.Error())
		return
	case errors.Is(err, errors.ErrUnsupported):
		// A delay on an engine that cannot schedule (NATS before 2.12):
		// retrying would fail alike.
		problem(w, http.StatusNotImplemented, "scheduling-unsupported", "The engine cannot schedule requests", err.Error())
		return
	case err != nil:
		g.engineDown(w, r, err)
		return
	}
	g.log.Info("gateway: accepted", "queue", queue, "id", stored.ID, "correlation_id", stored.ID, "tenant", c.tenant)
	if wait > 0 {
		if reply := g.submitWait(r, stored.ID, wait); reply != nil {
			// Whole seconds, as RFC 7240 has it: a wait of 500ms is wait=1.
			w.Header().Set("Preference-Applied", "wait="+strconv.Itoa(int((wait+time.Second-1)/time.Second)))
			w.Header().Set("Content-Location", links(stored.ID).Result)
			writeResult(w, stored.ID, reply)
			return
		}
	}
	st := g.fold(stored, nil, nil) // a new request is queued
	if stored != rec || wait > 0 {
		// An Idempotency-Key used again, or a wait that ended first: show
		// where the request is now.
		if _, evs, reply, err := g.load(r.Context(), stored.ID); err == nil {
			st = g.fold(stored, evs, reply)
		}
	}
	w.Header().Set("Location", st.Links.Status)
	w.Header().Set("Retry-After", strconv.Itoa(int(g.cfg.RetryAfter.Seconds())))
	g.setExpires(w, st)
	writeJSON(w, http.StatusAccepted, st)
}

// submitWait waits up to d for the reply to id, a submission's, as a
// long-poll does: it takes a stream slot (if none is free it does not
// wait), and ends when the client leaves or the gateway closes. nil: no
// reply (yet).
func (g *Gateway) submitWait(r *http.Request, id string, d time.Duration) *backend.Reply {
	release, ok := g.tryStream()
	if !ok {
		return nil
	}
	defer release()
	ctx, cancel := g.streamCtx(r)
	defer cancel()
	reply, err := g.waitFinal(ctx, id, d)
	if err != nil {
		return nil
	}
	return reply
}

var errConflict = errors.New("idempotency key reused for another request")

// store records and enqueues a request. For an id stored before (an
// Idempotency-Key used again) it returns that request's record, and
// errConflict if the submission differs.
func (g *Gateway) store(ctx context.Context, rec *record, body []byte) (*record, error) {
	if strings.HasPrefix(rec.ID, idempotentPrefix) {
		// A key used before has its record: check against it, and add
		// nothing to its log (the record event's dedupe lasts only the
		// engine's dedupe window).
		prev, _, reply, err := g.load(ctx, rec.ID)
		if err == nil {
			return g.again(ctx, prev, rec, reply, body)
		}
		if !errors.Is(err, errUnknown) {
			return nil, err
		}
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	ev := &backend.Event{CorrelationID: rec.ID, Channel: scopedChannel(rec.Tenant, rec.Channel), Type: backend.EventQueued, At: rec.CreatedAt,
		Data: data, DedupeKey: rec.ID + ":queued"}
	if err := g.b.AppendEvent(ctx, ev); err != nil {
		return nil, err
	}
	if ev.Seq == 0 {
		// Recorded just now by another submission (a keyed id was looked
		// up above): the first record of the id is the one that counts.
		prev, evs, reply, err := g.load(ctx, rec.ID)
		if err != nil {
			return nil, err
		}
		if len(evs) > 0 && evs[0].Seq != ev.Seq {
			return g.again(ctx, prev, rec, reply, body)
		}
	}
	return g.send(ctx, rec, body, false)
}

// again answers a submission rec of an id recorded before as prev, with
// reply if it has one: a conflict if rec differs, prev if it is done or
// marked sent, and otherwise prev sent again (its webhook job too, unless
// marked queued). That makes sure a submission cut off before its send is
// queued; it is harmless within the engine's dedupe window, and the marks
// (markLog) keep it so after the window too.
func (g *Gateway) again(ctx context.Context, prev, rec *record, reply *backend.Reply, body []byte) (*record, error) {
	if prev.Digest != rec.Digest || prev.Tenant != rec.Tenant {
		return nil, errConflict
	}
	if reply != nil {
		return prev, nil // done; nothing to send again
	}
	marks, err := g.b.Events(ctx, backend.EventQuery{CorrelationID: markLog(prev.ID), Limit: 2})
	if err != nil {
		return nil, err
	}
	hooked := false
	for _, m := range marks {
		switch m.Type {
		case markSent:
			return prev, nil // queued or running
		case markHooked:
			hooked = true
		}
	}
	return g.send(ctx, prev, body, hooked)
}

// markLog is the correlation id of the log where the gateway marks the
// steps of a keyed submission (Idempotency-Key) done: markHooked once its
// webhook job is queued, markSent once its request is. A retry with the
// key after the engine's dedupe window does again only the steps not
// marked, so that neither the work nor the webhook is done twice. The log
// is one of its own, so the request's log, status and streams do not show
// it; it is kept as long as they are.
func markLog(id string) string { return id + ":sent" }

// The marks of markLog.
const (
	markHooked = "hooked"
	markSent   = "sent"
)

// send schedules the webhook of the request of rec (recorded already)
// unless hooked, and enqueues the request: in this order, so that an
// error means the request was not queued. (A webhook job of a request
// that was not accepted sends nothing.) A keyed request's steps are
// marked in markLog.
func (g *Gateway) send(ctx context.Context, rec *record, body []byte, hooked bool) (*record, error) {
	keyed := strings.HasPrefix(rec.ID, idempotentPrefix)
	mark := func(typ string) error {
		if !keyed {
			return nil
		}
		log := markLog(rec.ID)
		return g.b.AppendEvent(ctx, &backend.Event{CorrelationID: log, Type: typ, At: time.Now(), DedupeKey: log + ":" + typ})
	}
	msg := &rsvp.Message{ID: rec.ID, ContentType: rec.ContentType, Body: body, CreatedAt: rec.CreatedAt,
		Deadline: rec.Deadline, NotBefore: rec.NotBefore, Track: true, Channel: scopedChannel(rec.Tenant, rec.Channel),
		SessionKey: rec.SessionKey}
	var err error
	if rec.Callback != "" && !hooked {
		if err = g.scheduleWebhook(ctx, rec); err == nil {
			err = mark(markHooked)
		}
	}
	if err == nil {
		_, err = g.c.Send(ctx, rec.Queue, msg)
	}
	if err != nil {
		if !keyed {
			// The record stays, so end it: the request was not accepted.
			// (A retry with the same Idempotency-Key sends it again instead.)
			g.reject(rec, err)
		}
		return nil, err
	}
	if err := mark(markSent); err != nil {
		return nil, err // a retry with the key sends again (harmless within the dedupe window), and marks
	}
	return rec, nil
}

// reject ends the record of a request that could not be enqueued. Its
// message, which the submitter reads, does not repeat cause, an engine's
// error (see engineDown), which the submission's 503 logged.
func (g *Gateway) reject(rec *record, cause error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	why := engineFailed
	if errors.Is(cause, errors.ErrUnsupported) {
		why = "the engine cannot schedule requests"
	}
	r := &backend.Reply{CorrelationID: rec.ID, Status: backend.StatusFailed, ErrorCode: codeNotAccepted,
		ErrorMessage: "the gateway could not enqueue the request: " + why, CreatedAt: time.Now()}
	if err := g.storeFinal(ctx, rec, r); err != nil && !errors.Is(err, backend.ErrReplyExists) {
		g.log.Warn("gateway: could not mark a request that failed to enqueue", "queue", rec.Queue, "id", rec.ID, "correlation_id", rec.ID, "err", err)
	}
}

// codeNotAccepted is the error code of the reply that ends the record of a
// request that could not be enqueued (the submission was answered 503, or
// 501 for a delay the engine cannot schedule).
const codeNotAccepted = "not_accepted"

// gatewayInbox is the reply inbox name the gateway stores its own final
// replies (rejections) under.
const gatewayInbox = "rsvp-gateway"

// internalPrefix starts the names of the gateway's own queues.
const internalPrefix = "rsvp-"

const idempotentPrefix = "idem-"

// maxChannelLen bounds a Notify-Channel name, leaving room for the tenant
// scope in the engine's channel name.
const maxChannelLen = 100

// scopedChannel is the engine's name of a tenant's channel: tenants naming
// the same channel do not see each other's events.
func scopedChannel(tenant, channel string) string {
	if tenant == "" || channel == "" {
		return channel
	}
	sum := sha256.Sum256([]byte(tenant))
	return hex.EncodeToString(sum[:8]) + ":" + channel
}

// idempotentID derives a request id from a tenant's Idempotency-Key, so the
// key finds its request without a lookup table.
func idempotentID(tenant, key string) string {
	sum := sha256.Sum256([]byte(tenant + "\x00" + key))
	return idempotentPrefix + hex.EncodeToString(sum[:16])
}

// digest identifies a submission for Idempotency-Key checks. Without a
// session key it is what it was before sessions, so keys stored then still
// match; the session key follows the content type after a \x01, which
// neither a queue name nor a header value contains, and ends at a \x00,
// which a session key does not contain.
func digest(queue, contentType, sessionKey string, body []byte) string {
	h := sha256.New()
	if sessionKey == "" {
		fmt.Fprintf(h, "%s\x00%s\x00", queue, contentType)
	} else {
		fmt.Fprintf(h, "%s\x00%s\x01%s\x00", queue, contentType, sessionKey)
	}
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// preferWait finds the wait preference (RFC 7240) in the lines of a
// Prefer header: they make one comma-separated list (RFC 9110, section
// 5.3), and a preference may have parameters after a ";", which wait does
// not use.
func preferWait(lines []string) (string, bool) {
	for _, p := range strings.Split(strings.Join(lines, ","), ",") {
		p, _, _ = strings.Cut(p, ";")
		name, val, ok := strings.Cut(strings.TrimSpace(p), "=")
		if ok && strings.EqualFold(strings.TrimSpace(name), "wait") {
			return strings.Trim(strings.TrimSpace(val), `"`), true
		}
	}
	return "", false
}

// longPollRecheck is how often a long-poll (waitFinal, longPoll) reads
// the request again on its own, in case the notification of its change
// was lost: the engine's notifications are best effort (a core NATS
// message, a PostgreSQL NOTIFY), so without it a lost one held the answer
// until the wait ended, up to a minute, though the result was stored. 5s
// bounds that delay to what a client polling at Retry-After (1s) would
// hardly notice among its retries, while a waiting long-poll costs a fifth
// of the reads of such a client; streams, which may stay open for hours,
// look only every minute (recheckTicks).
const longPollRecheck = 5 * time.Second

// waitFinal waits up to d for the reply to id; nil if there is none yet.
func (g *Gateway) waitFinal(ctx context.Context, id string, d time.Duration) (*backend.Reply, error) {
	w := g.hub.watchID(id)
	defer g.hub.stop(w)
	timer := time.NewTimer(d)
	defer timer.Stop()
	recheck := time.NewTicker(longPollRecheck)
	defer recheck.Stop()
	for {
		reply, err := g.b.GetReply(ctx, id)
		if err == nil {
			return reply, nil
		}
		if !errors.Is(err, backend.ErrNotFound) {
			return nil, err
		}
		select {
		case <-w.C:
		case <-recheck.C: // a notification may have been lost
		case <-timer.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (g *Gateway) setExpires(w http.ResponseWriter, st *Status) {
	w.Header().Set("Expires", st.ExpiresAt.UTC().Format(http.TimeFormat))
}

// status: GET /v1/requests/{id}[?wait=30s][&redirect=false].
func (g *Gateway) status(w http.ResponseWriter, r *http.Request) {
	c, ok := g.authenticate(w, r)
	if !ok {
		return
	}
	wait, err := g.parseWait(r.URL.Query().Get("wait"))
	if err != nil {
		problem(w, http.StatusBadRequest, "invalid-wait", "Invalid wait", err.Error())
		return
	}
	rec, st, _, ok := g.lookup(w, r, c)
	if !ok {
		return
	}
	if wait > 0 && !finalState(st.State) {
		release, ok := g.acquireStream(w)
		if !ok {
			return
		}
		ctx, cancel := g.streamCtx(r)
		st, err = g.longPoll(ctx, rec, st, wait)
		cancel()
		release()
		if err != nil {
			g.engineDown(w, r, err)
			return
		}
	}
	g.setExpires(w, st)
	if finalState(st.State) && r.URL.Query().Get("redirect") != "false" {
		w.Header().Set("Location", st.Links.Result)
		writeJSON(w, http.StatusSeeOther, st)
		return
	}
	if !finalState(st.State) {
		w.Header().Set("Retry-After", strconv.Itoa(int(g.cfg.RetryAfter.Seconds())))
	}
	writeJSON(w, http.StatusOK, st)
}

// longPoll waits up to d for an event after st and returns the new status.
func (g *Gateway) longPoll(ctx context.Context, rec *record, st *Status, d time.Duration) (*Status, error) {
	w := g.hub.watchID(rec.ID)
	defer g.hub.stop(w)
	timer := time.NewTimer(d)
	defer timer.Stop()
	recheck := time.NewTicker(longPollRecheck)
	defer recheck.Stop()
	for {
		// Read after watching, so that no event falls between.
		_, evs, reply, err := g.load(ctx, rec.ID)
		if err != nil {
			return st, err
		}
		if now := g.fold(rec, evs, reply); now.Seq != st.Seq || now.State != st.State {
			return now, nil
		}
		select {
		case <-w.C:
		case <-recheck.C: // a notification may have been lost
		case <-timer.C:
			return st, nil
		case <-ctx.Done():
			return st, nil
		}
	}
}

// result: GET /v1/requests/{id}/result.
func (g *Gateway) result(w http.ResponseWriter, r *http.Request) {
	c, ok := g.authenticate(w, r)
	if !ok {
		return
	}
	_, st, reply, ok := g.lookup(w, r, c)
	if !ok {
		return
	}
	if reply == nil {
		w.Header().Set("Retry-After", strconv.Itoa(int(g.cfg.RetryAfter.Seconds())))
		writeProblem(w, &Problem{Type: problemType + "not-finished", Title: "The request has not finished", Status: http.StatusConflict,
			Detail: "state " + st.State + "; poll " + st.Links.Status + " or stream " + st.Links.Events, Instance: st.Links.Result})
		return
	}
	g.setExpires(w, st)
	writeResult(w, st.ID, reply)
}

// writeResult writes a finished request's reply: the body with its content
// type, or the failure as problem details.
func writeResult(w http.ResponseWriter, id string, reply *backend.Reply) {
	if reply.Status != backend.StatusSucceeded {
		writeProblem(w, failureProblem(id, string(reply.Status), reply.ErrorCode, reply.ErrorMessage))
		return
	}
	if reply.ContentType != "" {
		w.Header().Set("Content-Type", reply.ContentType)
	} else {
		w.Header().Set("Content-Type", "application/octet-stream")
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(reply.Body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(reply.Body)
}

// cancel: DELETE /v1/requests/{id}.
func (g *Gateway) cancel(w http.ResponseWriter, r *http.Request) {
	c, ok := g.authenticate(w, r)
	if !ok {
		return
	}
	rec, st, _, ok := g.lookup(w, r, c)
	if !ok {
		return
	}
	if !finalState(st.State) {
		reply, err := g.c.Cancel(r.Context(), rec.ID)
		if err != nil {
			g.engineDown(w, r, err)
			return
		}
		if reply.Status == backend.StatusCancelled {
			_, evs, reply, err := g.load(r.Context(), rec.ID)
			if err == nil {
				st = g.fold(rec, evs, reply)
			}
			g.log.Info("gateway: cancelled", "queue", rec.Queue, "id", rec.ID, "correlation_id", rec.ID)
			writeJSON(w, http.StatusAccepted, st)
			return
		}
		st.State = string(reply.Status)
	}
	writeProblem(w, &Problem{Type: problemType + "already-finished", Title: "The request has already finished", Status: http.StatusConflict,
		Detail: "state " + st.State, Instance: st.Links.Status})
}
