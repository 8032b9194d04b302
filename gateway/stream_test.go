package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/gateway"
)

// streamSubmit submits a request and returns its id.
func streamSubmit(e *env, queue string, hdr map[string]string, body string) string {
	e.t.Helper()
	resp, data := e.do("POST", "/v1/queues/"+queue+"/requests", hdr, body)
	if resp.StatusCode != http.StatusAccepted {
		e.t.Fatalf("submit: %s\n%s", resp.Status, data)
	}
	id, _ := decode(e.t, data)["id"].(string)
	if id == "" {
		e.t.Fatalf("submit: no id in %s", data)
	}
	return id
}

// sseStream is a client's view of an open event stream.
type sseStream struct {
	t      *testing.T
	resp   *http.Response
	r      *bufio.Reader
	cancel context.CancelFunc
}

// sseEvent is one event read from a stream.
type sseEvent struct {
	ID   uint64
	Type string
	Data map[string]any
}

// getSSE opens path as an event stream; the caller checks the status.
// Closing it (or the test's end) kills the connection.
func getSSE(e *env, path string, hdr map[string]string) *sseStream {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	req, err := http.NewRequestWithContext(ctx, "GET", e.URL+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	s := &sseStream{t: e.t, resp: resp, r: bufio.NewReader(resp.Body), cancel: cancel}
	e.t.Cleanup(s.close)
	return s
}

// openSSE opens path as an event stream and checks it is one.
func openSSE(e *env, path string, hdr map[string]string) *sseStream {
	e.t.Helper()
	s := getSSE(e, path, hdr)
	if s.resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(s.resp.Body)
		e.t.Fatalf("GET %s: %s\n%s", path, s.resp.Status, body)
	}
	for k, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"} {
		if got := s.resp.Header.Get(k); got != want {
			e.t.Errorf("GET %s: %s %q, want %q", path, k, got, want)
		}
	}
	return s
}

// close kills the connection.
func (s *sseStream) close() {
	s.cancel()
	_ = s.resp.Body.Close()
}

// next reads the next event, skipping comments; io.EOF when the stream
// ended.
func (s *sseStream) next() (sseEvent, error) {
	var ev sseEvent
	var data string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			if err == io.EOF && line == "" && data == "" {
				return ev, io.EOF
			}
			return ev, err
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if data == "" {
				continue // the end of a comment
			}
			if err := json.Unmarshal([]byte(data), &ev.Data); err != nil {
				return ev, err
			}
			return ev, nil
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			ev.ID, err = strconv.ParseUint(line[4:], 10, 64)
			if err != nil {
				return ev, err
			}
		case strings.HasPrefix(line, "event: "):
			ev.Type = line[7:]
		case strings.HasPrefix(line, "data: "):
			if data != "" {
				return ev, errors.New("two data lines in one event")
			}
			data = line[6:]
		default:
			return ev, errors.New("unexpected line " + strconv.Quote(line))
		}
	}
}

// must reads the next event and checks its consistency: data seq, type and
// id match the SSE fields.
func (s *sseStream) must() sseEvent {
	s.t.Helper()
	ev, err := s.next()
	if err != nil {
		s.t.Fatalf("reading the stream: %v", err)
	}
	if seq, _ := ev.Data["seq"].(float64); uint64(seq) != ev.ID || ev.Data["type"] != ev.Type {
		s.t.Fatalf("event id %d type %s has data %v", ev.ID, ev.Type, ev.Data)
	}
	return ev
}

// ended checks that the stream has ended.
func (s *sseStream) ended() {
	s.t.Helper()
	if ev, err := s.next(); err != io.EOF {
		s.t.Fatalf("want the end of the stream, got %+v, %v", ev, err)
	}
}

func sseTypes(evs []sseEvent) []string {
	var ts []string
	for _, ev := range evs {
		ts = append(ts, ev.Type)
	}
	return ts
}

// increasing checks that event ids increase strictly: none repeats.
func sseIncreasing(t *testing.T, evs []sseEvent) {
	t.Helper()
	for i := 1; i < len(evs); i++ {
		if evs[i].ID <= evs[i-1].ID {
			t.Fatalf("event %d has id %d after %d: %v", i, evs[i].ID, evs[i-1].ID, sseTypes(evs))
		}
	}
}

func streamBackoff(int) time.Duration { return 10 * time.Millisecond }

