package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/gateway"
	"github.com/rsvp-go/rsvp/internal/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait of the tests.
const waitTimeout = 20 * time.Second

// running is a server run by a test.
type running struct {
	url    string
	cancel context.CancelFunc
	done   chan error
}

// start runs a server with cfg on a new in-memory engine until the test
// ends, and waits until it listens.
func start(t *testing.T, cfg server.Config) *running {
	t.Helper()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	cfg.Backend, cfg.EngineLost = b, b.Done()
	cfg.Addr = "127.0.0.1:0"
	ready := make(chan string, 1)
	cfg.Ready = func(u string) { ready <- u }
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- server.Run(ctx, cfg) }()
	t.Cleanup(func() { r.stop(t) })
	select {
	case r.url = <-ready:
	case err := <-r.done:
		t.Fatalf("Run returned before listening: %v", err)
	case <-time.After(waitTimeout):
		t.Fatal("server not listening in time")
	}
	return r
}

// stop cancels the server's context and returns Run's error.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
		}
		return err
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return after its context was cancelled")
		return nil
	}
}

var noRedirect = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Timeout:       time.Minute,
}

func do(t *testing.T, method, url string, hdr map[string]string, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(data)
}

func TestDemoResponders(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{Demo: true})
	wait := map[string]string{"Prefer": "wait=15", "Content-Type": "application/json"}

	resp, body := do(t, "POST", r.url+"/v1/queues/thumbnail/requests", wait, `{"url":"https://example.com/a.png"}`)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"thumbnail_url":"https://example.com/a.png?size=128"`) {
		t.Fatalf("thumbnail: %s %s", resp.Status, body)
	}
	resp, body = do(t, "POST", r.url+"/v1/queues/thumbnail/requests", wait, `{"image":"x"}`)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, `"code":"bad_payload"`) {
		t.Fatalf("thumbnail without url: %s %s", resp.Status, body)
	}
	resp, body = do(t, "POST", r.url+"/v1/queues/flaky/requests", wait, `hi`)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"attempt":2`) {
		t.Fatalf("flaky: %s %s", resp.Status, body)
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// A long-poll must not hold the shutdown up: it answers at once, with the
// current status (or, if it had not got that far, 503).
func TestShutdownEndsLongPolls(t *testing.T) {
	t.Parallel()
	polling := make(chan struct{}, 1)
	cfg := server.WithStreamHook(server.Config{ShutdownTimeout: time.Minute}, func() { polling <- struct{}{} })
	r := start(t, cfg)
	resp, body := do(t, "POST", r.url+"/v1/queues/nobody/requests", nil, "x")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit: %s %s", resp.Status, body)
	}
	loc := resp.Header.Get("Location")

	type answer struct {
		status int
		state  string
	}
	answered := make(chan answer, 1)
	go func() {
		resp, err := noRedirect.Get(r.url + loc + "?wait=60s")
		if err != nil {
			answered <- answer{status: -1, state: err.Error()}
			return
		}
		defer resp.Body.Close()
		var st struct{ State string }
		_ = json.NewDecoder(resp.Body).Decode(&st)
		answered <- answer{resp.StatusCode, st.State}
	}()
	select {
	case <-polling:
	case a := <-answered:
		t.Fatalf("long-poll answered before the shutdown: %+v", a)
	case <-time.After(waitTimeout):
		t.Fatal("the long-poll did not reach the server")
	}

	start := time.Now()
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("shutdown took %s with a long-poll open", d)
	}
	if a := <-answered; !(a.status == http.StatusOK && a.state == "queued") && a.status != http.StatusServiceUnavailable {
		t.Fatalf("long-poll answered %+v, want 200 queued (or 503)", a)
	}
}

