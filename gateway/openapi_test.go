package gateway_test

// The contract test of docs/openapi.yaml: the document is valid OpenAPI
// 3.1, it describes every route the gateway serves, and real responses of a
// running gateway — bodies, status codes and headers — validate against it.
// Validation is strict: a response member or header the document does not
// declare is an error too, so the document cannot silently fall behind the
// code.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/config"
	valerrors "github.com/pb33f/libopenapi-validator/errors"
	"github.com/pb33f/libopenapi-validator/helpers"
	"github.com/pb33f/libopenapi-validator/paths"
	"github.com/pb33f/libopenapi-validator/schema_validation"
	"github.com/pb33f/libopenapi/datamodel/high/base"
	v3 "github.com/pb33f/libopenapi/datamodel/high/v3"
	"github.com/pb33f/libopenapi/orderedmap"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/gateway"
)

const openAPIPath = "../docs/openapi.yaml"

// oaSpec is the loaded document with its validators.
type oaSpec struct {
	model   *v3.Document
	v       validator.Validator
	schemas schema_validation.SchemaValidator
}

// oaOptions are the validation options: formats (date-time, uri) are
// checked, and undeclared parameters and headers are errors. Undeclared
// members of bodies are found by undeclared below instead of the
// library's strict mode, which also refuses the members of free-form
// values (progress, results, event data) and does not follow a $ref that
// has a description beside it. X-Content-Type-Options is on every
// response: the document says so once, in its introduction, and
// checkResponse checks it instead.
func oaOptions() []config.Option {
	return []config.Option{config.WithFormatAssertions(), config.WithStrictMode(), config.WithStrictIgnorePaths("$.body", "$.body.**"),
		config.WithStrictIgnoredHeadersExtra("x-content-type-options")}
}

func loadOpenAPI(t *testing.T) *oaSpec {
	t.Helper()
	spec, err := os.ReadFile(openAPIPath)
	if err != nil {
		t.Fatal(err)
	}
	return loadOpenAPIBytes(t, spec)
}

func loadOpenAPIBytes(t *testing.T, spec []byte) *oaSpec {
	t.Helper()
	doc, err := libopenapi.NewDocument(spec)
	if err != nil {
		t.Fatalf("parse %s: %v", openAPIPath, err)
	}
	if v := doc.GetVersion(); v != "3.1.0" {
		t.Fatalf("openapi version %q, want 3.1.0", v)
	}
	m, err := doc.BuildV3Model()
	if err != nil {
		t.Fatalf("build model of %s: %v", openAPIPath, err)
	}
	v, errs := validator.NewValidator(doc, oaOptions()...)
	if len(errs) > 0 {
		t.Fatalf("validator: %v", errs)
	}
	return &oaSpec{model: &m.Model, v: v, schemas: schema_validation.NewSchemaValidator(oaOptions()...)}
}

// oaDescribe formats validation errors, one per line.
func oaDescribe(errs []*valerrors.ValidationError) string {
	var b strings.Builder
	for _, e := range errs {
		fmt.Fprintf(&b, "\n  - %s: %s", e.Message, e.Reason)
		for _, s := range e.SchemaValidationErrors {
			fmt.Fprintf(&b, "\n      %s (at %s %s)", s.Reason, s.KeywordLocation, s.FieldPath)
		}
	}
	return b.String()
}

// checkResponse validates a response, with its body data, to req.
func (s *oaSpec) checkResponse(req *http.Request, resp *http.Response, data []byte) error {
	r := *resp
	r.Body = io.NopCloser(bytes.NewReader(data))
	r.Request = req
	if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		return fmt.Errorf("%s %s → %d: X-Content-Type-Options %q; docs/openapi.yaml says every response is nosniff",
			req.Method, req.URL.RequestURI(), resp.StatusCode, got)
	}
	if ok, errs := s.v.ValidateHttpResponse(req, &r); !ok {
		return fmt.Errorf("%s %s → %d: response does not match docs/openapi.yaml:%s\nbody: %s",
			req.Method, req.URL.RequestURI(), resp.StatusCode, oaDescribe(errs), oaCut(data))
	}
	if schema := s.bodySchema(req, resp.StatusCode, resp.Header.Get("Content-Type")); schema != nil {
		return s.checkMembers(schema, data, fmt.Sprintf("the %d response of %s %s", resp.StatusCode, req.Method, req.URL.Path))
	}
	return nil
}

// bodySchema returns the schema of a JSON body: of the request's (code 0)
// or of its response with code, as the document gives it. Nil: no JSON, or
// not documented (the validator reports that).
func (s *oaSpec) bodySchema(req *http.Request, code int, contentType string) *base.SchemaProxy {
	if !strings.Contains(contentType, "json") {
		return nil
	}
	item, _, _ := paths.FindPath(req, s.model, config.NewValidationOptions())
	if item == nil {
		return nil
	}
	op := item.GetOperations().GetOrZero(strings.ToLower(req.Method))
	if op == nil {
		return nil
	}
	var content *orderedmap.Map[string, *v3.MediaType]
	if code == 0 {
		if op.RequestBody == nil {
			return nil
		}
		content = op.RequestBody.Content
	} else if op.Responses != nil {
		r := op.Responses.Codes.GetOrZero(strconv.Itoa(code))
		if r == nil {
			r = op.Responses.Default
		}
		if r == nil {
			return nil
		}
		content = r.Content
	}
	mt, ok := helpers.FindMediaType(content, contentType)
	if !ok || mt.Schema == nil {
		return nil
	}
	return mt.Schema
}