func TestSSERequestEventSequence(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	e.respond("flaky", rsvp.HandleOptions{Backoff: streamBackoff}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if m.Attempt == 1 {
			return nil, errors.New("flaky disk")
		}
		if err := rsvp.Progress(ctx, map[string]int{"done": 50}); err != nil {
			return nil, err
		}
		return &rsvp.Reply{ContentType: "application/json", Body: []byte(`{"sum": 42}`)}, nil
	})
	id := streamSubmit(e, "flaky", map[string]string{"Content-Type": "text/plain"}, "2+40")
	s := openSSE(e, "/v1/requests/"+id+"/events", nil)
	var evs []sseEvent
	for len(evs) == 0 || evs[len(evs)-1].Type != "succeeded" {
		evs = append(evs, s.must())
	}
	s.ended()
	want := []string{"queued", "running", "retrying", "running", "progress", "succeeded"}
	if got := sseTypes(evs); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	sseIncreasing(t, evs)
	for _, ev := range evs {
		if ev.Data["id"] != id || ev.Data["at"] == nil {
			t.Errorf("%s event: id %v at %v, want id %s and a time", ev.Type, ev.Data["id"], ev.Data["at"], id)
		}
	}
	rec, _ := evs[0].Data["data"].(map[string]any)
	if rec["id"] != id || rec["queue"] != "flaky" || rec["content_type"] != "text/plain" || rec["created_at"] == nil {
		t.Errorf("queued data %v: want the request", rec)
	}
	for _, k := range []string{"tenant", "digest"} {
		if _, ok := rec[k]; ok {
			t.Errorf("queued data shows %s: %v", k, rec)
		}
	}
	if d, _ := evs[1].Data["data"].(map[string]any); d["attempt"] != 1.0 {
		t.Errorf("running data %v, want attempt 1", d)
	}
	if d, _ := evs[2].Data["data"].(map[string]any); d["error"] != "flaky disk" {
		t.Errorf("retrying data %v, want the error", d)
	}
	if d, _ := evs[4].Data["data"].(map[string]any); d["done"] != 50.0 {
		t.Errorf("progress data %v, want the handler's", d)
	}
	final := evs[5].Data
	st, _ := final["status"].(map[string]any)
	if st["state"] != "succeeded" || st["attempts"] != 2.0 || st["id"] != id {
		t.Errorf("final status %v", st)
	}
	if res, _ := final["result"].(map[string]any); res["sum"] != 42.0 || final["content_type"] != "application/json" {
		t.Errorf("final event result %v content type %v, want the reply", final["result"], final["content_type"])
	}

	// Resuming after the final event: nothing more, and 204 stops an
	// EventSource from reconnecting.
	resp, body := e.do("GET", "/v1/requests/"+id+"/events", map[string]string{"Last-Event-ID": strconv.FormatUint(evs[5].ID, 10)}, "")
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("resume after the final event: %s %s, want 204", resp.Status, body)
	}
	// Resuming from the middle with the query parameter.
	s = openSSE(e, "/v1/requests/"+id+"/events?last_event_id="+strconv.FormatUint(evs[3].ID, 10), nil)
	if a, b := s.must(), s.must(); a.ID != evs[4].ID || b.ID != evs[5].ID {
		t.Errorf("resumed after %d: got %d and %d, want %d and %d", evs[3].ID, a.ID, b.ID, evs[4].ID, evs[5].ID)
	}
	s.ended()

	for _, c := range []struct {
		path   string
		hdr    map[string]string
		status int
	}{
		{"/v1/requests/nope/events", nil, http.StatusNotFound},
		{"/v1/requests/no%20pe/events", nil, http.StatusNotFound},
		{"/v1/requests/" + id + "/events", map[string]string{"Last-Event-ID": "x"}, http.StatusBadRequest},
		{"/v1/channels/no%20pe/events", nil, http.StatusBadRequest},
		{"/v1/channels/_/events", nil, http.StatusBadRequest},
		{"/v1/channels/rsvp-workflows/events", nil, http.StatusBadRequest}, // the workflow index
	} {
		resp, body := e.do("GET", c.path, c.hdr, "")
		if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("GET %s %v: %s %s, want %d problem", c.path, c.hdr, resp.Status, body, c.status)
		}
	}
}

// streamGate controls a handler: it waits for step before each of its progress
// events and before its reply, and reports on done after each.
type streamGate struct {
	step, done chan struct{}
}

func newStreamGate() *streamGate {
	return &streamGate{step: make(chan struct{}), done: make(chan struct{})}
}

