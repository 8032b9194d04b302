package cli

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

const requestUsage = `Usage: rsvp request QUEUE [flags]

Send a request to QUEUE and wait for its reply; write the reply body to
stdout exactly as the responder made it. The request body comes from --data,
from --file, or else from stdin (when stdin is not a terminal).

A failed request prints "rsvp: request failed: CODE: MESSAGE" to stderr and
exits 1. If no reply comes within --timeout, rsvp prints the correlation id
of the request and exits 1; the request stays queued (unless --deadline says
otherwise), and 'rsvp await ID' waits for it again.

Example:
  rsvp worker upper --exec 'tr a-z A-Z' &
  echo hello | rsvp request upper          # prints HELLO
  rsvp request thumbnail --content-type application/json \
      --data '{"url": "https://example.com/cat.png"}'   # 'rsvp serve --demo' answers it
`

const sendUsage = `Usage: rsvp send QUEUE [flags]

Store a request durably on QUEUE and print its correlation id, one line,
without waiting for the reply. Wait for the reply later, from this or any
other process on the same engine, with 'rsvp await ID'. The body flags are
those of 'rsvp request'. Sending again with the same --id within two minutes
stores nothing new and prints the same id.

Example:
  id=$(rsvp send thumbnail --data '{"url": "https://example.com/cat.png"}')
  rsvp await "$id"
`

const awaitUsage = `Usage: rsvp await ID [flags]

Wait for the reply to the request with correlation id ID (as printed by
'rsvp send', or by 'rsvp request' when it timed out) and write the reply
body to stdout. Replies are kept for 24 hours, so the request may have been
answered long ago. A failed request prints "rsvp: request failed: CODE:
MESSAGE" to stderr and exits 1; so do a timeout and the loss of the engine
(the other rsvp process that ran an embedded engine exited).

Example:
  rsvp await 019a4c2e-7d3b-7c61-9f0e-2b5d8a1c4e77 --timeout 5m
`

// errWaitTimeout ends the wait of request and await when --timeout passes.
var errWaitTimeout = errors.New("timeout")

// errEngineLost ends the wait of request and await when the engine is lost
// for good (the process that ran it exited).
var errEngineLost = errors.New("engine lost")

func runRequest(ctx context.Context, e *env, cmd *command, args []string) error {
	fs := e.newFlagSet(cmd)
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the reply; 0 waits for ever")
	return e.sendThen(ctx, fs, cmd, args, timeout, func(s *session, t rsvp.Ticket) error {
		return e.await(ctx, s, t.CorrelationID, *timeout)
	})
}

func runSend(ctx context.Context, e *env, cmd *command, args []string) error {
	fs := e.newFlagSet(cmd)
	return e.sendThen(ctx, fs, cmd, args, nil, func(s *session, t rsvp.Ticket) error {
		if _, err := fmt.Fprintln(e.stdout, t.CorrelationID); err != nil {
			return fmt.Errorf("request %s is stored, but printing its id failed: %w", t.CorrelationID, err)
		}
		return nil
	})
}

// sendThen parses the queue and the message flags (added to fs), opens the
// engine, sends the message and hands its ticket to then.
func (e *env) sendThen(ctx context.Context, fs *flag.FlagSet, cmd *command, args []string, timeout *time.Duration, then func(*session, rsvp.Ticket) error) error {
	var mf messageFlags
	mf.register(fs)
	queue, spec, err := e.parseQueueCommand(fs, cmd, args, timeout)
	if err != nil {
		return err
	}
	msg, err := mf.message(fs, e.stdin)
	if err != nil {
		return err
	}
	s, err := open(ctx, spec, openOptions{})
	if err != nil {
		return err
	}
	defer s.close(ctx, e.stderr)
	t, err := s.client.Send(ctx, queue, msg)
	if err != nil {
		return fmt.Errorf("%s to %s: %w", cmd.name, queue, err)
	}
	return then(s, t)
}

func runAwait(ctx context.Context, e *env, cmd *command, args []string) error {
	fs := e.newFlagSet(cmd)
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the reply; 0 waits for ever")
	pos, err := e.parse(fs, cmd, args)
	if err != nil {
		return err
	}
	if err := exactArgs(pos, "ID"); err != nil {
		return err
	}
	id := pos[0]
	if err := backend.ValidateName("correlation id", id); err != nil {
		return &usageError{err}
	}
	if *timeout < 0 {
		return usagef("--timeout %s is negative", *timeout)
	}
	spec, err := engineFlag(fs)
	if err != nil {
		return err
	}
	s, err := open(ctx, spec, openOptions{})
	if err != nil {
		return err
	}
	defer s.close(ctx, e.stderr)
	return e.await(ctx, s, id, *timeout)
}

