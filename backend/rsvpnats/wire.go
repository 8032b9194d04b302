package rsvpnats

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/rsvp-go/rsvp/backend"
)

// Stream names and subjects. docs/wire.md is the reference for all of these.
const (
	streamRequests = "RSVP_REQUESTS"
	streamReplies  = "RSVP_REPLIES"
	streamDLQ      = "RSVP_DLQ"
	streamEvents   = "RSVP_EVENTS"
	streamRates    = "RSVP_RATES"

	subjRequests = "rsvp.req."    // + queue
	subjSessions = "rsvp.ses."    // + queue + "." + session token (sessionToken): requests of a session
	subjSchedule = "rsvp.sched."  // + queue + "." + id: a scheduled request until it is due
	subjReplies  = "rsvp.reply."  // + correlation id + "." + inbox
	subjNotify   = "rsvp.notify." // + correlation id + "." + inbox (republished replies)
	subjDLQ      = "rsvp.dlq."    // + queue
	subjEvents   = "rsvp.event."  // + correlation id: a request's event log
	subjChannel  = "rsvp.chan."   // + channel: copies of the events of a channel's requests
	subjEvNotify = "rsvp.evnote." // + correlation id (republished request events)
	subjRates    = "rsvp.rate."   // + queue: one process's counts of requests in and out of the queue
)

// Header names of the wire format.
const (
	hdrMsgID         = "Nats-Msg-Id"
	hdrID            = "Rsvp-Id"
	hdrCorrelationID = "Rsvp-Correlation-Id"
	hdrReplyTo       = "Rsvp-Reply-To"
	hdrType          = "Rsvp-Type"
	hdrContentType   = "Content-Type"
	hdrCreatedAt     = "Rsvp-Created-At"
	hdrDeadline      = "Rsvp-Deadline"
	hdrStatus        = "Rsvp-Status"
	hdrErrorCode     = "Rsvp-Error-Code"
	hdrErrorMessage  = "Rsvp-Error-Message"
	hdrQueue         = "Rsvp-Queue"
	hdrAttempt       = "Rsvp-Attempt"
	hdrDeadReason    = "Rsvp-Dead-Reason"
	hdrDeadError     = "Rsvp-Dead-Error"
	hdrDeadAt        = "Rsvp-Dead-At"
	hdrTrack         = "Rsvp-Track"
	hdrNotBefore     = "Rsvp-Not-Before"
	hdrChannel       = "Rsvp-Channel"
	hdrSession       = "Rsvp-Session"
	hdrReplySession  = "Rsvp-Reply-Session"
	hdrEventType     = "Rsvp-Event"
	hdrSequence      = "Nats-Sequence" // set on republished messages
	hdrTraceParent   = "Rsvp-Traceparent"
	hdrTraceState    = "Rsvp-Tracestate"
)

func setTime(h nats.Header, key string, t time.Time) {
	if !t.IsZero() {
		h.Set(key, t.UTC().Format(time.RFC3339Nano))
	}
}

func getTime(h nats.Header, key string) (time.Time, error) {
	v := h.Get(key)
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("header %s: %w", key, err)
	}
	return t, nil
}

func putAppHeaders(h nats.Header, app map[string]string) {
	for k, v := range app {
		h.Set(k, v)
	}
}

func appHeaders(h nats.Header) map[string]string {
	var m map[string]string
	for k, vs := range h {
		if backend.ReservedHeader(k) || len(vs) == 0 {
			continue
		}
		if m == nil {
			m = make(map[string]string)
		}
		m[k] = vs[0]
	}
	return m
}

// putTraceContext writes a W3C trace context under Rsvp-Traceparent and
// Rsvp-Tracestate. A bare traceparent would make the NATS server parse
// every message's headers (for its own message tracing); see docs/wire.md
// section 5.
func putTraceContext(h nats.Header, parent, state string) {
	if parent != "" {
		h[hdrTraceParent] = []string{parent}
	}
	if state != "" {
		h[hdrTraceState] = []string{state}
	}
}

// traceContext reads what putTraceContext wrote, or else the bare W3C
// headers that a foreign sender may use.
func traceContext(h nats.Header) (parent, state string) {
	if parent = h.Get(hdrTraceParent); parent != "" {
		return parent, h.Get(hdrTraceState)
	}
	return h.Get("traceparent"), h.Get("tracestate")
}

