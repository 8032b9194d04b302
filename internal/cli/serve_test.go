package cli

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/gateway"
)

// serving is a 'rsvp serve' running in a goroutine of the test.
type serving struct {
	url            string
	stdout, stderr *logBuffer
	cancel         context.CancelFunc
	done           chan int
}

var listeningRE = regexp.MustCompile(`listening on (https?://[0-9.]+:[0-9]+)`)

// startServe runs 'rsvp serve --addr 127.0.0.1:0 args...' until stop or the
// end of the test, and waits until it listens.
func startServe(t *testing.T, args ...string) *serving {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &serving{stdout: newLogBuffer(), stderr: newLogBuffer(), cancel: cancel, done: make(chan int, 1)}
	args = append([]string{"serve", "--addr", "127.0.0.1:0"}, args...)
	go func() { s.done <- Run(ctx, args, nil, s.stdout, s.stderr) }()
	t.Cleanup(func() {
		if code := s.stop(t); code != 0 {
			t.Errorf("serve exit code %d, want 0; its log:\n%s", code, s.stderr)
		}
	})
	s.stderr.waitFor(t, "listening on http")
	m := listeningRE.FindStringSubmatch(s.stderr.String())
	if m == nil {
		t.Fatalf("no address in the log:\n%s", s.stderr)
	}
	s.url = m[1]
	return s
}

// stop stops the server as SIGINT would and returns its exit code (0 when
// it was stopped before).
func (s *serving) stop(t *testing.T) int {
	t.Helper()
	s.cancel()
	select {
	case code, ok := <-s.done:
		if !ok {
			return 0
		}
		close(s.done)
		return code
	case <-time.After(waitTimeout):
		t.Fatalf("serve did not stop within %s; its log:\n%s", waitTimeout, s.stderr)
		return -1
	}
}

// noRedirect shows 303s to the test instead of following them.
var noRedirect = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Timeout:       waitTimeout,
}

// call sends an HTTP request and returns the response with its body read.
func call(t *testing.T, method, url, body string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
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

// submit POSTs body to queue and returns the status URL from Location.
func (s *serving) submit(t *testing.T, queue, body string, hdr ...string) string {
	t.Helper()
	resp, data := call(t, "POST", s.url+"/v1/queues/"+queue+"/requests", body, append([]string{"Content-Type", "application/json"}, hdr...)...)
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || !strings.HasPrefix(loc, "/v1/requests/") {
		t.Fatalf("submit to %s: %s, Location %q\n%s", queue, resp.Status, loc, data)
	}
	return loc
}

// finish polls the status at loc until it redirects to the result, and
// returns the final status.
func (s *serving) finish(t *testing.T, loc string, hdr ...string) (state string, attempts int) {
	t.Helper()
	waitUntil(t, "request "+loc+" finished", func() bool {
		resp, data := call(t, "GET", s.url+loc, "", hdr...)
		switch resp.StatusCode {
		case http.StatusOK:
			return false
		case http.StatusSeeOther:
			if got := resp.Header.Get("Location"); got != loc+"/result" {
				t.Fatalf("303 to %q, want %q", got, loc+"/result")
			}
			return true
		}
		t.Fatalf("status: %s\n%s", resp.Status, data)
		return false
	})
	_, data := call(t, "GET", s.url+loc+"?redirect=false", "", hdr...)
	var st struct {
		State    string `json:"state"`
		Attempts int    `json:"attempts"`
	}
	if err := json.Unmarshal([]byte(data), &st); err != nil {
		t.Fatalf("status is not JSON: %v\n%s", err, data)
	}
	return st.State, st.Attempts
}

func TestServeDemo(t *testing.T) {
	t.Parallel()
	s := startServe(t, "--demo", "--engine", "embedded:mem")
	s.stderr.waitFor(t, "no API keys: anyone who can reach 127.0.0.1:")
	s.stdout.waitFor(t, "curl -si "+s.url+"/v1/queues/thumbnail/requests")

	loc := s.submit(t, "thumbnail", `{"url":"https://example.com/a.png"}`)
	if state, attempts := s.finish(t, loc); state != "succeeded" || attempts != 1 {
		t.Fatalf("thumbnail: state %s after %d attempts, want succeeded after 1", state, attempts)
	}
	resp, data := call(t, "GET", s.url+loc+"/result", "")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" ||
		strings.TrimSpace(data) != `{"thumbnail_url":"https://example.com/a.png?size=128"}` {
		t.Fatalf("result: %s %s\n%s", resp.Status, resp.Header.Get("Content-Type"), data)
	}

	loc = s.submit(t, "thumbnail", `{"image":"a.png"}`)
	if state, attempts := s.finish(t, loc); state != "failed" || attempts != 1 {
		t.Fatalf("thumbnail without url: state %s after %d attempts, want failed after 1", state, attempts)
	}
	resp, data = call(t, "GET", s.url+loc+"/result", "")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(data, `"code":"bad_payload"`) {
		t.Fatalf("result without url: %s\n%s", resp.Status, data)
	}

	loc = s.submit(t, "flaky", `"hi"`)
	if state, attempts := s.finish(t, loc); state != "succeeded" || attempts != 2 {
		t.Fatalf("flaky: state %s after %d attempts, want succeeded after 2", state, attempts)
	}

	if code := s.stop(t); code != 0 {
		t.Fatalf("exit code %d, want 0; log:\n%s", code, s.stderr)
	}
	if !strings.Contains(s.stderr.String(), "msg=stopped") {
		t.Fatalf("no stop line in the log:\n%s", s.stderr)
	}
}

func TestServeRefusesExposedWithoutKeys(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.168.1.10:0"} {
		dir := t.TempDir()
		r := run(t, nil, "serve", "--addr", addr, "--engine", "embedded:"+dir)
		r.want(t, exitUsage, "rsvp serve: refusing to serve without API keys on "+addr, "--keys FILE")
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: the engine was opened before the refusal: %d entries in its directory", addr, len(ents))
		}
	}
}

func TestServeUsageErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	goodHash := gateway.HashKey("k")
	secret := "whsec_" + strings.Repeat("A", 43) + "="
	for name, tc := range map[string]struct {
		args []string
		want []string
	}{
		"unknown flag":   {[]string{"--nope"}, []string{"flag provided but not defined: -nope"}},
		"argument":       {[]string{"extra"}, []string{`unexpected argument "extra"`}},
		"bad addr":       {[]string{"--addr", "8080"}, []string{`--addr "8080" is not HOST:PORT`}},
		"max body":       {[]string{"--max-body", "0"}, []string{"--max-body 0 is below 1"}},
		"log format":     {[]string{"--log-format", "xml"}, []string{`--log-format "xml" is not text or json`}},
		"log level":      {[]string{"--log-level", "loud"}, []string{`--log-level "loud"`}},
		"bad engine":     {[]string{"--engine", "redis://x"}, []string{`engine "redis://x" is not one of`}},
		"webhook secret": {[]string{"--webhook-secret", secret + ",whsec_c2hvcnQ="}, []string{"webhook Secrets[1]", "at least 24 bytes"}},
		"missing keys":   {[]string{"--keys", filepath.Join(dir, "none.json")}, []string{"cannot read the keys file", "none.json"}},
		"keys not json":  {[]string{"--keys", file("bad.json", `{"keys": [`)}, []string{"keys file " + dir, "is not valid"}},
		"keys unknown field": {[]string{"--keys", file("field.json", `{"keys": [{"tenant": "a", "hash": "x"}]}`)},
			[]string{`unknown field "hash"`}},
		"no keys": {[]string{"--keys", file("empty.json", `{"keys": []}`)}, []string{"lists no keys"}},
		"bad sha256": {[]string{"--keys", file("sha.json", `{"keys": [{"tenant": "acme", "sha256": "abc", "grants": [{"queue": "*", "rights": ["send"]}]}]}`)},
			[]string{`key 0 (tenant "acme"): sha256 must be the 64 hex digits`}},
		"key itself": {[]string{"--keys", file("key.json", `{"keys": [{"tenant": "acme", "sha256": "rsvp_abc", "grants": [{"queue": "*", "rights": ["send"]}]}]}`)},
			[]string{"not the key itself"}},
		"bad grants": {[]string{"--keys", file("grants.json", `{"keys": [{"tenant": "", "sha256": "`+goodHash+`", "grants": [{"queue": "a.b", "rights": ["write"]}]},`+
			`{"tenant": "b", "sha256": "`+strings.ToUpper(goodHash)+`", "grants": []}]}`)},
			[]string{"key 0 has no tenant", `queue "a.b" has character '.'`, `unknown right "write"`, "has no grants", `key 1 (tenant "b") has the same sha256 as key 0`}},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := run(t, nil, append([]string{"serve", "--engine", "embedded:mem"}, tc.args...)...)
			r.want(t, exitUsage, append(tc.want, "Run 'rsvp help serve' for usage.")...)
			if strings.Contains(r.stderr, secret) {
				t.Fatalf("the error shows a webhook secret:\n%s", r.stderr)
			}
		})
	}
}

