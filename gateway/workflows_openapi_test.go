package gateway_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/gateway"
)

// TestOpenAPIWorkflowResponses validates the answers of the workflow API
// against docs/openapi.yaml: each route, its successes and its errors,
// and the data of its event stream.
func TestOpenAPIWorkflowResponses(t *testing.T) {
	t.Parallel()
	s := loadOpenAPI(t)
	e := newWorkflowEnv(t, gateway.Config{MaxBodySize: 256})
	js := map[string]string{"Content-Type": "application/json"}
	doc := `{"id":"doc-1","text":"hello"}`

	// Start, and start again.
	resp, _ := s.call(t, e.env, 202, "POST", "/v1/workflows/approval/instances?id=oa-1", js, doc)
	if resp.Header.Get("Location") != "/v1/instances/oa-1" {
		t.Errorf("Location %q", resp.Header.Get("Location"))
	}
	s.call(t, e.env, 202, "POST", "/v1/workflows/approval/instances?id=oa-1&version=1", js, doc)
	_, data := s.call(t, e.env, 202, "POST", "/v1/workflows/approval/instances", js, doc) // a new id
	other := decode(t, data)["id"].(string)
	s.call(t, e.env, 404, "POST", "/v1/workflows/nope/instances", js, doc)
	s.call(t, e.env, 400, "POST", "/v1/workflows/approval/instances", js, `"text"`)
	s.callBad(t, e.env, 400, "POST", "/v1/workflows/approval/instances?id=a%20b", js, doc)
	s.call(t, e.env, 413, "POST", "/v1/workflows/approval/instances", js, `"`+strings.Repeat("x", 300)+`"`)

	// Status, long-poll, result while running, the stream's first event.
	e.awaitWaiting("oa-1")
	s.call(t, e.env, 200, "GET", "/v1/instances/oa-1", nil, "")
	s.call(t, e.env, 200, "GET", "/v1/instances/oa-1?wait=1", nil, "")
	s.call(t, e.env, 409, "GET", "/v1/instances/oa-1/result", nil, "")
	s.call(t, e.env, 404, "GET", "/v1/instances/nope", nil, "")
	s.callBad(t, e.env, 400, "GET", "/v1/instances/oa-1?wait=soon", nil, "")
	s.call(t, e.env, 200, "GET", "/v1/instances", nil, "")
	s.call(t, e.env, 200, "GET", "/v1/instances?name=approval&state=running&limit=5", nil, "")
	s.callBad(t, e.env, 400, "GET", "/v1/instances?state=done", nil, "")
	s.call(t, e.env, 409, "DELETE", "/v1/instances/oa-1", nil, "")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", e.URL+"/v1/instances/oa-1/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.checkRequest(req, ""); err != nil {
		t.Error(err)
	}
	sresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	evs := oaSSE(t, sresp.Body, 1)
	cancel()
	sresp.Body.Close()
	if err := s.checkResponse(req, sresp, nil); err != nil {
		t.Error(err)
	}

	// Raise the decision: completed.
	s.call(t, e.env, 202, "POST", "/v1/instances/oa-1/events/ApprovalReceived", map[string]string{"Content-Type": "application/json", "Idempotency-Key": "d-1"}, `"Approved"`)
	s.callBad(t, e.env, 400, "POST", "/v1/instances/oa-1/events/ApprovalReceived", js, `Approved`)
	s.call(t, e.env, 404, "POST", "/v1/instances/nope/events/ApprovalReceived", js, `"Approved"`)
	e.awaitFinal("oa-1")
	s.call(t, e.env, 303, "GET", "/v1/instances/oa-1", nil, "")
	s.call(t, e.env, 200, "GET", "/v1/instances/oa-1?redirect=false", nil, "")
	s.call(t, e.env, 200, "GET", "/v1/instances/oa-1/result", nil, "")
	s.call(t, e.env, 409, "POST", "/v1/instances/oa-1/events/ApprovalReceived?event_id=d-2", js, `"Approved"`)
	s.call(t, e.env, 409, "POST", "/v1/instances/oa-1/terminate", nil, "")
	_, data = s.call(t, e.env, 200, "GET", "/v1/instances/oa-1/events", nil, "")
	evs = append(evs, oaSSE(t, bytes.NewReader(data), -1)...)
	s.call(t, e.env, 204, "GET", "/v1/instances/oa-1/events", map[string]string{"Last-Event-ID": evs[len(evs)-1]["id"]}, "")
	for _, ev := range evs {
		if err := s.checkSchema("InstanceStatus", []byte(ev["data"])); err != nil {
			t.Error(err)
		}
	}

	// Terminate the other: 410; a failed one: 502; purge both.
	s.call(t, e.env, 202, "POST", "/v1/instances/"+other+"/terminate?reason=test", nil, "")
	s.call(t, e.env, 410, "GET", "/v1/instances/"+other+"/result", nil, "")
	s.call(t, e.env, 202, "POST", "/v1/workflows/fails/instances?id=oa-fails", js, "")
	e.awaitFinal("oa-fails")
	s.call(t, e.env, 502, "GET", "/v1/instances/oa-fails/result", nil, "")
	s.call(t, e.env, 200, "GET", "/v1/instances/oa-fails?redirect=false", nil, "")
	s.call(t, e.env, 204, "DELETE", "/v1/instances/"+other, nil, "")
	s.call(t, e.env, 204, "DELETE", "/v1/instances/oa-fails", nil, "")
	s.call(t, e.env, 404, "DELETE", "/v1/instances/oa-fails", nil, "")
	s.call(t, e.env, 404, "POST", "/v1/instances/oa-fails/terminate", nil, "")
	s.call(t, e.env, 404, "GET", "/v1/instances/oa-fails/events", nil, "")
	s.call(t, e.env, 404, "GET", "/v1/instances/oa-fails/result", nil, "")

	// Without a workflow engine, and without a key.
	plain := newEnv(t, gateway.Config{})
	s.call(t, plain, 404, "GET", "/v1/instances", nil, "")
	s.call(t, plain, 404, "POST", "/v1/workflows/approval/instances", js, doc)
	keyed := newWorkflowEnv(t, gateway.Config{Keys: []gateway.APIKey{{Tenant: "a", SHA256: gateway.HashKey("k"),
		Grants: []gateway.Grant{{Queue: "fails", Rights: []string{"send"}}}}}})
	s.call(t, keyed.env, 401, "GET", "/v1/instances/x", nil, "")
	s.call(t, keyed.env, 403, "POST", "/v1/workflows/approval/instances", map[string]string{"Authorization": "Bearer k", "Content-Type": "application/json"}, doc)
	s.call(t, keyed.env, 403, "GET", "/v1/instances?name=approval", map[string]string{"Authorization": "Bearer k"}, "")
}
