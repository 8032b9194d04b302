package gateway_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/gateway"
)

// workerSubmit posts body to queue through the front door and returns the
// request's id.
func (e *env) workerSubmit(queue string, hdr map[string]string, body string) string {
	e.t.Helper()
	resp, data := e.do("POST", "/v1/queues/"+queue+"/requests", hdr, body)
	if resp.StatusCode != http.StatusAccepted {
		e.t.Fatalf("submit: %d %s", resp.StatusCode, data)
	}
	return decode(e.t, data)["id"].(string)
}

// workerLeases calls the lease endpoint of queue with query and returns the
// leases of its 200 response.
func (e *env) workerLeases(queue, query string, hdr map[string]string) []gateway.Lease {
	e.t.Helper()
	resp, data := e.do("POST", "/v1/queues/"+queue+"/leases?"+query, hdr, "")
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("lease %s?%s: %d %s", queue, query, resp.StatusCode, data)
	}
	return decodeLeases(e.t, data)
}

func decodeLeases(t *testing.T, data []byte) []gateway.Lease {
	t.Helper()
	var l struct {
		Leases []gateway.Lease `json:"leases"`
	}
	if err := json.Unmarshal(data, &l); err != nil || l.Leases == nil {
		t.Fatalf("not a lease list (%v): %s", err, data)
	}
	return l.Leases
}

// workerLease leases one request of queue, waiting up to 10s for it.
func (e *env) workerLease(queue, query string, hdr map[string]string) gateway.Lease {
	e.t.Helper()
	ls := e.workerLeases(queue, "wait=10s&"+query, hdr)
	if len(ls) != 1 {
		e.t.Fatalf("got %d leases, want 1", len(ls))
	}
	return ls[0]
}

// workerSettle posts to /v1/leases/{lease}/{verb} and checks the status.
func (e *env) workerSettle(lease, verb string, hdr map[string]string, body string, want int) []byte {
	e.t.Helper()
	resp, data := e.do("POST", "/v1/leases/"+lease+"/"+verb, hdr, body)
	if resp.StatusCode != want {
		e.t.Fatalf("%s %s: %d %s, want %d", verb, lease, resp.StatusCode, data, want)
	}
	if want >= 400 && resp.Header.Get("Content-Type") != "application/problem+json" {
		e.t.Fatalf("%s %s: %d with Content-Type %q, want problem details", verb, lease, want, resp.Header.Get("Content-Type"))
	}
	return data
}

// workerStatus returns the status resource of id.
func (e *env) workerStatus(id string) map[string]any {
	e.t.Helper()
	resp, data := e.do("GET", "/v1/requests/"+id+"?redirect=false", nil, "")
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("status of %s: %d %s", id, resp.StatusCode, data)
	}
	return decode(e.t, data)
}

func TestWorkerLeaseReply(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	id := e.workerSubmit("q", map[string]string{"Content-Type": "text/plain"}, "hello")
	before := time.Now()
	l := e.workerLease("q", "", nil)
	if l.ID != id || l.CorrelationID != id || l.Queue != "q" || l.Attempt != 1 || l.ContentType != "text/plain" ||
		string(l.Body) != "hello" || l.Headers == nil || l.CreatedAt.IsZero() || !l.Deadline.IsZero() {
		t.Fatalf("lease %+v", l)
	}
	if len(l.Lease) != 32 || strings.Trim(l.Lease, "0123456789abcdef") != "" {
		t.Fatalf("lease id %q is not 128 bits in hex", l.Lease)
	}
	if exp := l.ExpiresAt.Sub(before); exp < 29*time.Second || exp > 31*time.Second+time.Since(before) {
		t.Fatalf("expires_at %s is %s after the call, want the default 30s", l.ExpiresAt, exp)
	}
	if st := e.workerStatus(id); st["state"] != gateway.StateRunning || st["attempts"] != float64(1) {
		t.Fatalf("status while leased: %v", st)
	}
	// Progress, as the status shows it; not JSON is refused.
	e.workerSettle(l.Lease, "progress", nil, `{"percent":40}`, http.StatusNoContent)
	e.workerSettle(l.Lease, "progress", nil, `forty`, http.StatusBadRequest)
	if st := e.workerStatus(id); st["progress"].(map[string]any)["percent"] != float64(40) {
		t.Fatalf("status after progress: %v", st)
	}

	e.workerSettle(l.Lease, "reply", map[string]string{"Content-Type": "application/json"}, `{"ok":true}`, http.StatusNoContent)
	resp, data := e.do("GET", "/v1/requests/"+id+"/result", nil, "")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" || string(data) != `{"ok":true}` {
		t.Fatalf("result: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), data)
	}
	if st := e.workerStatus(id); st["state"] != gateway.StateSucceeded || st["attempts"] != float64(1) {
		t.Fatalf("status after the reply: %v", st)
	}

	// A lease is settled once.
	e.workerSettle(l.Lease, "reply", nil, "again", http.StatusConflict)
	e.workerSettle(l.Lease, "fail", nil, `{"error":"late"}`, http.StatusConflict)
	e.workerSettle(l.Lease, "extend", nil, "", http.StatusConflict)
	e.workerSettle(l.Lease, "progress", nil, "1", http.StatusConflict)
	if _, data := e.do("GET", "/v1/requests/"+id+"/result", nil, ""); string(data) != `{"ok":true}` {
		t.Fatalf("result after a second reply: %s", data)
	}
}

