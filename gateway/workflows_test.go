package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/gateway"
	"github.com/rsvp-go/rsvp/workflow"
)

// wfDoc is what the test approval workflow reviews and publishes.
type wfDoc struct {
	ID   string `json:"id"`
	Text string `json:"text"`
}

// wfApproval is the seed article's approval workflow: review, wait for
// the decision ("ApprovalReceived"), publish if approved.
func wfApproval(ctx workflow.Context, d wfDoc) (string, error) {
	review, err := workflow.CallActivity[string](ctx, "ReviewDocument", d, workflow.ActivityOptions{}).Get(ctx)
	if err != nil {
		return "", err
	}
	if err := workflow.SetCustomStatus(ctx, map[string]string{"review": review, "step": "awaiting approval"}); err != nil {
		return "", err
	}
	decision, err := workflow.WaitForEvent[string](ctx, "ApprovalReceived", time.Hour)
	if err != nil {
		return "", err
	}
	if decision != "Approved" {
		return "rejected: " + decision, nil
	}
	return workflow.CallActivity[string](ctx, "PublishDocument", d, workflow.ActivityOptions{}).Get(ctx)
}

// wfEnv is a gateway with a workflow engine, over real HTTP on an
// in-memory embedded engine, running the approval workflow (with counts
// of its activity calls) and "fails", which fails at once.
type wfEnv struct {
	*env
	E                *workflow.Engine
	reviews, publish atomic.Int32
}

func newWorkflowEnv(t *testing.T, cfg gateway.Config) *wfEnv {
	t.Helper()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	var e *workflow.Engine
	en := newEnvWith(t, b, cfg, func(c *rsvp.Client) (*workflow.Engine, error) {
		var err error
		if e, err = workflow.New(c, workflow.Config{SweepInterval: 500 * time.Millisecond}); err != nil {
			return nil, err
		}
		return e, errors.Join(
			workflow.Register(e, "approval", wfApproval),
			workflow.Register(e, "fails", func(ctx workflow.Context, in any) (any, error) {
				return nil, errors.New("it had to fail")
			}),
		)
	})
	we := &wfEnv{env: en, E: e}
	we.typed("ReviewDocument", func(ctx context.Context, d wfDoc) (string, error) {
		we.reviews.Add(1)
		return "reviewed " + d.ID, nil
	})
	we.typed("PublishDocument", func(ctx context.Context, d wfDoc) (string, error) {
		we.publish.Add(1)
		return "published " + d.ID, nil
	})
	return we
}

// typed runs fn as a typed responder on queue until the test ends.
func (e *wfEnv) typed(queue string, fn func(ctx context.Context, d wfDoc) (string, error)) {
	e.t.Helper()
	r, err := rsvp.HandleTyped(e.Client, queue, fn, rsvp.HandleOptions{Concurrency: 4})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Stop(ctx)
	})
}

var jsonHdr = map[string]string{"Content-Type": "application/json"}

// wantProblem checks a problem answer: status, slug and (if not empty)
// code.
func wantProblem(t *testing.T, resp *http.Response, data []byte, status int, slug, code string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s %s: %d %s, want %d %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, data, status, slug)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("%s: Content-Type %q", resp.Request.URL.Path, ct)
	}
	p := decode(t, data)
	if p["type"] != "https://rsvp.dev/problems/"+slug || p["status"] != float64(status) {
		t.Errorf("%s %s: problem %s, want type %s", resp.Request.Method, resp.Request.URL.Path, data, slug)
	}
	if code != "" && p["code"] != code {
		t.Errorf("%s %s: problem code %v, want %s", resp.Request.Method, resp.Request.URL.Path, p["code"], code)
	}
}

// awaitFinal long-polls the status of id until it has finished and
// returns the final answer (a 303).
func (e *wfEnv) awaitFinal(id string) (*http.Response, map[string]any) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, data := e.do("GET", "/v1/instances/"+id+"?wait=5s", nil, "")
		switch resp.StatusCode {
		case http.StatusSeeOther:
			return resp, decode(e.t, data)
		case http.StatusOK:
			if resp.Header.Get("Retry-After") == "" {
				e.t.Errorf("a running instance's status without Retry-After")
			}
		default:
			e.t.Fatalf("status of %s: %d %s", id, resp.StatusCode, data)
		}
	}
	e.t.Fatalf("%s did not finish in time", id)
	return nil, nil
}

// awaitWaiting waits until instance id's custom status says it waits for
// the decision.
func (e *wfEnv) awaitWaiting(id string) {
	e.t.Helper()
	eventually(e.t, 20*time.Second, id+" awaits approval", func() bool {
		_, data := e.do("GET", "/v1/instances/"+id, nil, "")
		return strings.Contains(string(data), "awaiting approval")
	})
}

