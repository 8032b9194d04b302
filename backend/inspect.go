package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Inspector is implemented by engines that answer an operator's questions
// (rsvp queues, rsvp requests get, the queue gauges of rsvp serve): what
// the queues hold, and what became of one request. Its methods only read;
// they are meant for people and monitoring, not for the hot path.
type Inspector interface {
	// Queues returns a snapshot of every queue that has requests, a
	// consumer, dead letters, or traffic in the last RateWindow, sorted
	// by name. The figures need not be
	// read atomically: under load they may disagree slightly (InFlight
	// above Depth, say).
	Queues(ctx context.Context) ([]QueueStats, error)
	// Request returns what the engine holds about the request with
	// correlationID (see RequestInfo). It returns an error wrapping
	// ErrNotFound, with the reason after it, when the engine holds nothing
	// of it.
	Request(ctx context.Context, correlationID string) (*RequestInfo, error)
}

// QueueStats is a snapshot of one queue.
type QueueStats struct {
	// Queue is the queue's name.
	Queue string
	// Depth is the number of requests stored on the queue and not finished:
	// waiting for a responder, running, or waiting for a retry. (A request
	// stays stored until its outcome is.)
	Depth uint64
	// InFlight is the part of Depth that was delivered to a responder and
	// not settled: running, or waiting for its retry after a failed attempt.
	InFlight int
	// Redelivered is the part of InFlight past its first attempt.
	Redelivered int
	// Scheduled is the number of requests stored for delivery later
	// (Message.NotBefore) and not yet due; Depth does not count them.
	Scheduled uint64
	// Consumer reports whether some responder has consumed the queue (on
	// NATS, its durable consumer exists; on PostgreSQL, one was seen within
	// the reply retention). It stays after the responders stop.
	Consumer bool
	// Responders is the number of responders' consumers open on the queue
	// now, in any process; -1 if the engine cannot count them (NATS).
	Responders int
	// Waiting is the number of idle responder slots waiting at the engine
	// for a request of this queue: a responder of concurrency 8 with
	// nothing to do has 8. 0 when every responder is busy, or when none
	// runs; -1 if the engine cannot count them (PostgreSQL).
	Waiting int
	// LastDelivered is when a request of the queue was last delivered to a
	// responder; zero if never, or if the engine does not say.
	LastDelivered time.Time
	// Oldest is when the oldest request counted in Depth was stored; zero
	// when Depth is 0.
	Oldest time.Time
	// DeadLetters is the number of dead letters of the queue kept (they
	// expire after the dead-letter retention).
	DeadLetters uint64
	// In and Out count the requests stored on the queue, and those that
	// left it (answered, failed for good, cancelled or expired), in the
	// last RateWindow: the queue's rates. Each process counts the
	// requests it took out (on NATS also those it stored) and hands the
	// counts to the engine every 5 s and when it closes, so they lag by up
	// to 5 s, and a process that is killed loses its last 5 s; PostgreSQL
	// counts the requests stored in the transaction that stores them. A
	// request scheduled for later counts in when it is stored, not when it
	// comes due. Only rsvp's engine code is counted: a program that writes
	// the wire format itself is not.
	In, Out uint64
}

// RateWindow is the time over which QueueStats.In and Out count.
const RateWindow = time.Minute

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
// (Status values).
const (
	StateQueued  = "queued"  // stored, waiting for a responder or for a retry
	StateRunning = "running" // a responder is working on it
	StateUnknown = "unknown" // the engine holds no record that tells
)

// RequestInfo is what an engine holds about one request.
type RequestInfo struct {
	// CorrelationID is the id asked about.
	CorrelationID string
	// Queue is the request's queue, as its event log (the queued record
	// of the HTTP gateway), the queue or a dead letter names it; empty if
	// none does.
	Queue string
	// State is what the records say, in this order: the stored reply's
	// status; else the last final, running or retrying event (retrying
	// reads as StateQueued); else a dead letter (StatusFailed, or
	// StatusExpired for reason "expired"); else the request found in its
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
	// retrying events, dead letters, and the stored request where the
	// engine counts its deliveries there); 0 if none does.
	Attempts int
	// Events is the request's event log, oldest first.
	Events []*Event
	// Reply is the stored final reply, or nil if there is none (yet, or any
	// more: replies are kept for the reply retention).
	Reply *Reply
	// DeadLetters are the request's dead letters, oldest first.
	DeadLetters []*DeadLetter
	// InQueue says whether the request is still stored in its queue: not
	// finished. Unknown when the engine's search stopped at a limit.
	InQueue Presence
	// StoredAt, when InQueue is Present, is when the engine stored the
	// request; Delivered reports whether it was delivered to a responder
	// (it is running, or waiting for a retry).
	StoredAt  time.Time
	Delivered bool
	// DeadLettersComplete is false when the engine's search of the dead
	// letters stopped at a limit: older dead letters may be missing.
	DeadLettersComplete bool
}