func TestWorkerFailRetries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	id := e.workerSubmit("q", nil, "x")
	l := e.workerLease("q", "", nil)
	e.workerSettle(l.Lease, "fail", nil, `{"error":"flaky"}`, http.StatusNoContent)
	st := e.workerStatus(id)
	if p, _ := st["error"].(map[string]any); st["state"] != gateway.StateQueued || st["retry_at"] == nil || p["detail"] != "flaky" {
		t.Fatalf("status after a failed attempt: %v", st)
	}
	// Back after the default backoff (1s ± 25%).
	l2 := e.workerLease("q", "", nil)
	if l2.ID != id || l2.Attempt != 2 || l2.Lease == l.Lease {
		t.Fatalf("second lease %+v, want attempt 2 of %s", l2, id)
	}
	e.workerSettle(l2.Lease, "reply", nil, "ok", http.StatusNoContent)
	if st := e.workerStatus(id); st["state"] != gateway.StateSucceeded || st["attempts"] != float64(2) {
		t.Fatalf("final status: %v", st)
	}
}

func TestWorkerPermanentFail(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	for _, c := range []struct{ body, code, detail string }{
		{`{"error":"bad input","permanent":true}`, rsvp.CodeFailed, "bad input"},
		{`{"error":"no such user","permanent":true,"code":"not_found"}`, "not_found", "no such user"},
	} {
		id := e.workerSubmit("q", nil, "x")
		l := e.workerLease("q", "", nil)
		e.workerSettle(l.Lease, "fail", nil, c.body, http.StatusNoContent)
		st := e.workerStatus(id)
		p, _ := st["error"].(map[string]any)
		if st["state"] != gateway.StateFailed || st["attempts"] != float64(1) || p["detail"] != c.detail || p["code"] != c.code {
			t.Fatalf("%s: status %v", c.body, st)
		}
		resp, data := e.do("GET", "/v1/requests/"+id+"/result", nil, "")
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(data), c.detail) {
			t.Fatalf("%s: result %d %s", c.body, resp.StatusCode, data)
		}
	}
}

func TestWorkerLeaseExpiry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	id := e.workerSubmit("q", nil, "x")
	l := e.workerLease("q", "lease=1s", nil)
	if d := time.Until(l.ExpiresAt); d > time.Second {
		t.Fatalf("a 1s lease expires in %s", d)
	}
	if st := e.workerStatus(id); st["state"] != gateway.StateRunning {
		t.Fatalf("while leased: %v", st["state"])
	}
	// The worker went quiet: the request is queued again (not shown as
	// running with no worker), and the next lease call gets it.
	eventually(t, 10*time.Second, "the request is queued again", func() bool {
		return e.workerStatus(id)["state"] == gateway.StateQueued
	})
	l2 := e.workerLease("q", "", nil)
	if l2.ID != id || l2.Attempt != 2 {
		t.Fatalf("after expiry: %+v, want attempt 2 of %s", l2, id)
	}
	e.workerSettle(l.Lease, "reply", nil, "late", http.StatusNotFound)
	e.workerSettle(l.Lease, "extend", nil, "", http.StatusNotFound)
	e.workerSettle(l2.Lease, "reply", nil, "ok", http.StatusNoContent)
	if st := e.workerStatus(id); st["state"] != gateway.StateSucceeded || st["attempts"] != float64(2) {
		t.Fatalf("final status: %v", st)
	}
}