// checkRequest validates a request the test sends, body included.
func (s *oaSpec) checkRequest(req *http.Request, body string) error {
	r := req.Clone(req.Context())
	r.Body = io.NopCloser(strings.NewReader(body))
	if ok, errs := s.v.ValidateHttpRequestSync(r); !ok {
		return fmt.Errorf("%s %s: the test's request does not match docs/openapi.yaml:%s", req.Method, req.URL.RequestURI(), oaDescribe(errs))
	}
	if schema := s.bodySchema(req, 0, req.Header.Get("Content-Type")); schema != nil && body != "" {
		return s.checkMembers(schema, []byte(body), fmt.Sprintf("the request body of %s %s", req.Method, req.URL.Path))
	}
	return nil
}

// checkSchema validates a JSON value against components/schemas/name,
// strictly (undeclared members are errors).
func (s *oaSpec) checkSchema(name string, data []byte) error {
	proxy := s.model.Components.Schemas.GetOrZero(name)
	if proxy == nil {
		return fmt.Errorf("no schema %s in docs/openapi.yaml", name)
	}
	schema := proxy.Schema()
	if ok, errs := s.schemas.ValidateSchemaBytesWithVersion(schema, data, 3.1); !ok {
		return fmt.Errorf("%s does not match schema %s:%s", oaCut(data), name, oaDescribe(errs))
	}
	return s.checkMembers(proxy, data, "schema "+name)
}

// checkMembers reports the members of the JSON value data that schema
// does not declare.
func (s *oaSpec) checkMembers(schema *base.SchemaProxy, data []byte, what string) error {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return fmt.Errorf("%s: not JSON: %v", what, err)
	}
	var extra []string
	s.undeclared(s.flatten(0, schema), v, "$", &extra)
	if len(extra) > 0 {
		slices.Sort(extra)
		return fmt.Errorf("%s has members %s does not declare: %v", oaCut(data), what, extra)
	}
	return nil
}

// flatten returns the schemas a value must match for the proxies: each
// resolved, with the branches of its allOf, oneOf and anyOf. A $ref with
// siblings (a description) gives both the target and the siblings.
func (s *oaSpec) flatten(depth int, proxies ...*base.SchemaProxy) []*base.Schema {
	if depth > 32 {
		return nil
	}
	var out []*base.Schema
	for _, p := range proxies {
		if p == nil {
			continue
		}
		if p.IsReference() {
			if name, ok := strings.CutPrefix(p.GetReference(), "#/components/schemas/"); ok {
				if target := s.model.Components.Schemas.GetOrZero(name); target != nil && target != p {
					out = append(out, s.flatten(depth+1, target)...)
				}
			}
		}
		sc := p.Schema()
		if sc == nil {
			continue
		}
		out = append(out, sc)
		out = append(out, s.flatten(depth+1, sc.AllOf...)...)
		out = append(out, s.flatten(depth+1, sc.OneOf...)...)
		out = append(out, s.flatten(depth+1, sc.AnyOf...)...)
	}
	return out
}

// undeclared appends to out the paths of the members of v that schemas
// do not declare. A free-form schema (no properties, no
// additionalProperties) declares everything under it.
func (s *oaSpec) undeclared(schemas []*base.Schema, v any, path string, out *[]string) {
	switch v := v.(type) {
	case map[string]any:
		props := map[string][]*base.SchemaProxy{}
		var more []*base.SchemaProxy
		closed := false
		for _, sc := range schemas {
			if sc.Properties != nil && sc.Properties.Len() > 0 {
				closed = true
				for name, p := range sc.Properties.FromOldest() {
					props[name] = append(props[name], p)
				}
			}
			if ap := sc.AdditionalProperties; ap != nil {
				if ap.IsB() && ap.B || sc.PatternProperties != nil {
					return // open on purpose
				}
				if ap.IsA() {
					closed = true
					more = append(more, ap.A)
				}
			}
		}
		if !closed {
			return
		}
		for name, val := range v {
			switch {
			case props[name] != nil:
				s.undeclared(s.flatten(0, props[name]...), val, path+"."+name, out)
			case more != nil:
				s.undeclared(s.flatten(0, more...), val, path+"."+name, out)
			default:
				*out = append(*out, path+"."+name)
			}
		}
	case []any:
		var items []*base.SchemaProxy
		for _, sc := range schemas {
			if sc.Items != nil && sc.Items.IsA() {
				items = append(items, sc.Items.A)
			}
		}
		if items == nil {
			return
		}
		for i, val := range v {
			s.undeclared(s.flatten(0, items...), val, fmt.Sprintf("%s[%d]", path, i), out)
		}
	}
}

func oaCut(data []byte) string {
	if len(data) > 600 {
		return string(data[:600]) + "…"
	}
	return string(data)
}

// call sends a request that conforms to the document, checks the status,
// and validates request and response. It returns the response and body.
func (s *oaSpec) call(t *testing.T, e *env, want int, method, path string, hdr map[string]string, body string) (*http.Response, []byte) {
	t.Helper()
	return s.exchange(t, e, true, want, method, path, hdr, body)
}

// callBad is call for a request the document itself rules out (bad input
// on purpose): only the response is validated.
func (s *oaSpec) callBad(t *testing.T, e *env, want int, method, path string, hdr map[string]string, body string) (*http.Response, []byte) {
	t.Helper()
	return s.exchange(t, e, false, want, method, path, hdr, body)
}

func (s *oaSpec) exchange(t *testing.T, e *env, conform bool, want int, method, path string, hdr map[string]string, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if conform {
		if err := s.checkRequest(req, body); err != nil {
			t.Error(err)
		}
	}
	resp, data := e.do(method, path, hdr, body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, oaCut(data), want)
	}
	if err := s.checkResponse(req, resp, data); err != nil {
		t.Error(err)
	}
	return resp, data
}

// oaRoutePattern matches the route registrations in gateway.go.
var oaRoutePattern = regexp.MustCompile(`m\.HandleFunc\("([A-Z]+) (/[^"]*)"`)

