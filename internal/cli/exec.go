package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rsvp-go/rsvp"
)

const (
	// exitPermanent is the exit status by which a command says that its
	// request cannot succeed: EX_DATAERR of sysexits.h.
	exitPermanent = 65
	// stderrTail is how much of the end of a command's stderr a failure
	// message carries.
	stderrTail = 2 << 10
	// waitDelay is how long a command's output may stay open after it
	// exited or was killed (held by a child it left behind).
	waitDelay = time.Second
)

// errKilled: the command was killed because its context ended.
var errKilled = errors.New("command killed")

// errStdoutFull: the command was killed because it wrote more to stdout
// than a reply may hold.
var errStdoutFull = errors.New("stdout beyond the limit")

// execHandler answers requests by running a shell command.
type execHandler struct {
	command  string
	attempts int       // HandleOptions.MaxAttempts, for the log
	log      io.Writer // one line per attempt
}

// ServeRequest implements rsvp.Handler.
func (h *execHandler) ServeRequest(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
	start := time.Now()
	body, err := h.run(ctx, m)
	h.logAttempt(m, time.Since(start), err)
	if err != nil {
		return nil, err
	}
	return &rsvp.Reply{Body: body}, nil
}

// run runs the command on m and returns its stdout, or why it failed.
func (h *execHandler) run(ctx context.Context, m *rsvp.Message) ([]byte, error) {
	// Beyond the limit of stdout the attempt has failed for good: the
	// command is killed then rather than left running.
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	cmd := exec.CommandContext(ctx, "sh", "-c", h.command)
	stdout := &cappedBuffer{max: maxBody, full: func() { stop(errStdoutFull) }}
	stderr := &tailBuffer{max: stderrTail}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(m.Body), stdout, stderr
	cmd.Env = append(os.Environ(), requestEnv(m)...)
	// A process group of its own: Ctrl-C in a terminal reaches the worker
	// only, which lets the command finish; a kill reaches the command's
	// children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	err := cmd.Run()
	if cmd.Process != nil {
		// What the command left running in its group (a background child
		// holding its output, say) ends with the attempt.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState.Success() {
		err = nil // it exited 0; a child it left held its output open
	}
	if err := commandError(ctx, err, stdout, stderr); err != nil {
		return nil, err
	}
	return stdout.buf.Bytes(), nil
}

// requestEnv returns the environment variables that describe m to the
// command.
func requestEnv(m *rsvp.Message) []string {
	return []string{
		"RSVP_ID=" + m.ID,
		"RSVP_CORRELATION_ID=" + m.CorrelationID,
		"RSVP_QUEUE=" + m.Queue,
		"RSVP_ATTEMPT=" + strconv.Itoa(m.Attempt),
		"RSVP_TYPE=" + m.Type,
		"RSVP_CONTENT_TYPE=" + m.ContentType,
	}
}

// commandError turns the outcome of a command into the handler's error:
// nil, a retryable error, or a permanent one.
func commandError(ctx context.Context, err error, stdout *cappedBuffer, stderr *tailBuffer) error {
	var exitErr *exec.ExitError
	switch {
	case stdout.overflow && (err == nil || errors.Is(context.Cause(ctx), errStdoutFull)):
		return rsvp.Permanent(fmt.Errorf("the command wrote more than the limit of %d bytes to stdout", maxBody))
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return withStderr(fmt.Errorf("%w: %w", errKilled, context.Cause(ctx)), stderr)
	case errors.As(err, &exitErr) && exitErr.ExitCode() == exitPermanent:
		return rsvp.Permanent(withStderr(err, stderr))
	case errors.As(err, &exitErr):
		return withStderr(err, stderr)
	default:
		return withStderr(fmt.Errorf("run command: %w", err), stderr)
	}
}

// withStderr appends the end of the command's stderr to err.
func withStderr(err error, stderr *tailBuffer) error {
	if tail := stderr.String(); tail != "" {
		return fmt.Errorf("%w: %s", err, tail)
	}
	return err
}

// logAttempt writes one line about an attempt: id, attempt, outcome,
// duration and, for a failure, why.
func (h *execHandler) logAttempt(m *rsvp.Message, took time.Duration, err error) {
	outcome, next := "ok", ""
	switch {
	case err == nil:
	case errors.Is(err, errKilled):
		outcome = "killed"
	case rsvp.IsPermanent(err):
		outcome = "failed permanently"
	case m.Attempt >= h.attempts:
		outcome, next = "failed", ", no attempts left"
	default:
		outcome, next = "failed", ", will retry"
	}
	line := fmt.Sprintf("rsvp worker: %s attempt %d/%d: %s in %s%s", m.ID, m.Attempt, h.attempts, outcome, took.Round(100*time.Microsecond), next)
	if err != nil {
		line += ": " + oneLine(err.Error(), 200)
	}
	fmt.Fprintln(h.log, line)
}

// cappedBuffer keeps the first max bytes written to it, and whether more
// came. It never fails a write, so that the command is not killed by a
// broken pipe.
type cappedBuffer struct {
	buf      bytes.Buffer
	max      int
	overflow bool
	full     func() // if not nil, called once when more than max came
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if room := b.max - b.buf.Len(); n > room {
		if !b.overflow && b.full != nil {
			b.full()
		}
		b.overflow = true
		p = p[:max(room, 0)]
	}
	b.buf.Write(p)
	return n, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	buf []byte
	max int
	cut bool // bytes were dropped from the front
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if n > t.max {
		t.buf = append(t.buf[:0], p[n-t.max:]...)
		t.cut = true
		return n, nil
	}
	if over := len(t.buf) + n - t.max; over > 0 {
		t.buf = t.buf[:copy(t.buf, t.buf[over:])]
		t.cut = true
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

// String returns the text kept, trimmed, starting at a whole line when the
// front was cut. (The library makes a failure's text valid UTF-8 without
// NULs before it is stored.)
func (t *tailBuffer) String() string {
	b := t.buf
	if !t.cut {
		return strings.TrimSpace(string(b))
	}
	if i := bytes.IndexByte(b, '\n'); i >= 0 && i < len(b)-1 {
		b = b[i+1:]
	}
	return "... " + strings.TrimSpace(string(b))
}
