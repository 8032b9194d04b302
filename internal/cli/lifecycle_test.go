package cli

import (
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// serveProc is 'rsvp serve' running in a child process, as cmd/rsvp runs
// it: its context ends on SIGINT or SIGTERM.
type serveProc struct {
	url, addr string
	log       *logBuffer
	cmd       *exec.Cmd
	exited    chan struct{} // closed when the child has exited; then err is set
	err       error
}

// startServeProc starts 'rsvp serve --addr 127.0.0.1:0 args...' in a child
// process and waits until it listens. The child is killed at the end of
// the test if it is still running.
func startServeProc(t *testing.T, args ...string) *serveProc {
	t.Helper()
	return startServeProcEnv(t, nil, args...)
}

// startServeProcEnv is startServeProc with env added to the child's
// environment.
func startServeProcEnv(t *testing.T, env []string, args ...string) *serveProc {
	t.Helper()
	p := &serveProc{log: newLogBuffer(), exited: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], append([]string{"serve", "--addr", "127.0.0.1:0"}, args...)...)
	p.cmd.Env = append(append(os.Environ(), childEnv+"=1"), env...)
	p.cmd.Stderr, p.cmd.Stdout = p.log, io.Discard
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	p.log.waitFor(t, "listening on http://")
	m := listeningRE.FindStringSubmatch(p.log.String())
	if m == nil {
		t.Fatalf("no address in the log:\n%s", p.log)
	}
	p.url, p.addr = m[1], strings.TrimPrefix(m[1], "http://")
	return p
}

func (p *serveProc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// wait waits up to d for the child to exit and returns its wait error;
// it fails the test if the child is still running then.
func (p *serveProc) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(d):
		t.Fatalf("rsvp serve did not exit within %s; its log:\n%s", d, p.log)
		return nil
	}
}

func (p *serveProc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// TestServeDrainsOnSIGTERM: on SIGTERM, rsvp serve stops accepting
// connections at once, lets the running handler finish (its request
// succeeds on its first attempt, after the signal), and exits 0.
func TestServeDrainsOnSIGTERM(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	engine := "embedded:" + dir
	p := startServeProc(t, "--demo", "--engine", engine, "--shutdown-timeout", "10s")

	resp, data := call(t, "POST", p.url+"/v1/queues/thumbnail/requests", `{"url":"https://example.com/drain.png"}`, "Content-Type", "application/json")
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		t.Fatalf("submit: %s\n%s", resp.Status, data)
	}
	id := strings.TrimPrefix(loc, "/v1/requests/")
	// The demo handler takes 300ms: catch it running.
	waitUntil(t, "the thumbnail handler runs", func() bool {
		resp, data := call(t, "GET", p.url+loc, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("the request finished before the test saw it running: %s\n%s", resp.Status, data)
		}
		return strings.Contains(data, `"state":"running"`)
	})
	signalled := time.Now()
	p.signal(t, syscall.SIGTERM)

	// The listener closes at once: new connections are refused while the
	// handler still runs.
	waitUntil(t, "new connections refused after SIGTERM", func() bool {
		c, err := net.DialTimeout("tcp", p.addr, time.Second)
		switch {
		case err == nil:
			c.Close()
			return false
		case errors.Is(err, syscall.ECONNRESET):
			return false // queued in the backlog as the listener closed
		case !errors.Is(err, syscall.ECONNREFUSED):
			t.Fatalf("dial after SIGTERM: %v, want connection refused", err)
		}
		return true
	})
	if !p.alive() {
		t.Fatalf("rsvp serve exited before it was seen refusing connections; its log:\n%s", p.log)
	}
	if err := p.wait(t, waitTimeout); err != nil {
		t.Fatalf("rsvp serve: %v, want exit status 0; its log:\n%s", err, p.log)
	}
	for _, want := range []string{`msg="shutting down" timeout=10s`, "msg=stopped"} {
		if !strings.Contains(p.log.String(), want) {
			t.Fatalf("no %q in the log:\n%s", want, p.log)
		}
	}

	// On the same engine, without responders: the request is done.
	s := startServe(t, "--engine", engine)
	resp, data = call(t, "GET", s.url+loc, "")
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("status after the restart: %s, want 303 to the result\n%s", resp.Status, data)
	}
	_, data = call(t, "GET", s.url+loc+"?redirect=false", "")
	var st struct {
		State    string `json:"state"`
		Attempts int    `json:"attempts"`
	}
	if err := json.Unmarshal([]byte(data), &st); err != nil || st.State != "succeeded" || st.Attempts != 1 {
		t.Fatalf("status after the restart: %s (%v), want succeeded after 1 attempt", data, err)
	}
	// The handler finished after the signal: it was drained, not cut off.
	r := run(t, nil, "requests", "get", id, "--engine", engine, "--output", "json")
	r.want(t, 0)
	var got requestJSON
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("requests get: %v\n%s", err, r.stdout)
	}
	if len(got.Attempts) != 1 || got.Attempts[0].Outcome != "succeeded" || !got.Attempts[0].EndedAt.After(signalled) {
		t.Fatalf("attempts %+v, want one that succeeded after the signal at %v", got.Attempts, signalled)
	}
}