func TestWorkerExtendKeepsLease(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	id := e.workerSubmit("q", nil, "x")
	l := e.workerLease("q", "lease=1s", nil)

	// Another worker waits 3s, three lease durations, while this one
	// extends its lease: nothing is handed out to the other.
	other := make(chan *http.Response, 1)
	go func() {
		resp, err := http.Post(e.URL+"/v1/queues/q/leases?wait=3s", "", nil)
		if err != nil {
			resp = &http.Response{StatusCode: -1, Status: err.Error()}
		}
		other <- resp
	}()
	tick := time.NewTicker(200 * time.Millisecond) // paces the extensions
	defer tick.Stop()
	var resp *http.Response
	for extensions := 0; resp == nil; {
		select {
		case resp = <-other:
		case <-tick.C:
			data := e.workerSettle(l.Lease, "extend", nil, "", http.StatusOK)
			var ext struct {
				ExpiresAt time.Time `json:"expires_at"`
			}
			if err := json.Unmarshal(data, &ext); err != nil || time.Until(ext.ExpiresAt) <= 0 || time.Until(ext.ExpiresAt) > time.Second {
				t.Fatalf("extend answered %s (%v), want a 1s lease", data, err)
			}
			extensions++
		}
		if resp != nil && extensions < 5 {
			t.Fatalf("the other worker returned after %d extensions", extensions)
		}
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("other worker: %d %s", resp.StatusCode, resp.Status)
	}
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if ls := decodeLeases(t, data); len(ls) != 0 {
		t.Fatalf("the other worker got %+v while the lease was extended", ls)
	}
	e.workerSettle(l.Lease, "reply", nil, "ok", http.StatusNoContent)
	if st := e.workerStatus(id); st["state"] != gateway.StateSucceeded || st["attempts"] != float64(1) {
		t.Fatalf("final status: %v", st)
	}
}

func TestWorkerWaitEmpty(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	if ls := e.workerLeases("q", "", nil); len(ls) != 0 {
		t.Fatalf("no wait, empty queue: %+v", ls)
	}
	start := time.Now()
	if ls := e.workerLeases("q", "wait=1s&max=5", nil); len(ls) != 0 {
		t.Fatalf("wait, empty queue: %+v", ls)
	}
	if d := time.Since(start); d < time.Second {
		t.Fatalf("wait=1s returned after %s", d)
	}
}

func TestWorkerBatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	ids := map[string]bool{}
	for i := range 5 {
		ids[e.workerSubmit("q", nil, string(rune('a'+i)))] = true
	}
	first := e.workerLeases("q", "wait=10s&max=3", nil)
	if len(first) != 3 {
		t.Fatalf("max=3 with 5 queued: %d leases", len(first))
	}
	second := e.workerLeases("q", "wait=10s&max=3", nil)
	if len(second) != 2 {
		t.Fatalf("max=3 with 2 queued: %d leases", len(second))
	}
	for _, l := range append(first, second...) {
		if !ids[l.ID] {
			t.Fatalf("lease of %s: unknown or handed out twice", l.ID)
		}
		delete(ids, l.ID)
		e.workerSettle(l.Lease, "reply", nil, "ok", http.StatusNoContent)
	}
	// max is capped, not refused, also beyond int64.
	for _, max := range []string{"1000", "99999999999999999999"} {
		if ls := e.workerLeases("q", "max="+max, nil); len(ls) != 0 {
			t.Fatalf("empty queue: %+v", ls)
		}
	}
}

