package cli

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

// childEnv makes the test binary run the rsvp command line instead of the
// tests: a test starts os.Args[0] with childEnv=1 and the rsvp arguments, to
// get a second process that runs rsvp.
const childEnv = "RSVP_CLI_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		context.AfterFunc(ctx, stop) // as cmd/rsvp does: a second signal ends the process
		code := Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	// A test that forgets --engine must not create ./rsvp-data here.
	os.Setenv("RSVP_ENGINE", "embedded:mem")
	goleak.VerifyTestMain(m)
}
