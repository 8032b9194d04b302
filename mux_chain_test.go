package rsvp_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/rsvp-go/rsvp"
)

// A chain of 16 upgrades (v1 → v2 → ... → v17, the most a Mux follows)
// ends at the handler of its last type: the bound stops cycles, not a
// chain of that length, and the error said "no handler for type v17;
// handled: v17".
func TestMuxLongestUpgradeChain(t *testing.T) {
	t.Parallel()
	const upgrades = 16
	mux := rsvp.NewMux()
	same := func(ctx context.Context, m *rsvp.Message) (*rsvp.Message, error) { return m, nil }
	for i := 1; i <= upgrades; i++ {
		mux.Upgrade(fmt.Sprintf("t.v%d", i), fmt.Sprintf("t.v%d", i+1), same)
	}
	last := fmt.Sprintf("t.v%d", upgrades+1)
	mux.Handle(last, rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: []byte(m.Type)}, nil
	}))
	r, err := mux.ServeRequest(context.Background(), &rsvp.Message{Type: "t.v1"})
	if err != nil || string(r.Body) != last {
		t.Fatalf("t.v1 after %d upgrades: %v, %v; want the %s handler's reply", upgrades, r, err, last)
	}
}