// oaGatewayRoutes returns the "METHOD /path" routes registered in gateway.go.
func oaGatewayRoutes(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile("../gateway/gateway.go")
	if err != nil {
		t.Fatal(err)
	}
	var routes []string
	for _, m := range oaRoutePattern.FindAllSubmatch(src, -1) {
		routes = append(routes, string(m[1])+" "+string(m[2]))
	}
	// The catch-all "/" (404 for any other path) has no method and is not an
	// endpoint of the API. Everything else must be found: a change in the
	// registration style must not make this test pass on nothing.
	if len(routes) < 13 {
		t.Fatalf("found only %d routes in gateway.go (%v); has the registration style changed?", len(routes), routes)
	}
	return routes
}

// specOperations returns the "METHOD /path" operations of the document.
func (s *oaSpec) specOperations() map[string]*v3.Operation {
	ops := map[string]*v3.Operation{}
	for path, item := range s.model.Paths.PathItems.FromOldest() {
		for method, op := range item.GetOperations().FromOldest() {
			ops[strings.ToUpper(method)+" "+path] = op
		}
	}
	return ops
}

func TestOpenAPIDocumentValid(t *testing.T) {
	t.Parallel()
	s := loadOpenAPI(t)
	if ok, errs := s.v.ValidateDocument(); !ok {
		t.Fatalf("docs/openapi.yaml is not valid OpenAPI 3.1:%s", oaDescribe(errs))
	}
	// The document validator can fail: a broken copy is refused.
	spec, err := os.ReadFile(openAPIPath)
	if err != nil {
		t.Fatal(err)
	}
	broken := bytes.Replace(spec, []byte("\n  title: rsvp HTTP gateway\n"), []byte("\n  titel: rsvp HTTP gateway\n"), 1)
	if bytes.Equal(broken, spec) {
		t.Fatal("cannot make the broken copy: the info title changed")
	}
	if ok, _ := loadOpenAPIBytes(t, broken).v.ValidateDocument(); ok {
		t.Fatal("a document without info.title passed validation")
	}
}

// TestOpenAPIDescribesEveryRoute: every route registered in gateway.go is in
// the document, and every operation of the document is a route.
func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	t.Parallel()
	s := loadOpenAPI(t)
	ops := s.specOperations()
	routes := oaGatewayRoutes(t)
	for _, r := range routes {
		if ops[r] == nil {
			t.Errorf("route %q of gateway.go is not described in docs/openapi.yaml", r)
		}
	}
	for op := range ops {
		if !slices.Contains(routes, op) {
			t.Errorf("docs/openapi.yaml describes %q, which gateway.go does not serve", op)
		}
	}
}

// TestOpenAPIConventions checks what every operation owes its readers:
// an id, a summary and a description; errors as problem details; 401 on
// every authenticated operation.
func TestOpenAPIConventions(t *testing.T) {
	t.Parallel()
	s := loadOpenAPI(t)
	// The WebSocket handshake's own errors come from the WebSocket library,
	// as plain text; the document says so.
	plainErrors := map[string]bool{"GET /v1/ws 400": true, "GET /v1/ws 403": true, "GET /v1/ws 426": true}
	for name, op := range s.specOperations() {
		if op.OperationId == "" || op.Summary == "" || op.Description == "" {
			t.Errorf("%s lacks an operationId, summary or description", name)
		}
		public := op.Security != nil && len(op.Security) == 0
		if strings.Contains(name, " /v1/") {
			if public {
				t.Errorf("%s is marked public", name)
			}
			if op.Responses.Codes.GetOrZero("401") == nil {
				t.Errorf("%s does not document 401", name)
			}
		}
		for code, resp := range op.Responses.Codes.FromOldest() {
			if code[0] != '4' && code[0] != '5' || plainErrors[name+" "+code] {
				continue
			}
			if resp.Content.GetOrZero("application/problem+json") == nil || resp.Content.Len() != 1 {
				t.Errorf("%s %s is not only application/problem+json", name, code)
			}
		}
	}
}