// next lets the handler take its next step and waits until it has. After
// the last step (the reply) the handler has returned; the reply and its
// event are stored a moment later.
func (g *streamGate) next(t *testing.T) {
	t.Helper()
	select {
	case g.step <- struct{}{}:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler is not waiting")
	}
	<-g.done
}

// handler sends n progress events, then replies "done".
func (g *streamGate) handler(n int) rsvp.HandlerFunc {
	return func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		for i := 1; ; i++ {
			select {
			case <-g.step:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if i > n {
				defer func() { g.done <- struct{}{} }()
				return &rsvp.Reply{ContentType: "text/plain", Body: []byte("done")}, nil
			}
			if err := rsvp.Progress(ctx, map[string]int{"step": i}); err != nil {
				return nil, err
			}
			g.done <- struct{}{}
		}
	}
}

func TestSSEResumeAfterKilledConnection(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	g := newStreamGate()
	e.respond("gated", rsvp.HandleOptions{}, g.handler(3))
	id := streamSubmit(e, "gated", nil, "x")
	path := "/v1/requests/" + id + "/events"

	s := openSSE(e, path, nil)
	var seen []sseEvent
	seen = append(seen, s.must(), s.must()) // queued, running
	g.next(t)
	seen = append(seen, s.must()) // progress 1
	s.close()                     // killed mid-stream
	g.next(t)                     // progress 2, while nobody listens
	g.next(t)                     // progress 3

	s = openSSE(e, path, map[string]string{"Last-Event-ID": strconv.FormatUint(seen[2].ID, 10)})
	// Progress 2 and 3 from the log; then the reply, while the stream is open.
	seen = append(seen, s.must(), s.must())
	g.next(t)
	seen = append(seen, s.must())
	s.ended()

	want := []string{"queued", "running", "progress", "progress", "progress", "succeeded"}
	if got := sseTypes(seen); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	sseIncreasing(t, seen)
	for i, ev := range seen[2:5] {
		if d, _ := ev.Data["data"].(map[string]any); d["step"] != float64(i+1) {
			t.Errorf("progress %d: data %v", i+1, d)
		}
	}
	if seen[5].Data["result"] != "done" {
		t.Errorf("final event result %v, want the text", seen[5].Data["result"])
	}

	// Every event of the log, in one piece, matches what the two
	// connections got together.
	s = openSSE(e, path, nil)
	for i := range seen {
		if ev := s.must(); ev.ID != seen[i].ID || ev.Type != seen[i].Type {
			t.Errorf("event %d: %d %s from the start, %d %s across the reconnect", i, ev.ID, ev.Type, seen[i].ID, seen[i].Type)
		}
	}
	s.ended()
}

func TestChannelStreamResume(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	ga, gb := newStreamGate(), newStreamGate()
	e.respond("chan-a", rsvp.HandleOptions{}, ga.handler(1))
	e.respond("chan-b", rsvp.HandleOptions{}, gb.handler(1))
	hdr := map[string]string{"Notify-Channel": "orders"}
	a := streamSubmit(e, "chan-a", hdr, "a")
	b := streamSubmit(e, "chan-b", hdr, "b")
	streamSubmit(e, "nobody", map[string]string{"Notify-Channel": "other"}, "c") // another channel
	path := "/v1/channels/orders/events"

	s := openSSE(e, path, nil)
	var seen []sseEvent
	byID := map[string][]string{}
	read := func(s *sseStream) {
		ev := s.must()
		seen = append(seen, ev)
		id, _ := ev.Data["id"].(string)
		byID[id] = append(byID[id], ev.Type)
	}
	for range 4 { // queued and running of each
		read(s)
	}
	ga.next(t)
	read(s) // a's progress
	s.close()
	ga.next(t) // a succeeds, while nobody listens
	gb.next(t) // b's progress

	s = openSSE(e, path, map[string]string{"Last-Event-ID": strconv.FormatUint(seen[len(seen)-1].ID, 10)})
	read(s)
	read(s)
	gb.next(t) // b succeeds
	read(s)
	sseIncreasing(t, seen)
	want := []string{"queued", "running", "progress", "succeeded"}
	if !slices.Equal(byID[a], want) || !slices.Equal(byID[b], want) || len(byID) != 2 {
		t.Fatalf("events by request %v, want %v for %s and %s", byID, want, a, b)
	}
	for _, ev := range seen {
		if ev.Type == "queued" {
			if d, _ := ev.Data["data"].(map[string]any); d["channel"] != "orders" {
				t.Errorf("queued data %v: want channel orders", d)
			}
		}
		if ev.Type == "succeeded" {
			if st, _ := ev.Data["status"].(map[string]any); st["state"] != "succeeded" || ev.Data["result"] != "done" {
				t.Errorf("final event %v", ev.Data)
			}
		}
	}
}

