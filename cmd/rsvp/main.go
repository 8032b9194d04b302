// Command rsvp sends requests, awaits replies and runs workers on an rsvp
// engine. Run 'rsvp help' for its commands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/rsvp-go/rsvp/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal starts a graceful stop; stop() then gives the
	// signals their default action back, so a second one ends the process.
	context.AfterFunc(ctx, stop)
	code := cli.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
