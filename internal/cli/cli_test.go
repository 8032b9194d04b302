package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/internal/tcpproxy"
)

// tempEngine returns an embedded engine in a new directory of the test.
func tempEngine(t *testing.T) string {
	return "embedded:" + t.TempDir()
}

func TestRequestSendAwait(t *testing.T) {
	t.Parallel()
	engine := tempEngine(t)
	startWorker(t, engine, "upper", "--exec", "tr a-z A-Z")

	r := run(t, nil, "request", "upper", "--data", "hello", "--engine", engine)
	r.want(t, 0)
	if r.stdout != "HELLO" || r.stderr != "" {
		t.Fatalf("request: stdout %q, stderr %q; want HELLO and nothing", r.stdout, r.stderr)
	}

	body := filepath.Join(t.TempDir(), "body.txt")
	if err := os.WriteFile(body, []byte("from a file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		stdin string
		args  []string
		want  string
	}{
		"stdin":          {stdin: "from stdin", args: []string{"request", "upper", "--engine", engine}, want: "FROM STDIN"},
		"file":           {args: []string{"request", "upper", "--file", body, "--engine", engine}, want: "FROM A FILE\n"},
		"file-stdin":     {stdin: "dash", args: []string{"request", "upper", "--file", "-", "--engine", engine}, want: "DASH"},
		"empty-data":     {stdin: "ignored", args: []string{"request", "upper", "--data", "", "--engine", engine}, want: ""},
		"global-engine":  {args: []string{"--engine", engine, "request", "--data", "x", "upper"}, want: "X"},
		"flags-first":    {args: []string{"request", "--engine", engine, "--timeout", "20s", "--data", "y", "upper"}, want: "Y"},
		"after-dashdash": {args: []string{"request", "--data", "z", "--engine", engine, "--", "upper"}, want: "Z"},
		"session":        {args: []string{"request", "upper", "--session", "order 7/ü", "--reply-session", "r 1", "--data", "s", "--engine", engine}, want: "S"},
	} {
		r := run(t, strings.NewReader(tc.stdin), tc.args...)
		r.want(t, 0)
		if r.stdout != tc.want {
			t.Errorf("%s: stdout %q, want %q", name, r.stdout, tc.want)
		}
	}

	r = run(t, nil, "send", "upper", "--data", "abc", "--engine", engine)
	r.want(t, 0)
	id, ok := strings.CutSuffix(r.stdout, "\n")
	if !ok || backend.ValidateName("id", id) != nil {
		t.Fatalf("send printed %q, want an id and a newline", r.stdout)
	}
	r = run(t, nil, "await", id, "--engine", engine)
	r.want(t, 0)
	if r.stdout != "ABC" {
		t.Fatalf("await: stdout %q, want ABC", r.stdout)
	}
}

func TestWorkerEnvironment(t *testing.T) {
	t.Parallel()
	engine := tempEngine(t)
	startWorker(t, engine, "env", "--exec",
		`printf '%s|%s|%s|%s|%s|%s' "$RSVP_QUEUE" "$RSVP_ATTEMPT" "$RSVP_TYPE" "$RSVP_CONTENT_TYPE" "$RSVP_ID" "$RSVP_CORRELATION_ID"`)
	r := run(t, nil, "request", "env", "--engine", engine, "--data", "{}",
		"--type", "thumbnail.request.v1", "--content-type", "application/json", "--id", "req-1", "--header", "X-Trace=abc")
	r.want(t, 0)
	if want := "env|1|thumbnail.request.v1|application/json|req-1|req-1"; r.stdout != want {
		t.Fatalf("stdout %q, want %q", r.stdout, want)
	}
}

func TestWorkerPermanentFailure(t *testing.T) {
	t.Parallel()
	engine := tempEngine(t)
	w := startWorker(t, engine, "strict", "--exec", `echo "noise" >&2; echo "bad input: no image_url" >&2; exit 65`)
	r := run(t, nil, "request", "strict", "--data", "{}", "--engine", engine)
	r.want(t, 1, "rsvp: request failed: failed: ", "exit status 65: noise bad input: no image_url")
	if r.stdout != "" {
		t.Fatalf("stdout %q, want nothing", r.stdout)
	}
	w.stop(t)
	log := w.log.String()
	if !strings.Contains(log, "attempt 1/5: failed permanently") || strings.Contains(log, "attempt 2/") {
		t.Fatalf("want one attempt, failed permanently; worker log:\n%s", log)
	}
}

func TestWorkerRetry(t *testing.T) {
	t.Parallel()
	engine := tempEngine(t)
	w := startWorker(t, engine, "flaky", "--backoff", "10ms", "--exec",
		`if [ "$RSVP_ATTEMPT" -lt 2 ]; then echo "flaky: try again" >&2; exit 3; fi; cat`)
	r := run(t, nil, "request", "flaky", "--data", "payload", "--engine", engine)
	r.want(t, 0)
	if r.stdout != "payload" {
		t.Fatalf("stdout %q, want payload", r.stdout)
	}
	w.stop(t)
	log := w.log.String()
	// The duration is the attempt's, so it goes with "failed", not with
	// "will retry" (which would read as the delay before the retry).
	for _, s := range []string{"attempt 1/5: failed in ", ", will retry: exit status 3: flaky: try again", "attempt 2/5: ok in "} {
		if !strings.Contains(log, s) {
			t.Fatalf("worker log lacks %q:\n%s", s, log)
		}
	}
}

func TestWorkerAttemptsExhausted(t *testing.T) {
	t.Parallel()
	engine := tempEngine(t)
	w := startWorker(t, engine, "broken", "--attempts", "2", "--backoff", "10ms", "--exec", `echo "still broken" >&2; exit 1`)
	r := run(t, nil, "request", "broken", "--data", "x", "--engine", engine)
	r.want(t, 1, "rsvp: request failed: failed: exit status 1: still broken")
	w.stop(t)
	if log := w.log.String(); !strings.Contains(log, "attempt 2/2: failed in ") || !strings.Contains(log, ", no attempts left: exit status 1: still broken") {
		t.Fatalf("worker log:\n%s", log)
	}
}

func TestWorkerKillsCommandAtDeadline(t *testing.T) {
	t.Parallel()
	engine := tempEngine(t)
	// The sleep is a child of sh: killing sh alone would leave it holding
	// the output open.
	w := startWorker(t, engine, "slow", "--exec", "sleep 60; echo done")
	start := time.Now()
	r := run(t, nil, "request", "slow", "--data", "x", "--deadline", "500ms", "--engine", engine)
	r.want(t, 1, "rsvp: request failed: expired: ")
	if took := time.Since(start); took > 15*time.Second {
		t.Fatalf("request took %s: the command was not killed at the deadline", took)
	}
	w.stop(t)
	if log := w.log.String(); !strings.Contains(log, "attempt 1/5: killed") {
		t.Fatalf("worker log:\n%s", log)
	}
}

var awaitHint = regexp.MustCompile(`run 'rsvp await ([^']+)'`)

func TestRequestTimeoutThenAwait(t *testing.T) {
	t.Parallel()
	engine := tempEngine(t)
	// No worker yet: the request waits in vain, but stays queued.
	r := run(t, nil, "request", "later", "--data", "patience", "--timeout", "200ms", "--engine", engine)
	r.want(t, 1, "no reply within 200ms to request ")
	m := awaitHint.FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("stderr names no id to await:\n%s", r.stderr)
	}
	startWorker(t, engine, "later", "--exec", "cat")
	r = run(t, nil, "await", m[1], "--engine", engine, "--timeout", "20s")
	r.want(t, 0)
	if r.stdout != "patience" {
		t.Fatalf("await: stdout %q, want patience", r.stdout)
	}
}

