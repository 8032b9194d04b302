package gateway_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/gateway"
)

// TestSessionKeyInOrder: requests submitted with one Session-Key are
// handled one at a time in submit order by a responder that could run four
// at once, while a request of another session runs alongside them.
func TestSessionKeyInOrder(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	var (
		mu       sync.Mutex
		running  int      // requests of session "a" in the handler
		order    []string // bodies of session "a", in the order handled
		problems []string
	)
	otherRan := make(chan struct{})
	e.respond("sess", rsvp.HandleOptions{Concurrency: 4}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if m.SessionKey == "b" {
			close(otherRan) // runs once: a second run would panic the test
			return echo(ctx, m)
		}
		mu.Lock()
		if m.SessionKey != "a" {
			problems = append(problems, "handled a request of session "+m.SessionKey)
		}
		if running > 0 {
			problems = append(problems, "#"+string(m.Body)+" started while another request of its session ran")
		}
		running++
		order = append(order, string(m.Body))
		mu.Unlock()
		if string(m.Body) == "1" {
			// The first of the session holds it until the other session's
			// request has run: that one does not wait for session a.
			select {
			case <-otherRan:
			case <-time.After(10 * time.Second):
				mu.Lock()
				problems = append(problems, "the request of session b did not run while session a's first one ran")
				mu.Unlock()
			}
		} else {
			time.Sleep(50 * time.Millisecond) // room for a wrong overlap to show
		}
		mu.Lock()
		running--
		mu.Unlock()
		return echo(ctx, m)
	})
	var ids []string
	for _, body := range []string{"1", "2", "3"} {
		ids = append(ids, e.submit("sess", map[string]string{"Session-Key": "a"}, body))
	}
	ids = append(ids, e.submit("sess", map[string]string{"Session-Key": "b"}, "other"))
	for _, id := range ids {
		e.waitState(id, gateway.StateSucceeded)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Error(p)
	}
	if strings.Join(order, ",") != "1,2,3" {
		t.Errorf("session a handled in order %v, want [1 2 3]", order)
	}
}

// TestSessionKeyStatus: the session key is kept with the request and shown
// by its status, as docs/openapi.yaml declares header and member.
func TestSessionKeyStatus(t *testing.T) {
	s := loadOpenAPI(t)
	e := newEnv(t, gateway.Config{})
	const key = "order #42/ü" // any UTF-8 text without control characters
	_, data := s.call(t, e, 202, "POST", "/v1/queues/idle/requests", map[string]string{"Session-Key": key}, "x")
	acc := decode(t, data)
	if acc["session_key"] != key {
		t.Errorf("accepted status %s lacks session_key %q", data, key)
	}
	id := acc["id"].(string)
	_, data = s.call(t, e, 200, "GET", "/v1/requests/"+id, nil, "")
	if st := decode(t, data); st["session_key"] != key {
		t.Errorf("status %s lacks session_key %q", data, key)
	}
	// Without the header, no member.
	id = e.submit("idle", nil, "x")
	if _, data := e.do("GET", "/v1/requests/"+id, nil, ""); decode(t, data)["session_key"] != nil {
		t.Errorf("status of a request without session: %s", data)
	}
	// The document rules out what the gateway refuses.
	for _, bad := range []string{"a\tb", strings.Repeat("k", 257)} {
		req, _ := http.NewRequest("POST", e.URL+"/v1/queues/idle/requests", nil)
		req.Header.Set("Session-Key", bad)
		if err := s.checkRequest(req, "x"); err == nil {
			t.Errorf("docs/openapi.yaml allows Session-Key %.20q...", bad)
		}
	}
}

// TestSessionKeyBadInput: a bad Session-Key, or one with a delay, is a 400
// naming the problem, and nothing is stored or queued.
func TestSessionKeyBadInput(t *testing.T) {
	s := loadOpenAPI(t)
	e := newEnv(t, gateway.Config{})
	cases := []struct {
		name   string
		keys   []string // Session-Key values, each a header line
		query  string
		detail string
	}{
		{"too long", []string{strings.Repeat("k", 257)}, "", "is 257 bytes, longer than 256"},
		{"control character", []string{"a\tb"}, "", "control character U+0009"},
		{"not UTF-8", []string{"a\xffb"}, "", "not valid UTF-8"},
		{"empty", []string{""}, "", "Session-Key is empty"},
		{"twice", []string{"a", "b"}, "", "Session-Key is given 2 times"},
		{"with delay", []string{"a"}, "?delay=1m", "cannot be scheduled"},
	}
	for _, c := range cases {
		req, err := http.NewRequest("POST", e.URL+"/v1/queues/bad/requests"+c.query, strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range c.keys {
			req.Header.Add("Session-Key", k)
		}
		// Each with an Idempotency-Key, to show below that no record was kept.
		req.Header.Set("Idempotency-Key", "bad-"+c.name)
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s: %d %s", c.name, resp.StatusCode, data)
			continue
		}
		if p := decode(t, data); p["type"] != "https://rsvp.dev/problems/invalid-request" || !strings.Contains(p["detail"].(string), c.detail) {
			t.Errorf("%s: %s, want a detail with %q", c.name, data, c.detail)
		}
		if err := s.checkResponse(req, resp, data); err != nil {
			t.Error(err)
		}
	}
	e.nothingQueued("bad") // nothing was queued...
	// ...nor recorded: the Idempotency-Keys are free for another
	// submission (a recorded one would make it 422).
	for _, c := range cases {
		e.submit("elsewhere", map[string]string{"Idempotency-Key": "bad-" + c.name}, "y")
	}
}

