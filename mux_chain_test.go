package rsvp_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

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

// An upgrade function that changes the request it is given in place (its
// doc lets it return the message with just Type changed) and a v2 handler
// that then fails: the dead letter keeps the original v1 request, so that
// a replay, once the v2 handler is fixed, goes through the upgrade again.
// The dead letter held the v1 type with the upgraded v2 body, which the
// replay's upgrade then read as a v1 body.
func TestMuxUpgradeInPlaceKeepsDeadLetter(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	var broken atomic.Bool
	broken.Store(true)
	mux := rsvp.NewMux()
	mux.Handle("resize.v2", rsvp.Typed(rsvp.JSON, func(ctx context.Context, r resizeV2) (string, error) {
		if broken.Load() {
			return "", rsvp.Permanent(errors.New("v2 handler broken"))
		}
		return r.URL + "@" + itoa(r.Width) + "x" + itoa(r.Height), nil
	}))
	mux.Upgrade("resize.v1", "resize.v2", func(ctx context.Context, m *rsvp.Message) (*rsvp.Message, error) {
		var old resizeV1
		if err := rsvp.JSON.Unmarshal(m.Body, &old); err != nil {
			return nil, err
		}
		body, err := rsvp.JSON.Marshal(resizeV2{URL: old.URL, Width: old.Size, Height: old.Size})
		m.Type, m.Body = "resize.v2", body
		return m, err
	})
	handle(t, c, "resize-inplace", rsvp.HandleOptions{}, mux.ServeRequest)
	ctx := ctxWithin(t, 10*time.Second)
	v1 := `{"url":"a.png","size":9}`
	if _, err := c.Request(ctx, "resize-inplace", &rsvp.Message{Type: "resize.v1", Body: []byte(v1)}); err == nil {
		t.Fatal("the broken v2 handler succeeded")
	}
	dls := deadLetters(t, c, "resize-inplace")
	if len(dls) != 1 || dls[0].Message.Type != "resize.v1" || string(dls[0].Message.Body) != v1 {
		t.Fatalf("dead letter: %d, type %q body %s; want the original resize.v1 request %s", len(dls), dls[0].Message.Type, dls[0].Message.Body, v1)
	}
	broken.Store(false)
	tk, err := c.Replay(ctx, "resize-inplace", dls[0].Key)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Await(ctx, tk.CorrelationID)
	if err != nil || string(r.Body) != `"a.png@9x9"` {
		t.Fatalf("replay: %v; want a.png@9x9", err)
	}
}
