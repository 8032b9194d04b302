package gateway_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/gateway"
)

// TestWebhookNotHeldUpByUnfinishedRequests: webhook jobs of requests that
// have not finished, more of them than the gateway runs at once, do not
// keep the job of a finished request from its slot: its result is POSTed
// within seconds, not once the waiting jobs give up their slots (every 20s).
func TestWebhookNotHeldUpByUnfinishedRequests(t *testing.T) {
	const slots = 4
	done := make(chan string, 1)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/done" {
			t.Errorf("webhook to %s: its request never finishes", r.URL.Path)
		}
		w.WriteHeader(http.StatusNoContent)
		select {
		case done <- r.Header.Get("webhook-id"):
		default:
		}
	}))
	defer hook.Close()
	e := newEnv(t, gateway.WithWebhookSlots(gateway.Config{Webhooks: gateway.WebhookConfig{Secrets: []string{gateway.NewTestSecret(t)}, AllowPrivate: true}}, slots))
	for range 2 * slots {
		e.submit("nobody-answers", map[string]string{"Callback-URL": hook.URL + "/never"}, "x")
	}
	// The jobs of the unfinished requests are taken and wait: at least 3/4
	// of the slots are held.
	eventually(t, 10*time.Second, "the webhook slots taken", func() bool {
		qs, err := e.Engine.Queues(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			if q.Queue == "rsvp-webhooks" && q.InFlight >= slots*3/4 {
				return true
			}
		}
		return false
	})
	e.respond("answered", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{ContentType: "text/plain", Body: []byte("ok")}, nil
	})
	start := time.Now()
	id := e.submit("answered", map[string]string{"Callback-URL": hook.URL + "/done"}, "x")
	select {
	case got := <-done:
		if got != id {
			t.Fatalf("webhook-id %q, want %q", got, id)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the finished request's webhook not POSTed within 5s (%d slots, %d unfinished requests with callbacks)", slots, 2*slots)
	}
	t.Logf("delivered after %s", time.Since(start).Round(time.Millisecond))
}
