// Package backend is the seam between rsvp and the engines that store its
// messages. A backend keeps three things durable: queues of requests, replies
// keyed by correlation id, and dead letters.
//
// The root package rsvp builds retries, deadlines, dead-lettering and waiter
// multiplexing on top of this interface; a backend only stores and delivers.
// Every implementation must pass the conformance suite in
// backend/backendtest.
package backend

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors a backend returns. Callers match them with errors.Is.
var (
	// ErrNotFound: no reply (or other record) is stored under that id.
	ErrNotFound = errors.New("backend: not found")
	// ErrReplyExists: a final reply for the correlation id is already stored;
	// the new one was not stored. Exactly one final reply wins.
	ErrReplyExists = errors.New("backend: reply already exists")
	// ErrClosed: the backend or consumer was closed.
	ErrClosed = errors.New("backend: closed")
	// ErrTooLarge: the message does not fit the engine's limit.
	ErrTooLarge = errors.New("backend: message too large")
	// ErrBadAddress: a reply address (ReplyTo) that no reply can be stored
	// at. Retrying does not help.
	ErrBadAddress = errors.New("backend: bad reply address")
	// ErrLeaseLost: a delivery was not settled or extended because its
	// lease ran out (or it was settled): the message may be with another
	// consumer now. Each engine's own lease-lost error wraps it.
	ErrLeaseLost = errors.New("backend: lease lost")
)

// Message is a stored request as the seam carries it. Field meanings are
// those of the wire format in docs/wire.md.
type Message struct {
	ID            string            // unique id; duplicates within the dedupe window are stored once
	CorrelationID string            // id the reply carries; defaults to ID
	ReplyTo       string            // reply address (from Backend.ReplyAddress); empty: no reply wanted
	Queue         string            // queue the request was sent to
	Type          string            // schema name and version, e.g. "thumbnail.request.v1"
	ContentType   string            // MIME type of Body
	Headers       map[string]string // application headers
	Body          []byte
	CreatedAt     time.Time
	Deadline      time.Time // zero: none; past it the request is not started
	// TraceParent and TraceState are the W3C trace context (traceparent,
	// tracestate) of the sender's span, if any. They travel apart from the
	// application headers, whose names traceparent and tracestate are
	// reserved (ReservedHeader), so that adding them needs no copy of those.
	// Backends store them and give them back unchanged (docs/wire.md
	// section 5).
	TraceParent, TraceState string
	// NotBefore, if in the future, schedules the request: it is stored now
	// and delivered from that time on (to within 100 ms). Zero: at once.
	// An engine that cannot schedule (rsvpnats on NATS before 2.12) has
	// Enqueue refuse such a request with an error wrapping
	// errors.ErrUnsupported, storing nothing.
	NotBefore time.Time
	Attempt   int // delivery attempt, 1 on first delivery; set by the backend on delivery
	// Track asks the responder to record all of the request's state
	// changes (running, retrying, progress, final) in the event log
	// (AppendEvent). Failed attempts (retrying, and a failed or expired
	// final event) are recorded for every request.
	Track bool
	// Channel, with Track, is the notification channel the request's events
	// are also listed under (EventQuery.Channel). Empty: none.
	Channel string
	// SessionKey, if set, puts the request in a session of its queue: the
	// requests of one queue and session key are delivered one at a time,
	// in the order they were stored. A request is not delivered while an
	// earlier one of its session is stored (leased, or waiting after a
	// Nack): it waits for that one's Ack, or for its dead-lettering.
	// Requests of other sessions, and those without a key, are not held up.
	// See ValidateSessionKey. A session request cannot be scheduled
	// (NotBefore).
	SessionKey string
	// ReplySession, if set, is the session key the reply belongs to on the
	// requester's side: the responder lists the reply under it, in the
	// order replies are stored, for the requester to read in order
	// (Service Bus's ReplyToSessionId). See ValidateSessionKey.
	ReplySession string
}

// Status is the final state a reply records.
type Status string

// Final states. See the lifecycle in docs/wire.md.
const (
	StatusSucceeded Status = "succeeded"
	StatusFailed    Status = "failed"
	StatusExpired   Status = "expired"
	StatusCancelled Status = "cancelled"
)

// Reply is the final outcome of a request.
type Reply struct {
	CorrelationID string
	Status        Status
	ErrorCode     string // set when Status is not succeeded
	ErrorMessage  string
	ContentType   string
	Headers       map[string]string // application headers
	Body          []byte
	CreatedAt     time.Time
	// TraceParent and TraceState are the trace context of the span that
	// replied, if any, as in Message.
	TraceParent, TraceState string
}

