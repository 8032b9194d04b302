package gateway_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/gateway"
)

func echo(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
	return &rsvp.Reply{ContentType: m.ContentType, Body: append([]byte("echo:"), m.Body...)}, nil
}

// submit posts body to queue and returns the accepted request's id.
func (e *env) submit(queue string, hdr map[string]string, body string) string {
	e.t.Helper()
	resp, data := e.do("POST", "/v1/queues/"+queue+"/requests", hdr, body)
	if resp.StatusCode != http.StatusAccepted {
		e.t.Fatalf("submit: %d %s", resp.StatusCode, data)
	}
	return decode(e.t, data)["id"].(string)
}

// nothingQueued asserts that queue has no request to hand out.
func (e *env) nothingQueued(queue string) {
	e.t.Helper()
	cons, err := e.Client.Consume(context.Background(), queue, rsvp.HandleOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	defer cons.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if l, err := cons.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		e.t.Fatalf("queue %s has a request: %v %v", queue, l, err)
	}
}

// waitState polls the status of id until it is state.
func (e *env) waitState(id, state string) map[string]any {
	e.t.Helper()
	var st map[string]any
	eventually(e.t, 10*time.Second, "request "+id+" reaches "+state, func() bool {
		_, data := e.do("GET", "/v1/requests/"+id+"?redirect=false", nil, "")
		st = decode(e.t, data)
		return st["state"] == state
	})
	return st
}

func TestSubmitStatusResult(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	release := make(chan struct{})
	e.respond("work", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		_ = rsvp.Progress(ctx, map[string]int{"percent": 50})
		<-release
		return echo(ctx, m)
	})
	resp, data := e.do("POST", "/v1/queues/work/requests", map[string]string{"Content-Type": "text/plain"}, "hello")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit: %d %s", resp.StatusCode, data)
	}
	acc := decode(t, data)
	id := acc["id"].(string)
	if loc := resp.Header.Get("Location"); loc != "/v1/requests/"+id {
		t.Errorf("Location %q", loc)
	}
	if resp.Header.Get("Retry-After") == "" || resp.Header.Get("Expires") == "" {
		t.Errorf("missing Retry-After or Expires: %v", resp.Header)
	}
	if acc["state"] != "queued" || acc["links"].(map[string]any)["result"] != "/v1/requests/"+id+"/result" {
		t.Errorf("accepted body %s", data)
	}
	// While running: 200 with progress, Retry-After; the result is 409.
	var st map[string]any
	eventually(t, 10*time.Second, "progress shows", func() bool {
		resp, data := e.do("GET", "/v1/requests/"+id, nil, "")
		st = decode(t, data)
		return resp.StatusCode == 200 && st["progress"] != nil
	})
	if st["state"] != "running" || st["attempts"].(float64) != 1 || st["progress"].(map[string]any)["percent"].(float64) != 50 {
		t.Errorf("running status %v", st)
	}
	resp, data = e.do("GET", "/v1/requests/"+id+"/result", nil, "")
	if resp.StatusCode != http.StatusConflict || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Errorf("result while running: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), data)
	}
	close(release)
	eventually(t, 10*time.Second, "303 to the result", func() bool {
		resp, _ := e.do("GET", "/v1/requests/"+id, nil, "")
		return resp.StatusCode == http.StatusSeeOther && resp.Header.Get("Location") == "/v1/requests/"+id+"/result"
	})
	resp, data = e.do("GET", "/v1/requests/"+id+"/result", nil, "")
	if resp.StatusCode != 200 || string(data) != "echo:hello" || resp.Header.Get("Content-Type") != "text/plain" {
		t.Errorf("result: %d %q %q", resp.StatusCode, data, resp.Header.Get("Content-Type"))
	}
	st = e.waitState(id, "succeeded")
	if st["finished_at"] == nil || st["started_at"] == nil {
		t.Errorf("final status lacks times: %v", st)
	}
}