// streamTenants is a config with tenants a and b, keys "key-a" and "key-b".
func streamTenants() gateway.Config {
	all := []gateway.Grant{{Queue: "*", Rights: []string{gateway.RightSend}}}
	return gateway.Config{Keys: []gateway.APIKey{
		{Tenant: "a", SHA256: gateway.HashKey("key-a"), Grants: all},
		{Tenant: "b", SHA256: gateway.HashKey("key-b"), Grants: all},
	}}
}

func TestStreamOtherTenant(t *testing.T) {
	t.Parallel()
	e := newEnv(t, streamTenants())
	keyA := map[string]string{"Authorization": "Bearer key-a", "Notify-Channel": "shared"}
	keyB := map[string]string{"Authorization": "Bearer key-b", "Notify-Channel": "shared"}
	sb := openSSE(e, "/v1/channels/shared/events", keyB)
	sa := openSSE(e, "/v1/channels/shared/events", keyA)
	a := streamSubmit(e, "work", keyA, "a")
	b := streamSubmit(e, "work", keyB, "b")

	resp, body := e.do("GET", "/v1/requests/"+a+"/events", keyB, "")
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("b streams a's request: %s %s, want 404", resp.Status, body)
	}
	for _, hdr := range []map[string]string{nil, {"Authorization": "Bearer nope"}} {
		for _, path := range []string{"/v1/requests/" + a + "/events", "/v1/channels/shared/events"} {
			if resp, body := e.do("GET", path, hdr, ""); resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("GET %s with %v: %s %s, want 401", path, hdr, resp.Status, body)
			}
		}
	}
	s := openSSE(e, "/v1/requests/"+a+"/events", keyA)
	if ev := s.must(); ev.Type != "queued" || ev.Data["id"] != a {
		t.Errorf("a's stream starts with %+v", ev)
	}
	// a's request was queued first: had b's channel stream shown it, it
	// would come first.
	if ev := sb.must(); ev.Data["id"] != b {
		t.Errorf("b's channel stream shows %v, want only b's request %s", ev.Data, b)
	}
	if ev := sa.must(); ev.Data["id"] != a {
		t.Errorf("a's channel stream shows %v, want a's request %s", ev.Data, a)
	}
	// Nor does a's show b's: the next event on it is a's next request.
	a2 := streamSubmit(e, "work", keyA, "a2")
	if ev := sa.must(); ev.Data["id"] != a2 {
		t.Errorf("a's channel stream shows %v, want a's request %s", ev.Data, a2)
	}
}

func TestSSEFinalEventMissing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	id := streamSubmit(e, "nobody", map[string]string{"Notify-Channel": "lost"}, "x")
	// The reply is stored, but its writer died before the final event.
	b := e.Client.Backend()
	ctx := context.Background()
	err := b.PutReply(ctx, b.ReplyAddress("someone", id), &backend.Reply{CorrelationID: id, Status: backend.StatusSucceeded,
		ContentType: "text/plain", Body: []byte("late"), CreatedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	cs := openSSE(e, "/v1/channels/lost/events", nil)
	s := openSSE(e, "/v1/requests/"+id+"/events", nil)
	queued, final := s.must(), s.must() // the final one after the grace period
	s.ended()
	if queued.Type != "queued" || final.Type != "succeeded" || final.Data["result"] != "late" {
		t.Fatalf("events %s, %s %v", queued.Type, final.Type, final.Data)
	}
	// Appended to the log once: a second stream and the channel see it.
	s = openSSE(e, "/v1/requests/"+id+"/events", nil)
	if q, f := s.must(), s.must(); q.ID != queued.ID || f.ID != final.ID {
		t.Errorf("second stream: %d %d, want %d %d", q.ID, f.ID, queued.ID, final.ID)
	}
	s.ended()
	// (The channel's log numbers its events in its own order.)
	if q, f := cs.must(), cs.must(); q.Type != "queued" || f.Type != "succeeded" || f.ID <= q.ID {
		t.Errorf("channel stream: %d %s, %d %s", q.ID, q.Type, f.ID, f.Type)
	}
}

func TestEventStreamLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{MaxStreams: 1})
	s := openSSE(e, "/v1/channels/c/events", nil)
	resp, body := e.do("GET", "/v1/channels/c/events", nil, "")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("second stream: %s %s, want 429 with Retry-After", resp.Status, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, resp, err := websocket.Dial(ctx, wsURL(e, ""), nil); err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("WebSocket beyond the limit: %v, %v; want 429", resp, err)
	}
	s.close()
	eventually(t, 5*time.Second, "the closed stream's slot is free", func() bool {
		s := getSSE(e, "/v1/channels/c/events", nil)
		defer s.close()
		return s.resp.StatusCode == http.StatusOK
	})
}