// DeadLetter is a request that will not be retried, with why.
type DeadLetter struct {
	// Key identifies the stored dead letter within its queue (set by
	// DeadLetters, ignored by DeadLetter): opaque text, ordered as the dead
	// letters are listed, for DeadLetterQuery.After and DeleteDeadLetter.
	Key       string
	Message   *Message // the original request; Attempt is the last attempt
	Reason    string   // "failed", "expired", "bad_payload", "attempts_exhausted", ...
	LastError string
	At        time.Time
}

// DeadLetterQuery selects dead letters of one queue.
type DeadLetterQuery struct {
	Queue  string    // required
	Reason string    // only this reason; empty: any
	Since  time.Time // only dead letters with At at or after Since; zero: any
	Until  time.Time // only dead letters with At before Until; zero: any
	After  string    // cursor: only dead letters listed after the one with this Key
	Limit  int       // at most this many, oldest first; default 100
}

// Matches reports whether dl passes the filters of q other than Queue,
// After and Limit: Reason, Since and Until.
func (q DeadLetterQuery) Matches(dl *DeadLetter) bool {
	return (q.Reason == "" || dl.Reason == q.Reason) &&
		(q.Since.IsZero() || !dl.At.Before(q.Since)) &&
		(q.Until.IsZero() || dl.At.Before(q.Until))
}

// Event types. A tracked request's event log starts with EventQueued
// (written by whoever tracks the request, the gateway say), has
// EventRunning, EventRetrying and EventProgress entries written by
// responders, and ends with one final event whose Type is the reply's
// Status. Other types (EventWebhook) may follow the final one. An
// untracked request's log has only its failed attempts: EventRetrying
// entries and a failed or expired final event.
const (
	EventQueued   = "queued"
	EventRunning  = "running"
	EventRetrying = "retrying"
	EventProgress = "progress"
	EventWebhook  = "webhook"
	// EventReplayed: the dead-lettered request was sent again under its
	// correlation id (rsvp's Client.Replay); the events after it are the
	// replay's.
	EventReplayed = "replayed"
	// EventHandedBack: a backend gave a delivery back unrun (a session
	// request held before its turn); it does not count as an attempt.
	EventHandedBack = "handed_back"
)

// Event is one entry of a request's event log.
type Event struct {
	// Seq is the event's position, set by AppendEvent: it grows with every
	// append, so it orders the events of a request. Events read by channel
	// (EventQuery.Channel) carry their position in the channel's log, which
	// orders the channel's events and may differ from the request's.
	Seq           uint64
	CorrelationID string
	Channel       string // notification channel, or empty
	Type          string // EventQueued, ..., or a final Status
	At            time.Time
	Data          []byte // details as JSON (or empty)
	// DedupeKey, if set, makes the append idempotent: an event whose key was
	// appended within the dedupe window is not stored again.
	DedupeKey string
}

// EventQuery selects the events of one request or of one channel.
type EventQuery struct {
	CorrelationID string // exactly one of CorrelationID and Channel is set
	Channel       string
	After         uint64 // only events with Seq > After
	Limit         int    // at most this many, oldest first; 0 or less: 100
}

// DefaultLimit is q.Limit, or 100 if that is 0 or less.
func (q EventQuery) DefaultLimit() int {
	if q.Limit <= 0 {
		return 100
	}
	return q.Limit
}

// ConsumeParams configures a consumer. Zero values take the defaults given.
type ConsumeParams struct {
	// Lease is how long a delivery stays invisible to other consumers before
	// it is redelivered, unless extended or settled. Default 30s. An engine
	// may keep it longer, never shorter: another consumer of the queue
	// asking for a shorter lease does not cut it (rsvpnats keeps the
	// longest lease asked for on a queue).
	Lease time.Duration
}