func TestWorkerAuth(t *testing.T) {
	t.Parallel()
	keys := []gateway.APIKey{
		{Tenant: "acme", SHA256: gateway.HashKey("sender"), Grants: []gateway.Grant{{Queue: "q", Rights: []string{"send"}}}},
		{Tenant: "acme", SHA256: gateway.HashKey("worker"), Grants: []gateway.Grant{{Queue: "q", Rights: []string{"consume"}}}},
		{Tenant: "acme", SHA256: gateway.HashKey("elsewhere"), Grants: []gateway.Grant{{Queue: "other", Rights: []string{"consume"}}}},
	}
	e := newEnv(t, gateway.Config{Keys: keys})
	auth := func(k string) map[string]string { return map[string]string{"Authorization": "Bearer " + k} }
	id := e.workerSubmit("q", auth("sender"), "x")
	for _, c := range []struct {
		key  map[string]string
		want int
	}{{nil, http.StatusUnauthorized}, {auth("wrong"), http.StatusUnauthorized}, {auth("sender"), http.StatusForbidden},
		{auth("elsewhere"), http.StatusForbidden}} {
		if resp, data := e.do("POST", "/v1/queues/q/leases", c.key, ""); resp.StatusCode != c.want {
			t.Fatalf("lease with %v: %d %s, want %d", c.key, resp.StatusCode, data, c.want)
		}
	}
	l := e.workerLease("q", "", auth("worker"))
	if l.ID != id {
		t.Fatalf("leased %s, want %s", l.ID, id)
	}
	e.workerSettle(l.Lease, "reply", nil, "x", http.StatusUnauthorized)
	e.workerSettle(l.Lease, "reply", auth("elsewhere"), "x", http.StatusForbidden)
	e.workerSettle(l.Lease, "extend", auth("sender"), "", http.StatusForbidden)
	e.workerSettle(l.Lease, "reply", auth("worker"), "ok", http.StatusNoContent)
}

func TestWorkerBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{MaxBodySize: 16})
	for _, q := range []string{"q/leases?max=0", "q/leases?max=x", "q/leases?lease=500ms", "q/leases?lease=11m",
		"q/leases?wait=soon", "rsvp-webhooks/leases", "bad.name/leases"} {
		if resp, data := e.do("POST", "/v1/queues/"+q, nil, ""); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("POST %s: %d %s, want 400", q, resp.StatusCode, data)
		}
	}
	for _, verb := range []string{"reply", "fail", "extend"} {
		data := e.workerSettle("0123456789abcdef0123456789abcdef", verb, nil, "", http.StatusNotFound)
		if !strings.Contains(string(data), "Unknown or expired lease") {
			t.Errorf("%s of an unknown lease: %s", verb, data)
		}
	}

	id := e.workerSubmit("q", nil, "x")
	l := e.workerLease("q", "", nil)
	e.workerSettle(l.Lease, "reply", nil, strings.Repeat("x", 17), http.StatusRequestEntityTooLarge)
	e.workerSettle(l.Lease, "reply", map[string]string{"Content-Type": "text/"}, "x", http.StatusBadRequest)
	e.workerSettle(l.Lease, "fail", nil, `{"error":`, http.StatusBadRequest)
	e.workerSettle(l.Lease, "fail", nil, `{"error":"x","code":"has space"}`, http.StatusBadRequest)
	for _, code := range []string{"expired", "cancelled", "attempts_exhausted", "not_accepted"} {
		// Not for a worker to claim: expired would end the request expired (504), not failed.
		data := e.workerSettle(l.Lease, "fail", nil, `{"error":"upstream timed out","code":"`+code+`","permanent":true}`, http.StatusBadRequest)
		if !strings.Contains(string(data), "names an outcome only rsvp decides") {
			t.Errorf("fail with code %s: %s", code, data)
		}
	}
	e.workerSettle(l.Lease, "extend?lease=1h", nil, "", http.StatusBadRequest)
	// None of that settled the lease.
	e.workerSettle(l.Lease, "reply", map[string]string{"Content-Type": "text/plain"}, strings.Repeat("y", 16), http.StatusNoContent)
	if resp, data := e.do("GET", "/v1/requests/"+id+"/result", nil, ""); resp.StatusCode != http.StatusOK || string(data) != strings.Repeat("y", 16) {
		t.Fatalf("result: %d %s", resp.StatusCode, data)
	}
}

