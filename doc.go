// Package rsvp implements the asynchronous request-reply pattern on a
// durable queue.
//
// A requester hands work to a queue with a reply address and a correlation
// id, and goes on; a responder picks it up, does it and replies; the
// requester gets the correlated reply when it asks for it — by waiting
// (Request), later (Send, then Await), or after its own restart (Await from
// any process on the same engine).
//
//	c, _ := rsvp.New(ctx, backend, rsvp.Config{})
//	c.Handle("thumbnail", rsvp.HandlerFunc(makeThumbnail), rsvp.HandleOptions{Concurrency: 8})
//	reply, err := c.Request(ctx, "thumbnail", &rsvp.Message{Body: image})
//
// # Guarantees
//
// Send returns only after the engine stored the request durably; the
// default embedded engine fsyncs before it acknowledges. A responder stores
// its reply before it acknowledges the request. Handlers run at least once
// (a request whose worker died is delivered again after its lease); the
// requester sees exactly one final reply per correlation id. Replies are
// retained (24 hours by default) so Await works from any process.
//
// # Failures
//
// A handler's error is retried with exponential backoff and jitter, up to
// HandleOptions.MaxAttempts (5); an error wrapped with Permanent is not
// retried. After the last failure the request goes to the queue's
// dead-letter store and the requester receives a *RemoteError at once. A
// request whose deadline passed is not started: it is dead-lettered as
// expired and the requester gets ErrExpired. A context deadline on Request
// travels with the request.
//
// # Tracking and cancellation
//
// A request sent with Message.Track has an event log: responders record
// each attempt (running, retrying), the handler's Progress, and the final
// state, for watchers such as the HTTP gateway's status resource and event
// streams. Cancel stores a cancelled reply: a tracked request not yet
// started never runs, and a running handler's ctx is cancelled with cause
// ErrCancelled. Config.CancelOnAbandon cancels a Request whose ctx ends
// first.
//
// # Types, versions, dead letters
//
// Call and HandleTyped (or Typed) exchange values through a Codec (JSON by
// default). A Mux routes requests by Message.Type and upgrades older
// versions to newer ones; a type nobody handles fails as unsupported_type.
// DeadLetters, Replay, ReplayAll and Purge operate a queue's dead letters.
//
// # Sessions, topics
//
// Requests with the same Message.SessionKey are handled one at a time, in
// the order sent, across all responders of the queue; a retried request
// holds up only its own session. Message.ReplySession lists replies in
// order for SessionReplies. Publish, RequestAll and Gather fan a request
// out to the durable subscriptions of a topic and gather the replies.
//
// # Pull-style handling
//
// Consume hands out Leases to code that does not fit a Handler (the HTTP
// worker API, say): settle each with Reply, Fail or Release, with the same
// retry and dead-letter rules as a Responder.
//
// # Telemetry
//
// Config.TracerProvider and Config.MeterProvider (OpenTelemetry) trace each
// request, its time in the queue and every handler attempt, across
// processes (W3C traceparent in requests and replies: Message.TraceParent),
// and count and time them. The defaults are the global providers, no-ops
// unless set. A handler's ctx carries its attempt's span.
//
// # Engines
//
// The backend package defines the seam; backend/rsvpnats runs an embedded
// NATS JetStream server in-process (rsvpnats.Embedded) or connects to an
// external one (rsvpnats.Connect); backend/rsvppg keeps everything in
// PostgreSQL. docs/wire.md specifies the wire format for programs in other
// languages. The gateway package serves all this over HTTP.
package rsvp