func TestUnknownAndBadInput(t *testing.T) {
	e := newEnv(t, gateway.Config{MaxBodySize: 10, Queues: map[string]gateway.QueueConfig{"strict": {RequireIdempotencyKey: true}}})
	for _, path := range []string{"/v1/requests/nope", "/v1/requests/nope/result", "/v1/requests/bad.id"} {
		resp, data := e.do("GET", path, nil, "")
		if resp.StatusCode != 404 || decode(t, data)["title"] != "No such request" {
			t.Errorf("GET %s: %d %s", path, resp.StatusCode, data)
		}
	}
	if resp, data := e.do("DELETE", "/v1/requests/nope", nil, ""); resp.StatusCode != 404 {
		t.Errorf("DELETE unknown: %d %s", resp.StatusCode, data)
	}
	cases := []struct {
		name, queue string
		hdr         map[string]string
		body        string
		status      int
		detail      string
	}{
		{"bad queue", "a.b", nil, "x", 400, "queue"},
		{"reserved queue", "rsvp-webhooks", nil, "x", 400, "rsvp-"},
		{"too large", "q", nil, "01234567890", 413, "limit is 10 bytes"},
		{"bad content type", "q", map[string]string{"Content-Type": "text/"}, "x", 400, "Content-Type"},
		{"bad channel", "q", map[string]string{"Notify-Channel": "a b"}, "x", 400, "Notify-Channel"},
		{"reserved channel", "q", map[string]string{"Notify-Channel": "rsvp-workflows"}, "x", 400, "are reserved"},
		{"bad timeout", "q", nil, "x", 400, "timeout"},
		{"callback without secret", "q", map[string]string{"Callback-URL": "https://example.com/h"}, "x", 400, "no webhook secret"},
		{"missing key", "strict", nil, "x", 400, "Idempotency-Key"},
		{"bad wait", "q", map[string]string{"Prefer": "wait=soon"}, "x", 400, "wait"},
	}
	for _, c := range cases {
		path := "/v1/queues/" + c.queue + "/requests"
		if c.name == "bad timeout" {
			path += "?timeout=-1s"
		}
		resp, data := e.do("POST", path, c.hdr, c.body)
		if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/problem+json" ||
			!strings.Contains(decode(t, data)["detail"].(string), c.detail) {
			t.Errorf("%s: %d %s", c.name, resp.StatusCode, data)
		}
	}
	e.nothingQueued("q") // nothing of the refused submissions was enqueued
	if resp, _ := e.do("GET", "/v1/nothing", nil, ""); resp.StatusCode != 404 {
		t.Errorf("unknown path: %d", resp.StatusCode)
	}
	if resp, data := e.do("PUT", "/v1/requests/x", nil, ""); resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, DELETE" {
		t.Errorf("wrong method: %d Allow %q %s", resp.StatusCode, resp.Header.Get("Allow"), data)
	}
}

func TestPreferWait(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	e.respond("fast", rsvp.HandleOptions{}, echo)
	resp, data := e.do("POST", "/v1/queues/fast/requests", map[string]string{"Prefer": "wait=10", "Content-Type": "text/plain"}, "hi")
	if resp.StatusCode != 200 || string(data) != "echo:hi" || resp.Header.Get("Preference-Applied") != "wait=10" {
		t.Fatalf("Prefer wait: %d %q %v", resp.StatusCode, data, resp.Header)
	}
	// A wait of a part of a second is applied in whole seconds, rounded
	// up (so that 500ms is not wait=0).
	resp, data = e.do("POST", "/v1/queues/fast/requests", map[string]string{"Prefer": "wait=9500ms"}, "hi")
	if resp.StatusCode != 200 || resp.Header.Get("Preference-Applied") != "wait=10" {
		t.Fatalf("Prefer wait=9500ms: %d %q Preference-Applied %q, want 200 and wait=10", resp.StatusCode, data, resp.Header.Get("Preference-Applied"))
	}
	// Nobody answers "slow": the normal 202 after the wait.
	start := time.Now()
	resp, data = e.do("POST", "/v1/queues/slow/requests", map[string]string{"Prefer": "respond-async, wait=1"}, "hi")
	if resp.StatusCode != 202 || time.Since(start) < time.Second {
		t.Fatalf("Prefer wait with no answer: %d after %s: %s", resp.StatusCode, time.Since(start), data)
	}
}

