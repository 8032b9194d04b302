package gateway

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/rsvp-go/rsvp/backend"
)

// The event streams: one request's events and one channel's events as
// Server-Sent Events, and both over a WebSocket. Each follows the engine's
// event log from a cursor, the sequence number of the last event sent: it
// watches the hub first, then reads the stored events after the cursor, and
// reads again on every signal. So no event is missed or sent twice, and a
// client that reconnects with the last sequence number it saw gets exactly
// what it missed.

var (
	// heartbeatInterval is how often an idle stream writes a comment line
	// (SSE) or pings (WebSocket). It is also when a stream reads the log
	// again on its own, in case a notification was lost.
	heartbeatInterval = 15 * time.Second
	// finalGrace is how long a request stream waits for the final event of
	// a request whose reply is stored before it appends that event itself
	// (the writer of the reply died before writing the event).
	finalGrace = 2 * time.Second
	// streamWriteTimeout bounds one write to a stream's client.
	streamWriteTimeout = 30 * time.Second
)

const (
	// eventPage is how many events one read of the log returns at most.
	eventPage = 256
	// maxSubscriptions caps the subscriptions of one WebSocket.
	maxSubscriptions = 256
	// maxClientMessage caps a client's WebSocket message, in bytes.
	maxClientMessage = 4096
)

// StreamEvent is one event of a request as the streams send it: the data
// of an SSE event, the "event" of a WebSocket message.
type StreamEvent struct {
	Seq  uint64    `json:"seq"`  // position in the event log; the SSE id
	Type string    `json:"type"` // queued, running, retrying, progress or a final state
	ID   string    `json:"id"`   // the request's id
	At   time.Time `json:"at"`
	// Data is the event's details: for queued the request (PublicRecord),
	// for running {"attempt"}, for retrying {"attempt","error","retry_at"},
	// for progress what the handler reported, for failed, expired and
	// cancelled {"code","message"}.
	Data json.RawMessage `json:"data,omitempty"`
	// Status is the request's status, on final events.
	Status *Status `json:"status,omitempty"`
	// Result and ContentType are the reply of a succeeded request, on its
	// final event: the body as JSON when its content type is JSON, else as
	// a string (base64 for binary).
	Result      any    `json:"result,omitempty"`
	ContentType string `json:"content_type,omitempty"`
}