func TestAwaitTimeout(t *testing.T) {
	t.Parallel()
	r := run(t, nil, "await", "no-such-request", "--timeout", "100ms", "--engine", "embedded:mem")
	r.want(t, 1, "no reply within 100ms to request no-such-request")
}

// TestAwaitUnknownID: at the timeout of 'rsvp await' on an id the engine
// has no record of (a typo, or a request of another engine), the message
// says so rather than that the request "stays queued".
func TestAwaitUnknownID(t *testing.T) {
	t.Parallel()
	engine := tempEngine(t)
	r := run(t, nil, "send", "q", "--data", "x", "--engine", engine) // the engine exists
	r.want(t, 0)
	r = run(t, nil, "await", "no-such-request", "--timeout", "100ms", "--engine", engine)
	r.want(t, 1, "no reply within 100ms to request no-such-request", "the engine has no record: no event log, reply or dead letter, and it is not queued")
	if strings.Contains(r.stderr, "stays queued") {
		t.Fatalf("stderr says an unknown request stays queued:\n%s", r.stderr)
	}
}

func TestWorkerStopsGracefully(t *testing.T) {
	t.Parallel()
	engine := tempEngine(t)
	started := filepath.Join(t.TempDir(), "started")
	w := startWorker(t, engine, "drain", "--exec", "touch "+started+"; sleep 0.3; cat")
	r := run(t, nil, "send", "drain", "--data", "finished", "--engine", engine)
	r.want(t, 0)
	id := strings.TrimSpace(r.stdout)
	waitUntil(t, "command started", func() bool { _, err := os.Stat(started); return err == nil })
	if code := w.stop(t); code != 0 {
		t.Fatalf("worker exit code %d, want 0; log:\n%s", code, w.log)
	}
	if log := w.log.String(); !strings.Contains(log, "attempt 1/5: ok") || !strings.Contains(log, "rsvp worker: stopped") {
		t.Fatalf("the running request was not finished before the stop; log:\n%s", log)
	}
	// The worker owned the engine; this opens it again, from disk.
	r = run(t, nil, "await", id, "--engine", engine, "--timeout", "5s")
	r.want(t, 0)
	if r.stdout != "finished" {
		t.Fatalf("await: stdout %q, want finished", r.stdout)
	}
}

