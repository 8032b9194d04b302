package rsvp_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
)

type resizeV1 struct {
	URL  string `json:"url"`
	Size int    `json:"size"`
}

func (resizeV1) RSVPType() string { return "resize.v1" }

type resizeV2 struct {
	URL    string `json:"url"`
	Width  int    `json:"width"`
	Height int    `json:"height"`
}

func (resizeV2) RSVPType() string { return "resize.v2" }

func TestMuxRoutesByTypeWithUpgrades(t *testing.T) {
	tc := setup(t, rsvp.Config{})
	mux := rsvp.NewMux()
	mux.Handle("resize.v2", rsvp.Typed(rsvp.JSON, func(ctx context.Context, r resizeV2) (string, error) {
		return r.URL + "@" + itoa(r.Width) + "x" + itoa(r.Height), nil
	}))
	mux.Upgrade("resize.v1", "resize.v2", func(ctx context.Context, m *rsvp.Message) (*rsvp.Message, error) {
		var old resizeV1
		if err := rsvp.JSON.Unmarshal(m.Body, &old); err != nil {
			return nil, err
		}
		body, err := rsvp.JSON.Marshal(resizeV2{URL: old.URL, Width: old.Size, Height: old.Size})
		if err != nil {
			return nil, err
		}
		cp := *m
		cp.Body = body
		return &cp, nil
	})
	handle(t, tc, "resize", rsvp.HandleOptions{Concurrency: 2}, mux.ServeRequest)
	ctx := ctxWithin(t, 10*time.Second)

	got, err := rsvp.Call[resizeV2, string](ctx, tc.Client, "resize", resizeV2{URL: "a.png", Width: 3, Height: 4})
	if err != nil || got != "a.png@3x4" {
		t.Fatalf("v2: %q, %v", got, err)
	}
	got, err = rsvp.Call[resizeV1, string](ctx, tc.Client, "resize", resizeV1{URL: "b.png", Size: 9})
	if err != nil || got != "b.png@9x9" {
		t.Fatalf("v1 through the upgrade: %q, %v", got, err)
	}
	// An unknown type fails at once, naming what is handled.
	_, err = tc.Client.Request(ctx, "resize", &rsvp.Message{Type: "resize.v9", Body: []byte("{}")})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || re.Code != rsvp.CodeUnsupportedType || !strings.Contains(re.Message, "resize.v2") {
		t.Fatalf("unknown type: %v", err)
	}
	if dls := deadLetters(t, tc, "resize"); len(dls) != 1 || dls[0].Reason != rsvp.CodeUnsupportedType || dls[0].Message.Attempt != 1 {
		t.Fatalf("dead letters: %+v", dls)
	}
	// A failed upgrade is a bad payload.
	_, err = tc.Client.Request(ctx, "resize", &rsvp.Message{Type: "resize.v1", Body: []byte("not json")})
	if !errors.As(err, &re) || re.Code != rsvp.CodeBadPayload {
		t.Fatalf("bad v1 body: %v", err)
	}
}

func TestMuxUpgradeCycleEnds(t *testing.T) {
	mux := rsvp.NewMux()
	same := func(ctx context.Context, m *rsvp.Message) (*rsvp.Message, error) { return m, nil }
	mux.Upgrade("a", "b", same)
	mux.Upgrade("b", "a", same)
	_, err := mux.ServeRequest(context.Background(), &rsvp.Message{Type: "a"})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || re.Code != rsvp.CodeUnsupportedType || !rsvp.IsPermanent(err) {
		t.Fatalf("cycle: %v", err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// panicking in the Mux on every attempt.
func TestMuxUpgradeReturningNothing(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	mux := rsvp.NewMux()
	mux.Handle("v2", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) { return nil, nil }))
	mux.Upgrade("v1", "v2", func(ctx context.Context, m *rsvp.Message) (*rsvp.Message, error) { return nil, nil })
	handle(t, c, "up", rsvp.HandleOptions{MaxAttempts: 3, Backoff: fastRetry}, mux.ServeRequest)
	_, err := c.Request(ctxWithin(t, 10*time.Second), "up", &rsvp.Message{Type: "v1", Body: []byte("{}")})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("Request: %v", err)
	}
	dls := deadLetters(t, c, "up")
	if len(dls) != 1 || dls[0].Message.Attempt != 1 || re.Code != rsvp.CodeBadPayload {
		t.Fatalf("got code %q %q after %d attempt(s); want a permanent bad_payload naming the upgrade", re.Code, re.Message, dls[0].Message.Attempt)
	}
}

// A Mux does not hold its lock while a handler runs: registering a type
// while a slow request is being handled neither waits for it nor holds up
// the requests that come meanwhile (a waiting writer of a sync.RWMutex
// blocks new readers), and a handler may register types itself.
func TestMuxRegistersWhileServing(t *testing.T) {
	t.Parallel()
	mux := rsvp.NewMux()
	started, release := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(release); wg.Wait() })
	answer := func(s string) rsvp.HandlerFunc {
		return func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
			return &rsvp.Reply{Body: []byte(s)}, nil
		}
	}
	mux.Handle("slow", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		close(started)
		<-release
		return nil, nil
	}))
	mux.Handle("fast", answer("fast"))
	mux.Handle("lazy", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		mux.Handle("lazy.v2", answer("lazy.v2")) // from within a handler
		return answer("lazy")(ctx, m)
	}))
	wg.Go(func() { _, _ = mux.ServeRequest(context.Background(), &rsvp.Message{Type: "slow"}) })
	<-started

	// within runs fn and fails the test if it has not returned in 10s.
	within := func(what string, fn func()) {
		t.Helper()
		done := make(chan struct{})
		wg.Go(func() { defer close(done); fn() })
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: still waiting after 10s, for the slow handler to return", what)
		}
	}
	within("Handle", func() { mux.Handle("new", answer("new")) })
	for _, typ := range []string{"fast", "new", "lazy", "lazy.v2"} {
		within("ServeRequest "+typ, func() {
			r, err := mux.ServeRequest(context.Background(), &rsvp.Message{Type: typ})
			if err != nil || string(r.Body) != typ {
				t.Errorf("%s: %v, %v", typ, r, err)
			}
		})
	}
}
