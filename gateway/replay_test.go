package gateway_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/gateway"
)

// TestReplayedRequestRunsAgain: a request that failed for good and is
// replayed from its dead letter shows as queued again under its id, then
// gets the replay's result.
func TestReplayedRequestRunsAgain(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	var fixed atomic.Bool
	e.respond("fragile", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if !fixed.Load() {
			return nil, rsvp.Permanent(errors.New("broken"))
		}
		return echo(ctx, m)
	})
	id := e.submit("fragile", nil, "again")
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
	st := e.waitState(id, "succeeded")
	if st["error"] != nil {
		t.Fatalf("status after the replay still has the old error: %v", st)
	}
	resp, data := e.do("GET", "/v1/requests/"+id+"/result", nil, "")
	if resp.StatusCode != http.StatusOK || string(data) != "echo:again" {
		t.Fatalf("result after replay: %d %s", resp.StatusCode, data)
	}
}