// Backend stores and delivers messages. All methods are safe for concurrent
// use. Methods that wait take a context and return its error when it ends
// first.
type Backend interface {
	// Enqueue stores msg durably on its queue and returns only once it is
	// stored (as durable as the backend is configured to be). A message whose
	// ID was stored within the dedupe window is stored once; enqueueing it
	// again is not an error.
	Enqueue(ctx context.Context, msg *Message) error

	// Consume returns a consumer of queue. Consumers of the same queue, in this
	// or any other process, compete: each message goes to one of them at a
	// time.
	Consume(ctx context.Context, queue string, p ConsumeParams) (Consumer, error)

	// ReplyAddress returns the ReplyTo value under which a reply to
	// correlationID is delivered to the subscription of inbox.
	ReplyAddress(inbox, correlationID string) string

	// PutReply stores r durably at replyTo (an address from ReplyAddress,
	// possibly of another process). It returns ErrReplyExists, storing
	// nothing, if a reply for r.CorrelationID is already stored (at any
	// address), and ErrBadAddress if replyTo is not a reply address for
	// r.CorrelationID.
	PutReply(ctx context.Context, replyTo string, r *Reply) error

	// GetReply returns the stored reply for correlationID, or ErrNotFound.
	// Replies are kept for the backend's retention period.
	GetReply(ctx context.Context, correlationID string) (*Reply, error)

	// SubscribeReplies calls fn for each reply stored under an address of
	// inbox from now on, until the subscription is closed. fn is called from
	// one goroutine at a time and must not block. Delivery is best effort: a
	// caller that must not miss a reply also calls GetReply after
	// subscribing.
	SubscribeReplies(ctx context.Context, inbox string, fn func(*Reply)) (Subscription, error)

	// WatchReply is SubscribeReplies for a single correlation id, whatever
	// inbox its reply is addressed to. It serves waiters for requests sent by
	// another process.
	WatchReply(ctx context.Context, correlationID string, fn func(*Reply)) (Subscription, error)

	// DeadLetter stores dl durably in the dead-letter store of its queue.
	DeadLetter(ctx context.Context, dl *DeadLetter) error

	// DeadLetters returns the dead letters q selects, oldest first, each
	// with its Key set.
	DeadLetters(ctx context.Context, q DeadLetterQuery) ([]*DeadLetter, error)

	// DeleteDeadLetter removes the dead letter of queue stored under key, or
	// returns ErrNotFound.
	DeleteDeadLetter(ctx context.Context, queue, key string) error

	// AppendEvent stores ev durably at the end of its request's event log
	// and, if ev.Channel is set, of its channel's, and sets ev.Seq (left 0
	// when DedupeKey made it a duplicate). Events are kept as long as
	// replies.
	AppendEvent(ctx context.Context, ev *Event) error

	// Events returns the stored events q selects, oldest first.
	Events(ctx context.Context, q EventQuery) ([]*Event, error)

	// SubscribeEvents calls fn for every event appended from now on, until
	// the subscription is closed. fn is called from one goroutine at a time
	// and must not block. Delivery is best effort, as for SubscribeReplies:
	// a caller that must not miss an event reads Events after subscribing.
	SubscribeEvents(ctx context.Context, fn func(*Event)) (Subscription, error)

	// Close releases the backend. Consumers and subscriptions stop.
	Close() error
}

// ReplyDeleter is implemented by backends that can take a final reply
// back, so that a dead-lettered request can be replayed under its own
// correlation id (rsvp's Client.Replay).
type ReplyDeleter interface {
	// DeleteReply removes the stored reply of r.CorrelationID, whatever
	// its inbox, so that PutReply can store another, if it is still r: the
	// reply GetReply returned, with the same Status and CreatedAt. If
	// another reply has taken its place (a concurrent replay's), that one
	// stays and DeleteReply returns ErrReplyExists. Deleting a reply that
	// is not stored is not an error.
	DeleteReply(ctx context.Context, r *Reply) error
}

// ActivityReporter is implemented by backends that can tell whether
// responders are at work on a queue (rsvp's Config.RequireResponder).
type ActivityReporter interface {
	// LastActive returns when a responder of queue, in any process, was
	// last seen waiting for, taking or holding a request: now if one is at
	// it, the zero time if none ever was (or the backend cannot tell).
	LastActive(ctx context.Context, queue string) (time.Time, error)
}

// Consumer hands out deliveries of one queue.
type Consumer interface {
	// Next blocks until a delivery is available, ctx ends, or the consumer is
	// closed (ErrClosed). Safe for concurrent use by many workers. A message
	// is leased when Next takes it, not before: nothing waits in a buffer
	// while its lease runs out.
	Next(ctx context.Context) (Delivery, error)
	// Close stops fetching; waiting Next calls return ErrClosed. Deliveries
	// handed out stay valid: unsettled ones are redelivered after their lease.
	Close() error
}

// Delivery is one leased message. Exactly one of Ack, Nack or letting the
// lease run out settles it. Once its lease ran out and the message may have
// been delivered again, Ack, Nack and Extend fail with ErrLeaseLost (a
// backend may fail them a little before the lease ends) and leave the new
// delivery's lease as it is.
type Delivery interface {
	Message() *Message
	// Ack removes the message from the queue.
	Ack(ctx context.Context) error
	// Nack makes the message available again after delay.
	Nack(ctx context.Context, delay time.Duration) error
	// Extend renews the lease for another lease period.
	Extend(ctx context.Context) error
}

// Subscription is a live reply subscription.
type Subscription interface {
	Close() error
}