func TestLongPoll(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	id := e.submit("lp", nil, "x")
	done := make(chan map[string]any, 1)
	go func() {
		_, data := e.do("GET", "/v1/requests/"+id+"?wait=30s&redirect=false", nil, "")
		done <- decode(t, data)
	}()
	select {
	case st := <-done:
		t.Fatalf("long-poll returned before any change: %v", st)
	case <-time.After(300 * time.Millisecond): // only bounds how long we look for a wrong early return
	}
	e.respond("lp", rsvp.HandleOptions{}, echo)
	select {
	case st := <-done:
		if st["state"] != "running" && st["state"] != "succeeded" {
			t.Fatalf("long-poll returned state %v", st["state"])
		}
	case <-time.After(10 * time.Second):
		t.Fatal("long-poll did not return on the change")
	}
	// A wait on a pending request ends with the wait.
	id2 := e.submit("nobody", nil, "x")
	start := time.Now()
	resp, _ := e.do("GET", "/v1/requests/"+id2+"?wait=1", nil, "")
	if resp.StatusCode != 200 || time.Since(start) < time.Second {
		t.Fatalf("wait on a quiet request: %d after %s", resp.StatusCode, time.Since(start))
	}
}

func TestCancel(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	id := e.submit("later", nil, "x")
	resp, data := e.do("DELETE", "/v1/requests/"+id, nil, "")
	if resp.StatusCode != http.StatusAccepted || decode(t, data)["state"] != "cancelled" {
		t.Fatalf("cancel: %d %s", resp.StatusCode, data)
	}
	resp, data = e.do("GET", "/v1/requests/"+id+"/result", nil, "")
	if resp.StatusCode != http.StatusGone || decode(t, data)["code"] != "cancelled" {
		t.Fatalf("result of cancelled: %d %s", resp.StatusCode, data)
	}
	// The queued request is never started.
	var ran atomic.Int32
	marker := make(chan struct{})
	e.respond("later", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if string(m.Body) == "marker" {
			close(marker)
		} else {
			ran.Add(1)
		}
		return nil, nil
	})
	e.submit("later", nil, "marker")
	<-marker
	if ran.Load() != 0 {
		t.Fatal("the cancelled request ran")
	}
	// Cancelling a finished request: 409.
	resp, data = e.do("DELETE", "/v1/requests/"+id, nil, "")
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("second cancel: %d %s", resp.StatusCode, data)
	}
	// A running handler sees ErrCancelled.
	started, cause := make(chan struct{}), make(chan error, 1)
	e.respond("long", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		close(started)
		<-ctx.Done()
		cause <- context.Cause(ctx)
		return nil, ctx.Err()
	})
	id = e.submit("long", nil, "x")
	<-started
	if resp, data := e.do("DELETE", "/v1/requests/"+id, nil, ""); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("cancel running: %d %s", resp.StatusCode, data)
	}
	if err := <-cause; !errors.Is(err, rsvp.ErrCancelled) {
		t.Fatalf("handler saw %v", err)
	}
	e.waitState(id, "cancelled")
}