// encodeRequest turns a request into the NATS message stored on its queue.
func encodeRequest(m *backend.Message) *nats.Msg {
	h := make(nats.Header, requestHeaderCount(m))
	putAppHeaders(h, m.Headers)
	putTraceContext(h, m.TraceParent, m.TraceState)
	h.Set(hdrMsgID, m.ID)
	h.Set(hdrID, m.ID)
	h.Set(hdrCorrelationID, m.CorrelationID)
	if m.ReplyTo != "" {
		h.Set(hdrReplyTo, m.ReplyTo)
	}
	if m.Type != "" {
		h.Set(hdrType, m.Type)
	}
	if m.ContentType != "" {
		h.Set(hdrContentType, m.ContentType)
	}
	setTime(h, hdrCreatedAt, m.CreatedAt)
	setTime(h, hdrDeadline, m.Deadline)
	if m.Track {
		h.Set(hdrTrack, "1")
	}
	if m.Channel != "" {
		h.Set(hdrChannel, m.Channel)
	}
	if m.ReplySession != "" {
		h.Set(hdrReplySession, m.ReplySession)
	}
	msg := &nats.Msg{Subject: subjRequests + m.Queue, Header: h, Data: m.Body}
	if m.SessionKey != "" {
		h.Set(hdrSession, m.SessionKey)
		msg.Subject = sessionSubject(m.Queue, m.SessionKey)
		return msg // never scheduled: Enqueue refuses that
	}
	if !m.NotBefore.IsZero() && time.Until(m.NotBefore) > 0 {
		// A message schedule of the stream: the server publishes the request
		// to its queue's subject when it is due (and drops the schedule).
		setTime(h, hdrNotBefore, m.NotBefore)
		h.Set("Nats-Schedule", "@at "+m.NotBefore.UTC().Format(time.RFC3339Nano))
		h.Set("Nats-Schedule-Target", msg.Subject)
		msg.Subject = subjSchedule + m.Queue + "." + m.ID
	}
	return msg
}

// requestHeaderCount is the number of headers encodeRequest sets for m,
// but for those of a schedule. Sizing the header map right keeps a small
// one in a single allocation.
func requestHeaderCount(m *backend.Message) int {
	n := 4 + len(m.Headers) // message id, id, correlation id, created at
	for _, set := range [...]bool{m.ReplyTo != "", m.Type != "", m.ContentType != "", !m.Deadline.IsZero(), m.Track,
		m.Channel != "", m.ReplySession != "", m.SessionKey != "", m.TraceParent != "", m.TraceState != ""} {
		if set {
			n++
		}
	}
	return n
}

// decodeRequest is the inverse of encodeRequest. queue is taken from the
// subject.
func decodeRequest(subject string, h nats.Header, body []byte) (*backend.Message, error) {
	m := &backend.Message{
		ID:            h.Get(hdrID),
		CorrelationID: h.Get(hdrCorrelationID),
		ReplyTo:       h.Get(hdrReplyTo),
		Queue:         queueOf(subject),
		Type:          h.Get(hdrType),
		ContentType:   h.Get(hdrContentType),
		Headers:       appHeaders(h),
		Body:          body,
		Track:         h.Get(hdrTrack) == "1",
		Channel:       h.Get(hdrChannel),
		SessionKey:    h.Get(hdrSession),
		ReplySession:  h.Get(hdrReplySession),
	}
	m.TraceParent, m.TraceState = traceContext(h)
	if m.ID == "" {
		m.ID = h.Get(hdrMsgID)
	}
	if m.CorrelationID == "" {
		m.CorrelationID = m.ID
	}
	var err, err2 error
	m.CreatedAt, err = getTime(h, hdrCreatedAt)
	m.Deadline, err2 = getTime(h, hdrDeadline)
	m.NotBefore, _ = getTime(h, hdrNotBefore) // informational once delivered
	if err = errors.Join(err, err2); err != nil {
		return m, err
	}
	if m.ID == "" {
		return m, fmt.Errorf("request has no %s header", hdrID)
	}
	if rest, ok := strings.CutPrefix(subject, subjSessions); ok {
		_, token, _ := strings.Cut(rest, ".")
		if key, err := base64.RawURLEncoding.DecodeString(token); err != nil || string(key) != m.SessionKey {
			return m, fmt.Errorf("session subject %s does not carry the %s header %q", subject, hdrSession, m.SessionKey)
		}
	}
	return m, nil
}

// sessionSubject is the subject a session's requests are stored on. The
// key is carried base64url-encoded, so that any key is one subject token.
func sessionSubject(queue, key string) string {
	return subjSessions + queue + "." + base64.RawURLEncoding.EncodeToString([]byte(key))
}

// queueOf returns the queue of a request's subject: rsvp.req.<queue> or
// rsvp.ses.<queue>.<token>, or of a schedule: rsvp.sched.<queue>.<id>.
func queueOf(subject string) string {
	for _, prefix := range []string{subjSessions, subjSchedule} {
		if rest, ok := strings.CutPrefix(subject, prefix); ok {
			q, _, _ := strings.Cut(rest, ".")
			return q
		}
	}
	return strings.TrimPrefix(subject, subjRequests)
}

