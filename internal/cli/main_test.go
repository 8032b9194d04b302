package cli

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// childEnv makes the test binary run the rsvp command line instead of the
// tests: a test starts os.Args[0] with childEnv=1 and the rsvp arguments, to
// get a second process that runs rsvp.
const childEnv = "RSVP_CLI_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) // as cmd/rsvp does
	}
	// A test that forgets --engine must not create ./rsvp-data here.
	os.Setenv("RSVP_ENGINE", "embedded:mem")
	goleak.VerifyTestMain(m)
}