func TestWorkerShutdownTimeoutRedelivers(t *testing.T) {
	t.Parallel()
	engine := tempEngine(t)
	started := filepath.Join(t.TempDir(), "started")
	w := startWorker(t, engine, "stuck", "--shutdown-timeout", "100ms", "--lease", "1s", "--exec", "touch "+started+"; sleep 60")
	r := run(t, nil, "send", "stuck", "--data", "second chance", "--engine", engine)
	r.want(t, 0)
	id := strings.TrimSpace(r.stdout)
	waitUntil(t, "command started", func() bool { _, err := os.Stat(started); return err == nil })
	if code := w.stop(t); code != 0 {
		t.Fatalf("worker exit code %d, want 0; log:\n%s", code, w.log)
	}
	if log := w.log.String(); !strings.Contains(log, "running requests were killed") {
		t.Fatalf("worker log:\n%s", log)
	}
	// The stopped worker owned the engine, so this one opens it again. The
	// engine does not keep the "deliver again now" of the abandoned request
	// over its restart: the request comes back when its lease runs out,
	// which --lease made short. (The queue keeps the longest lease its
	// workers asked for, so the first one asked for it too.)
	startWorker(t, engine, "stuck", "--exec", "cat", "--lease", "1s")
	r = run(t, nil, "await", id, "--engine", engine, "--timeout", "20s")
	r.want(t, 0)
	if r.stdout != "second chance" {
		t.Fatalf("await: stdout %q, want the request handled again", r.stdout)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"no command":        {nil, "Commands:"},
		"unknown command":   {[]string{"bogus"}, `unknown command "bogus"`},
		"unknown top flag":  {[]string{"--bogus", "request"}, "flag provided but not defined: -bogus"},
		"unknown flag":      {[]string{"request", "q", "--bogus"}, "rsvp request: flag provided but not defined: -bogus"},
		"bad flag value":    {[]string{"request", "q", "--timeout", "soon"}, `invalid value "soon" for flag -timeout`},
		"missing queue":     {[]string{"request", "--data", "x"}, "rsvp request: missing QUEUE"},
		"extra argument":    {[]string{"send", "q", "r"}, `rsvp send: unexpected argument "r"`},
		"data and file":     {[]string{"request", "q", "--data", "x", "--file", "f"}, "--data or --file, not both"},
		"bad engine":        {[]string{"request", "q", "--data", "x", "--engine", "redis://db"}, `engine "redis://db" is not one of embedded:DIR, embedded:mem, nats://HOST:PORT, tls://HOST:PORT, postgres://...`},
		"bad global engine": {[]string{"--engine", "mem", "send", "q"}, `engine "mem" is not one of`},
		"engine no dir":     {[]string{"request", "q", "--engine", "embedded:"}, "names no directory"},
		"bad queue":         {[]string{"request", "bad.queue", "--data", "x"}, `queue "bad.queue" has character '.' at byte 3`},
		"bad id":            {[]string{"send", "q", "--id", "a b"}, `id "a b" has character ' '`},
		"bad header":        {[]string{"send", "q", "--header", "novalue"}, "want KEY=VALUE"},
		"reserved header":   {[]string{"send", "q", "--data", "x", "--header", "Rsvp-Id=x"}, "reserved prefix"},
		"negative timeout":  {[]string{"request", "q", "--timeout", "-1s"}, "--timeout -1s is negative"},
		"missing id":        {[]string{"await"}, "rsvp await: missing ID"},
		"bad await id":      {[]string{"await", "x.y"}, `correlation id "x.y" has character '.'`},
		"worker no exec":    {[]string{"worker", "q"}, "missing --exec CMD"},
		"worker bad queue":  {[]string{"worker", "a.b", "--exec", "cat"}, `queue "a.b" has character '.'`},
		"worker zero conc":  {[]string{"worker", "q", "--exec", "cat", "--concurrency", "0"}, "--concurrency 0 is below 1"},
		"demo zero":         {[]string{"demo", "--requests", "0"}, "must be at least 1"},
		"demo many":         {[]string{"demo", "--requests", "1000000000"}, "--requests 1000000000 is above 100000"},
		"demo conc":         {[]string{"demo", "--concurrency", "1000000000"}, "--concurrency 1000000000 is above 10000"},
		"worker huge conc":  {[]string{"worker", "q", "--exec", "cat", "--concurrency", "1000000"}, "--concurrency 1000000 is above 10000"},
		"empty session":     {[]string{"send", "q", "--data", "x", "--session", ""}, "--session is empty"},
		"long session":      {[]string{"send", "q", "--data", "x", "--session", strings.Repeat("k", 257)}, "longer than 256"},
		"bad reply session": {[]string{"send", "q", "--data", "x", "--reply-session", "a\x01"}, "control character"},
		"help unknown":      {[]string{"help", "bogus"}, `unknown command "bogus"`},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := run(t, nil, tc.args...)
			r.want(t, 2, tc.want)
			if r.stdout != "" {
				t.Fatalf("stdout %q, want nothing", r.stdout)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}} {
		r := run(t, nil, args...)
		r.want(t, 0)
		if !strings.Contains(r.stdout, "Commands:") || r.stderr != "" {
			t.Fatalf("%q: stdout %q, stderr %q", args, r.stdout, r.stderr)
		}
	}
	for name := range commands() {
		for _, args := range [][]string{{"help", name}, {name, "--help"}} {
			r := run(t, nil, args...)
			r.want(t, 0)
			if !strings.Contains(r.stdout, "Usage: rsvp "+name) || !strings.Contains(r.stdout, "Example:") {
				t.Fatalf("%q: help lacks usage or example:\n%s", args, r.stdout)
			}
		}
	}
}