// TestWorkflowApprovalOverHTTP: the approval flow end to end over HTTP:
// start, raise the decision, follow the status to its 303, fetch the
// result, then what a finished instance refuses, and purge.
func TestWorkflowApprovalOverHTTP(t *testing.T) {
	t.Parallel()
	e := newWorkflowEnv(t, gateway.Config{})

	resp, data := e.do("POST", "/v1/workflows/approval/instances?id=doc-1", jsonHdr, `{"id":"doc-1","text":"hello"}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start: %d %s", resp.StatusCode, data)
	}
	if loc := resp.Header.Get("Location"); loc != "/v1/instances/doc-1" {
		t.Errorf("Location %q", loc)
	}
	if resp.Header.Get("Retry-After") != "1" {
		t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	started := decode(t, data)
	links, _ := started["links"].(map[string]any)
	if started["id"] != "doc-1" || started["name"] != "approval" || started["state"] != "running" || links == nil ||
		links["status"] != "/v1/instances/doc-1" || links["result"] != "/v1/instances/doc-1/result" ||
		links["raise_event"] != "/v1/instances/doc-1/events/{event}" || links["terminate"] != "/v1/instances/doc-1/terminate" ||
		links["purge"] != "/v1/instances/doc-1" || links["events"] != "/v1/instances/doc-1/events" {
		t.Errorf("start answer %s", data)
	}

	e.awaitWaiting("doc-1")
	resp, data = e.do("GET", "/v1/instances/doc-1", nil, "")
	st := decode(t, data)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Retry-After") == "" || st["state"] != "running" ||
		st["input"] == nil || st["custom_status"] == nil || st["position"] == nil {
		t.Errorf("status of the waiting instance: %d %s", resp.StatusCode, data)
	}
	resp, data = e.do("GET", "/v1/instances/doc-1/result", nil, "")
	wantProblem(t, resp, data, http.StatusConflict, "not-finished", "")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("409 of the result without Retry-After")
	}

	// The decision, raised twice with one event id: it counts once.
	event := map[string]string{"Content-Type": "application/json", "Idempotency-Key": "decision-1"}
	for range 2 {
		resp, data = e.do("POST", "/v1/instances/doc-1/events/ApprovalReceived", event, `"Approved"`)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("raise: %d %s", resp.StatusCode, data)
		}
		if ev := decode(t, data); ev["instance"] != "doc-1" || ev["event"] != "ApprovalReceived" || ev["event_id"] != "decision-1" {
			t.Errorf("raise answer %s", data)
		}
	}

	// One long-poll sees the end: the history entries in between (the
	// publication called and answered) change nothing the status shows.
	resp, data = e.do("GET", "/v1/instances/doc-1?wait=20s", nil, "")
	if resp.StatusCode != http.StatusSeeOther {
		t.Errorf("the long-poll after the decision: %d %s, want the 303 of the end", resp.StatusCode, data)
	}
	resp, final := e.awaitFinal("doc-1")
	if loc := resp.Header.Get("Location"); loc != "/v1/instances/doc-1/result" || final["state"] != "completed" {
		t.Errorf("final status: Location %q, %v", loc, final)
	}
	resp, data = e.do("GET", "/v1/instances/doc-1/result", nil, "")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" || string(data) != `"published doc-1"` {
		t.Fatalf("result: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), data)
	}
	// Following the 303 as a client does lands on the result.
	fresp, err := http.Get(e.URL + "/v1/instances/doc-1")
	if err != nil {
		t.Fatal(err)
	}
	fresp.Body.Close()
	if fresp.StatusCode != http.StatusOK || fresp.Request.URL.Path != "/v1/instances/doc-1/result" {
		t.Errorf("following the redirect: %d at %s", fresp.StatusCode, fresp.Request.URL.Path)
	}
	resp, data = e.do("GET", "/v1/instances/doc-1?redirect=false", nil, "")
	if st := decode(t, data); resp.StatusCode != http.StatusOK || st["output"] != "published doc-1" || resp.Header.Get("Retry-After") != "" {
		t.Errorf("redirect=false: %d %s", resp.StatusCode, data)
	}
	if e.reviews.Load() != 1 || e.publish.Load() != 1 {
		t.Errorf("reviewed %d times, published %d times; want once each", e.reviews.Load(), e.publish.Load())
	}

	// A retry of the decision's raise, after the end: still idempotent.
	if resp, data = e.do("POST", "/v1/instances/doc-1/events/ApprovalReceived", event, `"Approved"`); resp.StatusCode != http.StatusAccepted {
		t.Errorf("the raise repeated after the end: %d %s", resp.StatusCode, data)
	}
	// A finished instance takes no new events and cannot be terminated.
	resp, data = e.do("POST", "/v1/instances/doc-1/events/ApprovalReceived", jsonHdr, `"Approved"`)
	wantProblem(t, resp, data, http.StatusConflict, "instance-finished", "instance_finished")
	resp, data = e.do("POST", "/v1/instances/doc-1/terminate", nil, "")
	wantProblem(t, resp, data, http.StatusConflict, "instance-finished", "instance_finished")

	// Listed, then purged: gone, and the id may start again.
	resp, data = e.do("GET", "/v1/instances?name=approval&state=completed", nil, "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(data), `"id":"doc-1"`) {
		t.Errorf("list: %d %s", resp.StatusCode, data)
	}
	resp, data = e.do("DELETE", "/v1/instances/doc-1", nil, "")
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("purge: %d %s", resp.StatusCode, data)
	}
	resp, data = e.do("GET", "/v1/instances/doc-1", nil, "")
	wantProblem(t, resp, data, http.StatusNotFound, "unknown-instance", "")
	resp, data = e.do("DELETE", "/v1/instances/doc-1", nil, "")
	wantProblem(t, resp, data, http.StatusNotFound, "unknown-instance", "")
	resp, data = e.do("POST", "/v1/workflows/approval/instances?id=doc-1", jsonHdr, `{"id":"doc-1","text":"again"}`)
	if resp.StatusCode != http.StatusAccepted || decode(t, data)["state"] != "running" {
		t.Fatalf("start after purge: %d %s", resp.StatusCode, data)
	}
	// Rejected this time.
	e.awaitWaiting("doc-1")
	resp, data = e.do("POST", "/v1/instances/doc-1/events/ApprovalReceived?event_id=decision-2", jsonHdr, `"Too long"`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("raise: %d %s", resp.StatusCode, data)
	}
	e.awaitFinal("doc-1")
	if _, data = e.do("GET", "/v1/instances/doc-1/result", nil, ""); string(data) != `"rejected: Too long"` {
		t.Errorf("result of the rejected run: %s", data)
	}
}

// wfSSEEvent is one event of an instance's stream.
type wfSSEEvent struct {
	id    uint64
	state string
	data  map[string]any
}

// openSSE opens the event stream of id with the given Last-Event-ID ("":
// none).
func (e *wfEnv) openSSE(ctx context.Context, id, last string) *http.Response {
	e.t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", e.URL+"/v1/instances/"+id+"/events", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if last != "" {
		req.Header.Set("Last-Event-ID", last)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}

func wfSSEEvents(t *testing.T, raw []map[string]string) []wfSSEEvent {
	t.Helper()
	var out []wfSSEEvent
	for _, r := range raw {
		n, err := strconv.ParseUint(r["id"], 10, 64)
		if err != nil {
			t.Fatalf("event id %q: %v", r["id"], err)
		}
		data := decode(t, []byte(r["data"]))
		if data["state"] != r["event"] || data["position"] != float64(n) {
			t.Errorf("event %s %s, but its data has state %v and position %v", r["id"], r["event"], data["state"], data["position"])
		}
		out = append(out, wfSSEEvent{id: n, state: r["event"], data: data})
	}
	return out
}

// TestWorkflowEventStream: the SSE stream of an instance shows it running,
// then completed, and ends; a client that reconnects with Last-Event-ID
// gets what it missed, nothing twice.
func TestWorkflowEventStream(t *testing.T) {
	t.Parallel()
	e := newWorkflowEnv(t, gateway.Config{})
	resp, data := e.do("POST", "/v1/workflows/approval/instances?id=streamed", jsonHdr, `{"id":"s","text":"x"}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start: %d %s", resp.StatusCode, data)
	}
	e.awaitWaiting("streamed")

	// The first connection sees the instance running, then leaves.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first := e.openSSE(ctx, "streamed", "")
	if first.StatusCode != http.StatusOK || first.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %q", first.StatusCode, first.Header.Get("Content-Type"))
	}
	evs := wfSSEEvents(t, oaSSE(t, first.Body, 1))
	first.Body.Close()
	if evs[0].state != "running" || evs[0].data["custom_status"] == nil {
		t.Fatalf("first event %+v", evs[0])
	}
	seen := evs[0].id

	// Decided while nobody listens; the reconnection resumes after the
	// event seen and follows to the end.
	resp, data = e.do("POST", "/v1/instances/streamed/events/ApprovalReceived", jsonHdr, `"Approved"`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("raise: %d %s", resp.StatusCode, data)
	}
	second := e.openSSE(ctx, "streamed", strconv.FormatUint(seen, 10))
	if second.StatusCode != http.StatusOK {
		t.Fatalf("resumed stream: %d", second.StatusCode)
	}
	rest := wfSSEEvents(t, oaSSE(t, second.Body, -1)) // to its end: the stream closes after the final status
	second.Body.Close()
	if len(rest) == 0 {
		t.Fatal("the resumed stream sent nothing")
	}
	ids := []uint64{seen}
	for _, ev := range rest {
		ids = append(ids, ev.id)
	}
	if !slices.IsSorted(ids) || len(slices.Compact(slices.Clone(ids))) != len(ids) {
		t.Errorf("event ids %v: not increasing, or repeated", ids)
	}
	last := rest[len(rest)-1]
	if last.state != "completed" || last.data["output"] != "published s" {
		t.Errorf("last event %+v", last)
	}
	for _, ev := range rest[:len(rest)-1] {
		if ev.state != "running" {
			t.Errorf("event %d before the final one is %s", ev.id, ev.state)
		}
	}

	// Resuming after the final status: 204, nothing more will come.
	done := e.openSSE(ctx, "streamed", strconv.FormatUint(last.id, 10))
	done.Body.Close()
	if done.StatusCode != http.StatusNoContent {
		t.Errorf("after the final event: %d", done.StatusCode)
	}
	// A new connection from the start gets the final status only once.
	whole := e.openSSE(ctx, "streamed", "")
	all := wfSSEEvents(t, oaSSE(t, whole.Body, -1))
	whole.Body.Close()
	if len(all) != 1 || all[0].id != last.id || all[0].state != "completed" {
		t.Errorf("a stream of a finished instance: %+v", all)
	}
	resp, data = e.do("GET", "/v1/instances/streamed/events", map[string]string{"Last-Event-ID": "x"}, "")
	wantProblem(t, resp, data, http.StatusBadRequest, "invalid-last-event-id", "")
}

