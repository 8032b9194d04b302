package server_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/internal/server"
)

// finalStatus long-polls the status of instance id on r until it has
// finished, and returns the answer (a 303 to the result).
func finalStatus(t *testing.T, r *running, id string) (*http.Response, map[string]any) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		resp, body := do(t, "GET", r.url+"/v1/instances/"+id+"?wait=5s", nil, "")
		switch resp.StatusCode {
		case http.StatusSeeOther:
			var st map[string]any
			if err := json.Unmarshal([]byte(body), &st); err != nil {
				t.Fatal(err)
			}
			return resp, st
		case http.StatusOK:
		default:
			t.Fatalf("status of %s: %s %s", id, resp.Status, body)
		}
	}
	t.Fatalf("%s did not finish in time", id)
	return nil, nil
}

// TestDemoApprovalWorkflow runs the demo approval workflow over HTTP, as
// the curl lines of DemoHelp do.
func TestDemoApprovalWorkflow(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{Demo: true})
	js := map[string]string{"Content-Type": "application/json"}

	resp, body := do(t, "POST", r.url+"/v1/workflows/approval/instances?id=doc-1", js, `{"id":"doc-1","text":"The quarterly report."}`)
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Location") != "/v1/instances/doc-1" {
		t.Fatalf("start: %s %s", resp.Status, body)
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		_, body = do(t, "GET", r.url+"/v1/instances/doc-1", nil, "")
		if strings.Contains(body, "awaiting approval") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not awaiting approval in time: %s", body)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, with a deadline
	}
	if !strings.Contains(body, `doc-1: 3 words, looks fine`) {
		t.Errorf("the status does not show the review: %s", body)
	}
	resp, body = do(t, "POST", r.url+"/v1/instances/doc-1/events/ApprovalReceived", js, `"Approved"`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("raise: %s %s", resp.Status, body)
	}
	resp, st := finalStatus(t, r, "doc-1")
	if resp.Header.Get("Location") != "/v1/instances/doc-1/result" || st["state"] != "completed" {
		t.Errorf("final status: %v %v", resp.Header, st)
	}
	resp, body = do(t, "GET", r.url+"/v1/instances/doc-1/result", nil, "")
	if resp.StatusCode != http.StatusOK || body != `"published doc-1 at https://example.com/docs/doc-1"` {
		t.Errorf("result: %s %s", resp.Status, body)
	}

	// Rejected, and bad starts.
	do(t, "POST", r.url+"/v1/workflows/approval/instances?id=doc-2", js, `{"id":"doc-2","text":"x"}`)
	resp, body = do(t, "POST", r.url+"/v1/instances/doc-2/events/ApprovalReceived", js, `"Not now"`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("raise: %s %s", resp.Status, body)
	}
	finalStatus(t, r, "doc-2")
	if _, body = do(t, "GET", r.url+"/v1/instances/doc-2/result", nil, ""); body != `"rejected: Not now"` {
		t.Errorf("result of the rejection: %s", body)
	}
	if resp, body = do(t, "POST", r.url+"/v1/workflows/aproval/instances", js, `{}`); resp.StatusCode != http.StatusNotFound ||
		!strings.Contains(body, `"code":"unknown_workflow"`) {
		t.Errorf("unknown workflow: %s %s", resp.Status, body)
	}
	if resp, body = do(t, "POST", r.url+"/v1/workflows/approval/instances", js, `["not","a","document"]`); resp.StatusCode != http.StatusBadRequest ||
		!strings.Contains(body, `"code":"bad_input"`) {
		t.Errorf("bad input: %s %s", resp.Status, body)
	}
}

// TestDemoThumbnailsWorkflow runs the fan-out demo: a thumbnail per image.
func TestDemoThumbnailsWorkflow(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{Demo: true})
	resp, body := do(t, "POST", r.url+"/v1/workflows/thumbnails/instances?id=thumbs-1", map[string]string{"Content-Type": "application/json"},
		`["https://example.com/a.png","https://example.com/b.png","https://example.com/c.png"]`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start: %s %s", resp.Status, body)
	}
	begun := time.Now()
	finalStatus(t, r, "thumbs-1")
	resp, body = do(t, "GET", r.url+"/v1/instances/thumbs-1/result", nil, "")
	want := `["https://example.com/a.png?size=128","https://example.com/b.png?size=128","https://example.com/c.png?size=128"]`
	if resp.StatusCode != http.StatusOK || body != want {
		t.Errorf("result: %s %s, want %s", resp.Status, body, want)
	}
	if d := time.Since(begun); d > 3*server.DemoWork+2*time.Second {
		t.Logf("three thumbnails took %s: not in parallel?", d) // a hint only: CI machines are slow
	}
}

// TestWorkflowsWithoutDemo: without the demo the server starts instances
// of workflows it does not run (for worker processes), and runs none.
func TestWorkflowsWithoutDemo(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{})
	resp, body := do(t, "POST", r.url+"/v1/workflows/elsewhere/instances?id=e-1", nil, `{"any":"json"}`)
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(body, `"state":"running"`) {
		t.Fatalf("start of an unregistered workflow: %s %s", resp.Status, body)
	}
	if resp, body = do(t, "POST", r.url+"/v1/workflows/elsewhere/instances", nil, `not json`); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("input not JSON: %s %s", resp.Status, body)
	}
	// Nobody runs it: it waits for a worker (no engine here took it and
	// failed it as unknown).
	time.Sleep(300 * time.Millisecond) // give a wrongly running engine the time to fail it
	resp, body = do(t, "GET", r.url+"/v1/instances/e-1", nil, "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"state":"running"`) {
		t.Errorf("status: %s %s", resp.Status, body)
	}
	if resp, body = do(t, "POST", r.url+"/v1/instances/e-1/terminate", nil, ""); resp.StatusCode != http.StatusAccepted {
		t.Errorf("terminate: %s %s", resp.Status, body)
	}
}
