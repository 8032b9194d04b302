package gateway_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
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
		{"http://[2002:a00:1::1]/x", "private"},            // 6to4: judged by its IPv4
		{"http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x", "Teredo"},
		{"http://[::a00:1]/x", "IPv4-compatible"},
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

// syncBuffer is a log sink safe for the gateway's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// closedPort returns a port of 127.0.0.1 that nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	return port
}

// firstWebhookError waits for the first delivery attempt of id in its
// status, as its submitter reads it, and returns its error.
func (e *env) firstWebhookError(id string) string {
	e.t.Helper()
	var first map[string]any
	eventually(e.t, 20*time.Second, "a delivery attempt of "+id+" in its status", func() bool {
		_, data := e.do("GET", "/v1/requests/"+id+"?redirect=false", nil, "")
		hooks, _ := decode(e.t, data)["webhooks"].([]any)
		if len(hooks) > 0 {
			first = hooks[0].(map[string]any)
		}
		return first != nil
	})
	if first["delivered"] != false {
		e.t.Fatalf("attempt %v, want a failed one", first)
	}
	msg, _ := first["error"].(string)
	return msg
}

// TestWebhookErrorsShowNoAddresses: what a tenant reads of a failed
// delivery (the attempts in its request's status) says what went wrong,
// not where: neither the address the callback's host resolved to (the
// gateway's view of the network: with a name a submitter picks, a probe
// of the operator's DNS) nor, for a queue's default webhook, the
// operator's URL. The server log keeps the whole error. A submitter's own
// callback gets the same words, which name the kind of failure.
func TestWebhookErrorsShowNoAddresses(t *testing.T) {
	t.Parallel()
	refused := closedPort(t)
	operatorHook := "http://127.0.0.1:" + refused + "/hook?token=operator-secret"
	var log syncBuffer
	secret := gateway.NewTestSecret(t)
	e := newEnv(t, gateway.Config{
		Webhooks: gateway.WebhookConfig{Secrets: []string{secret}, AllowPrivate: true},
		Queues:   map[string]gateway.QueueConfig{"hooked": {Webhook: operatorHook}},
		Logger:   slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	e.respond("hooked", rsvp.HandleOptions{}, echo)
	e.respond("mine", rsvp.HandleOptions{}, echo)
	secrets := []string{"127.0.0.1", refused, "operator-secret", "/hook", "dial tcp"}

	id := e.submit("hooked", nil, "x") // the queue's webhook, the operator's
	msg := e.firstWebhookError(id)
	for _, s := range secrets {
		if strings.Contains(msg, s) {
			t.Errorf("a tenant reads the failed delivery to the queue's webhook as %q: it shows %q", msg, s)
		}
	}
	if !strings.Contains(msg, "connection refused") {
		t.Errorf("delivery to the queue's webhook: error %q, want it to say the connection was refused", msg)
	}
	eventually(t, 10*time.Second, "the full error in the log", func() bool {
		return strings.Contains(log.String(), "127.0.0.1:"+refused) && strings.Contains(log.String(), "connection refused")
	})

	// The submitter's own callback: the kind of failure, as useful to it.
	id = e.submit("mine", map[string]string{"Callback-URL": "http://127.0.0.1:" + refused + "/mine"}, "x")
	if msg := e.firstWebhookError(id); !strings.Contains(msg, "connection refused") || strings.Contains(msg, "dial tcp") {
		t.Errorf("delivery to the submitter's own callback, refused: error %q, want the kind (connection refused) without the dial", msg)
	}
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer failing.Close()
	id = e.submit("mine", map[string]string{"Callback-URL": failing.URL + "/mine"}, "x")
	if msg := e.firstWebhookError(id); !strings.Contains(msg, "503") {
		t.Errorf("delivery to the submitter's own callback, answered 503: error %q, want it to name 503", msg)
	}
}

// TestWebhookRefusedDialShowsNoAddress: a callback whose host name
// resolves to a forbidden address is refused when connecting; its
// submitter reads that it was, not the address the name resolved to
// (which would let any tenant read the gateway's DNS, one name at a time).
func TestWebhookRefusedDialShowsNoAddress(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{Webhooks: gateway.WebhookConfig{Secrets: []string{gateway.NewTestSecret(t)}}})
	e.respond("mine", rsvp.HandleOptions{}, echo)
	id := e.submit("mine", map[string]string{"Callback-URL": "http://localhost:" + closedPort(t) + "/x"}, "x") // names pass at submission
	msg := e.firstWebhookError(id)
	if strings.Contains(msg, "127.0.0.1") || strings.Contains(msg, "::1") {
		t.Errorf("a refused connection reads %q: it shows the address the name resolved to", msg)
	}
	if !strings.Contains(msg, "private, loopback or link-local") {
		t.Errorf("a refused connection reads %q, want it to say the target is not allowed", msg)
	}
}

// keptEngine is an engine a second env shares: it is closed by the env
// that made it, not by this one.
type keptEngine struct{ backend.Backend }

func (keptEngine) Close() error { return nil }

// TestRotatedQueueWebhookNotShown: a request that went to a queue's
// default webhook keeps that URL in its record; after the operator changes
// the queue's webhook (a new token, say, with the old one still valid
// until the change is done), the queued event of such a request is still
// the operator's URL, not the submitter's, and the streams do not show it.
func TestRotatedQueueWebhookNotShown(t *testing.T) {
	t.Parallel()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	secret := gateway.NewTestSecret(t)
	config := func(hook string) gateway.Config {
		return gateway.Config{Webhooks: gateway.WebhookConfig{Secrets: []string{secret}},
			Queues: map[string]gateway.QueueConfig{"hooked": {Webhook: hook}}}
	}
	before := newEnvOn(t, b, config("https://hooks.example.com/rsvp?token=old-secret"))
	id := before.submit("hooked", nil, "x")
	after := newEnvWith(t, keptEngine{b}, config("https://hooks.example.com/rsvp?token=new-secret"), nil)
	if ev := openSSE(after, "/v1/requests/"+id+"/events", nil).must(); ev.Type != "queued" || ev.Data["data"] == nil {
		t.Fatalf("first event %+v, want queued with its data", ev)
	} else if data, _ := json.Marshal(ev.Data); strings.Contains(string(data), "old-secret") {
		t.Fatalf("after the queue's webhook changed, the queued event of a request sent to the former one shows it: %s", data)
	}
}