// TestWorkflowRepeatedStart: starting one id many times, concurrently,
// makes one instance, run once; every answer names it.
func TestWorkflowRepeatedStart(t *testing.T) {
	t.Parallel()
	e := newWorkflowEnv(t, gateway.Config{})
	const ids, repeats = 5, 8
	var wg sync.WaitGroup
	answers := make(chan string, ids*repeats)
	for i := range ids {
		for j := range repeats {
			wg.Go(func() {
				// The same input every time; a repeat's input is ignored anyway.
				req, _ := http.NewRequest("POST", fmt.Sprintf("%s/v1/workflows/approval/instances?id=same-%d", e.URL, i),
					strings.NewReader(fmt.Sprintf(`{"id":"d%d","text":"%d"}`, i, j)))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					answers <- err.Error()
					return
				}
				resp.Body.Close()
				answers <- fmt.Sprintf("%d %s", resp.StatusCode, resp.Header.Get("Location"))
			})
		}
	}
	wg.Wait()
	close(answers)
	count := map[string]int{}
	for a := range answers {
		count[a]++
	}
	for i := range ids {
		if c := count[fmt.Sprintf("202 /v1/instances/same-%d", i)]; c != repeats {
			t.Errorf("same-%d: %d of %d starts answered 202 with its Location (answers %v)", i, c, repeats, count)
		}
	}
	for i := range ids {
		e.awaitWaiting(fmt.Sprintf("same-%d", i))
	}
	_, data := e.do("GET", "/v1/instances?name=approval", nil, "")
	var list struct {
		Instances []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"instances"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, in := range list.Instances {
		got[in.ID]++
	}
	if len(list.Instances) != ids || len(got) != ids {
		t.Errorf("listed %s; want %d instances, each once", data, ids)
	}
	// Repeating a start again now returns the running instance.
	resp, data := e.do("POST", "/v1/workflows/approval/instances?id=same-0", jsonHdr, `{"id":"other"}`)
	if st := decode(t, data); resp.StatusCode != http.StatusAccepted || st["id"] != "same-0" || st["state"] != "running" {
		t.Errorf("start again: %d %s", resp.StatusCode, data)
	}
	for i := range ids {
		id := fmt.Sprintf("same-%d", i)
		if resp, data := e.do("POST", "/v1/instances/"+id+"/events/ApprovalReceived", jsonHdr, `"Approved"`); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("raise %s: %d %s", id, resp.StatusCode, data)
		}
	}
	for i := range ids {
		e.awaitFinal(fmt.Sprintf("same-%d", i))
	}
	if e.reviews.Load() != ids || e.publish.Load() != ids {
		t.Errorf("%d reviews and %d publications for %d instances", e.reviews.Load(), e.publish.Load(), ids)
	}
	// A finished instance started again is returned as it is.
	resp, data = e.do("POST", "/v1/workflows/approval/instances?id=same-0", jsonHdr, `{"id":"d0"}`)
	if st := decode(t, data); resp.StatusCode != http.StatusAccepted || st["state"] != "completed" {
		t.Errorf("start of a finished id: %d %s", resp.StatusCode, data)
	}
}

