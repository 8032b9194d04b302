package gateway_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/gateway"
)

// TestReplayedRequestRunsAgain: a request that failed for good and is
// replayed from its dead letter shows as queued again under its id, then
// gets the replay's result; the submission's timeout, past by then, does
// not expire the replay.
func TestReplayedRequestRunsAgain(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	var fixed atomic.Bool
	release := make(chan struct{})
	e.respond("fragile", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if !fixed.Load() {
			return nil, rsvp.Permanent(errors.New("broken"))
		}
		<-release
		return echo(ctx, m)
	})
	submitted := time.Now()
	resp, data := e.do("POST", "/v1/queues/fragile/requests?timeout=1s", nil, "again")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit: %d %s", resp.StatusCode, data)
	}
	id := decode(t, data)["id"].(string)
	e.waitState(id, "failed")
	dls, err := e.Client.DeadLetters(t.Context(), rsvp.DeadLetterQuery{Queue: "fragile"})
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters %v, %v", dls, err)
	}
	fixed.Store(true)
	tk, err := e.Client.Replay(t.Context(), "fragile", dls[0].Key)
	if err != nil || tk.CorrelationID != id {
		t.Fatalf("replay: %+v, %v; want the request's id %s", tk, err, id)
	}
	e.waitState(id, "running")
	eventually(t, 10*time.Second, "the submission's timeout passes while the replay runs", func() bool {
		_, data := e.do("GET", "/v1/requests/"+id+"?redirect=false", nil, "")
		if st := decode(t, data); st["state"] != "running" {
			t.Fatalf("the replay is %v past the submission's timeout: %s", st["state"], data)
		}
		return time.Since(submitted) > 1500*time.Millisecond
	})
	close(release)
	st := e.waitState(id, "succeeded")
	if st["error"] != nil {
		t.Fatalf("status after the replay still has the old error: %v", st)
	}
	resp, data = e.do("GET", "/v1/requests/"+id+"/result", nil, "")
	if resp.StatusCode != http.StatusOK || string(data) != "echo:again" {
		t.Fatalf("result after replay: %d %s", resp.StatusCode, data)
	}
}
