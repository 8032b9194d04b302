package cli

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// waitTimeout bounds every wait of the tests.
const waitTimeout = 30 * time.Second

// result is what a Run call produced.
type result struct {
	code           int
	stdout, stderr string
}

// run runs the command line args with stdin (nil: empty) and returns what
// it produced.
func run(t *testing.T, stdin io.Reader, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*waitTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := Run(ctx, args, stdin, &stdout, &stderr)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// want checks that r has exit code code and that its stderr contains
// every one of wantStderr.
func (r result) want(t *testing.T, code int, wantStderr ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\nstdout: %q\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
	for _, s := range wantStderr {
		if !strings.Contains(r.stderr, s) {
			t.Fatalf("stderr does not contain %q:\n%s", s, r.stderr)
		}
	}
}

// logBuffer is a buffer that goroutines write to while a test reads it and
// waits for text to appear.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed on the next write
}

func newLogBuffer() *logBuffer {
	return &logBuffer{changed: make(chan struct{})}
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.changed)
	b.changed = make(chan struct{})
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor waits until the buffer contains s, failing the test after
// waitTimeout.
func (b *logBuffer) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		b.mu.Lock()
		found, changed := strings.Contains(b.buf.String(), s), b.changed
		b.mu.Unlock()
		if found {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no %q within %s in:\n%s", s, waitTimeout, b.String())
		}
	}
}

// waitUntil waits until cond holds, checking it every few milliseconds,
// failing the test after waitTimeout.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("%s: not within %s", what, waitTimeout)
		}
	}
}

// worker is a worker command running in a goroutine of the test.
type worker struct {
	log    *logBuffer
	cancel context.CancelFunc
	done   chan int // its exit code
}

// startWorker runs 'rsvp worker queue --engine engine extra...' until
// stop or the end of the test, and waits until it is ready.
func startWorker(t *testing.T, engine, queue string, extra ...string) *worker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &worker{log: newLogBuffer(), cancel: cancel, done: make(chan int, 1)}
	args := append([]string{"worker", queue, "--engine", engine}, extra...)
	go func() { w.done <- Run(ctx, args, nil, io.Discard, w.log) }()
	t.Cleanup(func() {
		if code := w.stop(t); code != 0 {
			t.Errorf("worker exit code %d, want 0; its log:\n%s", code, w.log)
		}
	})
	w.log.waitFor(t, "rsvp worker: ready")
	return w
}

// stop stops the worker as SIGINT would and returns its exit code (0 when
// it was stopped before).
func (w *worker) stop(t *testing.T) int {
	t.Helper()
	w.cancel()
	select {
	case code, ok := <-w.done:
		if !ok {
			return 0 // stopped before
		}
		close(w.done)
		return code
	case <-time.After(2 * waitTimeout):
		t.Fatalf("worker did not stop within %s; its log:\n%s", 2*waitTimeout, w.log)
		return -1
	}
}