func TestUnreachableEngine(t *testing.T) {
	t.Parallel()
	r := run(t, nil, "request", "q", "--data", "x", "--engine", "nats://127.0.0.1:1")
	r.want(t, 1, "rsvp: cannot open engine nats://127.0.0.1:1: ", "no servers available")

	r = run(t, nil, "send", "q", "--data", "x", "--engine", "nats://user:secret@127.0.0.1:1")
	r.want(t, 1, "rsvp: cannot open engine nats://***@127.0.0.1:1: ")
	if strings.Contains(r.stderr, "secret") {
		t.Fatalf("stderr shows the password:\n%s", r.stderr)
	}
}

var (
	demoReply   = regexp.MustCompile(`(?m)^img-\d{3}\.jpg  https://images\.example\.com/thumb/img-\d{3}\.jpg  \d+\.\dms$`)
	demoSummary = regexp.MustCompile(`(?m)^demo: 5 requests, 5 replies, 0 failed, p50 \d+\.\dms, max \d+\.\dms, \d+ req/s$`)
)

func TestDemo(t *testing.T) {
	t.Parallel()
	r := run(t, nil, "demo", "--requests", "5", "--concurrency", "2")
	r.want(t, 0)
	if n := len(demoReply.FindAllString(r.stdout, -1)); n != 5 {
		t.Fatalf("%d reply lines, want 5:\n%s", n, r.stdout)
	}
	if !demoSummary.MatchString(r.stdout) || !strings.Contains(r.stdout, "img-003.jpg: attempt 1 failed") {
		t.Fatalf("no summary or no retry:\n%s", r.stdout)
	}
}

