// Package gateway is rsvp's HTTP front door: an http.Handler that serves the
// asynchronous request-reply contract of docs/openapi.yaml on an rsvp
// client, for callers that are not Go services on the engine — browsers,
// mobile apps, services in other languages.
//
// A caller submits work with POST /v1/queues/{queue}/requests and gets
// 202 Accepted with the URL of a status resource (Location, Retry-After,
// Expires). It then polls or long-polls the status (303 See Other to the
// result once finished), follows Server-Sent Events or a WebSocket that
// resume without loss after a reconnect (Last-Event-ID), or names a
// callback URL that receives the result as a signed webhook (Standard
// Webhooks). DELETE cancels; Idempotency-Key makes a retried submission
// safe. Workers in any language take requests over HTTP with the lease API
// (POST /v1/queues/{queue}/leases, then reply, fail or extend).
//
// The gateway keeps no state of its own: a request's record and state
// changes are events in the engine's event log (backend.Backend.AppendEvent),
// its result is the stored reply. Any number of gateways on one engine
// answer for every request and push every event; only a worker lease
// belongs to the gateway that handed it out.
//
// With Config.Workflows, durable workflows (package workflow) get the same
// contract: POST /v1/workflows/{name}/instances starts an instance (202,
// with the URLs to steer it), GET /v1/instances/{id} is its status (303 to
// the result when done; ?wait= long-polls), POST
// /v1/instances/{id}/events/{event} raises an external event, and the
// status changes stream as Server-Sent Events.
//
// API keys (Config.Keys, kept as SHA-256 hashes) give tenants rights per
// queue: send, consume, admin. A tenant sees only its own requests and
// channels; others get 404. Without keys, authentication is off: serve such
// a gateway on loopback only, as `rsvp serve` does.
//
// New(ctx, client, cfg) makes a gateway; Close it before the client. With
// Config.TracerProvider and Config.MeterProvider it traces each HTTP
// request (as a child of the caller's traceparent) and reports metrics.
package gateway