// TestServeSecondSIGTERMExitsAtOnce: a second SIGTERM during a long drain
// ends the process within hardGrace, by the signal's default action.
func TestServeSecondSIGTERMExitsAtOnce(t *testing.T) {
	t.Parallel()
	// Not embedded:mem: its temporary directory would outlive the kill.
	p := startServeProc(t, "--engine", "embedded:"+t.TempDir(), "--shutdown-timeout", "2m")

	holdDrain(t, p.addr) // the server waits for it until the shutdown timeout

	p.signal(t, syscall.SIGTERM)
	p.log.waitFor(t, `msg="shutting down"`)
	if !p.alive() {
		t.Fatalf("rsvp serve exited on the first SIGTERM with a request open; its log:\n%s", p.log)
	}
	// Signal again: the second signal ends it, by the signal's default
	// action once the command had hardGrace to stop its own way.
	deadline := time.After(10 * time.Second) // the drain would take 2m
	for tick := time.Tick(50 * time.Millisecond); p.alive(); {
		p.signal(t, syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-tick:
		case <-deadline:
			t.Fatalf("rsvp serve did not exit within 10s of a second SIGTERM; its log:\n%s", p.log)
		}
	}
	err := p.err
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("rsvp serve: %v, want killed by SIGTERM; its log:\n%s", err, p.log)
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("rsvp serve: %v, want killed by SIGTERM", err)
	}
}

// TestServeShutdownTimeoutZero: --shutdown-timeout 0 means no time to
// finish, as for 'rsvp worker': a SIGTERM with a request still open ends
// the server at once. (It waited the library's default, 30s.)
func TestServeShutdownTimeoutZero(t *testing.T) {
	t.Parallel()
	p := startServeProc(t, "--engine", "embedded:"+t.TempDir(), "--shutdown-timeout", "0")

	holdDrain(t, p.addr)
	p.signal(t, syscall.SIGTERM)
	p.log.waitFor(t, `msg="shutting down"`)
	// A shutdown timeout of 0 gives open requests no time; allow 10s for
	// closing the engine.
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("rsvp serve: %v; its log:\n%s", err, p.log)
	}
}

// slowListener accepts connections after a delay: a collector far away
// (its TLS handshake takes that long).
type slowListener struct {
	net.Listener
	delay time.Duration
}

func (l *slowListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		time.Sleep(l.delay) // the simulated network latency, not synchronisation
	}
	return c, err
}

// TestServeFlushesTelemetryAfterATimedOutDrain: the spans of requests
// served before SIGTERM are exported at shutdown even when an open request
// held the drain for all of --shutdown-timeout: the flush has time of its
// own. (It shared the drain's deadline, already passed, and exported
// nothing.)
func TestServeFlushesTelemetryAfterATimedOutDrain(t *testing.T) {
	t.Parallel()
	var exports atomic.Int32
	col := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/v1/traces" {
			exports.Add(1)
		}
	}))
	col.Listener = &slowListener{Listener: col.Listener, delay: 500 * time.Millisecond}
	col.StartTLS()
	defer col.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: col.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}

	p := startServeProcEnv(t, []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + col.URL, "OTEL_EXPORTER_OTLP_CERTIFICATE=" + caFile,
		"OTEL_BSP_SCHEDULE_DELAY=600000"}, // spans leave only at the shutdown flush
		"--engine", "embedded:"+t.TempDir(), "--shutdown-timeout", "1s")

	resp, data := call(t, "POST", p.url+"/v1/queues/q/requests", "traced", "Content-Type", "text/plain")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit: %s %s", resp.Status, data)
	}
	holdDrain(t, p.addr) // for the whole timeout
	p.signal(t, syscall.SIGTERM)
	if err := p.wait(t, waitTimeout); err != nil {
		t.Fatalf("rsvp serve: %v; log:\n%s", err, p.log)
	}
	if exports.Load() == 0 {
		t.Fatalf("rsvp serve exited without exporting the spans of the request it served; log:\n%s", p.log)
	}
}

