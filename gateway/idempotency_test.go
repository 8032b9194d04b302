package gateway_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/gateway"
)

// TestKeyReusedAfterTheDedupeWindow: a submission that reuses an
// Idempotency-Key after the engine's dedupe window (shrunk to 1s here),
// while the first request is still queued, adds nothing to the first
// request's event log and does not queue it again: one refused for a
// different request (422), and a retry of the same one (202, the same id).
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
	qs, err := b.Queues(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	depth := uint64(0)
	for _, q := range qs {
		if q.Queue == "reused" {
			depth = q.Depth
		}
	}
	if depth != 1 {
		t.Fatalf("queue reused holds %d requests, want 1 (2: the retry sent the request again)", depth)
	}
	e.respond("reused", rsvp.HandleOptions{}, echo)
	e.waitState(id, "succeeded")
}

// failEnqueues is an engine whose next fail enqueues (on queue only, if
// set) fail, as when the engine becomes unreachable between a submission's
// record and its send.
type failEnqueues struct {
	backend.Backend
	queue string
	fail  atomic.Int32
}

func (f *failEnqueues) Enqueue(ctx context.Context, msg *backend.Message) error {
	if (f.queue == "" || msg.Queue == f.queue) && f.fail.Add(-1) >= 0 {
		return errors.New("engine unreachable (test)")
	}
	return f.Backend.Enqueue(ctx, msg)
}

// TestKeyRetryAfterAFailedSend: a keyed submission recorded but not sent
// (503) is sent by its retry with the same Idempotency-Key, and runs.
func TestKeyRetryAfterAFailedSend(t *testing.T) {
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	fb := &failEnqueues{Backend: b}
	e := newEnvWith(t, fb, gateway.Config{}, nil)
	h := map[string]string{"Idempotency-Key": "order-8"}
	fb.fail.Store(1)
	resp, data := e.do("POST", "/v1/queues/cutoff/requests", h, "a")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(data), "engine-unavailable") || fb.fail.Load() != 0 {
		t.Fatalf("submission with the engine failing: %d %s, want 503 engine-unavailable for the failed enqueue", resp.StatusCode, data)
	}
	id := e.submit("cutoff", h, "a")
	e.respond("cutoff", rsvp.HandleOptions{}, echo)
	e.waitState(id, "succeeded")
}

// TestWebhookOfARefusedSubmission: a submission whose webhook job cannot
// be queued is answered 503, and its request is not queued either (it
// would run for a client told it was not accepted). One whose request
// cannot be queued after its webhook job was is answered 503, and the job
// POSTs nothing.
func TestWebhookOfARefusedSubmission(t *testing.T) {
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	var posts atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer hook.Close()
	fb := &failEnqueues{Backend: b, queue: "rsvp-webhooks"}
	e := newEnvWith(t, fb, gateway.Config{Webhooks: gateway.WebhookConfig{Secrets: []string{gateway.NewTestSecret(t)}, AllowPrivate: true}}, nil)
	h := map[string]string{"Callback-URL": hook.URL + "/done"}
	fb.fail.Store(1)
	resp, data := e.do("POST", "/v1/queues/hooked/requests", h, "a")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(data), "engine-unavailable") || fb.fail.Load() != 0 {
		t.Fatalf("submission with its webhook failing to schedule: %d %s, want 503 engine-unavailable for the failed enqueue", resp.StatusCode, data)
	}
	e.nothingQueued("hooked")

	fb.queue = "refused"
	fb.fail.Store(1)
	if resp, data := e.do("POST", "/v1/queues/refused/requests", mergeHdr(h, map[string]string{"Notify-Channel": "refusals"}), "b"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("submission failing to enqueue: %d %s, want 503", resp.StatusCode, data)
	}
	// Its record ends with a final event, as a responder's would, which
	// wakes its watchers (the webhook job among them).
	evs, err := b.Events(t.Context(), backend.EventQuery{Channel: "refusals"})
	if err != nil {
		t.Fatal(err)
	}
	if types := eventTypes(evs); !slices.Equal(types, []string{"queued", "failed"}) || !strings.Contains(string(evs[1].Data), "not_accepted") {
		t.Fatalf("events of the refused submission %v, want queued then failed (not_accepted)", types)
	}
	eventually(t, 10*time.Second, "the webhook job to finish", func() bool {
		qs, err := b.Queues(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			if q.Queue == "rsvp-webhooks" {
				return q.Depth == 0 && q.Consumer
			}
		}
		return false
	})
	if n := posts.Load(); n != 0 {
		t.Fatalf("%d webhook POSTs for a submission answered 503, want none", n)
	}
}

// TestKeyedRetryAfterRefusedSendPostsOnce: a keyed submission with a
// callback whose request fails to enqueue after its webhook job was queued
// is answered 503 (and, keyed, not rejected). Its client retries with the
// key after the engine's dedupe window: the request is sent, but no second
// webhook job is queued (the first is marked), so the callback is POSTed
// once.
func TestKeyedRetryAfterRefusedSendPostsOnce(t *testing.T) {
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true, DedupeWindow: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var posts atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		// Hold each POST a while, so that a concurrent second one is seen.
		deadline := time.Now().Add(3 * time.Second)
		for posts.Load() < 2 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer hook.Close()
	fb := &failEnqueues{Backend: b, queue: "hooked"}
	e := newEnvWith(t, fb, gateway.Config{Webhooks: gateway.WebhookConfig{Secrets: []string{gateway.NewTestSecret(t)}, AllowPrivate: true}}, nil)
	h := map[string]string{"Callback-URL": hook.URL + "/done", "Idempotency-Key": "order-9"}
	fb.fail.Store(1)
	if resp, data := e.do("POST", "/v1/queues/hooked/requests", h, "a"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("submission failing to enqueue: %d %s, want 503", resp.StatusCode, data)
	}
	past := time.Now().Add(1500 * time.Millisecond)
	eventually(t, 5*time.Second, "the dedupe window to pass", func() bool { return time.Now().After(past) })
	id := e.submit("hooked", h, "a")
	e.respond("hooked", rsvp.HandleOptions{}, echo)
	e.waitState(id, "succeeded")
	eventually(t, 15*time.Second, "the webhook to be delivered", func() bool {
		_, data := e.do("GET", "/v1/requests/"+id+"?redirect=false", nil, "")
		hooks, _ := decode(t, data)["webhooks"].([]any)
		for _, h := range hooks {
			if h.(map[string]any)["delivered"] == true {
				return true
			}
		}
		return false
	})
	eventually(t, 10*time.Second, "the webhook jobs to finish", func() bool {
		qs, err := b.Queues(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			if q.Queue == "rsvp-webhooks" {
				return q.Depth == 0
			}
		}
		return false
	})
	if n := posts.Load(); n != 1 {
		_, data := e.do("GET", "/v1/requests/"+id+"?redirect=false", nil, "")
		t.Fatalf("callback POSTed %d times, want 1; status %s", n, data)
	}
}

// eventTypes lists the types of evs.
func eventTypes(evs []*backend.Event) []string {
	types := make([]string, len(evs))
	for i, ev := range evs {
		types[i] = ev.Type
	}
	return types
}