// TestWorkflowErrors: each bad input and state, with its status and
// problem.
func TestWorkflowErrors(t *testing.T) {
	t.Parallel()
	e := newWorkflowEnv(t, gateway.Config{MaxBodySize: 1024})
	start := func(query, body string) (*http.Response, []byte) {
		t.Helper()
		return e.do("POST", "/v1/workflows/approval/instances"+query, jsonHdr, body)
	}
	doc := `{"id":"d","text":"t"}`
	cases := []struct {
		name         string
		method, path string
		body         string
		status       int
		slug, code   string
	}{
		{"unknown workflow", "POST", "/v1/workflows/nope/instances", doc, 404, "unknown-workflow", "unknown_workflow"},
		{"unknown version", "POST", "/v1/workflows/approval/instances?version=7", doc, 404, "unknown-workflow", "unknown_workflow"},
		{"input not JSON", "POST", "/v1/workflows/approval/instances", `{"id":`, 400, "bad-input", "bad_input"},
		{"input of the wrong type", "POST", "/v1/workflows/approval/instances", `"just text"`, 400, "bad-input", "bad_input"},
		{"bad instance id", "POST", "/v1/workflows/approval/instances?id=a%20b", doc, 400, "invalid-instance-id", ""},
		{"empty instance id", "POST", "/v1/workflows/approval/instances?id=", doc, 400, "invalid-instance-id", ""},
		{"too long instance id", "POST", "/v1/workflows/approval/instances?id=" + strings.Repeat("x", 65), doc, 400, "invalid-instance-id", ""},
		{"bad version", "POST", "/v1/workflows/approval/instances?version=first", doc, 400, "invalid-request", ""},
		{"bad workflow name", "POST", "/v1/workflows/a.b/instances", doc, 400, "invalid-workflow", ""},
		{"body too large", "POST", "/v1/workflows/approval/instances", `"` + strings.Repeat("x", 2000) + `"`, 413, "too-large", ""},
		{"unknown instance", "GET", "/v1/instances/nope", "", 404, "unknown-instance", ""},
		{"impossible instance id", "GET", "/v1/instances/a.b", "", 404, "unknown-instance", ""},
		{"result of an unknown instance", "GET", "/v1/instances/nope/result", "", 404, "unknown-instance", ""},
		{"event to an unknown instance", "POST", "/v1/instances/nope/events/ApprovalReceived", `"Approved"`, 404, "unknown-instance", ""},
		{"terminate an unknown instance", "POST", "/v1/instances/nope/terminate", "", 404, "unknown-instance", ""},
		{"stream of an unknown instance", "GET", "/v1/instances/nope/events", "", 404, "unknown-instance", ""},
		{"bad wait", "GET", "/v1/instances/nope?wait=soon", "", 400, "invalid-wait", ""},
		{"bad state", "GET", "/v1/instances?state=done", "", 400, "invalid-request", ""},
		{"bad limit", "GET", "/v1/instances?limit=0", "", 400, "invalid-request", ""},
		{"bad name", "GET", "/v1/instances?name=a.b", "", 400, "invalid-request", ""},
		{"method not allowed", "PUT", "/v1/instances/x", "", 405, "method-not-allowed", ""},
	}
	for _, c := range cases {
		resp, data := e.do(c.method, c.path, jsonHdr, c.body)
		wantProblem(t, resp, data, c.status, c.slug, c.code)
	}
	if resp, _ := e.do("PUT", "/v1/instances/x", nil, ""); resp.Header.Get("Allow") != "GET, DELETE" {
		t.Errorf("Allow %q", resp.Header.Get("Allow"))
	}

	// A running instance: no purge, events with a bad body refused,
	// terminate once.
	if resp, data := start("?id=running", doc); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start: %d %s", resp.StatusCode, data)
	}
	resp, data := e.do("DELETE", "/v1/instances/running", nil, "")
	wantProblem(t, resp, data, http.StatusConflict, "instance-running", "instance_running")
	resp, data = e.do("POST", "/v1/instances/running/events/ApprovalReceived", jsonHdr, `Approved`)
	wantProblem(t, resp, data, http.StatusBadRequest, "bad-input", "bad_input")
	resp, data = e.do("POST", "/v1/instances/running/events/ApprovalReceived?event_id="+strings.Repeat("e", 257), jsonHdr, `"x"`)
	wantProblem(t, resp, data, http.StatusBadRequest, "invalid-request", "")
	resp, data = e.do("POST", "/v1/instances/running/terminate?reason=changed+my+mind", nil, "")
	if st := decode(t, data); resp.StatusCode != http.StatusAccepted || st["state"] != "terminated" {
		t.Fatalf("terminate: %d %s", resp.StatusCode, data)
	}
	resp, data = e.do("POST", "/v1/instances/running/terminate", nil, "")
	wantProblem(t, resp, data, http.StatusConflict, "instance-finished", "instance_finished")
	resp, data = e.do("GET", "/v1/instances/running/result", nil, "")
	wantProblem(t, resp, data, http.StatusGone, "instance-terminated", "terminated")
	if p := decode(t, data); !strings.Contains(fmt.Sprint(p["detail"]), "changed my mind") {
		t.Errorf("the termination's problem does not give the reason: %s", data)
	}
	if resp, data := e.do("DELETE", "/v1/instances/running", nil, ""); resp.StatusCode != http.StatusNoContent {
		t.Errorf("purge of a terminated instance: %d %s", resp.StatusCode, data)
	}

	// A failed instance: 502 with the failure's code and message.
	if resp, data := e.do("POST", "/v1/workflows/fails/instances?id=failing", nil, ""); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start: %d %s", resp.StatusCode, data)
	}
	e.awaitFinal("failing")
	resp, data = e.do("GET", "/v1/instances/failing/result", nil, "")
	wantProblem(t, resp, data, http.StatusBadGateway, "instance-failed", workflow.CodeFailed)
	if p := decode(t, data); !strings.Contains(fmt.Sprint(p["detail"]), "it had to fail") || p["instance"] != "/v1/instances/failing" {
		t.Errorf("failure problem %s", data)
	}

	// An id taken by another workflow's instance.
	resp, data = start("?id=failing", doc)
	wantProblem(t, resp, data, http.StatusConflict, "instance-id-taken", "")
}