// wsClient is a test's WebSocket connection.
type wsClient struct {
	t    *testing.T
	conn *websocket.Conn
}

func wsURL(e *env, query string) string {
	u := "ws" + strings.TrimPrefix(e.URL, "http") + "/v1/ws"
	if query != "" {
		u += "?" + query
	}
	return u
}

func dialWS(e *env, query string, hdr http.Header) *wsClient {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, wsURL(e, query), &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		e.t.Fatalf("dial: %v (%v)", err, resp)
	}
	c := &wsClient{t: e.t, conn: conn}
	e.t.Cleanup(func() { _ = conn.CloseNow() })
	return c
}

func (c *wsClient) send(v any) {
	c.t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, data); err != nil {
		c.t.Fatal(err)
	}
}

// next reads the next server message.
func (c *wsClient) next() map[string]any {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	typ, data, err := c.conn.Read(ctx)
	if err != nil || typ != websocket.MessageText {
		c.t.Fatalf("read: %v, %v", typ, err)
	}
	return decode(c.t, data)
}

// expect reads the next message and checks its type and, when set, its
// request and channel.
func (c *wsClient) expect(typ, request, channel string) map[string]any {
	c.t.Helper()
	m := c.next()
	if m["type"] != typ || request != "" && m["request"] != request || channel != "" && m["channel"] != channel {
		c.t.Fatalf("got %v, want %s of request %q channel %q", m, typ, request, channel)
	}
	return m
}

// event reads an event message and returns its event.
func (c *wsClient) event(request, channel string) map[string]any {
	c.t.Helper()
	ev, _ := c.expect("event", request, channel)["event"].(map[string]any)
	return ev
}

func wsSeq(ev map[string]any) uint64 {
	f, _ := ev["seq"].(float64)
	return uint64(f)
}