// TestDemoHelp checks that 'rsvp demo --help' gives the engine the demo
// uses without --engine: a temporary one, not the usual default.
func TestDemoHelp(t *testing.T) {
	t.Parallel()
	r := run(t, nil, "demo", "--help")
	r.want(t, 0)
	if strings.Contains(r.stdout, defaultEngine) || !strings.Contains(r.stdout, "(default: a new temporary directory, removed afterwards)") {
		t.Fatalf("demo --help does not say that the engine is a temporary directory by default:\n%s", r.stdout)
	}
}

// TestTwoProcesses runs a worker in a child process that owns the engine
// directory, and a request in this one, which connects to the child's
// engine through the address the child wrote there.
func TestTwoProcesses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	engine := "embedded:" + dir
	child := exec.Command(os.Args[0], "worker", "thumbnail", "--exec", "cat", "--engine", engine)
	child.Env = append(os.Environ(), childEnv+"=1")
	log := newLogBuffer()
	child.Stderr = log
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			_ = child.Process.Kill()
			<-exited
		}
	})
	log.waitFor(t, "rsvp worker: ready")
	if _, err := os.Stat(filepath.Join(dir, "engine.json")); err != nil {
		t.Fatalf("the child serves the engine but wrote no address: %v", err)
	}

	r := run(t, nil, "request", "thumbnail", "--data", "hi", "--engine", engine)
	r.want(t, 0)
	if r.stdout != "hi" {
		t.Fatalf("stdout %q, want hi", r.stdout)
	}

	if err := child.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		reaped = true
		if err != nil {
			t.Fatalf("child: %v; its log:\n%s", err, log)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("child did not stop on SIGTERM within %s; its log:\n%s", waitTimeout, log)
	}
	if !strings.Contains(log.String(), "attempt 1/5: ok") {
		t.Fatalf("child log:\n%s", log)
	}
	if _, err := os.Stat(filepath.Join(dir, "engine.json")); !os.IsNotExist(err) {
		t.Fatalf("engine.json left behind after the child stopped: %v", err)
	}
}

