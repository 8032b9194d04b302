package server_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/rsvp-go/rsvp/gateway"
	"github.com/rsvp-go/rsvp/internal/server"
)

// TestMetricsExposition: /metrics is valid Prometheus text, read by the
// Prometheus parser, and counts what the demo did.
func TestMetricsExposition(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{Demo: true})
	wait := map[string]string{"Prefer": "wait=15"}
	if resp, body := do(t, "POST", r.url+"/v1/queues/flaky/requests", wait, "hi"); resp.StatusCode != 200 {
		t.Fatalf("flaky: %s %s", resp.Status, body)
	}
	if resp, body := do(t, "POST", r.url+"/v1/queues/idle/requests", nil, "x"); resp.StatusCode != 202 {
		t.Fatalf("submit to idle: %s %s", resp.Status, body)
	}
	var families map[string]*dto.MetricFamily
	scrape := func() {
		t.Helper()
		resp, body := do(t, "GET", r.url+"/metrics", nil, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/metrics: %s", resp.Status)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		var err error
		if families, err = parser.TextToMetricFamilies(strings.NewReader(body)); err != nil {
			t.Fatalf("/metrics does not parse: %v\n%s", err, body)
		}
	}
	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		f := families[name]
		if f == nil {
			t.Fatalf("no metric %s; have %d families", name, len(families))
		}
		var sum float64
	metrics:
		for _, m := range f.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || lp.GetName() == k && lp.GetValue() == v
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
		return sum
	}
	q := map[string]string{"messaging_destination_name": "flaky"}
	// The reply is stored before the request is acknowledged: it leaves
	// the queue just after the call returned.
	deadline := time.Now().Add(10 * time.Second)
	for scrape(); value("rsvp_queue_depth", q) != 0 && time.Now().Before(deadline); scrape() {
		time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
	}
	if got := value("rsvp_requests_sent_total", q); got < 1 {
		t.Errorf("sent on flaky: %v", got)
	}
	if got := value("rsvp_handler_retries_total", q); got != 1 {
		t.Errorf("retries on flaky: %v, want 1", got)
	}
	if got := value("rsvp_requests_completed_total", map[string]string{"messaging_destination_name": "flaky", "outcome": "succeeded"}); got != 1 {
		t.Errorf("completed on flaky: %v, want 1", got)
	}
	if got := value("rsvp_handler_duration_seconds", q); got != 2 {
		t.Errorf("handler attempts timed on flaky: %v, want 2", got)
	}
	if families["rsvp_handler_in_flight"] == nil { // its value: the handler may still be acknowledging
		t.Error("no metric rsvp_handler_in_flight")
	}
	if got := value("rsvp_waiters", nil); got != 0 {
		t.Errorf("calls waiting for a reply after every call returned: %v, want 0", got)
	}
	if got := value("rsvp_queue_depth", q); got != 0 {
		t.Errorf("depth of flaky after its only request: %v, want 0", got)
	}
	idle := map[string]string{"messaging_destination_name": "idle"}
	if got := value("rsvp_queue_depth", idle); got != 1 {
		t.Errorf("depth of idle: %v, want 1", got)
	}
	if got := value("rsvp_queue_oldest_age_seconds", idle); got <= 0 {
		t.Errorf("oldest age on idle: %v", got)
	}
	// The rates of the last minute: the server hands in its counts every
	// 5s.
	idleIn := func() float64 { return value("rsvp_queue_in_last_minute", idle) }
	flakyOut := func() float64 { return value("rsvp_queue_out_last_minute", q) }
	deadline = time.Now().Add(15 * time.Second)
	for scrape(); (idleIn() != 1 || flakyOut() != 1) && time.Now().Before(deadline); scrape() {
		time.Sleep(50 * time.Millisecond) // polling a condition, with a deadline
	}
	if idleIn() != 1 || flakyOut() != 1 || value("rsvp_queue_out_last_minute", idle) != 0 || value("rsvp_queue_in_last_minute", q) != 1 {
		t.Errorf("in and out of the last minute: idle %v and %v, want 1 and 0; flaky %v and %v, want 1 and 1",
			idleIn(), value("rsvp_queue_out_last_minute", idle), value("rsvp_queue_in_last_minute", q), flakyOut())
	}
	if got := value("rsvp_gateway_http_requests_total", map[string]string{"http_route": "POST /v1/queues/{queue}/requests"}); got < 1 {
		t.Errorf("HTTP submits counted: %v", got)
	}
}

func TestTracesWantedFromEnvironment(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want bool
	}{
		{nil, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, true},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true},
		{map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, false},
		{map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, false},
	} {
		if got := server.TracesWanted(func(k string) string { return c.env[k] }); got != c.want {
			t.Errorf("%v: traces %v, want %v", c.env, got, c.want)
		}
	}
}

// TestMetricsNeedAdminKey: with API keys, /metrics (which names every
// queue, of every tenant) needs a key with the admin right on every
// queue: 401 without a key, 403 with a narrower one, 200 with it.
func TestMetricsNeedAdminKey(t *testing.T) {
	t.Parallel()
	key := func(k, queue, right string) gateway.APIKey {
		return gateway.APIKey{Tenant: "t", SHA256: gateway.HashKey(k), Grants: []gateway.Grant{{Queue: queue, Rights: []string{right}}}}
	}
	r := start(t, server.Config{Gateway: gateway.Config{Keys: []gateway.APIKey{
		key("sender", "*", gateway.RightSend), key("admin-q", "q", gateway.RightAdmin), key("admin", "*", gateway.RightAdmin)}}})
	for k, want := range map[string]int{"": http.StatusUnauthorized, "sender": http.StatusForbidden,
		"admin-q": http.StatusForbidden, "admin": http.StatusOK} {
		hdr := map[string]string{}
		if k != "" {
			hdr["Authorization"] = "Bearer " + k
		}
		if resp, body := do(t, "GET", r.url+"/metrics", hdr, ""); resp.StatusCode != want {
			t.Errorf("/metrics with key %q: %s %.200s, want %d", k, resp.Status, body, want)
		}
	}
	// Health stays open.
	if resp, _ := do(t, "GET", r.url+"/healthz", nil, ""); resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz without a key: %s", resp.Status)
	}
}
