package gateway_test

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/gateway"
	"github.com/rsvp-go/rsvp/internal/natstest"
)

// TestTwoGatewaysOneEngine: two gateways, each with its own connection to
// one external nats-server, serve the same requests: submit on one, stream
// the events and fetch the result from the other.
func TestTwoGatewaysOneEngine(t *testing.T) {
	url := natstest.Start(t)
	open := func() *rsvpnats.Backend {
		b, err := rsvpnats.Connect(context.Background(), url, rsvpnats.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b := newEnvOn(t, open(), gateway.Config{}), newEnvOn(t, open(), gateway.Config{})
	release := make(chan struct{})
	b.respond("shared", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		<-release
		return echo(ctx, m)
	})
	id := a.submit("shared", map[string]string{"Content-Type": "text/plain"}, "from a")

	// Stream from the other gateway while the request runs.
	resp, err := http.Get(b.URL + "/v1/requests/" + id + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("events on gateway b: %d", resp.StatusCode)
	}
	events := make(chan string, 16)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if typ, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
				events <- typ
			}
		}
	}()
	if typ := <-events; typ != "queued" {
		t.Fatalf("first event %q", typ)
	}
	close(release)
	var seen []string
	for typ := range events {
		seen = append(seen, typ)
	}
	if len(seen) == 0 || seen[len(seen)-1] != "succeeded" {
		t.Fatalf("events after queued: %v, want ... succeeded", seen)
	}
	got, data := b.do("GET", "/v1/requests/"+id+"/result", nil, "")
	if got.StatusCode != 200 || string(data) != "echo:from a" {
		t.Fatalf("result on gateway b: %d %q", got.StatusCode, data)
	}
	// And the status on a agrees.
	eventually(t, 5*time.Second, "gateway a redirects to the result", func() bool {
		st, _ := a.do("GET", "/v1/requests/"+id, nil, "")
		return st.StatusCode == http.StatusSeeOther
	})
}
