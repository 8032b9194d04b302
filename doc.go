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
// # Engines
//
// The backend package defines the seam; backend/rsvpnats runs an embedded
// NATS JetStream server in-process (rsvpnats.Embedded) or connects to an
// external one (rsvpnats.Connect). docs/wire.md specifies the wire format
// for programs in other languages.
package rsvp