func TestWorkerCancelledNotHandedOut(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	doomed := e.workerSubmit("q", nil, "doomed")
	if resp, data := e.do("DELETE", "/v1/requests/"+doomed, nil, ""); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("cancel: %d %s", resp.StatusCode, data)
	}
	next := e.workerSubmit("q", nil, "next")
	// FIFO: the cancelled request comes first, and is skipped.
	if l := e.workerLease("q", "max=2", nil); l.ID != next {
		t.Fatalf("leased %s (%s), want %s", l.ID, l.Body, next)
	}
	if st := e.workerStatus(doomed); st["state"] != gateway.StateCancelled {
		t.Fatalf("cancelled request: %v", st)
	}
}

// TestWorkerLeaseIsPerGateway: a lease id works only on the gateway that
// handed it out, and a gateway that closes gives its leases back at once.
func TestWorkerLeaseIsPerGateway(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	gw2, err := gateway.New(context.Background(), e.Client, gateway.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw2)
	t.Cleanup(srv.Close)
	e2 := &env{t: t, URL: srv.URL, Client: e.Client, GW: gw2, Engine: e.Engine}

	id := e.workerSubmit("q", nil, "x")
	l := e2.workerLease("q", "lease=10m", nil)
	e.workerSettle(l.Lease, "reply", nil, "wrong gateway", http.StatusNotFound)

	srv.CloseClientConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := gw2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// Back at once, not after the 10m lease nor the engine's 30s.
	start := time.Now()
	l2 := e.workerLease("q", "", nil)
	if l2.ID != id || l2.Attempt != 2 || time.Since(start) > 5*time.Second {
		t.Fatalf("after the other gateway closed: %+v after %s", l2, time.Since(start))
	}
	e.workerSettle(l2.Lease, "reply", nil, "ok", http.StatusNoContent)
}

// TestWorkerLeaseCarriesTrace: an HTTP worker gets the W3C trace context of
// its attempt's span (rsvp.handle, in the caller's trace) in its lease, so
// that its own spans are the attempt's children, and not among the
// application headers.
func TestWorkerLeaseCarriesTrace(t *testing.T) {
	t.Parallel()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())
	e := newEnv(t, gateway.Config{TracerProvider: tp})
	const caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	e.workerSubmit("traced", map[string]string{"traceparent": caller, "tracestate": "vendor=1", "X-Tenant": "acme"}, "x")
	l := e.workerLease("traced", "", nil)
	if len(l.TraceParent) != 55 || l.TraceParent[3:35] != caller[3:35] || l.TraceState != "vendor=1" || l.Headers["traceparent"] != "" {
		t.Fatalf("lease traceparent %q, tracestate %q, headers %v; want the caller's trace %s and tracestate", l.TraceParent, l.TraceState, l.Headers, caller[3:35])
	}
	e.workerSettle(l.Lease, "reply", nil, "ok", http.StatusNoContent)
	var handle sdktrace.ReadOnlySpan
	for _, sp := range spans.Ended() {
		if sp.Name() == "rsvp.handle traced" {
			handle = sp
		}
	}
	if handle == nil {
		t.Fatal("no rsvp.handle span once the lease was settled")
	}
	if got, want := l.TraceParent[36:52], handle.SpanContext().SpanID().String(); got != want {
		t.Errorf("the lease's traceparent names span %s, want the attempt's span %s (rsvp.handle), whose children the worker's spans are", got, want)
	}
}

