package rsvpnats

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend"
)

// This file holds the operator's queries: what the queues hold and what
// became of one request. They only read; they are meant for people and
// monitoring, not for the hot path.

// QueueStats is a snapshot of one queue, as Queues reads it from the
// engine.
type QueueStats struct {
	// Queue is the queue's name.
	Queue string
	// Depth is the number of requests stored on the queue and not finished:
	// waiting for a responder, running, or waiting for a retry. (A request
	// stays in RSVP_REQUESTS until its outcome is stored.)
	Depth uint64
	// InFlight is the part of Depth that was delivered to a responder and
	// not settled: running, or waiting for its retry after a failed attempt
	// (the consumer's NumAckPending).
	InFlight int
	// Redelivered is the part of InFlight past its first attempt (the
	// consumer's NumRedelivered).
	Redelivered int
	// Consumer reports whether the queue's durable consumer rsvp_<queue>
	// exists: some responder has consumed the queue. It stays after the
	// responders stop.
	Consumer bool
	// Waiting is the number of pull requests waiting at the engine for a
	// request of this queue: one per idle responder slot (a responder of
	// concurrency 8 with nothing to do has 8). 0 when every responder is
	// busy, or when none runs.
	Waiting int
	// LastDelivered is when a request of the queue was last delivered to a
	// responder; zero if never (or if the engine does not say).
	LastDelivered time.Time
	// Oldest is when the oldest request counted in Depth was stored; zero
	// when Depth is 0.
	Oldest time.Time
	// DeadLetters is the number of dead letters of the queue kept in
	// RSVP_DLQ (they expire after the dead-letter retention).
	DeadLetters uint64
}