// parseQueueCommand parses the command line of a command whose one
// argument is a queue, checking the queue name, the engine and timeout
// (if not nil).
func (e *env) parseQueueCommand(fs *flag.FlagSet, cmd *command, args []string, timeout *time.Duration) (string, engineSpec, error) {
	pos, err := e.parse(fs, cmd, args)
	if err != nil {
		return "", engineSpec{}, err
	}
	if err := exactArgs(pos, "QUEUE"); err != nil {
		return "", engineSpec{}, err
	}
	if err := backend.ValidateName("queue", pos[0]); err != nil {
		return "", engineSpec{}, &usageError{err}
	}
	if timeout != nil && *timeout < 0 {
		return "", engineSpec{}, usagef("--timeout %s is negative", *timeout)
	}
	spec, err := engineFlag(fs)
	return pos[0], spec, err
}

// await waits up to timeout (0: no limit) for the reply to id and writes
// its body to stdout. It ends when the engine of s is lost: no reply can
// come then.
func (e *env) await(ctx context.Context, s *session, id string, timeout time.Duration) error {
	wctx, cancel := withWaitTimeout(ctx, timeout)
	defer cancel()
	wctx, stopWatch := cancelOnLost(wctx, s.backend)
	defer stopWatch()
	r, err := s.client.Await(wctx, id)
	var rerr *rsvp.RemoteError
	switch {
	case err == nil:
		if _, err := e.stdout.Write(r.Body); err != nil {
			return fmt.Errorf("write reply: %w", err)
		}
		return nil
	case errors.As(err, &rerr):
		return fmt.Errorf("request failed: %s: %s", rerr.Code, rerr.Message)
	case errors.Is(context.Cause(wctx), errEngineLost):
		return fmt.Errorf("lost the engine %s while waiting for the reply to request %s (the process that ran it exited?); the request is kept there: run 'rsvp await %s' once it runs again", s.spec.raw, id, id)
	case errors.Is(context.Cause(wctx), errWaitTimeout):
		if why, unknown := unknownRequest(ctx, s.backend, id); unknown {
			return fmt.Errorf("no reply within %s to request %s, of which the engine has no record: %s (a wrong id, or another engine's? replies are kept for 24 hours)", timeout, id, why)
		}
		return fmt.Errorf("no reply within %s to request %s; it stays queued: run 'rsvp await %s' to wait again", timeout, id, id)
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted while waiting for the reply to request %s; run 'rsvp await %s' to wait again", id, id)
	default:
		return fmt.Errorf("wait for the reply to %s: %w", id, err)
	}
}

// unknownRequest reports whether the engine of b holds nothing of the
// request id (backend.Inspector), and the engine's reason; false when it
// cannot tell.
func unknownRequest(ctx context.Context, b backend.Backend, id string) (why string, unknown bool) {
	in, ok := b.(backend.Inspector)
	if !ok {
		return "", false
	}
	ctx, cancel := context.WithTimeout(ctx, inspectTimeout)
	defer cancel()
	_, err := in.Request(ctx, id)
	if !errors.Is(err, backend.ErrNotFound) {
		return "", false
	}
	_, why, _ = strings.Cut(err.Error(), backend.ErrNotFound.Error()+": ")
	return cmp.Or(why, "nothing stored under that id"), true
}

// inspectTimeout bounds the look at the engine after a wait timed out.
const inspectTimeout = 5 * time.Second

// cancelOnLost returns a context that ends, with cause errEngineLost, when
// b loses its engine for good (engineLost). stop releases it and waits for
// its watch to end.
func cancelOnLost(ctx context.Context, b backend.Backend) (_ context.Context, stop func()) {
	lost := engineLost(b)
	ctx, cancel := context.WithCancelCause(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-lost: // nil: never
			cancel(errEngineLost)
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		cancel(nil)
		<-watched
	}
}

// lostWith reports whether err, from a call to b, failed because b lost its
// engine for good. Calls fail as the connection closes; engineLost tells a
// moment later, so lostWith waits for it, for at most closeTimeout.
func lostWith(err error, b backend.Backend) bool {
	lost := engineLost(b)
	if lost == nil || !errors.Is(err, nats.ErrConnectionClosed) {
		return false
	}
	select {
	case <-lost:
		return true
	case <-time.After(closeTimeout):
		return false
	}
}

// withWaitTimeout bounds a wait by timeout (0: no bound); the context's
// cause is errWaitTimeout once it has passed. Only waits run under it: sending
// a request under a deadline would make the request expire with it.
func withWaitTimeout(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeoutCause(ctx, timeout, errWaitTimeout)
}