// TestWorkerKillsCommandBeyondStdoutLimit: a command that writes more
// than the reply limit to stdout has failed for good, so it is killed
// then, not left running (and holding its request) until a deadline that
// may never come.
func TestWorkerKillsCommandBeyondStdoutLimit(t *testing.T) {
	t.Parallel()
	engine := tempEngine(t)
	w := startWorker(t, engine, "chatty", "--exec", "yes")
	r := run(t, nil, "request", "chatty", "--data", "x", "--timeout", "15s", "--engine", engine)
	r.want(t, 1, "rsvp: request failed: failed: ", "more than the limit of 1048576 bytes to stdout")
	w.stop(t)
	if log := w.log.String(); !strings.Contains(log, "attempt 1/5: failed permanently") {
		t.Fatalf("worker log:\n%s", log)
	}
}

// TestAwaitLosesEngine: 'rsvp await' connected to the embedded engine of
// another rsvp process ends with a clear error when that process exits,
// as a worker does, instead of waiting for ever (--timeout 0) for a reply
// that cannot come.
func TestAwaitLosesEngine(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	engine := "embedded:" + dir
	w := startWorker(t, engine, "other", "--exec", "cat") // runs the engine
	r := run(t, nil, "send", "nobody-serves", "--data", "kept", "--engine", engine)
	r.want(t, 0)
	id := strings.TrimSpace(r.stdout)
	r = runUntilEngineLost(t, w, dir, "SUB rsvp.notify."+id+".", "await", id, "--timeout", "0", "--engine", engine)
	r.want(t, 1, "lost the engine", "run 'rsvp await "+id+"'")
}

// runUntilEngineLost runs the command args, whose engine in dir w's process
// runs, until it subscribes to a subject starting with sub (the wait has
// begun), then stops w, and returns what the command did once it ended.
func runUntilEngineLost(t *testing.T, w *worker, dir, sub string, args ...string) result {
	t.Helper()
	// Guests reach the engine through a proxy that tells when the command
	// has subscribed: it is waiting then.
	subscribed := make(chan struct{})
	var once sync.Once
	proxyEngine(t, dir, func(toServer bool, chunk []byte) bool {
		if toServer && bytes.Contains(chunk, []byte(sub)) {
			once.Do(func() { close(subscribed) })
		}
		return false
	})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan result, 1)
	go func() {
		var stdout, stderr bytes.Buffer
		code := Run(ctx, args, nil, &stdout, &stderr)
		done <- result{code: code, stdout: stdout.String(), stderr: stderr.String()}
	}()
	select {
	case <-subscribed:
	case r := <-done:
		t.Fatalf("%q ended before the engine was lost: exit %d, %s", args, r.code, r.stderr)
	case <-time.After(waitTimeout):
		t.Fatalf("%q did not subscribe to %s within %s", args, sub, waitTimeout)
	}
	if code := w.stop(t); code != 0 {
		t.Fatalf("worker exit code %d; its log:\n%s", code, w.log)
	}
	select {
	case r := <-done:
		return r
	case <-time.After(waitTimeout):
		cancel()
		r := <-done
		t.Fatalf("%q still waiting %s after the process that ran its engine stopped; interrupted then: exit %d, %s", args, waitTimeout, r.code, r.stderr)
		return r
	}
}

// proxyEngine makes the guests of the embedded engine in dir, run by this
// process, connect through a tcpproxy with watcher: it rewrites the
// address the engine's process wrote there.
func proxyEngine(t *testing.T, dir string, watcher tcpproxy.Watcher) {
	t.Helper()
	file := filepath.Join(dir, "engine.json")
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var info map[string]any
	if err := json.Unmarshal(b, &info); err != nil {
		t.Fatal(err)
	}
	u, err := neturl.Parse(fmt.Sprint(info["url"]))
	if err != nil {
		t.Fatal(err)
	}
	u.Host = tcpproxy.Start(t, u.Host, func() tcpproxy.Watcher { return watcher }).Addr()
	info["url"] = u.String()
	if b, err = json.Marshal(info); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