// TestLateReleaseOfAnEarlierAttempt: an attempt given back after the next
// attempt began (its retrying event comes after that one's running event)
// does not make the status queued while the next attempt runs.
func TestLateReleaseOfAnEarlierAttempt(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	id := e.workerSubmit("q", nil, "x")
	l := e.workerLease("q", "", nil)
	b := e.Client.Backend()
	for _, ev := range []*backend.Event{
		{CorrelationID: id, Type: backend.EventRunning, At: time.Now(), Data: []byte(`{"attempt":2}`)},
		{CorrelationID: id, Type: backend.EventRetrying, At: time.Now(), Data: []byte(`{"attempt":1,"error":"given back unfinished"}`)},
	} {
		if err := b.AppendEvent(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if st := e.workerStatus(id); st["state"] != gateway.StateRunning || st["attempts"] != float64(2) {
		t.Fatalf("status %v attempts %v, want running attempt 2", st["state"], st["attempts"])
	}
	e.workerSettle(l.Lease, "reply", nil, "ok", http.StatusNoContent)
}

// TestWorkerLearnsOfCancel: an HTTP worker that extends the lease of a
// request cancelled meanwhile gets 410, and its lease is settled: a
// reply then is 409, and the request stays cancelled.
func TestWorkerLearnsOfCancel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	id := e.workerSubmit("q", nil, "x")
	l := e.workerLease("q", "", nil)
	e.workerSettle(l.Lease, "extend", nil, "", http.StatusOK)
	if resp, data := e.do("DELETE", "/v1/requests/"+id, nil, ""); resp.StatusCode >= 300 {
		t.Fatalf("cancel: %d %s", resp.StatusCode, data)
	}
	data := e.workerSettle(l.Lease, "extend", nil, "", http.StatusGone)
	if !strings.Contains(string(data), "request-cancelled") {
		t.Fatalf("extend after the cancel: %s", data)
	}
	e.workerSettle(l.Lease, "reply", nil, "too late", http.StatusConflict)
	if st := e.workerStatus(id); st["state"] != gateway.StateCancelled {
		t.Fatalf("status %v, want cancelled", st["state"])
	}
}

// TestWorkerSettleAfterCancel: an HTTP worker that replies to, fails or
// reports progress on a request cancelled meanwhile (without an extend in
// between) learns of the cancel as extend tells it (410), and the request
// stays cancelled with nothing else recorded: its failure is not
// dead-lettered, as a Handler's error after a cancel is not.
func TestWorkerSettleAfterCancel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	for _, tc := range []struct{ verb, body string }{
		{"fail", `{"error":"gave up","permanent":true}`},
		{"fail", `{"error":"try again"}`},
		{"reply", "done"},
		{"progress", `{"percent":40}`}, // answered as extend is
	} {
		id := e.workerSubmit("sac", nil, "x")
		l := e.workerLease("sac", "", nil)
		if resp, data := e.do("DELETE", "/v1/requests/"+id, nil, ""); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("cancel: %d %s", resp.StatusCode, data)
		}
		resp, data := e.do("POST", "/v1/leases/"+l.Lease+"/"+tc.verb, nil, tc.body)
		if resp.StatusCode != http.StatusGone || !strings.Contains(string(data), "request-cancelled") {
			t.Errorf("%s %s after the cancel: %d %s, want 410 request-cancelled", tc.verb, tc.body, resp.StatusCode, data)
		}
		e.workerSettle(l.Lease, tc.verb, nil, tc.body, http.StatusConflict)
		if st := e.workerStatus(id); st["state"] != gateway.StateCancelled {
			t.Fatalf("status %v, want cancelled", st["state"])
		}
	}
	dls, err := e.Client.DeadLetters(t.Context(), rsvp.DeadLetterQuery{Queue: "sac"})
	if err != nil {
		t.Fatal(err)
	}
	for _, dl := range dls {
		t.Errorf("a cancelled request was dead-lettered: %s, reason %s: %s", dl.Message.ID, dl.Reason, dl.LastError)
	}
}

// Whole seconds too many for a time.Duration are not wrapped around: a
// lease of 2^55+60 seconds is not a 60s lease, and a huge wait is capped
// at the gateway's maximum, as the API says, not refused as negative.
func TestHugeWholeSeconds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{MaxWait: time.Second})
	id := e.workerSubmit("q", nil, "x")
	if resp, data := e.do("POST", "/v1/queues/q/leases?lease=36028797018964028", nil, ""); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("lease=2^55+60 (seconds): %d %s, want 400", resp.StatusCode, data)
	}
	l := e.workerLease("q", "", nil)
	if resp, data := e.do("POST", "/v1/leases/"+l.Lease+"/extend?lease=36028797018964028", nil, ""); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("extend?lease=2^55+60 (seconds): %d %s, want 400", resp.StatusCode, data)
	}
	e.workerSettle(l.Lease, "reply", nil, "ok", http.StatusNoContent)
	for _, wait := range []string{"9223372037", "18446744074", "99999999999999999999"} { // wrap to a negative and to 0.29s; out of int64
		if resp, data := e.do("GET", "/v1/requests/"+id+"?wait="+wait, nil, ""); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("status of a finished request with wait=%s: %d %s, want 303", wait, resp.StatusCode, data)
		}
		if resp, data := e.do("POST", "/v1/queues/q/requests", map[string]string{"Prefer": "wait=" + wait}, "y"); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("submit with Prefer: wait=%s: %d %s, want 202", wait, resp.StatusCode, data)
		}
	}
}

