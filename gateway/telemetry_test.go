package gateway_test

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/gateway"
)

// TestOneTraceFromSubmitToPush: HTTP submit → queue → handler (two
// attempts, the first failing) → reply → SSE delivery are one trace, the
// responder being another client with its own tracer provider.
func TestOneTraceFromSubmitToPush(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	workerSpans := tracetest.NewSpanRecorder()
	workerTP := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(workerSpans))
	defer tp.Shutdown(context.Background())
	defer workerTP.Shutdown(context.Background())

	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	c, err := rsvp.New(ctx, b, rsvp.Config{TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	gw, err := gateway.New(ctx, c, gateway.Config{TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	defer func() {
		srv.Close()
		_ = gw.Close(ctx)
	}()
	worker, err := rsvp.New(ctx, b, rsvp.Config{TracerProvider: workerTP})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := worker.Handle("traced", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if m.Attempt == 1 {
			return nil, errors.New("first attempt fails")
		}
		return &rsvp.Reply{Body: []byte("done")}, nil
	}), rsvp.HandleOptions{Backoff: func(int) time.Duration { return 10 * time.Millisecond }}); err != nil {
		t.Fatal(err)
	}

	resp, err := http.Post(srv.URL+"/v1/queues/traced/requests", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	events, err := http.Get(srv.URL + resp.Header.Get("Location") + "/events")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(events.Body)
	for sc.Scan() { // ends after the final event
	}
	events.Body.Close()
	if err := worker.Close(ctx); err != nil { // waits until its attempts are settled
		t.Fatal(err)
	}

	all := append(spans.Ended(), workerSpans.Ended()...)
	names := map[string]int{}
	var root sdktrace.ReadOnlySpan
	for _, s := range all {
		names[s.Name()]++
		if s.Name() == "POST /v1/queues/{queue}/requests" {
			root = s
		}
	}
	for name, n := range map[string]int{"POST /v1/queues/{queue}/requests": 1, "rsvp.send traced": 1, "rsvp.queue_wait": 1,
		"rsvp.handle traced": 2, "rsvp.gateway.push": 1} {
		if names[name] != n {
			t.Fatalf("%d spans %q, want %d; all: %v", names[name], name, n, names)
		}
	}
	for _, s := range all {
		switch s.Name() {
		case "GET /v1/requests/{id}/events": // the client's own call: its own trace
			continue
		}
		if s.SpanContext().TraceID() != root.SpanContext().TraceID() {
			t.Errorf("span %q is in another trace", s.Name())
		}
	}
}

// TestPushSpanKeepsTracestate: the span of a pushed final event is a
// child of the submission's span with its whole W3C trace context, the
// caller's tracestate too, not only its traceparent.
func TestPushSpanKeepsTracestate(t *testing.T) {
	t.Parallel()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())
	e := newEnv(t, gateway.Config{TracerProvider: tp})
	e.respond("traced", rsvp.HandleOptions{}, echo)
	const (
		traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
		state   = "vendor=opaque-1,other=2"
	)
	id := e.submit("traced", map[string]string{"traceparent": "00-" + traceID + "-00f067aa0ba902b7-01", "tracestate": state}, "x")
	s := openSSE(e, "/v1/requests/"+id+"/events", nil)
	for ev := s.must(); ev.Type != "succeeded"; ev = s.must() {
	}
	s.close()
	var push sdktrace.ReadOnlySpan
	for _, sp := range spans.Ended() {
		if sp.Name() == "rsvp.gateway.push" {
			push = sp
		}
	}
	if push == nil {
		t.Fatal("no rsvp.gateway.push span")
	}
	if got := push.Parent().TraceID().String(); got != traceID {
		t.Fatalf("the push span's parent is in trace %s, want the caller's %s", got, traceID)
	}
	if got := push.Parent().TraceState().String(); got != state {
		t.Errorf("the push span's parent has tracestate %q, want the caller's %q", got, state)
	}
	if got := push.SpanContext().TraceState().String(); got != state {
		t.Errorf("the push span has tracestate %q, want the caller's %q", got, state)
	}
}

// TestWebhookTraced: a webhook delivery is in the trace of its submission,
// as pushes on streams are: a span per attempt (rsvp.gateway.webhook, a
// client span, a child of the submission's span, with the attempt and the
// callback's status), and the POST carries that span's traceparent and the
// caller's tracestate, so the receiver can go on with the trace.
func TestWebhookTraced(t *testing.T) {
	t.Parallel()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())
	type delivery struct{ traceparent, tracestate string }
	got := make(chan delivery, 2)
	var posts atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- delivery{r.Header.Get("traceparent"), r.Header.Get("tracestate")}
		if posts.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable) // the first attempt fails
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer hook.Close()
	e := newEnv(t, gateway.Config{TracerProvider: tp,
		Webhooks: gateway.WebhookConfig{Secrets: []string{gateway.NewTestSecret(t)}, AllowPrivate: true}})
	e.respond("traced", rsvp.HandleOptions{}, echo)
	const (
		traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
		state   = "vendor=opaque-1"
	)
	e.submit("traced", map[string]string{"traceparent": "00-" + traceID + "-00f067aa0ba902b7-01", "tracestate": state,
		"Callback-URL": hook.URL + "/done"}, "x")
	var deliveries []delivery
	for range 2 {
		select {
		case d := <-got:
			deliveries = append(deliveries, d)
		case <-time.After(30 * time.Second):
			t.Fatalf("%d webhook deliveries within 30s, want 2", len(deliveries))
		}
	}
	// The span of an attempt ends after its POST was answered.
	var hooks []sdktrace.ReadOnlySpan
	for deadline := time.Now().Add(10 * time.Second); len(hooks) < 2 && time.Now().Before(deadline); {
		hooks = hooks[:0]
		for _, sp := range spans.Ended() {
			if sp.Name() == "rsvp.gateway.webhook" {
				hooks = append(hooks, sp)
			}
		}
		if len(hooks) < 2 {
			time.Sleep(10 * time.Millisecond) // poll interval
		}
	}
	if len(hooks) != 2 {
		t.Fatalf("%d rsvp.gateway.webhook spans, want one per attempt (2)", len(hooks))
	}
	for i, sp := range hooks {
		if sp.SpanKind() != trace.SpanKindClient || sp.Parent().TraceID().String() != traceID {
			t.Errorf("attempt %d: span kind %v in trace %s, want a client span in the caller's trace %s", i+1, sp.SpanKind(), sp.Parent().TraceID(), traceID)
		}
		attrs := attribute.NewSet(sp.Attributes()...)
		if v, _ := attrs.Value("rsvp.webhook.attempt"); v.AsInt64() != int64(i+1) {
			t.Errorf("attempt %d: rsvp.webhook.attempt %v", i+1, v.Emit())
		}
		want := []int64{http.StatusServiceUnavailable, http.StatusNoContent}[i]
		if v, _ := attrs.Value("http.response.status_code"); v.AsInt64() != want {
			t.Errorf("attempt %d: http.response.status_code %v, want %d", i+1, v.Emit(), want)
		}
		sc := sp.SpanContext()
		wantParent := "00-" + traceID + "-" + sc.SpanID().String() + "-01"
		if d := deliveries[i]; d.traceparent != wantParent || d.tracestate != state {
			t.Errorf("attempt %d: POST with traceparent %q, tracestate %q; want %q (its span) and %q", i+1, d.traceparent, d.tracestate, wantParent, state)
		}
	}
	if hooks[0].Status().Code != codes.Error || hooks[1].Status().Code == codes.Error {
		t.Errorf("span statuses %v, %v: want the failed attempt's an error, the delivered one's not", hooks[0].Status(), hooks[1].Status())
	}
}