// TestOpenAPIValidatorRejects: the validator is not a rubber stamp. Made-up
// responses that break the document in one way each are refused.
func TestOpenAPIValidatorRejects(t *testing.T) {
	t.Parallel()
	s := loadOpenAPI(t)
	status := func(mutate func(m map[string]any)) []byte {
		m := map[string]any{
			"id": "r1", "queue": "q", "state": "queued", "created_at": "2026-01-02T15:04:05Z",
			"updated_at": "2026-01-02T15:04:05Z", "expires_at": "2026-01-03T15:04:05Z", "attempts": 0,
			"links": map[string]any{"status": "/v1/requests/r1", "result": "/v1/requests/r1/result",
				"events": "/v1/requests/r1/events", "cancel": "/v1/requests/r1"},
		}
		if mutate != nil {
			mutate(m)
		}
		data, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	accepted := http.Header{"Content-Type": {"application/json"}, "Location": {"/v1/requests/r1"},
		"Retry-After": {"1"}, "Expires": {"Sat, 03 Jan 2026 15:04:05 GMT"}, "X-Content-Type-Options": {"nosniff"}}
	without := func(h http.Header, name string) http.Header {
		h = h.Clone()
		h.Del(name)
		return h
	}
	with := func(h http.Header, name, value string) http.Header {
		h = h.Clone()
		h.Set(name, value)
		return h
	}
	problem := []byte(`{"type":"https://rsvp.dev/problems/unknown-request","title":"No such request","status":404}`)
	cases := []struct {
		name         string
		method, path string
		code         int
		hdr          http.Header
		body         []byte
	}{
		{"attempts of the wrong type", "POST", "/v1/queues/q/requests", 202, accepted, status(func(m map[string]any) { m["attempts"] = "one" })},
		{"an unknown state", "POST", "/v1/queues/q/requests", 202, accepted, status(func(m map[string]any) { m["state"] = "pending" })},
		{"a missing required member", "POST", "/v1/queues/q/requests", 202, accepted, status(func(m map[string]any) { delete(m, "links") })},
		{"an undeclared member", "POST", "/v1/queues/q/requests", 202, accepted, status(func(m map[string]any) { m["tenant"] = "acme" })},
		{"an undeclared member of the error", "POST", "/v1/queues/q/requests", 202, accepted, status(func(m map[string]any) {
			m["error"] = map[string]any{"type": "https://rsvp.dev/problems/attempt-failed", "title": "t", "status": 200, "stack": "..."}
		})},
		{"a time that is not a date-time", "POST", "/v1/queues/q/requests", 202, accepted, status(func(m map[string]any) { m["created_at"] = "yesterday" })},
		{"no Location", "POST", "/v1/queues/q/requests", 202, without(accepted, "Location"), status(nil)},
		{"a Retry-After that is no number", "POST", "/v1/queues/q/requests", 202, with(accepted, "Retry-After", "soon"), status(nil)},
		{"an Expires that is no HTTP date", "POST", "/v1/queues/q/requests", 202, with(accepted, "Expires", "2026-01-03"), status(nil)},
		{"an undocumented header", "POST", "/v1/queues/q/requests", 202, with(accepted, "X-Tenant", "acme"), status(nil)},
		{"no X-Content-Type-Options", "POST", "/v1/queues/q/requests", 202, without(accepted, "X-Content-Type-Options"), status(nil)},
		{"an undocumented status", "GET", "/v1/requests/r1", 418, http.Header{"Content-Type": {"application/problem+json"}, "X-Content-Type-Options": {"nosniff"}}, problem},
		{"an error as plain JSON", "GET", "/v1/requests/r1", 404, http.Header{"Content-Type": {"application/json"}, "X-Content-Type-Options": {"nosniff"}}, problem},
		{"a problem without title", "GET", "/v1/requests/r1", 404, http.Header{"Content-Type": {"application/problem+json"}, "X-Content-Type-Options": {"nosniff"}},
			[]byte(`{"type":"https://rsvp.dev/problems/unknown-request","status":404}`)},
		{"401 without WWW-Authenticate", "GET", "/v1/requests/r1", 401, http.Header{"Content-Type": {"application/problem+json"}, "X-Content-Type-Options": {"nosniff"}},
			[]byte(`{"type":"https://rsvp.dev/problems/unauthenticated","title":"API key required","status":401}`)},
		{"a lease body that is not a string", "POST", "/v1/queues/q/leases", 200, http.Header{"Content-Type": {"application/json"}, "X-Content-Type-Options": {"nosniff"}},
			[]byte(`{"leases":[{"lease":"l","id":"r1","correlation_id":"r1","queue":"q","attempt":1,"content_type":"","headers":{},"body":null,"created_at":"2026-01-02T15:04:05Z","expires_at":"2026-01-02T15:04:35Z"}]}`)},
	}
	for _, c := range cases {
		req, err := http.NewRequest(c.method, "http://127.0.0.1:8080"+c.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp := &http.Response{StatusCode: c.code, Header: c.hdr, Request: req}
		if err := s.checkResponse(req, resp, c.body); err == nil {
			t.Errorf("%s: the validator accepted it", c.name)
		} else {
			t.Logf("%s: refused: %s", c.name, strings.SplitN(err.Error(), "\nbody:", 2)[0])
		}
	}
	// The control: the unbroken response passes, so the refusals above are
	// for the breakage alone.
	req, _ := http.NewRequest("POST", "http://127.0.0.1:8080/v1/queues/q/requests", nil)
	if err := s.checkResponse(req, &http.Response{StatusCode: 202, Header: accepted}, status(nil)); err != nil {
		t.Errorf("the valid response was refused: %v", err)
	}
	// And so can the schema checks of stream events.
	for _, bad := range []string{`{"seq":"1","type":"queued","id":"r1","at":"2026-01-02T15:04:05Z"}`,
		`{"seq":1,"type":"queued","id":"r1","at":"2026-01-02T15:04:05Z","cursor":1}`} {
		if err := s.checkSchema("StreamEvent", []byte(bad)); err == nil {
			t.Errorf("StreamEvent %s was accepted", bad)
		}
	}
}

// oaWaitStatus polls the status of id until its state is state (with
// redirect=false, so finished states are 200 too).
func oaWaitStatus(t *testing.T, e *env, id, state string) {
	t.Helper()
	eventually(t, 10*time.Second, id+" reaches "+state, func() bool {
		_, data := e.do("GET", "/v1/requests/"+id+"?redirect=false", nil, "")
		var st struct{ State string }
		_ = json.Unmarshal(data, &st)
		return st.State == state
	})
}

// TestOpenAPIRequestResponses validates the answers of the request API:
// submit, status, long-poll, result, cancel, and their errors.
func TestOpenAPIRequestResponses(t *testing.T) {
	t.Parallel()
	s := loadOpenAPI(t)
	e := newEnv(t, gateway.Config{MaxBodySize: 64, Queues: map[string]gateway.QueueConfig{"strict": {RequireIdempotencyKey: true}}})
	text := map[string]string{"Content-Type": "text/plain"}

	s.call(t, e, 200, "GET", "/healthz", nil, "")
	s.call(t, e, 200, "GET", "/readyz", nil, "")

	// A request that runs until released, reporting progress.
	release := make(chan struct{})
	e.respond("work", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		_ = rsvp.Progress(ctx, map[string]any{"percent": 50, "stage": "resize"})
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return echo(ctx, m)
	})
	resp, data := s.call(t, e, 202, "POST", "/v1/queues/work/requests",
		map[string]string{"Content-Type": "text/plain", "Notify-Channel": "ui-1"}, "hello")
	id := decode(t, data)["id"].(string)
	if resp.Header.Get("Location") != "/v1/requests/"+id {
		t.Errorf("Location %q", resp.Header.Get("Location"))
	}
	eventually(t, 10*time.Second, "progress shows", func() bool {
		_, data := e.do("GET", "/v1/requests/"+id, nil, "")
		return decode(t, data)["progress"] != nil
	})
	resp, _ = s.call(t, e, 200, "GET", "/v1/requests/"+id, nil, "")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("no Retry-After on the status of a running request")
	}
	s.call(t, e, 200, "GET", "/v1/requests/"+id+"?wait=1", nil, "") // long-poll that times out
	s.call(t, e, 409, "GET", "/v1/requests/"+id+"/result", nil, "")
	close(release)
	eventually(t, 10*time.Second, "303 to the result", func() bool {
		resp, _ := e.do("GET", "/v1/requests/"+id, nil, "")
		return resp.StatusCode == http.StatusSeeOther
	})
	s.call(t, e, 303, "GET", "/v1/requests/"+id, nil, "")
	s.call(t, e, 303, "GET", "/v1/requests/"+id+"?wait=30s", nil, "") // a finished request answers at once
	s.call(t, e, 200, "GET", "/v1/requests/"+id+"?redirect=false", nil, "")
	if _, data := s.call(t, e, 200, "GET", "/v1/requests/"+id+"/result", nil, ""); string(data) != "echo:hello" {
		t.Errorf("result %q", data)
	}
	s.call(t, e, 409, "DELETE", "/v1/requests/"+id, nil, "")

	// Prefer: wait, answered with the result; and after the wait with 202.
	e.respond("quick", rsvp.HandleOptions{}, echo)
	s.call(t, e, 200, "POST", "/v1/queues/quick/requests", map[string]string{"Prefer": "wait=10", "Content-Type": "text/plain"}, "hi")
	s.call(t, e, 202, "POST", "/v1/queues/nobody/requests", map[string]string{"Prefer": "respond-async, wait=1"}, "hi")

	// Failure: 502, on the result and on a submission that waits.
	e.respond("broken", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return nil, rsvp.Permanent(&rsvp.RemoteError{Code: "bad_payload", Message: "no url in the payload"})
	})
	_, data = s.call(t, e, 502, "POST", "/v1/queues/broken/requests", map[string]string{"Prefer": "wait=10"}, "x")
	if p := decode(t, data); p["code"] != "bad_payload" || p["detail"] != "no url in the payload" {
		t.Errorf("failure problem %s", data)
	}
	id = e.submit("broken", nil, "x")
	oaWaitStatus(t, e, id, gateway.StateFailed)
	s.call(t, e, 502, "GET", "/v1/requests/"+id+"/result", nil, "")
	s.call(t, e, 200, "GET", "/v1/requests/"+id+"?redirect=false", nil, "")

	// A failed attempt that will be retried shows in the status.
	e.respond("flaky", rsvp.HandleOptions{Backoff: func(int) time.Duration { return time.Hour }}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return nil, errors.New("try again later")
	})
	id = e.submit("flaky", nil, "x")
	eventually(t, 10*time.Second, "the retry shows", func() bool {
		_, data := e.do("GET", "/v1/requests/"+id, nil, "")
		return decode(t, data)["retry_at"] != nil
	})
	s.call(t, e, 200, "GET", "/v1/requests/"+id, nil, "")

	// Expiry: 504.
	id = decode(t, func() []byte {
		_, data := s.call(t, e, 202, "POST", "/v1/queues/idle/requests?timeout=100ms", nil, "x")
		return data
	}())["id"].(string)
	eventually(t, 10*time.Second, "the request expires", func() bool {
		resp, _ := e.do("GET", "/v1/requests/"+id+"/result", nil, "")
		return resp.StatusCode == http.StatusGatewayTimeout
	})
	s.call(t, e, 504, "GET", "/v1/requests/"+id+"/result", nil, "")

	// Cancel: 202, then the result is 410 and a second cancel 409.
	id = e.submit("idle", nil, "x")
	if _, data := s.call(t, e, 202, "DELETE", "/v1/requests/"+id, nil, ""); decode(t, data)["state"] != "cancelled" {
		t.Errorf("cancel: %s", data)
	}
	s.call(t, e, 410, "GET", "/v1/requests/"+id+"/result", nil, "")
	s.call(t, e, 409, "DELETE", "/v1/requests/"+id, nil, "")
	s.call(t, e, 303, "GET", "/v1/requests/"+id, nil, "")

	// Unknown: 404.
	s.call(t, e, 404, "GET", "/v1/requests/nope", nil, "")
	s.call(t, e, 404, "GET", "/v1/requests/nope/result", nil, "")
	s.call(t, e, 404, "DELETE", "/v1/requests/nope", nil, "")
	s.call(t, e, 404, "GET", "/v1/requests/nope/events", nil, "")

	// Bad input: 400, 413, 422.
	s.callBad(t, e, 400, "POST", "/v1/queues/a.b/requests", nil, "x")
	s.call(t, e, 400, "POST", "/v1/queues/rsvp-webhooks/requests", nil, "x")
	s.callBad(t, e, 400, "POST", "/v1/queues/q/requests?timeout=-1s", nil, "x")
	s.callBad(t, e, 400, "POST", "/v1/queues/q/requests", map[string]string{"Notify-Channel": "a b"}, "x")
	s.call(t, e, 400, "POST", "/v1/queues/q/requests", map[string]string{"Callback-URL": "https://example.com/hook"}, "x")
	s.call(t, e, 400, "POST", "/v1/queues/strict/requests", nil, "x")
	s.call(t, e, 400, "POST", "/v1/queues/q/requests", map[string]string{"Prefer": "wait=soon"}, "x")
	s.callBad(t, e, 400, "GET", "/v1/requests/"+id+"?wait=soon", nil, "")
	s.call(t, e, 413, "POST", "/v1/queues/q/requests", text, strings.Repeat("x", 65))
	key := map[string]string{"Idempotency-Key": "order-42", "Content-Type": "text/plain"}
	first, _ := s.call(t, e, 202, "POST", "/v1/queues/q/requests", key, "pay")
	again, _ := s.call(t, e, 202, "POST", "/v1/queues/q/requests", key, "pay")
	if first.Header.Get("Location") != again.Header.Get("Location") {
		t.Errorf("the same Idempotency-Key gave %s and %s", first.Header.Get("Location"), again.Header.Get("Location"))
	}
	s.call(t, e, 422, "POST", "/v1/queues/q/requests", key, "pay twice")

	// The engine gone: 503.
	_ = e.Engine.Close()
	s.call(t, e, 503, "GET", "/readyz", nil, "")
	s.call(t, e, 503, "POST", "/v1/queues/q/requests", text, "x")
}

