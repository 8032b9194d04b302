package rsvp_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

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
		closeWithin(t, "close client", c.Close)
		closeWithin(t, "close backend", func(context.Context) error { return be.Close() })
	})
	return &testClient{Client: c, be: be}
}

// closeWithin calls close with a 30-second context and fails t if it
// returns an error, with every goroutine's stack if it ran out of time or
// does not return: a cleanup that hangs (a handler that never returns, say)
// fails its own test instead of the whole binary at its timeout.
func closeWithin(t testing.TB, what string, close func(context.Context) error) {
	t.Helper()
	const limit = 30 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- close(ctx) }()
	select {
	case err := <-done:
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			t.Errorf("%s: not done within %v: %v\n%s", what, limit, err, stacks())
		case err != nil:
			t.Errorf("%s: %v", what, err)
		}
	case <-time.After(limit + 5*time.Second):
		t.Errorf("%s: still running %v after its deadline\n%s", what, 5*time.Second, stacks())
	}
}

// stacks returns every goroutine's stack.
func stacks() []byte {
	buf := make([]byte, 1<<22)
	return buf[:runtime.Stack(buf, true)]
}
