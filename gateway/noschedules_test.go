package gateway_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/gateway"
	"github.com/rsvp-go/rsvp/internal/natstest"
)

// TestDelayOnEngineWithoutSchedules: a submission with a delay on an
// engine that cannot schedule requests (NATS 2.11) is answered 501
// scheduling-unsupported, naming the server's version, not 503
// engine-unavailable with Retry-After (a retry would fail alike); one
// without a delay is accepted.
func TestDelayOnEngineWithoutSchedules(t *testing.T) {
	t.Parallel()
	b, err := rsvpnats.Connect(context.Background(), natstest.StartVersion(t, natstest.NATS211), rsvpnats.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvOn(t, b, gateway.Config{})
	resp, data := e.do("POST", "/v1/queues/later/requests?delay=1h", map[string]string{"Content-Type": "text/plain"}, "hi")
	if resp.StatusCode != http.StatusNotImplemented || !strings.Contains(string(data), "scheduling-unsupported") ||
		!strings.Contains(string(data), natstest.NATS211) || resp.Header.Get("Retry-After") != "" {
		t.Fatalf("submission with a delay: %d %s (Retry-After %q), want 501 scheduling-unsupported naming %s",
			resp.StatusCode, data, resp.Header.Get("Retry-After"), natstest.NATS211)
	}
	if resp, data := e.do("POST", "/v1/queues/now/requests", map[string]string{"Content-Type": "text/plain"}, "hi"); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submission without a delay: %d %s, want 202", resp.StatusCode, data)
	}
}