// TestSessionKeyIdempotency: the session key is part of the submission an
// Idempotency-Key stands for.
func TestSessionKeyIdempotency(t *testing.T) {
	s := loadOpenAPI(t)
	e := newEnv(t, gateway.Config{})
	h := map[string]string{"Idempotency-Key": "pay-7", "Session-Key": "account-1", "Content-Type": "text/plain"}
	first := e.submit("pay", h, "10 EUR")
	if again := e.submit("pay", h, "10 EUR"); again != first {
		t.Fatalf("the same submission gave ids %s and %s", first, again)
	}
	other := mergeHdr(h, map[string]string{"Session-Key": "account-2"})
	_, data := s.call(t, e, 422, "POST", "/v1/queues/pay/requests", other, "10 EUR")
	if d := decode(t, data)["detail"].(string); !strings.Contains(d, "session key") {
		t.Errorf("422 detail %q does not name the session key", d)
	}
	none := map[string]string{"Idempotency-Key": "pay-7", "Content-Type": "text/plain"}
	s.call(t, e, 422, "POST", "/v1/queues/pay/requests", none, "10 EUR")
	// And the other way round: a key first used without a session.
	e.submit("pay", map[string]string{"Idempotency-Key": "pay-8"}, "x")
	s.call(t, e, 422, "POST", "/v1/queues/pay/requests", map[string]string{"Idempotency-Key": "pay-8", "Session-Key": "account-1"}, "x")
}

// TestLongPollIgnoresHandBack: a session request held by one gateway's
// worker consumer and handed back unrun (the gateway closes) gets a
// handed_back event, which changes nothing in its status: a long-poll on
// it goes on waiting until the wait ends.
func TestLongPollIgnoresHandBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{MaxStreams: 1}) // one slot: the long-poll's
	workers, err := gateway.New(context.Background(), e.Client, gateway.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(workers)
	t.Cleanup(srv.Close)
	e2 := &env{t: t, URL: srv.URL, Client: e.Client, GW: workers, Engine: e.Engine}

	key := map[string]string{"Session-Key": "k"}
	first := e.submit("handback", key, "1")
	second := e.submit("handback", key, "2")
	if l := e2.workerLease("handback", "lease=10m", nil); l.ID != first {
		t.Fatalf("leased %s, want the first of the session %s", l.ID, first)
	}
	// The other gateway's consumer pulls the second and holds it: its
	// session's turn is taken.
	if ls := e2.workerLeases("handback", "wait=1s", nil); len(ls) != 0 {
		t.Fatalf("leased %+v while the first of its session is out", ls)
	}

	const wait = 3 * time.Second
	type answer struct {
		status int
		state  any
		after  time.Duration
		end    time.Time
	}
	done := make(chan answer, 1)
	go func() {
		for {
			start := time.Now()
			resp, data := e.do("GET", "/v1/requests/"+second+"?wait=3s&redirect=false", nil, "")
			if resp.StatusCode == http.StatusTooManyRequests {
				continue // the probe below had the slot
			}
			done <- answer{resp.StatusCode, decode(t, data)["state"], time.Since(start), time.Now()}
			return
		}
	}()
	// The long-poll holds the only stream slot once it has read the status
	// it waits to change.
	eventually(t, 10*time.Second, "the long-poll waits", func() bool {
		resp, _ := e.do("GET", "/v1/requests/"+first+"?wait=1ms&redirect=false", nil, "")
		return resp.StatusCode == http.StatusTooManyRequests
	})
	srv.CloseClientConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := workers.Close(ctx); err != nil { // hands the held request back
		t.Fatal(err)
	}
	var handedBack time.Time
	var types []string
	eventually(t, 10*time.Second, "the hand-back is recorded", func() bool {
		evs, err := e.Client.Backend().Events(ctx, backend.EventQuery{CorrelationID: second})
		types = types[:0]
		for _, ev := range evs {
			types = append(types, ev.Type)
			if ev.Type == backend.EventHandedBack {
				handedBack = ev.At
			}
		}
		return err == nil && !handedBack.IsZero()
	})
	a := <-done
	if a.status != http.StatusOK || a.state != "queued" || a.after < wait {
		t.Fatalf("long-poll answered %d, state %v, after %s (events %v); want 200, queued, after the whole wait of %s",
			a.status, a.state, a.after.Round(time.Millisecond), types, wait)
	}
	if !handedBack.Before(a.end) {
		t.Fatal("the hand-back came after the long-poll: nothing tested")
	}
}