// TestOpenAPIAuthResponses validates 401 and 403, and that a key's
// requests validate as the anonymous ones do.
func TestOpenAPIAuthResponses(t *testing.T) {
	t.Parallel()
	s := loadOpenAPI(t)
	keys := []gateway.APIKey{
		{Tenant: "acme", SHA256: gateway.HashKey("acme-key"), Grants: []gateway.Grant{{Queue: "t", Rights: []string{"send"}}}},
		{Tenant: "globex", SHA256: gateway.HashKey("globex-key"), Grants: []gateway.Grant{{Queue: "t", Rights: []string{"send", "consume"}}}},
	}
	e := newEnv(t, gateway.Config{Keys: keys})
	auth := func(k string) map[string]string { return map[string]string{"Authorization": "Bearer " + k} }

	resp, _ := s.call(t, e, 401, "POST", "/v1/queues/t/requests", nil, "x")
	if resp.Header.Get("WWW-Authenticate") != `Bearer realm="rsvp"` {
		t.Errorf("WWW-Authenticate %q", resp.Header.Get("WWW-Authenticate"))
	}
	s.call(t, e, 401, "POST", "/v1/queues/t/requests", auth("wrong"), "x")
	s.call(t, e, 401, "GET", "/v1/requests/whatever", nil, "")
	s.call(t, e, 401, "POST", "/v1/queues/t/leases", nil, "")
	s.callBad(t, e, 401, "GET", "/v1/ws", nil, "") // not a WebSocket handshake: refused before that matters
	s.call(t, e, 403, "POST", "/v1/queues/other/requests", auth("acme-key"), "x")
	s.call(t, e, 403, "POST", "/v1/queues/t/leases", auth("acme-key"), "")
	_, data := s.call(t, e, 202, "POST", "/v1/queues/t/requests", auth("acme-key"), "x")
	id := decode(t, data)["id"].(string)
	s.call(t, e, 200, "GET", "/v1/requests/"+id, auth("acme-key"), "")
	s.call(t, e, 404, "GET", "/v1/requests/"+id, auth("globex-key"), "") // another tenant's
	s.call(t, e, 404, "DELETE", "/v1/requests/"+id, auth("globex-key"), "")
	// The probes need no key.
	s.call(t, e, 200, "GET", "/healthz", nil, "")
	s.call(t, e, 200, "GET", "/readyz", nil, "")
}