func TestIdempotencyKey(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	var runs atomic.Int32
	e.respond("idem", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		runs.Add(1)
		return echo(ctx, m)
	})
	h := map[string]string{"Idempotency-Key": "order-42", "Content-Type": "text/plain"}
	first := e.submit("idem", h, "pay")
	e.waitState(first, "succeeded")
	if again := e.submit("idem", h, "pay"); again != first {
		t.Fatalf("same key gave id %s, then %s", first, again)
	}
	resp, data := e.do("POST", "/v1/queues/idem/requests", h, "pay twice")
	if resp.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("same key, other body: %d %s", resp.StatusCode, data)
	}
	if runs.Load() != 1 {
		t.Fatalf("handler ran %d times", runs.Load())
	}
	// Two keys on one submission: which one would be meant?
	req, err := http.NewRequest("POST", e.URL+"/v1/queues/idem/requests", strings.NewReader("pay"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Add("Idempotency-Key", "order-42")
	req.Header.Add("Idempotency-Key", "order-43")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(data), "Idempotency-Key is given 2 times") {
		t.Fatalf("two Idempotency-Keys: %d %s, want 400", resp.StatusCode, data)
	}
	// Concurrent first submissions with one key: one request.
	ids := make(chan string, 8)
	for range 8 {
		go func() {
			_, data := e.do("POST", "/v1/queues/idem/requests", map[string]string{"Idempotency-Key": "burst"}, "b")
			m := decode(t, data)
			id, _ := m["id"].(string)
			ids <- id
		}()
	}
	want := <-ids
	for range 7 {
		if got := <-ids; got != want || got == "" {
			t.Fatalf("concurrent submissions got ids %q and %q", want, got)
		}
	}
	e.waitState(want, "succeeded")
	if runs.Load() != 2 {
		t.Fatalf("handler ran %d times, want 2", runs.Load())
	}
}

func TestTenants(t *testing.T) {
	keys := []gateway.APIKey{
		{Tenant: "acme", SHA256: gateway.HashKey("acme-key"), Grants: []gateway.Grant{{Queue: "*", Rights: []string{"send"}}}},
		{Tenant: "acme", SHA256: gateway.HashKey("acme-2"), Grants: []gateway.Grant{{Queue: "t", Rights: []string{"send"}}}},
		{Tenant: "globex", SHA256: gateway.HashKey("globex-key"), Grants: []gateway.Grant{{Queue: "t", Rights: []string{"send"}}}},
		{Tenant: "ops", SHA256: gateway.HashKey("ops-key"), Grants: []gateway.Grant{{Queue: "*", Rights: []string{"admin"}}}},
	}
	e := newEnv(t, gateway.Config{Keys: keys})
	auth := func(k string) map[string]string { return map[string]string{"Authorization": "Bearer " + k} }
	if resp, _ := e.do("POST", "/v1/queues/t/requests", nil, "x"); resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("no key: %d", resp.StatusCode)
	}
	if resp, _ := e.do("POST", "/v1/queues/t/requests", auth("wrong"), "x"); resp.StatusCode != 401 {
		t.Fatalf("wrong key: %d", resp.StatusCode)
	}
	if resp, _ := e.do("POST", "/v1/queues/other/requests", auth("globex-key"), "x"); resp.StatusCode != 403 {
		t.Fatalf("no right on queue: %d", resp.StatusCode)
	}
	id := e.submit("t", auth("acme-key"), "x")
	for _, c := range []struct {
		key    string
		status int
	}{{"acme-key", 200}, {"acme-2", 200}, {"globex-key", 404}, {"ops-key", 200}} {
		for _, p := range []string{"/v1/requests/" + id, "/v1/requests/" + id + "/result"} {
			resp, data := e.do("GET", p, auth(c.key), "")
			want := c.status
			if strings.HasSuffix(p, "/result") && want == 200 {
				want = 409 // not finished
			}
			if resp.StatusCode != want {
				t.Errorf("%s GET %s: %d %s, want %d", c.key, p, resp.StatusCode, data, want)
			}
		}
	}
	if resp, _ := e.do("DELETE", "/v1/requests/"+id, auth("globex-key"), ""); resp.StatusCode != 404 {
		t.Errorf("foreign cancel: %d", resp.StatusCode)
	}
	// The same Idempotency-Key in two tenants names two requests.
	k := map[string]string{"Idempotency-Key": "k1"}
	a := e.submit("t", mergeHdr(auth("acme-key"), k), "x")
	g := e.submit("t", mergeHdr(auth("globex-key"), k), "y")
	if a == g {
		t.Fatal("tenants share an idempotency key space")
	}
}

