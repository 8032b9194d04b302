package gateway_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/gateway"
)

// TestKeyReusedAfterTheDedupeWindow: a submission that reuses an
// Idempotency-Key after the engine's dedupe window (shrunk to 1s here) adds
// nothing to the first request's event log: one refused for a different
// request (422), and a retry of the same one (202, the same id).
func TestKeyReusedAfterTheDedupeWindow(t *testing.T) {
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true, DedupeWindow: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvOn(t, b, gateway.Config{})
	h := map[string]string{"Idempotency-Key": "order-7"}
	id := e.submit("reused", h, "a")
	past := time.Now().Add(1500 * time.Millisecond)
	eventually(t, 5*time.Second, "the dedupe window to pass", func() bool { return time.Now().After(past) })
	resp, data := e.do("POST", "/v1/queues/elsewhere/requests", map[string]string{"Idempotency-Key": "order-7", "Content-Type": "text/other"}, "b")
	if resp.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("the key reused for another request: %d %s, want 422", resp.StatusCode, data)
	}
	if again := e.submit("reused", h, "a"); again != id {
		t.Fatalf("retry: id %s, want %s", again, id)
	}
	evs, err := e.Client.Backend().Events(t.Context(), backend.EventQuery{CorrelationID: id})
	if err != nil {
		t.Fatal(err)
	}
	queued := 0
	for _, ev := range evs {
		if ev.Type == backend.EventQueued {
			queued++
		}
	}
	if queued != 1 {
		t.Fatalf("%d queued events in the request's log, want 1 (the first record)", queued)
	}
	e.respond("reused", rsvp.HandleOptions{}, echo)
	e.waitState(id, "succeeded")
}
