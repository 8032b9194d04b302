package bench

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// memClient returns an rsvp client on a new in-memory engine, closed with
// the test.
func memClient(t *testing.T) *rsvp.Client {
	t.Helper()
	be, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := rsvp.New(t.Context(), be, rsvp.Config{})
	if err != nil {
		_ = be.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			t.Errorf("client close: %v", err)
		}
		_ = be.Close()
	})
	return c
}

func TestHTTPSubmit(t *testing.T) {
	t.Parallel()
	r, err := HTTPSubmit(t.Context(), Config{Engine: "embedded:mem", Concurrency: 4, Duration: 300 * time.Millisecond},
		memClient(t), HTTPOptions{Size: 100})
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.Workload != "http:submit" || r.Engine != "embedded:mem" || r.Ops < 10 || r.P99ms < r.P50ms {
		t.Fatalf("result %+v", r)
	}
}

func TestHTTPPush(t *testing.T) {
	t.Parallel()
	r, err := HTTPPush(t.Context(), PushConfig{Engine: "embedded:mem", Streams: 20, Rate: 1000}, memClient(t), HTTPOptions{Channel: "pushes"})
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.Ops != 20 || r.Streams != 20 || r.Answered != 20 || r.Mode != "push" || r.P50ms <= 0 || r.HandlerP50ms < r.P50ms || r.GatewayP50ms <= 0 {
		t.Fatalf("result %+v", r)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(r.JSON()), &m); err != nil || m["workload"] != "http:push" || m["handler_p99_ms"] == nil {
		t.Fatalf("JSON %s: %v", r.JSON(), err)
	}
	if s := r.String(); !strings.Contains(s, "20 event streams") || !strings.Contains(s, "every stream got exactly one final event") {
		t.Fatalf("report %s", s)
	}
}

func TestHTTPIdleInProcess(t *testing.T) {
	t.Parallel()
	for _, sse := range []bool{false, true} {
		r, err := HTTPIdle(t.Context(), IdleConfig{Engine: "embedded:mem", Conns: 50, SSE: sse, Window: 200 * time.Millisecond},
			memClient(t), HTTPOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !r.OK() || r.Ops != 50 || r.Clients != "in-process" || r.RSSMB <= 0 || r.Goroutines < 100 || r.ClientRSSMB != 0 || r.OpenSeconds <= 0 {
			t.Fatalf("sse %v: result %+v", sse, r)
		}
		if s := r.String(); !strings.Contains(s, "every connection stayed open") || !strings.Contains(s, "the clients are in this process") {
			t.Fatalf("report %s", s)
		}
	}
}

// Connections that the server answers or ends while they should idle are
// lost; a long-poll whose wait runs out is answered.
func TestIdleLosesAnsweredConnections(t *testing.T) {
	t.Parallel()
	r, err := HTTPIdle(t.Context(), IdleConfig{Conns: 5, Wait: time.Second, Window: 1500 * time.Millisecond},
		memClient(t), HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() || r.Lost != 5 || r.Ops != 0 || !strings.Contains(r.FirstError, "HTTP/1.1 200 OK") {
		t.Fatalf("result %+v, want 5 lost to their wait running out", r)
	}
}

func TestIdleClientsProtocolErrors(t *testing.T) {
	t.Parallel()
	if err := ServeIdleClients(t.Context(), strings.NewReader("not json"), io.Discard); err == nil {
		t.Fatal("no error for a bad order")
	}
	// A port nothing listens on: every connection fails to open.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	order, _ := json.Marshal(idleOrder{Addr: addr, IDs: []string{"a", "b"}, Wait: time.Minute, Timeout: time.Second})
	var out strings.Builder
	if err := ServeIdleClients(t.Context(), strings.NewReader(string(order)+"\n"), &out); err != nil {
		t.Fatal(err)
	}
	var opened idleOpened
	if err := json.Unmarshal([]byte(out.String()), &opened); err != nil || opened.Errors != 2 || opened.Opened != 0 || opened.FirstError == "" {
		t.Fatalf("answer %q: %v", out.String(), err)
	}
}

func TestConfigsValidated(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	if _, err := HTTPPush(ctx, PushConfig{Rate: -1}, nil, HTTPOptions{}); err == nil {
		t.Error("negative rate accepted")
	}
	if _, err := HTTPIdle(ctx, IdleConfig{Conns: -1}, nil, HTTPOptions{}); err == nil {
		t.Error("negative connections accepted")
	}
	if _, err := HTTPSubmit(ctx, Config{Concurrency: -1}, nil, HTTPOptions{}); err == nil {
		t.Error("negative concurrency accepted")
	}
}

func TestSSEHelpers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"HTTP/1.1 200 OK\r\n\r\n5e\r\nid: 1\nevent: queued\ndata: {}\n\n", true},
		{"HTTP/1.1 200 OK\r\n\r\n5e\r\nid: 1\nevent: queued\ndata: {}\n", false},
		{"HTTP/1.1 200 OK\r\n\r\n", false},
	} {
		if got := firstEventIn([]byte(tc.in)); got != tc.want {
			t.Errorf("firstEventIn(%q) = %v", tc.in, got)
		}
	}
	if !onlyHeartbeats([]byte("9\r\n: ping\n\n\r\n")) || onlyHeartbeats([]byte("id: 3\nevent: succeeded\n")) {
		t.Error("onlyHeartbeats")
	}
}
