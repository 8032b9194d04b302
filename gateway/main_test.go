package gateway_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/gateway"
	"github.com/rsvp-go/rsvp/workflow"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// env is a gateway over real HTTP on an in-memory embedded engine.
type env struct {
	t      *testing.T
	URL    string
	Client *rsvp.Client // the gateway's client; also usable for responders
	GW     *gateway.Gateway
	Engine *rsvpnats.Backend
}

// newEnv starts a gateway with cfg on a fresh in-memory engine.
func newEnv(t *testing.T, cfg gateway.Config) *env {
	t.Helper()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	return newEnvOn(t, b, cfg)
}

// newEnvOn starts a gateway with cfg on b; b is closed with the test.
func newEnvOn(t *testing.T, b *rsvpnats.Backend, cfg gateway.Config) *env {
	t.Helper()
	return newEnvWith(t, b, cfg, nil)
}

// newEnvWith is newEnvOn with, if workflows is not nil, the workflow
// engine it makes on the gateway's client: it is started, served by the
// gateway, and stopped after the gateway closes. b may wrap the engine (a
// test's fault injection); env.Engine is then nil.
func newEnvWith(t *testing.T, b backend.Backend, cfg gateway.Config, workflows func(c *rsvp.Client) (*workflow.Engine, error)) *env {
	t.Helper()
	ctx := context.Background()
	// The client traces with the gateway's provider, as rsvp serve's does.
	c, err := rsvp.New(ctx, b, rsvp.Config{RecheckInterval: 200 * time.Millisecond, TracerProvider: cfg.TracerProvider})
	if err != nil {
		t.Fatal(err)
	}
	if workflows != nil {
		if cfg.Workflows, err = workflows(c); err == nil {
			err = cfg.Workflows.Start(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	gw, err := gateway.New(ctx, c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	// The HTTP server, the gateway and the engine end before the client
	// they use.
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := gw.Close(ctx); err != nil {
			t.Errorf("gateway close: %v", err)
		}
		if cfg.Workflows != nil {
			if err := cfg.Workflows.Stop(ctx); err != nil {
				t.Errorf("engine stop: %v", err)
			}
		}
		if err := c.Close(ctx); err != nil {
			t.Errorf("client close: %v", err)
		}
		_ = b.Close()
	})
	engine, _ := b.(*rsvpnats.Backend)
	return &env{t: t, URL: srv.URL, Client: c, GW: gw, Engine: engine}
}

// respond runs h on queue with the given options until the test ends.
func (e *env) respond(queue string, opts rsvp.HandleOptions, h rsvp.HandlerFunc) {
	e.t.Helper()
	r, err := e.Client.Handle(queue, h, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Stop(ctx)
	})
}

// do sends an HTTP request and returns the response with its body read.
func (e *env) do(method, path string, hdr map[string]string, body string) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, data
}

// noRedirect shows 303s to the test instead of following them.
var noRedirect = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Timeout:       time.Minute,
}

// decode unmarshals a JSON body into a map.
func decode(t *testing.T, data []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v\n%s", err, data)
	}
	return m
}

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
	}
}