func TestWebSocketSubscriptions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, streamTenants())
	g := newStreamGate()
	e.respond("ws", rsvp.HandleOptions{}, g.handler(2))
	keyA := map[string]string{"Authorization": "Bearer key-a", "Notify-Channel": "live"}
	id := streamSubmit(e, "ws", keyA, "x")

	// Without a key: 401 before the upgrade.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, resp, err := websocket.Dial(ctx, wsURL(e, ""), nil); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("dial without a key: %v, %v; want 401", resp, err)
	}
	// The key as a query parameter, as browsers must.
	c := dialWS(e, "access_token=key-a", nil)

	c.send(map[string]any{"op": "subscribe", "request": id})
	c.expect("subscribed", id, "")
	var seen []map[string]any
	seen = append(seen, c.event(id, ""), c.event(id, "")) // queued, running
	g.next(t)
	seen = append(seen, c.event(id, "")) // progress 1
	c.send(map[string]any{"op": "unsubscribe", "request": id})
	c.expect("unsubscribed", id, "")
	g.next(t) // progress 2, unsubscribed

	// Errors do not end the connection.
	for _, m := range []struct {
		msg    any
		status float64
	}{
		{map[string]any{"op": "subscribe", "request": "nope"}, 404},
		{map[string]any{"op": "subscribe", "request": "no pe"}, 404},
		{map[string]any{"op": "dance", "request": id}, 400},
		{map[string]any{"op": "subscribe"}, 400},
		{map[string]any{"op": "subscribe", "request": id, "channel": "live"}, 400},
		{map[string]any{"op": "subscribe", "channel": "no pe"}, 400},
		{map[string]any{"op": "subscribe", "request": id, "after": -1}, 400},
		{"not an object", 400},
	} {
		c.send(m.msg)
		p, _ := c.expect("error", "", "")["error"].(map[string]any)
		if p["status"] != m.status || p["type"] == nil || p["title"] == nil {
			t.Errorf("%v: error %v, want status %v", m.msg, p, m.status)
		}
	}

	// Resume from the last event seen: progress 2, missed while
	// unsubscribed, comes first.
	c.send(map[string]any{"op": "subscribe", "request": id, "after": wsSeq(seen[2])})
	c.expect("subscribed", id, "")
	seen = append(seen, c.event(id, ""))
	g.next(t) // the reply
	seen = append(seen, c.event(id, ""))
	c.expect("end", id, "")
	var got []string
	for i, ev := range seen {
		got = append(got, ev["type"].(string))
		if i > 0 && wsSeq(ev) <= wsSeq(seen[i-1]) {
			t.Errorf("event %d: seq %d after %d", i, wsSeq(ev), wsSeq(seen[i-1]))
		}
	}
	if want := []string{"queued", "running", "progress", "progress", "succeeded"}; !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if seen[4]["result"] != "done" {
		t.Errorf("final event %v", seen[4])
	}
	// After the end: only the acknowledgement and the end again.
	c.send(map[string]any{"op": "subscribe", "request": id, "after": wsSeq(seen[4])})
	c.expect("subscribed", id, "")
	c.expect("end", id, "")

	// A channel, from the start: the request's events again, under the
	// channel's name.
	c.send(map[string]any{"op": "subscribe", "channel": "live"})
	c.expect("subscribed", "", "live")
	var last int64
	for _, want := range seen { // numbered in the channel's own order
		if ev := c.event("", "live"); ev["type"] != want["type"] || ev["id"] != id || int64(wsSeq(ev)) <= last {
			t.Fatalf("channel event %v, want %v", ev, want)
		} else {
			last = int64(wsSeq(ev))
		}
	}
	// And live: a new request on the channel.
	g2 := newStreamGate()
	e.respond("ws2", rsvp.HandleOptions{}, g2.handler(0))
	id2 := streamSubmit(e, "ws2", keyA, "y")
	if ev := c.event("", "live"); ev["id"] != id2 || ev["type"] != "queued" {
		t.Fatalf("channel event %v, want %s queued", ev, id2)
	}
	if ev := c.event("", "live"); ev["id"] != id2 || ev["type"] != "running" {
		t.Fatalf("channel event %v, want %s running", ev, id2)
	}
	c.send(map[string]any{"op": "unsubscribe", "channel": "live"})
	c.expect("unsubscribed", "", "live")
	g2.next(t)
	// Unsubscribed: the next message answers the next request, not the
	// channel's succeeded event.
	c.send(map[string]any{"op": "subscribe", "request": "nope"})
	c.expect("error", "nope", "")

	// Tenant b sees neither a's request nor a's channel of the same name.
	cb := dialWS(e, "", http.Header{"Authorization": {"Bearer key-b"}})
	cb.send(map[string]any{"op": "subscribe", "request": id})
	if p, _ := cb.expect("error", id, "")["error"].(map[string]any); p["status"] != 404.0 {
		t.Errorf("b subscribes to a's request: %v", p)
	}
	cb.send(map[string]any{"op": "subscribe", "channel": "live"})
	cb.expect("subscribed", "", "live")
	idB := streamSubmit(e, "nobody", map[string]string{"Authorization": "Bearer key-b", "Notify-Channel": "live"}, "z")
	if ev := cb.event("", "live"); ev["id"] != idB {
		t.Errorf("b's channel shows %v, want only b's request %s", ev, idB)
	}
}

