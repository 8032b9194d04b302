package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rsvp-go/rsvp"
)

const workerUsage = `Usage: rsvp worker QUEUE --exec CMD [flags]

Answer the requests of QUEUE: for each one, run CMD with 'sh -c', the
request body on its stdin. What CMD writes to stdout is the reply body.

The exit status of CMD decides the outcome:
  0      success: its stdout is the reply
  65     permanent failure (EX_DATAERR): the request fails at once
  other  failure: retried with backoff, up to --attempts in all
More than 1 MiB on stdout fails the request at once, whatever the exit
status: CMD is killed as soon as it writes beyond that limit.
A failure's message carries the end of CMD's stderr (up to 2 KiB; bytes
that are not UTF-8, and NULs, become U+FFFD).

CMD inherits the environment, plus RSVP_ID, RSVP_CORRELATION_ID, RSVP_QUEUE,
RSVP_ATTEMPT (1 on the first try), RSVP_TYPE and RSVP_CONTENT_TYPE. It is
killed, with its process group, when the request's deadline passes; what
it leaves running in its group is killed when it exits.

Workers of one queue, in this or other processes on the same engine, share
its requests. On SIGINT or SIGTERM the worker stops taking requests, lets
the running ones finish for up to --shutdown-timeout (then kills them: they
will be delivered again) and exits 0; a second signal kills them at once
and exits 1. It logs one line per attempt to
stderr.

Example:
  rsvp worker upper --exec 'tr a-z A-Z'
  rsvp worker thumbnail --concurrency 4 --exec 'convert - -thumbnail 128x128 png:-'
`

// workerFlags are the flags of the worker command.
type workerFlags struct {
	command         string
	concurrency     int
	attempts        int
	lease           time.Duration
	backoff         time.Duration
	shutdownTimeout time.Duration
}

func (f *workerFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.command, "exec", "", "shell `command` that answers a request (required)")
	fs.IntVar(&f.concurrency, "concurrency", 1, "how many requests are handled at once (1 to 10000)")
	fs.IntVar(&f.attempts, "attempts", 5, "how many times a failing request is tried in all")
	fs.DurationVar(&f.lease, "lease", 30*time.Second, "how long a request stays reserved for a worker that stopped renewing it (it died); on NATS the queue keeps the longest lease any of its workers asked for")
	fs.DurationVar(&f.backoff, "backoff", time.Second, "delay before the first retry; it doubles on each retry, up to 60 times this")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGINT or SIGTERM, how long running requests may take to finish")
}

func (f *workerFlags) validate() error {
	switch {
	case f.command == "":
		return usagef("missing --exec CMD: the command that answers requests")
	case f.concurrency < 1:
		return usagef("--concurrency %d is below 1", f.concurrency)
	case f.concurrency > maxConcurrency:
		return usagef("--concurrency %d is above %d", f.concurrency, maxConcurrency)
	case f.attempts < 1:
		return usagef("--attempts %d is below 1", f.attempts)
	case f.lease < 100*time.Millisecond:
		return usagef("--lease %s is below 100ms", f.lease)
	case f.backoff < 0 || f.shutdownTimeout < 0:
		return usagef("--backoff and --shutdown-timeout must not be negative")
	}
	return nil
}

// backoffFunc returns the delay before attempt+1: base, doubling with each
// attempt up to 60 times base, each ±25% at random (rsvp.DefaultBackoff
// for a base of 1s).
func (f *workerFlags) backoffFunc() func(attempt int) time.Duration {
	base := f.backoff
	return func(attempt int) time.Duration {
		d := 60 * base
		if attempt <= 6 {
			d = base << max(attempt-1, 0)
		}
		return time.Duration(float64(d) * (0.75 + rand.Float64()/2))
	}
}

func runWorker(ctx context.Context, e *env, cmd *command, args []string) error {
	fs := e.newFlagSet(cmd)
	var wf workerFlags
	wf.register(fs)
	queue, spec, err := e.parseQueueCommand(fs, cmd, args, nil)
	if err != nil {
		return err
	}
	if err := wf.validate(); err != nil {
		return err
	}
	out := &syncWriter{w: e.stderr}
	logger := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelError}))
	s, err := open(ctx, spec, openOptions{log: logger})
	if err != nil {
		return err
	}
	defer s.close(ctx, out)
	h := &execHandler{command: wf.command, attempts: wf.attempts, log: out}
	r, err := s.client.Handle(queue, h, rsvp.HandleOptions{
		Concurrency: wf.concurrency,
		MaxAttempts: wf.attempts,
		Backoff:     wf.backoffFunc(),
		Lease:       wf.lease,
	})
	if err != nil {
		return fmt.Errorf("start worker on %s: %w", queue, err)
	}
	fmt.Fprintf(out, "rsvp worker: ready: queue %s, engine %s, concurrency %d, command %q\n", queue, spec.raw, wf.concurrency, wf.command)
	select {
	case <-ctx.Done():
	case <-engineLost(s.backend):
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), wf.shutdownTimeout)
		defer cancel()
		_ = r.Stop(stopCtx) // nothing more can be settled: the engine is gone
		return fmt.Errorf("lost the engine %s (the process that ran it exited?); its requests are kept there: start the worker again", spec.raw)
	}
	// A second signal ends the stop at once (hardStop): the running
	// commands, each in a process group of its own, are killed rather than
	// left running when the process exits.
	fmt.Fprintf(out, "rsvp worker: stopping; running requests have %s to finish\n", wf.shutdownTimeout)
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), wf.shutdownTimeout)
	defer cancel()
	var forced atomic.Bool
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-hardStop(ctx):
			forced.Store(true)
			cancel()
		case <-stopCtx.Done():
		}
	}()
	err = r.Stop(stopCtx)
	cancel()
	<-watched
	if err != nil {
		// The commands were killed: wait until they are gone.
		select {
		case <-r.Stopped():
		case <-time.After(killWait):
		}
		fmt.Fprintf(out, "rsvp worker: running requests were killed; they will be delivered again: %v\n", err)
	}
	fmt.Fprintln(out, "rsvp worker: stopped")
	if forced.Load() {
		return errors.New("stopped at once by a second signal")
	}
	return nil
}

// killWait bounds the wait for killed commands to end, beyond their
// WaitDelay.
const killWait = 5 * time.Second

// syncWriter serialises writes to w from concurrent goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// oneLine folds s onto one line of at most n bytes, for log lines.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "..."
	}
	return s
}