// TestOpenAPIStreamLimit validates 429 of a long-poll, an event stream and
// a lease long-poll over the limit.
func TestOpenAPIStreamLimit(t *testing.T) {
	t.Parallel()
	s := loadOpenAPI(t)
	e := newEnv(t, gateway.Config{MaxStreams: 1})
	id := e.submit("none", nil, "x")
	// A channel stream holds the only slot from its 200 on.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", e.URL+"/v1/channels/held/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	held, err := http.DefaultClient.Do(req)
	if err != nil || held.StatusCode != http.StatusOK {
		t.Fatalf("holding stream: %v %v", held, err)
	}
	defer held.Body.Close()
	resp, _ := s.call(t, e, 429, "GET", "/v1/requests/"+id+"?wait=1", nil, "")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	s.call(t, e, 429, "GET", "/v1/requests/"+id+"/events", nil, "")
	s.call(t, e, 429, "POST", "/v1/queues/none/leases?wait=1", nil, "")
	cancel()
}

// TestOpenAPIWorkerResponses validates the worker API.
func TestOpenAPIWorkerResponses(t *testing.T) {
	t.Parallel()
	s := loadOpenAPI(t)
	e := newEnv(t, gateway.Config{MaxBodySize: 64})
	type leaseList struct {
		Leases []gateway.Lease `json:"leases"`
	}
	lease := func(query string) []gateway.Lease {
		t.Helper()
		_, data := s.call(t, e, 200, "POST", "/v1/queues/jobs/leases"+query, nil, "")
		var l leaseList
		if err := json.Unmarshal(data, &l); err != nil {
			t.Fatal(err)
		}
		return l.Leases
	}
	if ls := lease(""); len(ls) != 0 {
		t.Fatalf("leases of an empty queue: %v", ls)
	}
	id := e.submit("jobs", map[string]string{"Content-Type": "application/json"}, `{"n":1}`)
	ls := lease("?wait=10s&max=5&lease=1m")
	if len(ls) != 1 || ls[0].CorrelationID != id {
		t.Fatalf("leases %+v", ls)
	}
	l := ls[0].Lease
	s.call(t, e, 200, "POST", "/v1/leases/"+l+"/extend?lease=2m", nil, "")
	s.call(t, e, 200, "POST", "/v1/leases/"+l+"/extend", nil, "")
	s.call(t, e, 413, "POST", "/v1/leases/"+l+"/reply", map[string]string{"Content-Type": "text/plain"}, strings.Repeat("x", 65))
	s.call(t, e, 204, "POST", "/v1/leases/"+l+"/reply", map[string]string{"Content-Type": "application/json"}, `{"ok":true}`)
	s.call(t, e, 409, "POST", "/v1/leases/"+l+"/reply", map[string]string{"Content-Type": "text/plain"}, "again")
	s.call(t, e, 409, "POST", "/v1/leases/"+l+"/fail", map[string]string{"Content-Type": "application/json"}, `{"error":"late"}`)
	s.call(t, e, 409, "POST", "/v1/leases/"+l+"/extend", nil, "")
	s.call(t, e, 200, "GET", "/v1/requests/"+id+"/result", nil, "")

	// An empty request body, and a permanent failure.
	id = e.submit("jobs", nil, "")
	ls = lease("?wait=10s")
	if len(ls) != 1 || ls[0].CorrelationID != id {
		t.Fatalf("leases %+v", ls)
	}
	l = ls[0].Lease
	s.callBad(t, e, 400, "POST", "/v1/leases/"+l+"/fail", map[string]string{"Content-Type": "application/json"}, `{"error":`)
	s.callBad(t, e, 400, "POST", "/v1/leases/"+l+"/extend?lease=1h", nil, "")
	s.call(t, e, 204, "POST", "/v1/leases/"+l+"/fail", map[string]string{"Content-Type": "application/json"},
		`{"error":"no url in the payload","permanent":true,"code":"bad_payload"}`)
	s.call(t, e, 502, "GET", "/v1/requests/"+id+"/result", nil, "")

	// Unknown leases and bad parameters.
	for _, verb := range []string{"reply", "fail", "extend"} {
		s.call(t, e, 404, "POST", "/v1/leases/0123456789abcdef0123456789abcdef/"+verb, nil, "")
	}
	s.callBad(t, e, 400, "POST", "/v1/queues/jobs/leases?max=0", nil, "")
	s.callBad(t, e, 400, "POST", "/v1/queues/jobs/leases?lease=500ms", nil, "")
	s.callBad(t, e, 400, "POST", "/v1/queues/bad.name/leases", nil, "")
}

