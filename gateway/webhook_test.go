package gateway_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/gateway"
)

// TestWebhookDelivery: the result is POSTed signed to the callback URL,
// retried after a failure, and the attempts show in the status.
func TestWebhookDelivery(t *testing.T) {
	secret := gateway.NewTestSecret(t)
	type delivery struct {
		h    http.Header
		body []byte
	}
	var mu sync.Mutex
	var got []delivery
	delivered := make(chan struct{})
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		got = append(got, delivery{r.Header.Clone(), body})
		if len(got) == 1 {
			w.WriteHeader(http.StatusInternalServerError) // the first attempt fails
			return
		}
		w.WriteHeader(http.StatusNoContent)
		close(delivered)
	}))
	defer hook.Close()
	e := newEnv(t, gateway.Config{Webhooks: gateway.WebhookConfig{Secrets: []string{secret}, AllowPrivate: true}})
	e.respond("hooked", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{ContentType: "application/json", Body: []byte(`{"answer":42}`)}, nil
	})
	id := e.submit("hooked", map[string]string{"Callback-URL": hook.URL + "/done"}, "x")
	select {
	case <-delivered:
	case <-time.After(30 * time.Second):
		t.Fatal("webhook not delivered")
	}
	mu.Lock()
	defer mu.Unlock()
	for i, d := range got {
		if _, err := gateway.VerifyStandardWebhook([]string{secret}, d.h, d.body, time.Now()); err != nil {
			t.Fatalf("delivery %d: signature does not verify: %v", i, err)
		}
		if d.h.Get("webhook-id") != id {
			t.Errorf("delivery %d: webhook-id %q, want the request id", i, d.h.Get("webhook-id"))
		}
	}
	var p struct {
		Type string
		Data struct {
			ID     string
			State  string
			Result map[string]int
		}
	}
	if err := json.Unmarshal(got[1].body, &p); err != nil || p.Type != "request.finished" || p.Data.ID != id ||
		p.Data.State != "succeeded" || p.Data.Result["answer"] != 42 {
		t.Fatalf("payload %s (%v)", got[1].body, err)
	}
	var st map[string]any
	eventually(t, 10*time.Second, "both attempts in the status", func() bool {
		_, data := e.do("GET", "/v1/requests/"+id+"?redirect=false", nil, "")
		st = decode(t, data)
		hooks, _ := st["webhooks"].([]any)
		return len(hooks) == 2
	})
	hooks := st["webhooks"].([]any)
	first, second := hooks[0].(map[string]any), hooks[1].(map[string]any)
	if first["delivered"] != false || first["status"].(float64) != 500 || second["delivered"] != true || second["status"].(float64) != 204 {
		t.Fatalf("webhook history %v", hooks)
	}
}

func TestWebhookRefusesPrivateTargets(t *testing.T) {
	e := newEnv(t, gateway.Config{Webhooks: gateway.WebhookConfig{Secrets: []string{gateway.NewTestSecret(t)}}})
	for _, tc := range []struct{ url, reason string }{
		{"http://127.0.0.1:9/x", "loopback"},
		{"http://[64:ff9b::a00:1]/x", "private"},           // well-known NAT64: judged by its IPv4
		{"http://[64:ff9b:1::a00:1]/x", "local-use NAT64"}, // RFC 8215: all of it
	} {
		resp, data := e.do("POST", "/v1/queues/q/requests", map[string]string{"Callback-URL": tc.url}, "x")
		if resp.StatusCode != 400 || !contains(decode(t, data)["detail"], tc.reason) {
			t.Errorf("callback %s: %d %s, want 400 naming %q", tc.url, resp.StatusCode, data, tc.reason)
		}
	}
	e.nothingQueued("q")
}

func contains(v any, sub string) bool {
	s, _ := v.(string)
	return strings.Contains(s, sub)
}

// TestCloseDoesNotWaitForUnfinishedWebhooks: a webhook job waiting for its
// request's result (or for its next attempt's time) is no delivery under
// way, so Close ends it at once instead of waiting for it (up to 20s, or
// until Close's ctx ends); the job comes back to a running gateway.
func TestCloseDoesNotWaitForUnfinishedWebhooks(t *testing.T) {
	e := newEnv(t, gateway.Config{Webhooks: gateway.WebhookConfig{Secrets: []string{gateway.NewTestSecret(t)}, AllowPrivate: true}})
	e.submit("nobody-answers", map[string]string{"Callback-URL": "http://127.0.0.1:9/hook"}, "x")
	// The webhook job is taken: it waits for the result.
	eventually(t, 10*time.Second, "the webhook job leased", func() bool {
		qs, err := e.Engine.Queues(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			if q.Queue == "rsvp-webhooks" && q.InFlight == 1 {
				return true
			}
		}
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := e.GW.Close(ctx); err != nil {
		t.Fatalf("Close after %s: %v", time.Since(start).Round(time.Millisecond), err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Close took %s, waiting for a webhook whose request has not finished", took.Round(time.Millisecond))
	}
}

// TestQueueWebhookNotShown: a queue's default callback URL is the
// operator's (it may carry a token): the queued event on the streams shows
// a callback only when the submitter named it.
func TestQueueWebhookNotShown(t *testing.T) {
	t.Parallel()
	const hook = "https://hooks.example.com/rsvp?token=operator-secret"
	e := newEnv(t, gateway.Config{Webhooks: gateway.WebhookConfig{Secrets: []string{gateway.NewTestSecret(t)}},
		Queues: map[string]gateway.QueueConfig{"hooked": {Webhook: hook}}})
	id := e.submit("hooked", nil, "x")
	if ev := openSSE(e, "/v1/requests/"+id+"/events", nil).must(); ev.Type != "queued" || ev.Data["data"] == nil {
		t.Fatalf("first event %+v, want queued with its data", ev)
	} else if data, _ := json.Marshal(ev.Data); strings.Contains(string(data), "operator-secret") {
		t.Fatalf("the queued event of a request submitted without Callback-URL shows the queue's webhook: %s", data)
	}
	own := "https://example.org/mine"
	id = e.submit("hooked", map[string]string{"Callback-URL": own}, "y")
	if ev := openSSE(e, "/v1/requests/"+id+"/events", nil).must(); !contains(ev.Data["data"].(map[string]any)["callback"], own) {
		t.Fatalf("the queued event of a request with its own Callback-URL: %+v, want callback %s", ev.Data, own)
	}
}