// TestChannelStreamFollowsQueueGrants: a channel stream shows a key only
// the requests it may read. Keys of one tenant: ky sends on queue y, kx
// on x, kw sends on x and may consume y, kall sends on every queue. A
// request on y is on channel c: kx and kw, which get 404 for its status,
// do not see its events on c either; kall does.
func TestChannelStreamFollowsQueueGrants(t *testing.T) {
	grant := func(key, queue, right string) gateway.APIKey {
		return gateway.APIKey{Tenant: "a", SHA256: gateway.HashKey(key), Grants: []gateway.Grant{{Queue: queue, Rights: []string{right}}}}
	}
	e := newEnv(t, gateway.Config{Keys: []gateway.APIKey{grant("kx", "x", gateway.RightSend), grant("ky", "y", gateway.RightSend),
		{Tenant: "a", SHA256: gateway.HashKey("kw"), Grants: []gateway.Grant{{Queue: "x", Rights: []string{gateway.RightSend}},
			{Queue: "y", Rights: []string{gateway.RightConsume}}}},
		grant("kall", "*", gateway.RightSend)}})
	e.respond("y", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{ContentType: "text/plain", Body: []byte("result of y")}, nil
	})
	auth := func(k string) map[string]string { return map[string]string{"Authorization": "Bearer " + k} }
	onC := map[string]string{"Notify-Channel": "c"}
	idY := streamSubmit(e, "y", mergeHdr(auth("ky"), onC), "payload")
	eventually(t, 10*time.Second, "the request on y succeeds", func() bool {
		resp, _ := e.do("GET", "/v1/requests/"+idY+"/result", auth("ky"), "")
		return resp.StatusCode == http.StatusOK
	})
	if resp, _ := e.do("GET", "/v1/requests/"+idY, auth("kx"), ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("kx reads the status of the request on y: %d, want 404", resp.StatusCode)
	}
	for _, key := range []string{"kx", "kw", "kall"} {
		s := openSSE(e, "/v1/channels/c/events", auth(key))
		// A request on x, which each of these keys may read, marks where the
		// stream has caught up: what comes before it is of the request on y.
		idX := streamSubmit(e, "x", mergeHdr(auth("kx"), onC), "mine")
		var ofY []string
		for {
			ev := s.must()
			if ev.Data["id"] == idX {
				break
			}
			if ev.Data["id"] == idY {
				ofY = append(ofY, ev.Type)
			}
		}
		s.close()
		switch {
		case key == "kall" && !slices.Equal(ofY, []string{"queued", "running", "succeeded"}):
			t.Errorf("kall, which may read every queue, got events %v of the request on y, want queued running succeeded", ofY)
		case key != "kall" && len(ofY) > 0:
			t.Errorf("%s streams channel c and gets events %v of the request on y, which it may not read", key, ofY)
		}
	}
}

// TestRequestStreamEndsAtItsFinalEvent: a request's stream ends with its
// final event, also when a stale attempt recorded an event after it. Here
// an HTTP worker's lease of a request cancelled meanwhile runs out, and
// the gateway gives it back: a retrying event follows the cancelled one
// in the log. Neither the SSE stream nor a WebSocket subscription shows it.
func TestRequestStreamEndsAtItsFinalEvent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	id := e.workerSubmit("late", nil, "x")
	e.workerLease("late", "lease=1s", nil)
	if resp, data := e.do("DELETE", "/v1/requests/"+id, nil, ""); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("cancel: %d %s", resp.StatusCode, data)
	}
	var log []string
	eventually(t, 10*time.Second, "the lease runs out and its attempt is recorded after the cancel", func() bool {
		evs, err := e.Client.Backend().Events(t.Context(), backend.EventQuery{CorrelationID: id})
		log = log[:0]
		for _, ev := range evs {
			log = append(log, ev.Type)
		}
		return err == nil && len(log) > 0 && log[len(log)-1] == backend.EventRetrying
	})
	want := []string{"queued", "running", "cancelled"}

	s := openSSE(e, "/v1/requests/"+id+"/events", nil)
	var got []string
	for {
		ev, err := s.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		got = append(got, ev.Type)
	}
	if !slices.Equal(got, want) {
		t.Errorf("SSE stream %v, want %v (the event log is %v)", got, want, log)
	}

	c := dialWS(e, "", nil)
	c.send(map[string]any{"op": "subscribe", "request": id})
	c.expect("subscribed", id, "")
	got = got[:0]
	for {
		m := c.next()
		if m["type"] != "event" {
			if m["type"] != "end" {
				t.Fatalf("got %v, want an event or the end", m)
			}
			break
		}
		ev, _ := m["event"].(map[string]any)
		got = append(got, ev["type"].(string))
	}
	if !slices.Equal(got, want) {
		t.Errorf("WebSocket subscription %v, want %v (the event log is %v)", got, want, log)
	}
}