// oaSSE reads a Server-Sent Events stream: each event's id, event and data
// fields. It stops after n events (n < 0: at the end of the stream).
func oaSSE(t *testing.T, r io.Reader, n int) []map[string]string {
	t.Helper()
	var evs []map[string]string
	cur := map[string]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if len(cur) > 0 {
				evs = append(evs, cur)
				cur = map[string]string{}
				if len(evs) == n {
					return evs
				}
			}
		case strings.HasPrefix(line, ":"): // a comment (heartbeat)
		default:
			k, v, _ := strings.Cut(line, ":")
			cur[k] += strings.TrimPrefix(v, " ")
		}
	}
	if n >= 0 {
		t.Fatalf("the stream ended after %d events, want %d (%v)", len(evs), n, sc.Err())
	}
	return evs
}

// checkSSE validates the events of a stream: each data is a StreamEvent
// whose seq and type are the event's id and event fields.
func (s *oaSpec) checkSSE(t *testing.T, evs []map[string]string) {
	t.Helper()
	for _, ev := range evs {
		if err := s.checkSchema("StreamEvent", []byte(ev["data"])); err != nil {
			t.Error(err)
			continue
		}
		var se struct {
			Seq  uint64          `json:"seq"`
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		}
		_ = json.Unmarshal([]byte(ev["data"]), &se)
		if strconv.FormatUint(se.Seq, 10) != ev["id"] || se.Type != ev["event"] {
			t.Errorf("SSE id %q and event %q, but data has seq %d and type %q", ev["id"], ev["event"], se.Seq, se.Type)
		}
		if se.Type == "queued" {
			if err := s.checkSchema("QueuedData", se.Data); err != nil {
				t.Error(err)
			}
		}
	}
}

