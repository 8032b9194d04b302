package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/gateway"
)

// pgDown is what a PostgreSQL engine's calls fail with while it cannot
// reach its database (pgx's words): the operator's database host, user
// and database.
const pgDown = "failed to connect to `user=rsvp database=prod`: 10.1.2.3:5432 (db.internal): dial error: dial tcp 10.1.2.3:5432: connect: connection refused"

// brokenEngine fails the gateway's engine calls with pgDown while down,
// and only enqueues while enqueuesDown.
type brokenEngine struct {
	backend.Backend
	down, enqueuesDown atomic.Bool
}

func (b *brokenEngine) err() error { return errors.New(pgDown) }

func (b *brokenEngine) Enqueue(ctx context.Context, msg *backend.Message) error {
	if b.down.Load() || b.enqueuesDown.Load() {
		return b.err()
	}
	return b.Backend.Enqueue(ctx, msg)
}

func (b *brokenEngine) GetReply(ctx context.Context, id string) (*backend.Reply, error) {
	if b.down.Load() {
		return nil, b.err()
	}
	return b.Backend.GetReply(ctx, id)
}

func (b *brokenEngine) AppendEvent(ctx context.Context, ev *backend.Event) error {
	if b.down.Load() {
		return b.err()
	}
	return b.Backend.AppendEvent(ctx, ev)
}

func (b *brokenEngine) Events(ctx context.Context, q backend.EventQuery) ([]*backend.Event, error) {
	if b.down.Load() {
		return nil, b.err()
	}
	return b.Backend.Events(ctx, q)
}

// TestEngineErrorsNotShown: when the engine fails, callers read that it
// did (503 engine-unavailable, /readyz not-ready, a WebSocket error, a
// submission that could not be queued ending not_accepted), not the
// engine's error, which names the operator's database (host, user,
// database) and which /readyz showed to anyone, without a key. The
// gateway's log keeps it.
func TestEngineErrorsNotShown(t *testing.T) {
	t.Parallel()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	eng := &brokenEngine{Backend: b}
	var log syncBuffer
	e := newEnvWith(t, eng, gateway.Config{Logger: slog.New(slog.NewTextHandler(&log, nil))}, nil)
	id := e.submit("q", nil, "x")
	leaks := []string{"10.1.2.3", "db.internal", "user=rsvp", "database=prod"}
	shows := func(data []byte) string {
		for _, l := range leaks {
			if strings.Contains(string(data), l) {
				return l
			}
		}
		return ""
	}

	eng.down.Store(true)
	for _, c := range []struct{ method, path, slug string }{
		{"GET", "/readyz", "not-ready"},
		{"GET", "/v1/requests/" + id, "engine-unavailable"},
		{"POST", "/v1/queues/q/requests", "engine-unavailable"},
	} {
		resp, data := e.do(c.method, c.path, nil, "y")
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(data), c.slug) {
			t.Errorf("%s %s with the engine down: %d %s, want 503 %s", c.method, c.path, resp.StatusCode, data, c.slug)
		}
		if l := shows(data); l != "" {
			t.Errorf("%s %s with the engine down shows %q: %s", c.method, c.path, l, data)
		}
	}
	ws := dialWS(e, "", nil)
	ws.send(map[string]any{"op": "subscribe", "request": id})
	if m := ws.expect("error", id, ""); shows(mustJSON(t, m)) != "" {
		t.Errorf("a WebSocket subscription refused with the engine down: %v", m)
	}
	ws.send(map[string]any{"op": "subscribe", "channel": "live"})
	ws.expect("subscribed", "", "live")
	if m := ws.expect("error", "", "live"); shows(mustJSON(t, m)) != "" || !strings.Contains(string(mustJSON(t, m)), "subscribe again with after 0") {
		t.Errorf("a WebSocket subscription ended by the engine: %v, want the after to resume from, without the engine's error", m)
	}
	eng.down.Store(false)

	// A submission recorded but not queued ends failed, not_accepted; its
	// submitter reads that, not the engine's error.
	eng.enqueuesDown.Store(true)
	resp, data := e.do("POST", "/v1/queues/q/requests", map[string]string{"Notify-Channel": "refused"}, "z")
	eng.enqueuesDown.Store(false)
	if resp.StatusCode != http.StatusServiceUnavailable || shows(data) != "" {
		t.Errorf("a submission the engine did not queue: %d %s, want 503 without the engine's error", resp.StatusCode, data)
	}
	evs, err := b.Events(t.Context(), backend.EventQuery{Channel: "refused"})
	if err != nil || len(evs) == 0 {
		t.Fatalf("events of the refused submission: %v, %v", evs, err)
	}
	_, data = e.do("GET", "/v1/requests/"+evs[0].CorrelationID+"?redirect=false", nil, "")
	if st := decode(t, data); st["state"] != "failed" || !strings.Contains(string(data), "not_accepted") {
		t.Errorf("status of the refused submission: %s, want failed, not_accepted", data)
	} else if l := shows(data); l != "" {
		t.Errorf("the status of a submission the engine did not queue shows %q: %s", l, data)
	}
	if !strings.Contains(log.String(), "10.1.2.3") {
		t.Errorf("the log lacks the engine's error:\n%s", log.String())
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