// ReadRequestLog starts a RequestInfo for correlationID with its event log
// (and from it Tracked, Queue and Attempts). The engine then looks for the
// request in its queue and for its dead letters (AddDeadLetter), and calls
// Finish, which reads the reply: in this order, the order in which a
// request leaves its records (dead letters and reply before it leaves the
// queue), a request that finishes while it is looked up is found by one of
// the reads. It is for implementations of Inspector.Request.
func ReadRequestLog(ctx context.Context, b Backend, correlationID string) (*RequestInfo, error) {
	if err := ValidateName("correlation id", correlationID); err != nil {
		return nil, err
	}
	const page = 256
	ri := &RequestInfo{CorrelationID: correlationID}
	for after := uint64(0); ; {
		evs, err := b.Events(ctx, EventQuery{CorrelationID: correlationID, After: after, Limit: page})
		if err != nil {
			return nil, fmt.Errorf("events: %w", err)
		}
		ri.Events = append(ri.Events, evs...)
		if len(evs) < page {
			break
		}
		after = evs[len(evs)-1].Seq
	}
	for _, ev := range ri.Events { // untracked requests record failed attempts only
		ri.Tracked = ri.Tracked || ev.Type == EventQueued || ev.Type == EventRunning
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
		case EventQueued:
			if ri.Queue == "" && ValidateName("queue", d.Queue) == nil {
				ri.Queue = d.Queue
			}
		case EventRunning, EventRetrying:
			ri.Attempts = max(ri.Attempts, d.Attempt)
		}
	}
	return ri, nil
}

// AddDeadLetter adds one of the request's dead letters, oldest first.
func (ri *RequestInfo) AddDeadLetter(dl *DeadLetter) {
	ri.DeadLetters = append(ri.DeadLetters, dl)
	ri.Attempts = max(ri.Attempts, dl.Message.Attempt)
	if ri.Queue == "" {
		ri.Queue = dl.Message.Queue
	}
}

// Finish reads the request's reply from b and sets State. It returns an
// error wrapping ErrNotFound, with the reason after it, if the engine holds
// nothing of the request.
func (ri *RequestInfo) Finish(ctx context.Context, b Backend) error {
	reply, err := b.GetReply(ctx, ri.CorrelationID)
	switch {
	case err == nil:
		ri.Reply = reply
	case !errors.Is(err, ErrNotFound):
		return fmt.Errorf("reply: %w", err)
	}
	ri.State = ri.state()
	if ri.Tracked || ri.Reply != nil || len(ri.DeadLetters) > 0 || ri.InQueue == Present {
		return nil
	}
	if ri.InQueue == Unknown || !ri.DeadLettersComplete {
		return fmt.Errorf("%w: no event log or reply, and it is not among the oldest queued requests and dead letters searched", ErrNotFound)
	}
	return fmt.Errorf("%w: no event log, reply or dead letter, and it is not queued", ErrNotFound)
}

func (ri *RequestInfo) state() string {
	if ri.Reply != nil {
		return string(ri.Reply.Status)
	}
	for _, ev := range slices.Backward(ri.Events) {
		switch ev.Type {
		case EventRunning:
			return StateRunning
		case EventRetrying:
			return StateQueued
		case string(StatusSucceeded), string(StatusFailed), string(StatusExpired), string(StatusCancelled):
			return ev.Type
		}
	}
	if n := len(ri.DeadLetters); n > 0 {
		if ri.DeadLetters[n-1].Reason == string(StatusExpired) {
			return string(StatusExpired)
		}
		return string(StatusFailed)
	}
	switch {
	case ri.InQueue == Present && ri.Delivered:
		return StateRunning
	case ri.InQueue == Present, ri.Tracked:
		return StateQueued
	}
	return StateUnknown
}