// PublicRecord is the data of a queued event as the streams show it: the
// request's record without what only the gateway needs.
type PublicRecord struct {
	ID          string    `json:"id"`
	Queue       string    `json:"queue"`
	ContentType string    `json:"content_type,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	Deadline    time.Time `json:"deadline,omitzero"`
	NotBefore   time.Time `json:"not_before,omitzero"`
	// Callback is the Callback-URL the submitter named; not a queue's
	// default webhook (QueueConfig.Webhook).
	Callback string `json:"callback,omitempty"`
	Channel  string `json:"channel,omitempty"`
}

// streamed reports whether events of type typ go out on the streams.
// Webhook attempts do not (the status resource lists them), nor do types
// unknown to the API.
func streamed(typ string) bool {
	switch typ {
	case backend.EventQueued, backend.EventRunning, backend.EventRetrying, backend.EventProgress, backend.EventReplayed:
		return true
	}
	return finalState(typ)
}

// streamEvent makes the stream form of a stored event. A final event carries
// the request's status and, for success, its result.
func (g *Gateway) streamEvent(ctx context.Context, ev *backend.Event) (*StreamEvent, error) {
	se := &StreamEvent{Seq: ev.Seq, Type: ev.Type, ID: ev.CorrelationID, At: ev.At}
	switch {
	case len(ev.Data) == 0:
	case !json.Valid(ev.Data): // a foreign writer's: show it as a string
		se.Data, _ = json.Marshal(string(ev.Data))
	default:
		se.Data = ev.Data
	}
	switch {
	case ev.Type == backend.EventReplayed:
		se.Data = nil // the dead letter's key and the new message's id: internal
	case ev.Type == backend.EventQueued:
		var rec record
		if json.Unmarshal(ev.Data, &rec) == nil {
			callback := rec.Callback
			if rec.QueueWebhook || callback == g.cfg.Queues[rec.Queue].Webhook { // the latter for records made before QueueWebhook
				callback = "" // the queue's, the operator's: it may hold a token
			}
			se.Data, _ = json.Marshal(PublicRecord{ID: rec.ID, Queue: rec.Queue, ContentType: rec.ContentType,
				CreatedAt: rec.CreatedAt, Deadline: rec.Deadline, NotBefore: rec.NotBefore, Callback: callback, Channel: rec.Channel})
		}
	case finalState(ev.Type):
		rec, evs, reply, err := g.load(ctx, ev.CorrelationID)
		switch {
		case errors.Is(err, errUnknown): // not the gateway's request: no status to show
		case err != nil:
			return nil, err
		default:
			_, span := g.tel.tracer.Start(g.tel.recordTrace(ctx, rec.Trace, rec.TraceState), "rsvp.gateway.push",
				trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attribute.String("rsvp.correlation_id", rec.ID),
					attribute.String("rsvp.event", ev.Type), attribute.Int64("rsvp.event.seq", int64(ev.Seq))))
			defer span.End()
			se.Status = g.fold(rec, evs, reply)
			if reply != nil && reply.Status == backend.StatusSucceeded && ev.Type == StateSucceeded {
				se.Result, se.ContentType = resultValue(reply), reply.ContentType
			}
		}
	}
	return se, nil
}

// feed is the event log a stream follows, one request's or one channel's,
// with the stream's cursor.
type feed struct {
	id      string  // a request's id, or
	ch      string  // a channel's engine name
	rec     *record // the request's record (request feeds)
	replied bool    // the request's reply is known to be stored
	after   uint64  // the cursor: the last event sent or skipped
	// Request feeds: ended, a final event was read and no replay came
	// after it; run, the message id of the replay the events are of
	// (empty: the original request's).
	ended bool
	run   string
	// Channel feeds of a caller whose rights depend on the queue: who
	// the caller is, and whether it sees each request met so far.
	c    *caller
	sees map[string]bool
	// Channel feeds: over tells, for the requests met so far, whether the
	// last final event of each is not followed by a replay: an event of
	// such a request is a stale attempt's, and is not sent, as on the
	// request's own feed (ended).
	over map[string]bool
}

// errCursor: a request stream's cursor is not 0 and names none of its
// events (it is another request's, or a channel's).
var errCursor = errors.New("names no event of the request")

// requestFeed makes the feed of request id for caller c from cursor after.
// errUnknown: no such request, or not c's to see. errCursor: after is not
// 0 and not the seq of one of its events. ended: the final event is at or
// before the cursor, so there is nothing more to send.
func (g *Gateway) requestFeed(ctx context.Context, c caller, id string, after uint64) (f *feed, ended bool, err error) {
	rec, evs, reply, err := g.load(ctx, id)
	if err == nil && !c.sees(rec.Tenant, rec.Queue) {
		err = errUnknown
	}
	if err != nil {
		return nil, false, err
	}
	// The last final event ends the feed, unless a replay came after it.
	// A replay at or before the cursor names the run the feed resumes in.
	f = &feed{id: id, rec: rec, replied: reply != nil, after: after}
	var final, replayed uint64
	known := after == 0
	for _, ev := range evs {
		known = known || ev.Seq == after
		switch {
		case finalState(ev.Type):
			final = ev.Seq
		case ev.Type == backend.EventReplayed:
			replayed = ev.Seq
			if ev.Seq <= after {
				f.run = replayedRun(ev)
			}
		}
	}
	switch {
	case !known:
		return nil, false, errCursor
	case final > replayed && final <= after:
		return nil, true, nil
	}
	return f, false, nil
}

// channelFeed makes the feed of a caller's channel from cursor after. It
// shows only the requests the caller may read, as their status URLs do.
func channelFeed(c caller, channel string, after uint64) *feed {
	f := &feed{ch: scopedChannel(c.tenant, channel), after: after, over: map[string]bool{}}
	if !c.seesEveryQueue() {
		f.c, f.sees = &c, map[string]bool{}
	}
	return f
}

// maxSeesCache bounds the requests a channel feed remembers the caller's
// right to see.
const maxSeesCache = 4096

// shows reports whether f's caller may see the request of ev, an event
// of f's channel: only requests of the gateway (with a record) on queues
// it may read.
func (g *Gateway) shows(ctx context.Context, f *feed, ev *backend.Event) (bool, error) {
	if f.c == nil {
		return true, nil
	}
	if ok, known := f.sees[ev.CorrelationID]; known {
		return ok, nil
	}
	first := ev
	if ev.Type != backend.EventQueued {
		evs, err := g.b.Events(ctx, backend.EventQuery{CorrelationID: ev.CorrelationID, Limit: 1})
		if err != nil {
			return false, err
		}
		if len(evs) == 0 {
			return false, nil
		}
		first = evs[0]
	}
	var rec record
	ok := first.Type == backend.EventQueued && json.Unmarshal(first.Data, &rec) == nil && rec.ID == ev.CorrelationID &&
		f.c.sees(rec.Tenant, rec.Queue)
	if len(f.sees) >= maxSeesCache {
		clear(f.sees)
	}
	f.sees[ev.CorrelationID] = ok
	return ok, nil
}

// stale reports whether ev, an event of f's channel that is neither final
// nor a replay, came after its request's final event (with no replay
// since): a late event of a stale attempt, which the request's own stream
// passes over. A request the feed met from its start is known; one met
// mid-way (the feed resumed from a cursor) is looked up in its request's
// log, where ev is the event of the same type, time and data.
func (g *Gateway) stale(ctx context.Context, f *feed, ev *backend.Event) (bool, error) {
	if over, known := f.over[ev.CorrelationID]; known || ev.Type == backend.EventQueued {
		return over, nil
	}
	q := backend.EventQuery{CorrelationID: ev.CorrelationID, Limit: eventPage}
	for over := false; ; {
		evs, err := g.b.Events(ctx, q)
		if err != nil {
			return false, err
		}
		for _, e := range evs {
			if e.Type == ev.Type && e.At.Equal(ev.At) && bytes.Equal(e.Data, ev.Data) {
				f.passed(ev.CorrelationID, over)
				return over, nil
			}
			switch {
			case finalState(e.Type):
				over = true
			case e.Type == backend.EventReplayed:
				over = false
			}
		}
		if len(evs) < eventPage {
			// Not in the request's log (its writer died between the
			// channel's copy and the request's): not known to be stale.
			return false, nil
		}
		q.After = evs[len(evs)-1].Seq
	}
}

// passed records, on a channel feed, whether the request id is over
// after the event just passed (see feed.over).
func (f *feed) passed(id string, over bool) {
	if len(f.over) >= maxSeesCache {
		clear(f.over) // requests met again are looked up (stale)
	}
	f.over[id] = over
}

// checkChannel validates a channel name from a client.
func checkChannel(ch string) error {
	if err := backend.ValidateChannel(ch); err != nil {
		return err
	}
	if len(ch) > maxChannelLen {
		return fmt.Errorf("channel is longer than %d bytes", maxChannelLen)
	}
	if strings.HasPrefix(ch, internalPrefix) { // such as the workflow instance index
		return fmt.Errorf("channel names starting with %q are reserved", internalPrefix)
	}
	return nil
}

// recheckTicks is how many heartbeats pass between looks in the engine
// for events whose notification was lost.
const recheckTicks = 4

// follow sends f's events after its cursor to emit, oldest first, until ctx
// ends (nil), emit or the engine fails (the error), or, on a request feed,
// emit took the final event (nil). tick, if not nil, runs every
// heartbeatInterval.
func (g *Gateway) follow(ctx context.Context, f *feed, emit func(*StreamEvent) error, tick func() error) error {
	var w *watch
	if f.id != "" {
		w = g.hub.watchID(f.id)
	} else {
		w = g.hub.watchChannel(f.ch)
	}
	defer g.hub.stop(w)
	ticker := time.NewTicker(heartbeatInterval)
	defer ticker.Stop()
	var grace <-chan time.Time // runs while a stored reply waits for its final event
	ticks, read := 0, true
	for {
		// Read after watching, so that no event falls between.
		if read {
			done, err := g.catchUp(ctx, f, emit)
			if done || err != nil {
				return err
			}
		}
		read = true
		if f.replied && grace == nil {
			t := time.NewTimer(finalGrace)
			defer t.Stop()
			grace = t.C
		}
		select {
		case <-w.C:
		case <-ticker.C:
			if tick != nil {
				if err := tick(); err != nil {
					return err
				}
			}
			// Look in the engine every recheckTicks heartbeats, in case a
			// notification was lost; idle streams then cost next to nothing.
			if ticks++; ticks%recheckTicks != 0 {
				read = false
				continue
			}
			if f.id != "" && !f.replied {
				_, err := g.b.GetReply(ctx, f.id)
				f.replied = err == nil
			}
		case <-grace:
			if done, err := g.catchUp(ctx, f, emit); done || err != nil {
				return err
			}
			if err := g.appendFinal(ctx, f); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// catchUp sends the events after f's cursor. done: a request feed sent its
// final event. What follows a request's final event is not sent, but for
// a replay and its events; on a channel feed, so for each request.
func (g *Gateway) catchUp(ctx context.Context, f *feed, emit func(*StreamEvent) error) (done bool, err error) {
	q := backend.EventQuery{CorrelationID: f.id, Channel: f.ch, Limit: eventPage}
	for {
		q.After = f.after
		evs, err := g.b.Events(ctx, q)
		if err != nil {
			return false, err
		}
		for _, ev := range evs {
			show := streamed(ev.Type)
			if f.ended && ev.Type != backend.EventReplayed {
				show = false // a late event of a stale attempt: the request is over
			}
			if show && f.id == "" {
				if show, err = g.shows(ctx, f, ev); err != nil {
					return false, err
				}
			}
			if show && f.id == "" && !finalState(ev.Type) && ev.Type != backend.EventReplayed {
				stale, err := g.stale(ctx, f, ev)
				if err != nil {
					return false, err
				}
				show = !stale
			}
			if show {
				se, err := g.streamEvent(ctx, ev)
				if err != nil {
					return false, err
				}
				if err := emit(se); err != nil {
					return false, err
				}
			}
			f.after = ev.Seq
			switch {
			case f.id == "":
				switch {
				case finalState(ev.Type):
					f.passed(ev.CorrelationID, true)
				case ev.Type == backend.EventReplayed, ev.Type == backend.EventQueued:
					f.passed(ev.CorrelationID, false)
				}
			case finalState(ev.Type):
				f.ended = true
			case ev.Type == backend.EventReplayed: // what came before is over
				f.ended, f.run, f.replied = false, replayedRun(ev), false
			}
		}
		if len(evs) < eventPage {
			return f.ended, nil
		}
	}
}

// replayedRun is the message id of the replay a replayed event started.
func replayedRun(ev *backend.Event) string {
	var d struct{ ID string }
	_ = json.Unmarshal(ev.Data, &d) // tolerate what a foreign writer stored
	return d.ID
}

// appendFinal ends the event log of f's request with its stored reply's
// status, as the responder or Client.Cancel would have, had they not died
// between reply and event. The dedupe key keeps it to one final event.
func (g *Gateway) appendFinal(ctx context.Context, f *feed) error {
	reply, err := g.b.GetReply(ctx, f.id)
	if err != nil {
		return err
	}
	ev := finalEvent(f.rec, reply, time.Now(), cmp.Or(f.run, f.id)+":final") // the key its responder uses
	g.log.Warn("gateway: a finished request had no final event; appending it", "queue", f.rec.Queue, "id", f.id, "correlation_id", f.id, "status", reply.Status)
	return g.b.AppendEvent(ctx, ev)
}

// streamEnded logs why a stream ended, unless the client left.
func (g *Gateway) streamEnded(ctx context.Context, f *feed, err error) {
	if err != nil && ctx.Err() == nil {
		g.log.Warn("gateway: event stream ended", "id", f.id, "channel", f.ch, "cursor", f.after, "err", err)
	}
}

// unknownRequest is the problem of a request the caller cannot see.
func unknownRequest(id string) *Problem {
	return &Problem{Type: problemType + "unknown-request", Title: "No such request", Status: http.StatusNotFound,
		Detail: fmt.Sprintf("request %q is unknown, purged, or not yours", id)}
}

// lastEventID reads an SSE client's cursor: the Last-Event-ID header, or the
// last_event_id query parameter. None: 0, from the start. A bad one: 400.
func lastEventID(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	s := cmp.Or(r.Header.Get("Last-Event-ID"), r.URL.Query().Get("last_event_id"))
	if s == "" {
		return 0, true
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		problem(w, http.StatusBadRequest, "invalid-last-event-id", "Invalid Last-Event-ID",
			fmt.Sprintf("%q is not an event id (the id of an event of this stream)", s))
		return 0, false
	}
	return n, true
}

// requestEvents: GET /v1/requests/{id}/events.
func (g *Gateway) requestEvents(w http.ResponseWriter, r *http.Request) {
	c, ok := g.authenticate(w, r)
	if !ok {
		return
	}
	after, ok := lastEventID(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	f, ended, err := g.requestFeed(r.Context(), c, id, after)
	switch {
	case errors.Is(err, errUnknown):
		writeProblem(w, unknownRequest(id))
	case errors.Is(err, errCursor):
		problem(w, http.StatusBadRequest, "invalid-last-event-id", "Invalid Last-Event-ID",
			fmt.Sprintf("%d %v %q: resume with the id of an event of this stream, or 0", after, err, id))
	case err != nil:
		g.engineDown(w, r, err)
	case ended:
		// Nothing after the final event. 204 also tells an EventSource to
		// stop reconnecting.
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNoContent)
	default:
		g.serveSSE(w, r, f)
	}
}

// channelEvents: GET /v1/channels/{channel}/events.
func (g *Gateway) channelEvents(w http.ResponseWriter, r *http.Request) {
	c, ok := g.authenticate(w, r)
	if !ok {
		return
	}
	ch := r.PathValue("channel")
	if err := checkChannel(ch); err != nil {
		problem(w, http.StatusBadRequest, "invalid-channel", "Invalid channel name", err.Error())
		return
	}
	after, ok := lastEventID(w, r)
	if !ok {
		return
	}
	g.serveSSE(w, r, channelFeed(c, ch, after))
}

// serveSSE streams f as Server-Sent Events until the client leaves or,
// for a request, after the final event.
func (g *Gateway) serveSSE(w http.ResponseWriter, r *http.Request, f *feed) {
	write, done, ok := g.openSSE(w)
	if !ok {
		return
	}
	defer done()
	ctx, cancel := g.streamCtx(r)
	defer cancel()
	err := g.follow(ctx, f, func(se *StreamEvent) error {
		data, err := json.Marshal(se) // one line: JSON output escapes newlines
		if err != nil {
			return err
		}
		return write(fmt.Appendf(nil, "id: %d\nevent: %s\ndata: %s\n\n", se.Seq, se.Type, data))
	}, func() error { return write([]byte(": ping\n\n")) })
	g.streamEnded(r.Context(), f, err)
}

// openSSE starts an event-stream response, within the gateway's limit of
// open streams (ok false: refused, answered already). write sends p and
// flushes it, with a deadline per write: a stalled client cannot hold the
// stream, and a server WriteTimeout does not cut a healthy one. done ends
// the stream's hold on the connection, which may serve more requests.
func (g *Gateway) openSSE(w http.ResponseWriter) (write func(p []byte) error, done func(), ok bool) {
	release, ok := g.acquireStream(w)
	if !ok {
		return nil, nil, false
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write = func(p []byte) error {
		_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		if _, err := w.Write(p); err != nil {
			return err
		}
		return rc.Flush()
	}
	done = func() {
		_ = rc.SetWriteDeadline(time.Time{})
		release()
	}
	if err := rc.Flush(); err != nil {
		done()
		return nil, nil, false
	}
	return write, done, true
}

// wsIn is a client's WebSocket message.
type wsIn struct {
	Op      string `json:"op"` // subscribe, unsubscribe
	Request string `json:"request"`
	Channel string `json:"channel"`
	After   uint64 `json:"after"`
}

// wsOut is a server's WebSocket message.
type wsOut struct {
	Type    string       `json:"type"` // subscribed, event, end, unsubscribed, error
	Request string       `json:"request,omitempty"`
	Channel string       `json:"channel,omitempty"`
	Event   *StreamEvent `json:"event,omitempty"`
	Error   *Problem     `json:"error,omitempty"`
}

// wsSession is one WebSocket connection and its subscriptions.
type wsSession struct {
	g    *Gateway
	c    caller
	conn *websocket.Conn
	ctx  context.Context // ends with the connection
	wg   sync.WaitGroup  // the connection's goroutines
	wmu  sync.Mutex      // serializes writes
	// subs are the subscriptions by "request:ID" or "channel:NAME". Only
	// the reading goroutine uses the map.
	subs map[string]*wsSub
}

// wsSub is a running subscription.
type wsSub struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when its goroutine has returned
}

func (s *wsSub) ended() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// websocket: GET /v1/ws.
func (g *Gateway) websocket(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") == "" {
		// Browsers cannot set headers on a WebSocket.
		if t := r.URL.Query().Get("access_token"); t != "" {
			r.Header.Set("Authorization", "Bearer "+t)
		}
	}
	c, ok := g.authenticate(w, r)
	if !ok {
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		w.Header().Set("Upgrade", "websocket")
		problem(w, http.StatusUpgradeRequired, "websocket-required", "WebSocket upgrade required",
			"open /v1/ws with a WebSocket client (Upgrade: websocket)")
		return
	}
	release, ok := g.acquireStream(w)
	if !ok {
		return
	}
	defer release()
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept wrote the error response
	}
	defer func() { _ = conn.CloseNow() }()
	conn.SetReadLimit(maxClientMessage)
	ctx, cancel := g.streamCtx(r)
	s := &wsSession{g: g, c: c, conn: conn, ctx: ctx, subs: make(map[string]*wsSub)}
	defer func() {
		cancel()
		s.wg.Wait()
	}()
	s.wg.Go(s.keepAlive)
	s.read()
}

// read handles the client's messages until the connection ends.
func (s *wsSession) read() {
	for {
		typ, data, err := s.conn.Read(s.ctx)
		if err != nil {
			return
		}
		var m wsIn
		switch {
		case typ != websocket.MessageText:
			s.fail(&m, http.StatusBadRequest, "invalid-message", "Invalid message", "messages are JSON text")
		case json.Unmarshal(data, &m) != nil:
			s.fail(&m, http.StatusBadRequest, "invalid-message", "Invalid message",
				`want a JSON object such as {"op":"subscribe","request":"ID","after":0}`)
		case (m.Request == "") == (m.Channel == ""):
			s.fail(&m, http.StatusBadRequest, "invalid-message", "Invalid message", `give one of "request" and "channel"`)
		case m.Op == "subscribe":
			s.subscribe(&m)
		case m.Op == "unsubscribe":
			s.stop(m.key())
			_ = s.send(&wsOut{Type: "unsubscribed", Request: m.Request, Channel: m.Channel})
		default:
			s.fail(&m, http.StatusBadRequest, "invalid-message", "Invalid message", fmt.Sprintf("unknown op %q (want subscribe or unsubscribe)", m.Op))
		}
	}
}

func (m *wsIn) key() string {
	if m.Request != "" {
		return "request:" + m.Request
	}
	return "channel:" + m.Channel
}

// subscribe starts a subscription; one to the same request or channel
// ends first, so subscribing again resumes from a new cursor.
func (s *wsSession) subscribe(m *wsIn) {
	s.stop(m.key())
	for k, sub := range s.subs {
		if sub.ended() {
			delete(s.subs, k)
		}
	}
	if len(s.subs) >= maxSubscriptions {
		s.fail(m, http.StatusTooManyRequests, "too-many-subscriptions", "Too many subscriptions",
			fmt.Sprintf("a connection holds at most %d; unsubscribe first", maxSubscriptions))
		return
	}
	var f *feed
	if m.Request != "" {
		var ended bool
		var err error
		f, ended, err = s.g.requestFeed(s.ctx, s.c, m.Request, m.After)
		switch {
		case errors.Is(err, errUnknown):
			_ = s.send(&wsOut{Type: "error", Request: m.Request, Error: unknownRequest(m.Request)})
			return
		case errors.Is(err, errCursor):
			s.fail(m, http.StatusBadRequest, "invalid-cursor", "Invalid cursor",
				fmt.Sprintf("after %d %v %q: give the seq of an event of this request, or 0", m.After, err, m.Request))
			return
		case err != nil:
			s.engineDown(m, err)
			return
		case ended:
			if s.send(&wsOut{Type: "subscribed", Request: m.Request}) == nil {
				_ = s.send(&wsOut{Type: "end", Request: m.Request})
			}
			return
		}
	} else {
		if err := checkChannel(m.Channel); err != nil {
			s.fail(m, http.StatusBadRequest, "invalid-channel", "Invalid channel name", err.Error())
			return
		}
		f = channelFeed(s.c, m.Channel, m.After)
	}
	// Acknowledged before its goroutine starts, so before its first event.
	if s.send(&wsOut{Type: "subscribed", Request: m.Request, Channel: m.Channel}) != nil {
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	sub := &wsSub{cancel: cancel, done: make(chan struct{})}
	s.subs[m.key()] = sub
	req, ch := m.Request, m.Channel
	s.wg.Go(func() {
		defer close(sub.done)
		defer cancel()
		err := s.g.follow(ctx, f, func(se *StreamEvent) error {
			if err := ctx.Err(); err != nil {
				return err // unsubscribed: nothing after the acknowledgement
			}
			return s.send(&wsOut{Type: "event", Request: req, Channel: ch, Event: se})
		}, nil)
		switch {
		case ctx.Err() != nil: // unsubscribed, or the connection ended
		case err != nil:
			s.g.streamEnded(ctx, f, err)
			_ = s.send(&wsOut{Type: "error", Request: req, Channel: ch, Error: &Problem{Type: problemType + "engine-unavailable",
				Title: "The subscription ended", Status: http.StatusServiceUnavailable,
				Detail: fmt.Sprintf("%s; subscribe again with after %d", engineFailed, f.after)}}) // err is logged (streamEnded)
		default: // the request's final event was sent
			_ = s.send(&wsOut{Type: "end", Request: req})
		}
	})
}

// stop ends the subscription under key, if any, and waits until it has
// sent its last message.
func (s *wsSession) stop(key string) {
	if sub := s.subs[key]; sub != nil {
		sub.cancel()
		<-sub.done
		delete(s.subs, key)
	}
}

// send writes one message. The connection's context, not a subscription's,
// bounds it: an ended write context closes the WebSocket.
func (s *wsSession) send(m *wsOut) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	ctx, cancel := context.WithTimeout(s.ctx, streamWriteTimeout)
	defer cancel()
	return s.conn.Write(ctx, websocket.MessageText, data)
}

func (s *wsSession) fail(m *wsIn, status int, typ, title, detail string) {
	_ = s.send(&wsOut{Type: "error", Request: m.Request, Channel: m.Channel,
		Error: &Problem{Type: problemType + typ, Title: title, Status: status, Detail: detail}})
}

func (s *wsSession) engineDown(m *wsIn, err error) {
	if s.ctx.Err() != nil {
		return
	}
	s.g.log.Error("gateway: engine call failed", "path", "/v1/ws", "err", err)
	s.fail(m, http.StatusServiceUnavailable, "engine-unavailable", "The engine is not reachable", engineFailed+"; retry") // as engineDown
}

// keepAlive pings the client every heartbeatInterval, and closes the
// connection when no pong comes back within another.
func (s *wsSession) keepAlive() {
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(s.ctx, heartbeatInterval)
			err := s.conn.Ping(ctx)
			cancel()
			if err != nil {
				_ = s.conn.CloseNow()
				return
			}
		}
	}
}