// TestOpenAPIEventStreams validates the SSE streams and the WebSocket:
// their HTTP answers against the operations, their messages against the
// schemas the document gives for them.
func TestOpenAPIEventStreams(t *testing.T) {
	t.Parallel()
	s := loadOpenAPI(t)
	e := newEnv(t, gateway.Config{})
	e.respond("work", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		_ = rsvp.Progress(ctx, map[string]int{"percent": 50})
		return &rsvp.Reply{ContentType: "application/json", Body: []byte(`{"ok":true}`)}, nil
	})
	hdr := map[string]string{"Content-Type": "application/json", "Notify-Channel": "ui-1"}
	id := e.submit("work", hdr, `{"n":1}`)
	oaWaitStatus(t, e, id, gateway.StateSucceeded)

	// The request's stream, whole: it ends after the final event.
	resp, data := s.call(t, e, 200, "GET", "/v1/requests/"+id+"/events", nil, "")
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	evs := oaSSE(t, bytes.NewReader(data), -1)
	s.checkSSE(t, evs)
	var types []string
	for _, ev := range evs {
		types = append(types, ev["event"])
	}
	if !slices.Equal(types, []string{"queued", "running", "progress", "succeeded"}) {
		t.Errorf("event types %v", types)
	}
	last := evs[len(evs)-1]["id"]
	s.call(t, e, 204, "GET", "/v1/requests/"+id+"/events", map[string]string{"Last-Event-ID": last}, "")
	s.call(t, e, 204, "GET", "/v1/requests/"+id+"/events?last_event_id="+last, nil, "")
	s.callBad(t, e, 400, "GET", "/v1/requests/"+id+"/events", map[string]string{"Last-Event-ID": "x"}, "")

	// The channel's stream does not end: read its first events, then leave.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", e.URL+"/v1/channels/ui-1/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.checkRequest(req, ""); err != nil {
		t.Error(err)
	}
	cresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	evs = oaSSE(t, cresp.Body, 4)
	cancel()
	cresp.Body.Close()
	if err := s.checkResponse(req, cresp, nil); err != nil {
		t.Error(err)
	}
	s.checkSSE(t, evs)
	s.callBad(t, e, 400, "GET", "/v1/channels/a%20b/events", nil, "")

	// The WebSocket: the handshake answer, then every message both ways.
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, wresp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.URL, "http")+"/v1/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	if wresp.Request != nil {
		hs := wresp.Request.Clone(ctx)
		hs.URL.Scheme = "http"
		if err := s.checkRequest(hs, ""); err != nil {
			t.Error(err)
		}
		r := *wresp
		r.Body = http.NoBody
		if err := s.checkResponse(hs, &r, nil); err != nil {
			t.Error(err)
		}
	} else {
		t.Error("the WebSocket dial gave no request to validate")
	}
	send := func(msg string, valid bool) {
		t.Helper()
		if valid {
			if err := s.checkSchema("WsClientMessage", []byte(msg)); err != nil {
				t.Error(err)
			}
		}
		if err := conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	recv := func() map[string]any {
		t.Helper()
		_, data, err := conn.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.checkSchema("WsServerMessage", data); err != nil {
			t.Error(err)
		}
		var m map[string]any
		_ = json.Unmarshal(data, &m)
		return m
	}
	send(`{"op":"subscribe","request":"`+id+`","after":0}`, true)
	var got []string
	for {
		m := recv()
		got = append(got, m["type"].(string))
		if m["type"] == "end" || m["type"] == "error" || len(got) > 10 {
			break
		}
	}
	if !slices.Equal(got, []string{"subscribed", "event", "event", "event", "event", "end"}) {
		t.Errorf("WebSocket messages %v", got)
	}
	send(`{"op":"subscribe","channel":"ui-1"}`, true)
	for i := 0; i < 5; i++ { // subscribed and four events
		recv()
	}
	send(`{"op":"unsubscribe","channel":"ui-1"}`, true)
	if m := recv(); m["type"] != "unsubscribed" {
		t.Errorf("after unsubscribe: %v", m)
	}
	send(`{"op":"subscribe","request":"nope"}`, true)
	if m := recv(); m["type"] != "error" {
		t.Errorf("subscribing to an unknown request: %v", m)
	}
	send(`{"op":"jump"}`, false)
	if m := recv(); m["type"] != "error" {
		t.Errorf("an invalid message: %v", m)
	}
	_ = conn.Close(websocket.StatusNormalClosure, "")

	// The handshake's own refusals, plain text as documented.
	s.callBad(t, e, 426, "GET", "/v1/ws", nil, "")
	s.call(t, e, 403, "GET", "/v1/ws", map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
		"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": "https://elsewhere.example"}, "")
}

// TestOpenAPIWebhookPayload validates what a callback URL receives, and the
// status with its delivery history.
func TestOpenAPIWebhookPayload(t *testing.T) {
	t.Parallel()
	s := loadOpenAPI(t)
	got := make(chan *http.Request, 1)
	bodies := make(chan []byte, 1)
	recv := newOAReceiver(t, func(r *http.Request, body []byte) {
		select {
		case got <- r:
			bodies <- body
		default:
		}
	})
	e := newEnv(t, gateway.Config{Webhooks: gateway.WebhookConfig{Secrets: []string{gateway.NewTestSecret(t)}, AllowPrivate: true}})
	e.respond("hooked", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{ContentType: "application/json", Body: []byte(`{"thumbnail_url":"https://example.com/t.jpg"}`)}, nil
	})
	_, data := s.call(t, e, 202, "POST", "/v1/queues/hooked/requests",
		map[string]string{"Callback-URL": recv + "/hook", "Content-Type": "application/json"}, `{"url":"https://example.com/c.jpg"}`)
	id := decode(t, data)["id"].(string)
	var r *http.Request
	select {
	case r = <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("no webhook delivery")
	}
	body := <-bodies
	if err := s.checkSchema("WebhookPayload", body); err != nil {
		t.Error(err)
	}
	// Its headers, as the document's webhook operation declares them.
	wh := s.model.Webhooks.GetOrZero("requestFinished")
	if wh == nil || wh.Post == nil {
		t.Fatal("the document has no requestFinished webhook")
	}
	for _, p := range wh.Post.Parameters {
		if p.In != "header" {
			continue
		}
		v := r.Header.Get(p.Name)
		if v == "" && p.Required != nil && *p.Required {
			t.Errorf("webhook header %s missing", p.Name)
			continue
		}
		if pat := p.Schema.Schema().Pattern; pat != "" && !regexp.MustCompile(pat).MatchString(v) {
			t.Errorf("webhook header %s: %q does not match %s", p.Name, v, pat)
		}
	}
	eventually(t, 10*time.Second, "the delivery shows in the status", func() bool {
		_, data := e.do("GET", "/v1/requests/"+id+"?redirect=false", nil, "")
		return decode(t, data)["webhooks"] != nil
	})
	s.call(t, e, 200, "GET", "/v1/requests/"+id+"?redirect=false", nil, "")
}

// newOAReceiver starts a callback endpoint that hands each delivery to f
// and answers 204; it returns its URL.
func newOAReceiver(t *testing.T, f func(r *http.Request, body []byte)) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f(r, body)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}