// Queues returns a snapshot of every queue that has requests, a consumer or
// dead letters, sorted by name. It costs a few engine calls plus one per
// non-empty queue (for its oldest request). The figures are read one after
// another, not atomically: under load they may disagree slightly (InFlight
// above Depth, say).
func (b *Backend) Queues(ctx context.Context) ([]QueueStats, error) {
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	reqs, err := b.js.Stream(ctx, streamRequests)
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: queues: %w", err)
	}
	info, err := reqs.Info(ctx, jetstream.WithSubjectFilter(subjRequests+"*"))
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: queues: %w", err)
	}
	sessionInfo, err := reqs.Info(ctx, jetstream.WithSubjectFilter(subjSessions+"*.*"))
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: queues: sessions: %w", err)
	}
	byName := make(map[string]*QueueStats)
	get := func(name string) *QueueStats {
		q := byName[name]
		if q == nil {
			q = &QueueStats{Queue: name}
			byName[name] = q
		}
		return q
	}
	for subj, n := range info.State.Subjects {
		get(strings.TrimPrefix(subj, subjRequests)).Depth += n
	}
	for subj, n := range sessionInfo.State.Subjects {
		get(queueOf(subj)).Depth += n
	}

	consumers := reqs.ListConsumers(ctx)
	for ci := range consumers.Info() { // read to the end: the lister's goroutine stops then
		filter := ci.Config.FilterSubject
		if len(ci.Config.FilterSubjects) > 0 {
			filter = ci.Config.FilterSubjects[0] // the queue's; then its sessions'
		}
		name, ok := strings.CutPrefix(filter, subjRequests)
		if !ok || name == "" || strings.ContainsAny(name, ".*>") {
			continue // not a consumer of the wire format
		}
		q := get(name)
		q.Consumer = true
		q.InFlight += ci.NumAckPending
		q.Redelivered += ci.NumRedelivered
		q.Waiting += ci.NumWaiting
		if last := ci.Delivered.Last; last != nil && last.After(q.LastDelivered) {
			q.LastDelivered = *last
		}
	}
	if err := consumers.Err(); err != nil {
		return nil, fmt.Errorf("rsvpnats: queues: list consumers: %w", err)
	}

	dead, err := b.dlq.Info(ctx, jetstream.WithSubjectFilter(subjDLQ+"*"))
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: queues: dead letters: %w", err)
	}
	for subj, n := range dead.State.Subjects {
		get(strings.TrimPrefix(subj, subjDLQ)).DeadLetters = n
	}

	first := max(info.State.FirstSeq, 1)
	out := make([]QueueStats, 0, len(byName))
	for _, name := range sortedKeys(byName) {
		q := byName[name]
		for _, subj := range []string{subjRequests + name, subjSessions + name + ".*"} {
			if q.Depth == 0 {
				break
			}
			m, err := reqs.GetMsg(ctx, first, jetstream.WithGetMsgSubject(subj))
			switch {
			case err == nil:
				if q.Oldest.IsZero() || m.Time.Before(q.Oldest) {
					q.Oldest = m.Time
				}
			case !errors.Is(err, jetstream.ErrMsgNotFound): // not found: finished meanwhile
				return nil, fmt.Errorf("rsvpnats: queues: oldest request of %s: %w", name, err)
			}
		}
		out = append(out, *q)
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Presence says whether something was found by a search that may have
// stopped early.
type Presence int

const (
	// Unknown: the search stopped at its limit before it was found.
	Unknown Presence = iota
	// Absent: searched to the end and not found.
	Absent
	// Present: found.
	Present
)

func (p Presence) String() string {
	switch p {
	case Absent:
		return "no"
	case Present:
		return "yes"
	}
	return "unknown"
}

// States of a request that RequestInfo.State adds to the final ones
// (backend.Status values).
const (
	StateQueued  = "queued"  // stored, waiting for a responder or for a retry
	StateRunning = "running" // a responder is working on it
	StateUnknown = "unknown" // the engine holds no record that tells
)

// RequestScanLimit is how many stored messages Request reads, at most, in
// each of RSVP_REQUESTS and RSVP_DLQ when it looks for a request there.
const RequestScanLimit = 10_000

// RequestInfo is what the engine holds about one request.
type RequestInfo struct {
	// CorrelationID is the id asked about.
	CorrelationID string
	// Queue is the request's queue, as its event log (the queued record
	// of the HTTP gateway), the queue or a dead letter names it; empty if
	// none does.
	Queue string
	// State is what the records say, in this order: the stored reply's
	// status; else the last final, running or retrying event (retrying
	// reads as StateQueued); else a dead letter (StateFailed, or
	// StateExpired for reason "expired"); else the request found in its
	// queue (StateRunning if it was delivered, else StateQueued); else
	// StateQueued for a request whose log says only "queued"; else
	// StateUnknown.
	State string
	// Tracked reports whether the request's event log records its whole
	// life (docs/wire.md section 8a): requests sent with Track, such as
	// every request the HTTP gateway accepts. Untracked requests record
	// only their failed attempts.
	Tracked bool
	// Attempts is the highest attempt any record names (running and
	// retrying events, dead letters); 0 if none does.
	Attempts int
	// Events is the request's event log, oldest first.
	Events []*backend.Event
	// Reply is the stored final reply, or nil if there is none (yet, or any
	// more: replies are kept for the reply retention).
	Reply *backend.Reply
	// DeadLetters are the request's dead letters, oldest first.
	DeadLetters []*backend.DeadLetter
	// InQueue says whether the request is still stored in RSVP_REQUESTS:
	// not finished. Unknown when the search stopped at RequestScanLimit
	// messages.
	InQueue Presence
	// StoredAt, when InQueue is Present, is when the engine stored the
	// request; Delivered reports whether it was delivered to a responder
	// (it is running, or waiting for a retry).
	StoredAt  time.Time
	Delivered bool
	// DeadLettersComplete is false when the search of RSVP_DLQ stopped at
	// RequestScanLimit messages: older dead letters may be missing.
	DeadLettersComplete bool
}

// Request returns what the engine holds about the request with
// correlationID: its event log, its reply, its dead letters, and whether
// it is still queued. When the event log names the request's queue, only
// that queue and its dead letters are searched; otherwise all of them, up
// to RequestScanLimit messages each, oldest first. It returns an error
// wrapping backend.ErrNotFound when nothing is found.
func (b *Backend) Request(ctx context.Context, correlationID string) (*RequestInfo, error) {
	if err := backend.ValidateName("correlation id", correlationID); err != nil {
		return nil, fmt.Errorf("rsvpnats: request: %w", err)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	ri := &RequestInfo{CorrelationID: correlationID}
	for after := uint64(0); ; {
		page, err := b.Events(ctx, backend.EventQuery{CorrelationID: correlationID, After: after, Limit: 256})
		if err != nil {
			return nil, fmt.Errorf("rsvpnats: request %s: %w", correlationID, err)
		}
		ri.Events = append(ri.Events, page...)
		if len(page) < 256 {
			break
		}
		after = page[len(page)-1].Seq
	}
	for _, ev := range ri.Events { // untracked requests record failed attempts only
		ri.Tracked = ri.Tracked || ev.Type == backend.EventQueued || ev.Type == backend.EventRunning
	}
	for _, ev := range ri.Events {
		var d struct {
			Queue   string `json:"queue"`
			Attempt int    `json:"attempt"`
		}
		if json.Unmarshal(ev.Data, &d) != nil {
			continue // a foreign writer's event; progress may be any JSON
		}
		switch ev.Type {
		case backend.EventQueued:
			if ri.Queue == "" && backend.ValidateName("queue", d.Queue) == nil {
				ri.Queue = d.Queue
			}
		case backend.EventRunning, backend.EventRetrying:
			ri.Attempts = max(ri.Attempts, d.Attempt)
		}
	}

	reply, err := b.GetReply(ctx, correlationID)
	switch {
	case err == nil:
		ri.Reply = reply
	case !errors.Is(err, backend.ErrNotFound):
		return nil, fmt.Errorf("rsvpnats: request %s: %w", correlationID, err)
	}

	// Dead letters: of its queue, if known, else of all.
	filter := subjDLQ + cmp.Or(ri.Queue, "*")
	complete, err := scan(ctx, b.dlq, filter, func(m *jetstream.RawStreamMsg) bool {
		dl := decodeDeadLetter(m.Subject, m.Header, m.Data)
		if dl.Message.CorrelationID == correlationID {
			ri.DeadLetters = append(ri.DeadLetters, dl)
			ri.Attempts = max(ri.Attempts, dl.Message.Attempt)
			ri.Queue = cmp.Or(ri.Queue, dl.Message.Queue)
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: request %s: dead letters: %w", correlationID, err)
	}
	ri.DeadLettersComplete = complete

	if err := b.findQueued(ctx, ri); err != nil {
		return nil, fmt.Errorf("rsvpnats: request %s: queue: %w", correlationID, err)
	}
	ri.State = ri.state()
	if !ri.Tracked && ri.Reply == nil && len(ri.DeadLetters) == 0 && ri.InQueue != Present {
		why := "no event log, reply or dead letter, and it is not queued"
		if ri.InQueue == Unknown || !ri.DeadLettersComplete {
			why = fmt.Sprintf("no event log or reply, and it is not among the oldest %d queued requests and dead letters searched", RequestScanLimit)
		}
		return nil, fmt.Errorf("rsvpnats: request %s: %w: %s", correlationID, backend.ErrNotFound, why)
	}
	return ri, nil
}

// findQueued looks for the request in RSVP_REQUESTS (in its queue, if
// known) and sets InQueue, StoredAt, Delivered and Queue.
func (b *Backend) findQueued(ctx context.Context, ri *RequestInfo) error {
	reqs, err := b.js.Stream(ctx, streamRequests)
	if err != nil {
		return err
	}
	var found *jetstream.RawStreamMsg
	complete := true
	for _, subj := range []string{subjRequests + cmp.Or(ri.Queue, "*"), subjSessions + cmp.Or(ri.Queue, "*") + ".*"} {
		all, err := scan(ctx, reqs, subj, func(m *jetstream.RawStreamMsg) bool {
			msg, _ := decodeRequest(m.Subject, m.Header, m.Data) // read leniently, as dead letters are
			if msg.CorrelationID != ri.CorrelationID {
				return true
			}
			found = m
			return false
		})
		if err != nil {
			return err
		}
		complete = complete && all
		if found != nil {
			break
		}
	}
	switch {
	case found != nil:
		ri.InQueue = Present
	case complete:
		ri.InQueue = Absent
		return nil
	default:
		ri.InQueue = Unknown
		return nil
	}
	queue := queueOf(found.Subject)
	ri.Queue = cmp.Or(ri.Queue, queue)
	ri.StoredAt = found.Time
	c, err := reqs.Consumer(ctx, "rsvp_"+queue)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil // nobody consumes the queue: not delivered
	}
	if err != nil {
		return err
	}
	// Requests of a queue are delivered for the first time in stream
	// order: one at or below the last delivered sequence has been
	// delivered, and, still stored, it is not settled.
	ri.Delivered = found.Sequence <= c.CachedInfo().Delivered.Stream
	return nil
}

// scan calls fn with each message of stream on filter, oldest first, until
// fn returns false or RequestScanLimit messages were read. It reports
// whether it read every message there is (or fn stopped it).
func scan(ctx context.Context, s jetstream.Stream, filter string, fn func(*jetstream.RawStreamMsg) bool) (bool, error) {
	for seq, n := uint64(1), 0; n < RequestScanLimit; n++ {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		if !fn(m) {
			return true, nil
		}
		seq = m.Sequence + 1
	}
	return false, nil
}

// state computes State from the other fields; see there.
func (ri *RequestInfo) state() string {
	if ri.Reply != nil {
		return string(ri.Reply.Status)
	}
	for _, ev := range slices.Backward(ri.Events) {
		switch ev.Type {
		case backend.EventRunning:
			return StateRunning
		case backend.EventRetrying:
			return StateQueued
		case string(backend.StatusSucceeded), string(backend.StatusFailed), string(backend.StatusExpired), string(backend.StatusCancelled):
			return ev.Type
		}
	}
	if n := len(ri.DeadLetters); n > 0 {
		if ri.DeadLetters[n-1].Reason == string(backend.StatusExpired) {
			return string(backend.StatusExpired)
		}
		return string(backend.StatusFailed)
	}
	switch {
	case ri.InQueue == Present && ri.Delivered:
		return StateRunning
	case ri.InQueue == Present, ri.Tracked:
		return StateQueued
	}
	return StateUnknown
}

var _ backend.ActivityReporter = (*Backend)(nil)

// LastActive implements backend.ActivityReporter: now while a responder's
// pull waits at the engine or a delivery is unsettled, else the time of
// the queue's last delivery (zero if it never had a consumer).
func (b *Backend) LastActive(ctx context.Context, queue string) (time.Time, error) {
	if err := backend.ValidateName("queue", queue); err != nil {
		return time.Time{}, fmt.Errorf("rsvpnats: last active: %w", err)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	c, err := b.js.Consumer(ctx, streamRequests, "rsvp_"+queue)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("rsvpnats: last active on %s: %w", queue, err)
	}
	info := c.CachedInfo()
	if info.NumWaiting > 0 || info.NumAckPending > 0 {
		return time.Now(), nil
	}
	if info.Delivered.Last != nil {
		return *info.Delivered.Last, nil
	}
	return time.Time{}, nil
}