// A lease is its tenant's: a key of another tenant, even with the consume
// right on the queue, cannot extend, report progress on, reply to or fail
// it; it is unknown to it (404), as another tenant's request is.
func TestWorkerLeaseOfAnotherTenant(t *testing.T) {
	t.Parallel()
	grants := []gateway.Grant{{Queue: "q", Rights: []string{"send", "consume"}}}
	e := newEnv(t, gateway.Config{Keys: []gateway.APIKey{
		{Tenant: "acme", SHA256: gateway.HashKey("acme"), Grants: grants},
		{Tenant: "acme", SHA256: gateway.HashKey("acme2"), Grants: grants},
		{Tenant: "evil", SHA256: gateway.HashKey("evil"), Grants: grants},
	}})
	auth := func(k string) map[string]string { return map[string]string{"Authorization": "Bearer " + k} }
	id := e.workerSubmit("q", auth("acme"), "x")
	l := e.workerLease("q", "", auth("acme"))
	for _, verb := range []string{"extend", "progress", "reply", "fail"} {
		body := ""
		if verb == "progress" {
			body = "1"
		}
		e.workerSettle(l.Lease, verb, auth("evil"), body, http.StatusNotFound)
	}
	_, data := e.do("GET", "/v1/requests/"+id, auth("acme"), "")
	if st := decode(t, data); st["state"] != gateway.StateRunning || st["progress"] != nil {
		t.Fatalf("status after the other tenant's calls: %v", st)
	}
	// Another key of the lease's tenant may settle it.
	e.workerSettle(l.Lease, "reply", auth("acme2"), "ok", http.StatusNoContent)
}

// cancelAfterRead is an engine that, once armed with a request id, cancels
// that request (with cancel) right after the next read of its reply: as a
// DELETE that lands just after a worker's reply or fail checked whether
// the request was cancelled.
type cancelAfterRead struct {
	backend.Backend
	armed  atomic.Pointer[string]
	cancel func(id string)
}

func (c *cancelAfterRead) GetReply(ctx context.Context, id string) (*backend.Reply, error) {
	r, err := c.Backend.GetReply(ctx, id)
	if p := c.armed.Load(); p != nil && *p == id && c.armed.CompareAndSwap(p, nil) {
		c.cancel(id)
	}
	return r, err
}

// A reply or fail that loses the race with a cancel (the cancel
// stores its outcome first) is dropped, and the worker is told so: 410
// request-cancelled, as when the cancel came before the call, not 204
// ("the request has succeeded") for a request that ends cancelled.
func TestWorkerSettleLosesRaceWithCancel(t *testing.T) {
	t.Parallel()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	cb := &cancelAfterRead{Backend: b}
	e := newEnvWith(t, cb, gateway.Config{}, nil)
	cb.cancel = func(id string) {
		if _, err := e.Client.Cancel(context.Background(), id); err != nil {
			t.Errorf("cancel %s: %v", id, err)
		}
	}
	for _, tc := range []struct{ verb, body string }{
		{"reply", "done"},
		{"fail", `{"error":"gave up","permanent":true}`},
		{"fail", `{"error":"try again"}`},
	} {
		id := e.workerSubmit("race", nil, "x")
		l := e.workerLease("race", "", nil)
		cb.armed.Store(&id)
		resp, data := e.do("POST", "/v1/leases/"+l.Lease+"/"+tc.verb, nil, tc.body)
		if cb.armed.Load() != nil {
			t.Fatalf("%s: the request's reply was not read", tc.verb)
		}
		if st := e.workerStatus(id); st["state"] != gateway.StateCancelled {
			t.Fatalf("%s: status %v, want cancelled", tc.verb, st["state"])
		}
		if resp.StatusCode != http.StatusGone || !strings.Contains(string(data), "request-cancelled") {
			t.Errorf("%s that lost the race with a cancel: %d %s, want 410 request-cancelled", tc.verb, resp.StatusCode, data)
		}
		e.workerSettle(l.Lease, tc.verb, nil, tc.body, http.StatusConflict)
	}
}