// TestRequestStreamForeignCursor: a request stream resumed with a cursor
// that names none of its events (another request's, say) is refused, over
// SSE and WebSocket, rather than taken as a position in its log: the
// client would miss what came before it, and with a cursor after the
// final event get 204, "nothing more", without ever seeing the outcome.
func TestRequestStreamForeignCursor(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	e.respond("fc", rsvp.HandleOptions{}, echo)
	first := streamSubmit(e, "fc", nil, "1")
	e.waitState(first, gateway.StateSucceeded)
	second := streamSubmit(e, "fc", nil, "2")
	e.waitState(second, gateway.StateSucceeded)
	evs, err := e.Client.Backend().Events(t.Context(), backend.EventQuery{CorrelationID: second})
	if err != nil || len(evs) == 0 {
		t.Fatalf("events of %s: %v, %v", second, evs, err)
	}
	last := evs[len(evs)-1].Seq // of the second request: after all of the first's
	path := "/v1/requests/" + first + "/events"
	for _, hdr := range []map[string]string{{"Last-Event-ID": strconv.FormatUint(last, 10)}, {"Last-Event-ID": "18446744073709551615"}} {
		resp, data := e.do("GET", path, hdr, "")
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(data), "invalid-last-event-id") {
			t.Errorf("GET %s with Last-Event-ID %s of no event of it: %s %s, want 400 invalid-last-event-id",
				path, hdr["Last-Event-ID"], resp.Status, data)
		}
	}
	// Its own events' ids, and 0, are fine.
	s := openSSE(e, path, map[string]string{"Last-Event-ID": "0"})
	queued := s.must()
	s.close()
	s = openSSE(e, path, map[string]string{"Last-Event-ID": strconv.FormatUint(queued.ID, 10)})
	if ev := s.must(); ev.Type != "running" {
		t.Errorf("resumed after queued: %s, want running", ev.Type)
	}

	c := dialWS(e, "", nil)
	c.send(map[string]any{"op": "subscribe", "request": first, "after": last})
	if m := c.next(); m["type"] != "error" || m["request"] != first || m["error"].(map[string]any)["status"] != 400.0 {
		t.Errorf("WebSocket subscription with the cursor of another request: %v, want an error 400", m)
	}
}

// TestChannelStreamSkipsEventsAfterAFinalOne: a channel stream shows each
// of its requests as the request's own stream does: nothing of a request
// after its final event, but for a replay. Here, as in
// TestRequestStreamEndsAtItsFinalEvent, an HTTP worker's lease of a
// request cancelled meanwhile runs out and its given-back attempt records
// retrying after cancelled; a second request on the channel marks the end
// of what to read. Followed from the start, and resumed after the final
// event, over SSE and WebSocket.
func TestChannelStreamSkipsEventsAfterAFinalOne(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	hdr := map[string]string{"Notify-Channel": "late"}
	id := e.workerSubmit("late-ch", hdr, "x")
	e.workerLease("late-ch", "lease=1s", nil)
	if resp, data := e.do("DELETE", "/v1/requests/"+id, nil, ""); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("cancel: %d %s", resp.StatusCode, data)
	}
	var log []string
	eventually(t, 10*time.Second, "the lease runs out and its attempt is recorded after the cancel", func() bool {
		evs, err := e.Client.Backend().Events(t.Context(), backend.EventQuery{CorrelationID: id})
		log = log[:0]
		for _, ev := range evs {
			log = append(log, ev.Type)
		}
		return err == nil && len(log) > 0 && log[len(log)-1] == backend.EventRetrying
	})
	marker := e.workerSubmit("late-ch", hdr, "marker")

	// readSSE reads the channel stream after cursor up to the marker's
	// queued event: the types of id's events, and the seq of its final one.
	readSSE := func(cursor uint64) (types []string, final uint64) {
		s := openSSE(e, "/v1/channels/late/events", map[string]string{"Last-Event-ID": strconv.FormatUint(cursor, 10)})
		defer s.close()
		for {
			ev := s.must()
			if ev.Data["id"] == marker {
				return types, final
			}
			types = append(types, ev.Type)
			if ev.Type == gateway.StateCancelled {
				final = ev.ID
			}
		}
	}
	want := []string{"queued", "running", "cancelled"}
	got, final := readSSE(0)
	if !slices.Equal(got, want) {
		t.Errorf("SSE channel stream %v, want %v (the request's log is %v)", got, want, log)
	}
	if got, _ := readSSE(final); len(got) != 0 {
		t.Errorf("SSE channel stream resumed after the final event: %v, want nothing of the request", got)
	}

	c := dialWS(e, "", nil)
	readWS := func(cursor uint64) (types []string) {
		c.send(map[string]any{"op": "subscribe", "channel": "late", "after": cursor})
		c.expect("subscribed", "", "late")
		for {
			ev := c.event("", "late")
			if ev["id"] == marker {
				return types
			}
			types = append(types, ev["type"].(string))
		}
	}
	if got := readWS(0); !slices.Equal(got, want) {
		t.Errorf("WebSocket channel subscription %v, want %v (the request's log is %v)", got, want, log)
	}
	if got := readWS(final); len(got) != 0 {
		t.Errorf("WebSocket channel subscription resumed after the final event: %v, want nothing of the request", got)
	}
}