func mergeHdr(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func TestStreamLimit(t *testing.T) {
	e := newEnv(t, gateway.Config{MaxStreams: 1})
	id := e.submit("none", nil, "x")
	// Two long-polls at once: one holds the only slot for 2s, the other is
	// refused at once.
	statuses := make(chan *http.Response, 2)
	for range 2 {
		go func() {
			resp, err := http.Get(e.URL + "/v1/requests/" + id + "?wait=2s")
			if err != nil {
				statuses <- nil
				return
			}
			resp.Body.Close()
			statuses <- resp
		}()
	}
	first, second := <-statuses, <-statuses
	if first == nil || second == nil || first.StatusCode != http.StatusTooManyRequests || second.StatusCode != http.StatusOK ||
		first.Header.Get("Retry-After") == "" {
		t.Fatalf("two long-polls with one slot: %v, %v; want 429 with Retry-After, then 200", first, second)
	}
}

// TestPreferWaitIsALongPoll: a submission with "Prefer: wait" takes a
// stream slot like a long-poll (with none free it is answered 202 at
// once, not refused), and its wait ends when the gateway closes.
func TestPreferWaitIsALongPoll(t *testing.T) {
	e := newEnv(t, gateway.Config{MaxStreams: 1, MaxWait: time.Minute})
	s := openSSE(e, "/v1/channels/c/events", nil) // holds the only slot
	start := time.Now()
	resp, data := e.do("POST", "/v1/queues/nobody/requests", map[string]string{"Prefer": "wait=60"}, "x")
	if resp.StatusCode != http.StatusAccepted || time.Since(start) > 30*time.Second {
		t.Fatalf("Prefer: wait with no stream slot free: %d after %s: %s; want 202 at once", resp.StatusCode, time.Since(start), data)
	}
	s.close()

	done := make(chan int, 1)
	go func() {
		resp, _ := e.do("POST", "/v1/queues/nobody/requests", map[string]string{"Prefer": "wait=60", "Notify-Channel": "w"}, "y")
		done <- resp.StatusCode
	}()
	eventually(t, 10*time.Second, "the submission is stored and waits", func() bool {
		evs, err := e.Client.Backend().Events(t.Context(), backend.EventQuery{Channel: "w"})
		return err == nil && len(evs) > 0
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.GW.Close(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case status := <-done:
		if status != http.StatusAccepted {
			t.Fatalf("the waiting submission, at Close: %d, want 202", status)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a Prefer: wait submission still waits 20s after the gateway closed")
	}
}

func TestHealth(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	for _, p := range []string{"/healthz", "/readyz"} {
		if resp, data := e.do("GET", p, nil, ""); resp.StatusCode != 200 {
			t.Errorf("%s: %d %s", p, resp.StatusCode, data)
		}
	}
	_ = e.Engine.Close()
	if resp, data := e.do("GET", "/readyz", nil, ""); resp.StatusCode != 503 {
		t.Errorf("readyz with the engine closed: %d %s", resp.StatusCode, data)
	}
	resp, data := e.do("POST", "/v1/queues/q/requests", nil, "x")
	if resp.StatusCode != 503 {
		t.Errorf("submit with the engine closed: %d %s", resp.StatusCode, data)
	}
}

func TestTimeoutExpiresQueuedRequest(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	id := e.submit("idle", nil, "x")
	short := e.submit("idle", nil, "x") // no timeout: stays queued
	resp, data := e.do("POST", "/v1/queues/idle/requests?timeout=100ms", nil, "x")
	if resp.StatusCode != 202 {
		t.Fatalf("submit with timeout: %d %s", resp.StatusCode, data)
	}
	exp := decode(t, data)["id"].(string)
	st := e.waitState(exp, "expired")
	if st["error"].(map[string]any)["code"] != "expired" {
		t.Fatalf("expired status %v", st)
	}
	resp, _ = e.do("GET", "/v1/requests/"+exp+"/result", nil, "")
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("result of an expired request: %d", resp.StatusCode)
	}
	// The requester's library call agrees.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := e.Client.Await(ctx, exp); !errors.Is(err, rsvp.ErrExpired) {
		t.Fatalf("Await: %v", err)
	}
	for _, other := range []string{id, short} {
		if st := e.waitState(other, "queued"); st["state"] != "queued" {
			t.Fatal(st)
		}
	}
}

func TestDelayedSubmit(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	handled := make(chan time.Time, 1)
	e.respond("later", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		handled <- time.Now()
		return echo(ctx, m)
	})
	resp, data := e.do("POST", "/v1/queues/later/requests?delay=1s", nil, "x")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit: %d %s", resp.StatusCode, data)
	}
	st := decode(t, data)
	due, err := time.Parse(time.RFC3339Nano, st["not_before"].(string))
	if err != nil || st["state"] != "queued" {
		t.Fatalf("accepted %v (%v)", st, err)
	}
	if at := <-handled; at.Before(due.Add(-100 * time.Millisecond)) {
		t.Fatalf("handled %s before it was due", due.Sub(at))
	}
	e.waitState(st["id"].(string), "succeeded")
	for _, bad := range []string{"soon", "-1s", "100000h"} {
		resp, data := e.do("POST", "/v1/queues/later/requests?delay="+bad, nil, "x")
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(decode(t, data)["detail"].(string), "delay") {
			t.Errorf("delay=%s: %d %s", bad, resp.StatusCode, data)
		}
	}
}