func TestKeyNewAndServeWithKeys(t *testing.T) {
	t.Parallel()
	r := run(t, nil, "key", "new", "--tenant", "acme", "--queue", "thumbnail,flaky", "--rights", "send,consume")
	r.want(t, 0)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], keyPrefix) || len(lines[0]) < len(keyPrefix)+40 {
		t.Fatalf("key new printed %q, want a key line and an entry line", r.stdout)
	}
	key := lines[0]
	var entry gateway.APIKey
	if err := json.Unmarshal([]byte(lines[1]), &entry); err != nil {
		t.Fatalf("entry %q: %v", lines[1], err)
	}
	if entry.SHA256 != gateway.HashKey(key) || entry.Tenant != "acme" || len(entry.Grants) != 2 ||
		entry.Grants[0].Queue != "thumbnail" || entry.Grants[1].Queue != "flaky" ||
		strings.Join(entry.Grants[1].Rights, ",") != "send,consume" {
		t.Fatalf("entry %+v does not match key %q", entry, key)
	}
	if other := run(t, nil, "key", "new", "--tenant", "acme"); other.code != 0 || strings.HasPrefix(other.stdout, key) ||
		!strings.Contains(other.stdout, `"grants":[{"queue":"*","rights":["send"]}]`) {
		t.Fatalf("a second key new: %+v", other)
	}
	ws := run(t, nil, "key", "webhook-secret")
	ws.want(t, 0)

	keys := filepath.Join(t.TempDir(), "keys.json")
	if err := os.WriteFile(keys, []byte(`{"keys": [`+lines[1]+`]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, "--demo", "--engine", "embedded:mem", "--keys", keys, "--webhook-secret", strings.TrimSpace(ws.stdout), "--log-format", "json")
	s.stderr.waitFor(t, `"api_keys":1,"webhooks":true`)
	if strings.Contains(s.stderr.String(), "no API keys") {
		t.Fatalf("warned of no keys with keys:\n%s", s.stderr)
	}
	s.stdout.waitFor(t, `-H "Authorization: Bearer $RSVP_KEY"`)

	resp, data := call(t, "POST", s.url+"/v1/queues/thumbnail/requests", `{"url":"https://example.com/a.png"}`)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without a key: %s\n%s", resp.Status, data)
	}
	resp, data = call(t, "POST", s.url+"/v1/queues/other/requests", `{}`, "Authorization", "Bearer "+key)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("queue without a grant: %s\n%s", resp.Status, data)
	}
	auth := []string{"Authorization", "Bearer " + key}
	loc := s.submit(t, "thumbnail", `{"url":"https://example.com/a.png"}`, auth...)
	if state, _ := s.finish(t, loc, auth...); state != "succeeded" {
		t.Fatalf("with the key: state %s", state)
	}
}

func TestKeyUsage(t *testing.T) {
	t.Parallel()
	run(t, nil, "key").want(t, exitUsage, "missing what to make")
	run(t, nil, "key", "old").want(t, exitUsage, `unknown key command "old"`)
	run(t, nil, "key", "new").want(t, exitUsage, "missing --tenant")
	run(t, nil, "key", "new", "--tenant", "a", "--rights", "send,root").want(t, exitUsage, `unknown right "root"`)
	run(t, nil, "key", "new", "--tenant", "a", "--queue", "a b").want(t, exitUsage, `queue "a b" has character ' '`)
	for want, args := range map[string][]string{
		"Usage: rsvp key new":       {"help", "key"},
		"Usage: rsvp key new ":      {"key", "--help"},
		"Usage: rsvp key new  ":     {"key", "new", "--help"},
		"Usage: rsvp serve [flags]": {"help", "serve"},
	} {
		r := run(t, nil, args...)
		r.want(t, 0)
		if !strings.HasPrefix(r.stdout, strings.TrimSpace(want)) {
			t.Errorf("%v printed:\n%s", args, r.stdout)
		}
	}
}
