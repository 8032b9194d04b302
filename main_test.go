package rsvp_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// children are programs that tests run as child processes of the test
// binary: a test starts os.Args[0] with RSVP_TEST_CHILD=<name>, and
// TestMain runs children[name] instead of the tests. Register them in an
// init function of the test file that uses them.
var children = map[string]func() int{}

func TestMain(m *testing.M) {
	if name := os.Getenv("RSVP_TEST_CHILD"); name != "" {
		child, ok := children[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown RSVP_TEST_CHILD %q\n", name)
			os.Exit(2)
		}
		os.Exit(child())
	}
	goleak.VerifyTestMain(m)
}

// testClient is the setup bundle of most tests: a client on a fresh
// in-memory embedded engine, closed with the test.
type testClient struct {
	*rsvp.Client
	be *rsvpnats.Backend
}

func setup(t testing.TB, cfg rsvp.Config) *testClient {
	t.Helper()
	be, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := rsvp.New(context.Background(), be, cfg)
	if err != nil {
		be.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(context.Background()); err != nil {
			t.Errorf("close client: %v", err)
		}
		if err := be.Close(); err != nil {
			t.Errorf("close backend: %v", err)
		}
	})
	return &testClient{Client: c, be: be}
}
