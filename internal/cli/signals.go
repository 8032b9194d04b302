package cli

import (
	"context"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// hardGrace is how long a command has, after a second signal, to stop at
// once its own way (a worker kills its running commands) before the
// process ends by the signal's default action.
const hardGrace = 2 * time.Second

// Main runs the command line as the rsvp process does: the first SIGINT or
// SIGTERM stops the command gracefully (Run's ctx ends); a second stops it
// at once (see hardStop), and hardGrace later the process ends by the
// signal. One signal handler serves the whole run, so that a second
// signal is never lost, however soon it comes.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	hard := make(chan struct{})
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case <-sigs:
			stop()
		case <-done:
			return
		}
		var sig os.Signal
		select {
		case sig = <-sigs:
			close(hard)
		case <-done:
			return
		}
		t := time.NewTimer(hardGrace)
		defer t.Stop()
		select {
		case <-t.C:
			signal.Reset(sig)
			if s, ok := sig.(syscall.Signal); ok {
				_ = syscall.Kill(os.Getpid(), s)
			}
		case <-done:
		}
	})
	code := Run(context.WithValue(ctx, hardStopKey{}, (<-chan struct{})(hard)), args, stdin, stdout, stderr)
	close(done)
	wg.Wait()
	return code
}

type hardStopKey struct{}

// hardStop returns the channel that Main closes on a second signal: stop
// at once. nil (never closed) for a Run not under Main.
func hardStop(ctx context.Context) <-chan struct{} {
	ch, _ := ctx.Value(hardStopKey{}).(<-chan struct{})
	return ch
}