func TestCheckExposure(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	for _, tc := range []struct {
		addr    string
		keys    bool
		exposed bool
		invalid bool
	}{
		{addr: "127.0.0.1:8080"},
		{addr: "127.0.0.2:0"},
		{addr: "[::1]:8080"},
		{addr: "localhost:8080"},
		{addr: "0.0.0.0:8080", exposed: true},
		{addr: ":8080", exposed: true},
		{addr: "[::]:8080", exposed: true},
		{addr: "192.168.1.10:8080", exposed: true},
		{addr: "10.0.0.1:8080", exposed: true},
		{addr: "0.0.0.0:8080", keys: true},
		{addr: "8080", invalid: true},
	} {
		err := server.CheckExposure(ctx, tc.addr, tc.keys)
		switch {
		case tc.exposed && !errors.Is(err, server.ErrUnprotected),
			tc.invalid && !errors.Is(err, server.ErrInvalid),
			!tc.exposed && !tc.invalid && err != nil:
			t.Errorf("CheckExposure(%q, keys %v) = %v", tc.addr, tc.keys, err)
		}
	}
}

func TestRunRefusesUnprotected(t *testing.T) {
	t.Parallel()
	// Refused before anything is used: no engine needed... but Backend is
	// required, so give one.
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	err = server.Run(t.Context(), server.Config{Backend: b, Addr: "0.0.0.0:0"})
	if !errors.Is(err, server.ErrUnprotected) || !strings.Contains(err.Error(), "0.0.0.0:0") {
		t.Fatalf("Run = %v, want ErrUnprotected naming the address", err)
	}
	// With keys, a non-loopback address is served.
	cfg := server.Config{Backend: b, Addr: "0.0.0.0:0", Gateway: gateway.Config{Keys: []gateway.APIKey{{
		Tenant: "t", SHA256: gateway.HashKey("k"), Grants: []gateway.Grant{{Queue: "*", Rights: []string{"send"}}}}}}}
	ctx, cancel := context.WithCancel(t.Context())
	cfg.Ready = func(string) { cancel() }
	if err := server.Run(ctx, cfg); err != nil {
		t.Fatalf("Run with keys on 0.0.0.0: %v", err)
	}
}

func TestExposureWarning(t *testing.T) {
	loopback := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}
	public := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 8443}
	for _, tc := range []struct {
		addr           *net.TCPAddr
		protected, tls bool
		want           string
	}{
		{loopback, false, false, "no API keys"},
		{loopback, true, false, ""},
		{public, true, false, "no TLS: API keys and payloads travel in clear text"},
		{public, true, true, ""},
	} {
		got := server.ExposureWarning(tc.addr, tc.protected, tc.tls)
		if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
			t.Errorf("%s, keys %v, TLS %v: warning %q, want %q", tc.addr, tc.protected, tc.tls, got, tc.want)
		}
	}
}

// TestUnprotectedRefusesOtherSites: without API keys the server is
// guarded by listening on loopback only. A web page the user's browser
// opens must not get around that: by a DNS name of its own rebound to
// 127.0.0.1 (its requests name that host) or by a cross-site request
// (its Origin). Both are refused; requests naming the loopback host, or
// coming from a page of it, are served.
func TestUnprotectedRefusesOtherSites(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{})
	port := r.url[strings.LastIndex(r.url, ":")+1:]
	for _, c := range []struct {
		host, origin string
		want         int
	}{
		{"", "", http.StatusAccepted},
		{"localhost:" + port, "", http.StatusAccepted},
		{"[::1]:" + port, "http://localhost:" + port, http.StatusAccepted},
		{"", "http://127.0.0.1:" + port, http.StatusAccepted},
		{"rebound.example:" + port, "", http.StatusForbidden},
		{"rebound.example:" + port, "http://rebound.example:" + port, http.StatusForbidden},
		{"", "https://evil.example", http.StatusForbidden},
		{"", "null", http.StatusForbidden},
	} {
		req, err := http.NewRequest("POST", r.url+"/v1/queues/q/requests", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		if c.host != "" {
			req.Host = c.host
		}
		if c.origin != "" {
			req.Header.Set("Origin", c.origin)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("no API keys, Host %q, Origin %q: %s %s, want %d", c.host, c.origin, resp.Status, body, c.want)
		}
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("no API keys, Host %q, Origin %q: X-Content-Type-Options %q, want nosniff, as on every answer", c.host, c.origin, got)
		}
	}
}