// TestWorkflowRights: a workflow is guarded as the queue of its name.
func TestWorkflowRights(t *testing.T) {
	t.Parallel()
	keys := []gateway.APIKey{
		{Tenant: "acme", SHA256: gateway.HashKey("approver"), Grants: []gateway.Grant{{Queue: "approval", Rights: []string{"send"}}}},
		{Tenant: "acme", SHA256: gateway.HashKey("other"), Grants: []gateway.Grant{{Queue: "fails", Rights: []string{"send"}}}},
		{Tenant: "ops", SHA256: gateway.HashKey("admin"), Grants: []gateway.Grant{{Queue: "*", Rights: []string{"admin"}}}},
	}
	e := newWorkflowEnv(t, gateway.Config{Keys: keys})
	as := func(key string) map[string]string {
		return map[string]string{"Authorization": "Bearer " + key, "Content-Type": "application/json"}
	}
	resp, data := e.do("POST", "/v1/workflows/approval/instances?id=guarded", nil, `{"id":"g"}`)
	wantProblem(t, resp, data, http.StatusUnauthorized, "unauthenticated", "")
	resp, data = e.do("POST", "/v1/workflows/approval/instances?id=guarded", as("other"), `{"id":"g"}`)
	wantProblem(t, resp, data, http.StatusForbidden, "forbidden", "")
	resp, data = e.do("POST", "/v1/workflows/approval/instances?id=guarded", as("approver"), `{"id":"g"}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start with the right: %d %s", resp.StatusCode, data)
	}
	for _, path := range []string{"/v1/instances/guarded", "/v1/instances/guarded/result", "/v1/instances/guarded/events"} {
		resp, data = e.do("GET", path, as("other"), "")
		wantProblem(t, resp, data, http.StatusNotFound, "unknown-instance", "")
	}
	resp, data = e.do("POST", "/v1/instances/guarded/events/ApprovalReceived", as("other"), `"Approved"`)
	wantProblem(t, resp, data, http.StatusNotFound, "unknown-instance", "")
	resp, data = e.do("GET", "/v1/instances?name=approval", as("other"), "")
	wantProblem(t, resp, data, http.StatusForbidden, "forbidden", "")
	if _, data = e.do("GET", "/v1/instances", as("other"), ""); strings.Contains(string(data), "guarded") {
		t.Errorf("the list of a key without the right shows the instance: %s", data)
	}
	if _, data = e.do("GET", "/v1/instances", as("approver"), ""); !strings.Contains(string(data), `"id":"guarded"`) {
		t.Errorf("the list of a key with the right lacks the instance: %s", data)
	}
	// The admin right of another tenant sees and ends it: instances are
	// not scoped to tenants.
	if resp, data = e.do("GET", "/v1/instances/guarded?redirect=false", as("admin"), ""); resp.StatusCode != http.StatusOK {
		t.Errorf("admin reads: %d %s", resp.StatusCode, data)
	}
	if resp, data = e.do("POST", "/v1/instances/guarded/terminate", as("admin"), ""); resp.StatusCode != http.StatusAccepted {
		t.Errorf("admin terminates: %d %s", resp.StatusCode, data)
	}
}

// TestWorkflowsDisabled: without Config.Workflows the routes answer 404.
func TestWorkflowsDisabled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, gateway.Config{})
	for _, c := range []struct{ method, path string }{
		{"POST", "/v1/workflows/approval/instances"}, {"GET", "/v1/instances"}, {"GET", "/v1/instances/x"},
		{"GET", "/v1/instances/x/result"}, {"GET", "/v1/instances/x/events"}, {"POST", "/v1/instances/x/events/e"},
		{"POST", "/v1/instances/x/terminate"}, {"DELETE", "/v1/instances/x"},
	} {
		resp, data := e.do(c.method, c.path, nil, "")
		wantProblem(t, resp, data, http.StatusNotFound, "workflows-disabled", "")
	}
}

// TestWorkflowIDTakenHidesTheOtherWorkflow: starting an instance with an
// id that an instance of a workflow the key has no right on holds is 409,
// as the API says, but the answer does not name that workflow, which the
// key cannot read (its instance is 404 to it).
func TestWorkflowIDTakenHidesTheOtherWorkflow(t *testing.T) {
	t.Parallel()
	keys := []gateway.APIKey{
		{Tenant: "acme", SHA256: gateway.HashKey("approver"), Grants: []gateway.Grant{{Queue: "approval", Rights: []string{"send"}}}},
		{Tenant: "globex", SHA256: gateway.HashKey("failer"), Grants: []gateway.Grant{{Queue: "fails", Rights: []string{"send"}}}},
		{Tenant: "acme", SHA256: gateway.HashKey("both"), Grants: []gateway.Grant{{Queue: "*", Rights: []string{"send"}}}},
	}
	e := newWorkflowEnv(t, gateway.Config{Keys: keys})
	as := func(key string) map[string]string {
		return map[string]string{"Authorization": "Bearer " + key, "Content-Type": "application/json"}
	}
	if resp, data := e.do("POST", "/v1/workflows/fails/instances?id=payroll-7", as("failer"), ""); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start: %d %s", resp.StatusCode, data)
	}
	resp, data := e.do("GET", "/v1/instances/payroll-7", as("approver"), "")
	wantProblem(t, resp, data, http.StatusNotFound, "unknown-instance", "")
	resp, data = e.do("POST", "/v1/workflows/approval/instances?id=payroll-7", as("approver"), `{"id":"d"}`)
	wantProblem(t, resp, data, http.StatusConflict, "instance-id-taken", "")
	if strings.Contains(string(data), "fails") {
		t.Errorf("the conflict names the workflow of an instance the key cannot see: %s", data)
	}
	// A key with the right on both is told which workflow holds the id.
	resp, data = e.do("POST", "/v1/workflows/approval/instances?id=payroll-7", as("both"), `{"id":"d"}`)
	wantProblem(t, resp, data, http.StatusConflict, "instance-id-taken", "")
	if !strings.Contains(string(data), "fails") {
		t.Errorf("the conflict does not name the workflow to a key that may see it: %s", data)
	}
}

// TestWorkflowEventStreamResumedAtTheLatestStatus: a stream resumed with
// the position of the instance's current status sends only changes after
// it that a client sees: the history growing by entries the status does
// not show (an external event recorded, an activity called) sends nothing,
// as it does not on a stream that was never cut.
func TestWorkflowEventStreamResumedAtTheLatestStatus(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	en := newEnvWith(t, mustEmbedded(t), gateway.Config{}, func(c *rsvp.Client) (*workflow.Engine, error) {
		e, err := workflow.New(c, workflow.Config{SweepInterval: 500 * time.Millisecond})
		if err != nil {
			return nil, err
		}
		return e, workflow.Register(e, "held", func(ctx workflow.Context, in any) (string, error) {
			if err := workflow.SetCustomStatus(ctx, "waiting"); err != nil {
				return "", err
			}
			v, err := workflow.WaitForEvent[string](ctx, "go", 0)
			if err != nil {
				return "", err
			}
			return workflow.CallActivity[string](ctx, "held-work", wfDoc{ID: v}, workflow.ActivityOptions{}).Get(ctx)
		})
	})
	e := &wfEnv{env: en}
	called := make(chan struct{}, 1)
	e.typed("held-work", func(ctx context.Context, d wfDoc) (string, error) {
		select {
		case called <- struct{}{}:
		default:
		}
		select {
		case <-release:
			return "done", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	})
	if resp, data := e.do("POST", "/v1/workflows/held/instances?id=held-1", jsonHdr, `null`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start: %d %s", resp.StatusCode, data)
	}
	var position float64
	eventually(t, 20*time.Second, "the instance waits for its event", func() bool {
		_, data := e.do("GET", "/v1/instances/held-1", nil, "")
		st := decode(t, data)
		position, _ = st["position"].(float64)
		return st["custom_status"] == "waiting"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream := e.openSSE(ctx, "held-1", strconv.FormatUint(uint64(position), 10))
	defer stream.Body.Close()
	if stream.StatusCode != http.StatusOK {
		t.Fatalf("resumed stream: %d", stream.StatusCode)
	}
	if resp, data := e.do("POST", "/v1/instances/held-1/events/go", jsonHdr, `"x"`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("raise: %d %s", resp.StatusCode, data)
	}
	select {
	case <-called: // the event and the call are in the history; the status shows neither
	case <-ctx.Done():
		t.Fatal("the activity was not called")
	}
	close(release)
	evs := wfSSEEvents(t, oaSSE(t, stream.Body, -1))
	var got []string
	for _, ev := range evs {
		got = append(got, fmt.Sprintf("%d %s %v", ev.id, ev.state, ev.data["custom_status"]))
	}
	if len(evs) != 1 || evs[0].state != "completed" {
		t.Errorf("stream resumed at position %v, the running status's: %v; want the completed status only", position, got)
	}
}

func mustEmbedded(t *testing.T) *rsvpnats.Backend {
	t.Helper()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWorkflowEventStreamFutureCursor: a cursor after the instance's
// position, which no event of its stream has had, is refused (400
// invalid-last-event-id), as a request stream refuses one that names none
// of its events: while the instance runs (the stream would send nothing
// until the history passed it) and once it has finished (204 would tell
// the client it had seen the end).
func TestWorkflowEventStreamFutureCursor(t *testing.T) {
	t.Parallel()
	e := newWorkflowEnv(t, gateway.Config{})
	if resp, data := e.do("POST", "/v1/workflows/approval/instances?id=ahead", jsonHdr, `{"id":"a","text":"x"}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start: %d %s", resp.StatusCode, data)
	}
	e.awaitWaiting("ahead")
	position := func() uint64 {
		_, data := e.do("GET", "/v1/instances/ahead?redirect=false", nil, "")
		p, _ := decode(t, data)["position"].(float64)
		return uint64(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	refused := func(when string, cursor uint64) {
		t.Helper()
		for _, query := range []bool{false, true} {
			req, err := http.NewRequestWithContext(ctx, "GET", e.URL+"/v1/instances/ahead/events", nil)
			if err != nil {
				t.Fatal(err)
			}
			if query {
				req.URL.RawQuery = "last_event_id=" + strconv.FormatUint(cursor, 10)
			} else {
				req.Header.Set("Last-Event-ID", strconv.FormatUint(cursor, 10))
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusBadRequest {
				resp.Body.Close() // not read: a stream would not end
				t.Errorf("%s, cursor %d after the instance's position %d (in the query: %v): %d %s, want 400 invalid-last-event-id",
					when, cursor, cursor-1000, query, resp.StatusCode, resp.Header.Get("Content-Type"))
				continue
			}
			data, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			wantProblem(t, resp, data, http.StatusBadRequest, "invalid-last-event-id", "")
		}
	}
	refused("running", position()+1000)

	if resp, data := e.do("POST", "/v1/instances/ahead/events/ApprovalReceived", jsonHdr, `"Approved"`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("raise: %d %s", resp.StatusCode, data)
	}
	e.awaitFinal("ahead")
	final := position()
	refused("finished", final+1000)
	// The final status's own position still ends the stream (204).
	done := e.openSSE(ctx, "ahead", strconv.FormatUint(final, 10))
	done.Body.Close()
	if done.StatusCode != http.StatusNoContent {
		t.Errorf("resumed at the final status: %d, want 204", done.StatusCode)
	}
}