// TestBearerSchemeAnyCase: the authentication scheme is case-insensitive
// (RFC 9110, section 11.1): "bearer KEY" is the key as "Bearer KEY" is.
func TestBearerSchemeAnyCase(t *testing.T) {
	t.Parallel()
	keys := []gateway.APIKey{{Tenant: "acme", SHA256: gateway.HashKey("acme-key"), Grants: []gateway.Grant{{Queue: "*", Rights: []string{"send"}}}}}
	e := newEnv(t, gateway.Config{Keys: keys})
	for _, h := range []string{"Bearer acme-key", "bearer acme-key", "BEARER acme-key"} {
		if resp, data := e.do("POST", "/v1/queues/t/requests", map[string]string{"Authorization": h}, "x"); resp.StatusCode != http.StatusAccepted {
			t.Errorf("Authorization: %s: %d %s, want 202", h, resp.StatusCode, data)
		}
	}
	for _, h := range []string{"Basic acme-key", "Bearer", "Bearer ", "Beareracme-key"} {
		if resp, data := e.do("POST", "/v1/queues/t/requests", map[string]string{"Authorization": h}, "x"); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization: %s: %d %s, want 401", h, resp.StatusCode, data)
		}
	}
}

// A client that stalls while sending a body gets 408 once BodyTimeout has
// passed: it does not hold a handler (and a connection) for as long as it
// likes.
func TestSlowBodyTimesOut(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{BodyTimeout: 300 * time.Millisecond})
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Headers and part of the body, then nothing.
	if _, err := io.WriteString(conn, "POST /v1/queues/slow/requests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body within 10s: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "body-timeout") {
		t.Fatalf("stalled body: %s %s, want 408 body-timeout", resp.Status, body)
	}
}