// TestWorkerBackgroundChild: a command that exits 0 after writing its
// reply, but leaves a background child holding stdout, succeeded: its
// stdout is the reply. The child is killed with the attempt. (The worker
// reported "WaitDelay expired" as a failure, and left the child running.)
func TestWorkerBackgroundChild(t *testing.T) {
	t.Parallel()
	engine := tempEngine(t)
	pgidFile := filepath.Join(t.TempDir(), "pgid")
	w := startWorker(t, engine, "bg", "--attempts", "1", "--exec", `echo $$ > `+pgidFile+`; printf HELLO; sleep 20 &`)
	r := run(t, nil, "request", "bg", "--data", "x", "--engine", engine)
	b, err := os.ReadFile(pgidFile)
	if err != nil {
		t.Fatal(err)
	}
	pgid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })
	if r.code != 0 || r.stdout != "HELLO" {
		t.Errorf("request: exit %d, stdout %q, stderr %q; want 0 and HELLO\nworker log:\n%s", r.code, r.stdout, r.stderr, w.log)
	}
	// (Killed, it is gone once reaped.)
	waitUntil(t, "the command's background child is gone with its attempt", func() bool {
		return syscall.Kill(-pgid, 0) != nil
	})
}

// TestWorkerSecondSignalKillsCommands: a second SIGTERM ends 'rsvp
// worker' at once, and kills the commands it was running (each in a
// process group of its own): they were left running, orphaned, and their
// requests were delivered again after the lease, to run a second time
// beside them.
func TestWorkerSecondSignalKillsCommands(t *testing.T) {
	t.Parallel()
	engine := tempEngine(t)
	pgidFile := filepath.Join(t.TempDir(), "pgid")
	child := exec.Command(os.Args[0], "worker", "slow", "--engine", engine, "--shutdown-timeout", "2m",
		"--exec", `echo $$ > `+pgidFile+`.tmp; mv `+pgidFile+`.tmp `+pgidFile+`; sleep 60`)
	child.Env = append(os.Environ(), childEnv+"=1")
	log := newLogBuffer()
	child.Stderr = log
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var werr error
	go func() { werr = child.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = child.Process.Kill()
		<-exited
	})
	log.waitFor(t, "rsvp worker: ready")

	r := run(t, nil, "send", "slow", "--data", "x", "--engine", engine)
	r.want(t, 0)
	var pgid int
	waitUntil(t, "the command runs", func() bool {
		b, err := os.ReadFile(pgidFile)
		if err != nil {
			return false
		}
		pgid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	t.Cleanup(func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })

	_ = child.Process.Signal(syscall.SIGTERM)
	log.waitFor(t, "rsvp worker: stopping")
	// One more signal, once the first was taken (two sent back to back may
	// reach the process as one: the kernel merges a pending signal).
	_ = child.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("worker did not exit on a second SIGTERM; log:\n%s", log)
	}
	var ee *exec.ExitError
	if !errors.As(werr, &ee) || ee.ExitCode() != 1 {
		t.Errorf("the worker ended with %v, want exit status 1 (it stopped its own way); its log:\n%s", werr, log)
	}
	// The worker is gone; its command should be too.
	waitUntil(t, "the orphaned command is gone", func() bool {
		return syscall.Kill(-pgid, 0) != nil
	})
}

// holdDrain opens a request to the server at addr whose body never
// completes: it holds a graceful shutdown open until its timeout. The
// connection closes with the test.
func holdDrain(t *testing.T, addr string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := fmt.Fprint(conn, "POST /v1/queues/q/requests HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\npart"); err != nil {
		t.Fatal(err)
	}
}