func encodeReply(subject string, r *backend.Reply) *nats.Msg {
	h := make(nats.Header, 6+len(r.Headers))
	putAppHeaders(h, r.Headers)
	putTraceContext(h, r.TraceParent, r.TraceState)
	h.Set(hdrCorrelationID, r.CorrelationID)
	h.Set(hdrStatus, string(r.Status))
	if r.ErrorCode != "" {
		h.Set(hdrErrorCode, r.ErrorCode)
	}
	if r.ErrorMessage != "" {
		h.Set(hdrErrorMessage, headerSafe(r.ErrorMessage))
	}
	if r.ContentType != "" {
		h.Set(hdrContentType, r.ContentType)
	}
	setTime(h, hdrCreatedAt, r.CreatedAt)
	return &nats.Msg{Subject: subject, Header: h, Data: r.Body}
}

// decodeReply reads a stored or republished reply. subject is where it was
// stored or republished; it names the correlation id if the header lacks it.
// A reply is read leniently: it is final, and its requester must get it.
func decodeReply(subject string, h nats.Header, body []byte) *backend.Reply {
	r := &backend.Reply{
		CorrelationID: h.Get(hdrCorrelationID),
		Status:        backend.Status(h.Get(hdrStatus)),
		ErrorCode:     h.Get(hdrErrorCode),
		ErrorMessage:  h.Get(hdrErrorMessage),
		ContentType:   h.Get(hdrContentType),
		Headers:       appHeaders(h),
		Body:          body,
	}
	r.TraceParent, r.TraceState = traceContext(h)
	if r.CorrelationID == "" {
		// rsvp.reply.<id>.<inbox> or rsvp.notify.<id>.<inbox>
		if parts := strings.Split(subject, "."); len(parts) == 4 {
			r.CorrelationID = parts[2]
		}
	}
	if r.Status == "" {
		r.Status = backend.StatusSucceeded
	}
	r.CreatedAt, _ = getTime(h, hdrCreatedAt) // zero if unreadable
	return r
}

func encodeDeadLetter(dl *backend.DeadLetter) *nats.Msg {
	m := encodeRequest(dl.Message)
	m.Subject = subjDLQ + dl.Message.Queue
	// A dead letter is stored once per attempt that produced it.
	m.Header.Set(hdrMsgID, dl.Message.ID+":"+strconv.Itoa(dl.Message.Attempt))
	m.Header.Set(hdrQueue, dl.Message.Queue)
	m.Header.Set(hdrAttempt, strconv.Itoa(dl.Message.Attempt))
	m.Header.Set(hdrDeadReason, dl.Reason)
	if dl.LastError != "" {
		m.Header.Set(hdrDeadError, headerSafe(dl.LastError))
	}
	setTime(m.Header, hdrDeadAt, dl.At)
	return m
}

func decodeDeadLetter(subject string, h nats.Header, body []byte) *backend.DeadLetter {
	// Read leniently: a request dead-lettered because it was unreadable
	// must still be listed.
	m, _ := decodeRequest(subjRequests+strings.TrimPrefix(subject, subjDLQ), h, body)
	m.Attempt, _ = strconv.Atoi(h.Get(hdrAttempt))
	dl := &backend.DeadLetter{Message: m, Reason: h.Get(hdrDeadReason), LastError: h.Get(hdrDeadError)}
	dl.At, _ = getTime(h, hdrDeadAt)
	return dl
}

// encodeEvent makes the messages of an event: the entry of its request's
// log and, for a request with a channel, the entry of the channel's log.
func encodeEvent(ev *backend.Event) (request, channel *nats.Msg) {
	h := nats.Header{}
	h.Set(hdrCorrelationID, ev.CorrelationID)
	h.Set(hdrEventType, ev.Type)
	setTime(h, hdrCreatedAt, ev.At)
	if ev.Channel != "" {
		h.Set(hdrChannel, ev.Channel)
	}
	if ev.DedupeKey != "" {
		h.Set(hdrMsgID, ev.DedupeKey)
	}
	request = &nats.Msg{Subject: subjEvents + ev.CorrelationID, Header: h, Data: ev.Data}
	if ev.Channel != "" {
		ch := nats.Header{}
		for k, v := range h {
			ch[k] = v
		}
		if ev.DedupeKey != "" {
			ch.Set(hdrMsgID, ev.DedupeKey+":channel")
		}
		channel = &nats.Msg{Subject: subjChannel + ev.Channel, Header: ch, Data: ev.Data}
	}
	return request, channel
}

// decodeEvent reads a stored or republished event, of a request's log or
// a channel's.
func decodeEvent(subject string, seq uint64, h nats.Header, body []byte) *backend.Event {
	ev := &backend.Event{Seq: seq, Type: h.Get(hdrEventType), Data: body, CorrelationID: h.Get(hdrCorrelationID),
		Channel: h.Get(hdrChannel)}
	if ev.CorrelationID == "" {
		ev.CorrelationID = strings.TrimPrefix(strings.TrimPrefix(subject, subjEvents), subjEvNotify)
	}
	ev.At, _ = getTime(h, hdrCreatedAt)
	return ev
}

// headerSafe folds line breaks, which a header value cannot carry.
func headerSafe(s string) string {
	return strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
}

// cutText shortens s to at most n bytes, on a character boundary.
func cutText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