// TestPreferWaitAnyForm: the wait preference is found in any form RFC 7240
// allows: in a Prefer field line of its own after another (RFC 9110
// section 5.3: lines of a field make one list), and with preference
// parameters after a ";".
func TestPreferWaitAnyForm(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	e.respond("fast-forms", rsvp.HandleOptions{}, echo)
	for _, prefer := range [][]string{{"respond-async", "wait=10"}, {"wait=10; foo=bar"}, {"handling=lenient, wait=10 ;x"}} {
		req, err := http.NewRequest("POST", e.URL+"/v1/queues/fast-forms/requests", strings.NewReader("hi"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header["Prefer"] = prefer
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(data) != "echo:hi" || resp.Header.Get("Preference-Applied") != "wait=10" {
			t.Errorf("Prefer %q: %d %s (Preference-Applied %q), want 200 with the result and wait=10",
				prefer, resp.StatusCode, data, resp.Header.Get("Preference-Applied"))
		}
	}
}

// TestPreferWaitTimedOutShowsTheStatus: a submission whose Prefer: wait
// ends before the request does is answered 202 with the request's status
// at the end of the wait: running, if a worker took it meanwhile, not the
// queued status of the moment it was stored.
func TestPreferWaitTimedOutShowsTheStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	started, release := make(chan struct{}), make(chan struct{})
	e.respond("held-wait", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		close(started)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return &rsvp.Reply{Body: []byte("late")}, nil
	})
	defer close(release)
	resp, data := e.do("POST", "/v1/queues/held-wait/requests", map[string]string{"Prefer": "wait=2"}, "x")
	select {
	case <-started:
	default:
		t.Fatalf("the handler had not started within the wait: %d %s", resp.StatusCode, data)
	}
	st := decode(t, data)
	if resp.StatusCode != http.StatusAccepted || st["state"] != gateway.StateRunning || st["attempts"] != 1.0 {
		t.Errorf("Prefer: wait=2 on a request running all along: %d state %v attempts %v, want 202 running, attempt 1", resp.StatusCode, st["state"], st["attempts"])
	}
}

// TestResultNoSniff: a result is the body a worker stored, with the
// content type it chose: a browser must not sniff it as another type (a
// body stored as application/octet-stream run as HTML). Every response of
// the gateway says nosniff: results, the submission answered with its
// result (Prefer: wait), problems.
func TestResultNoSniff(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	e.respond("pages", rsvp.HandleOptions{}, echo) // the reply has the submission's content type
	const page = "<html><script>alert(document.cookie)</script></html>"
	for _, ct := range []string{"text/html", ""} { // "": served as application/octet-stream
		id := e.submit("pages", map[string]string{"Content-Type": ct}, page)
		e.waitState(id, "succeeded")
		resp, data := e.do("GET", "/v1/requests/"+id+"/result", nil, "")
		if resp.StatusCode != http.StatusOK || string(data) != "echo:"+page {
			t.Fatalf("result of a %q body: %d %q", ct, resp.StatusCode, data)
		}
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("result stored as %q (served as %q): X-Content-Type-Options %q, want nosniff",
				ct, resp.Header.Get("Content-Type"), got)
		}
	}
	resp, data := e.do("POST", "/v1/queues/pages/requests", map[string]string{"Content-Type": "text/html", "Prefer": "wait=10"}, page)
	if resp.StatusCode != http.StatusOK || string(data) != "echo:"+page {
		t.Fatalf("submission with Prefer: wait: %d %q, want 200 with the result", resp.StatusCode, data)
	}
	if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("submission answered with its text/html result: X-Content-Type-Options %q, want nosniff", got)
	}
	resp, _ = e.do("GET", "/v1/requests/nope", nil, "")
	if got := resp.Header.Get("X-Content-Type-Options"); resp.StatusCode != http.StatusNotFound || got != "nosniff" {
		t.Errorf("404 problem: %d, X-Content-Type-Options %q, want nosniff", resp.StatusCode, got)
	}
	// What the gateway guards with Admin (rsvp serve's /metrics) too.
	admin := httptest.NewServer(e.GW.Admin(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, page)
	})))
	defer admin.Close()
	resp, err := http.Get(admin.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("a handler guarded by Admin: X-Content-Type-Options %q, want nosniff", got)
	}
}
