package workflow_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/workflow"
)

// children are programs that tests run as child processes of the test
// binary (RSVP_TEST_CHILD=<name>); TestMain runs them instead of the tests.
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

// env is a workflow engine on a fresh in-memory embedded engine.
type env struct {
	t      *testing.T
	B      backend.Backend
	Client *rsvp.Client
	E      *workflow.Engine
}

func newEnv(t *testing.T, register func(e *workflow.Engine)) *env {
	t.Helper()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	return newEnvOn(t, b, register)
}

// newEnvOn is newEnv on b, which is closed with the test.
func newEnvOn(t *testing.T, b backend.Backend, register func(e *workflow.Engine)) *env {
	t.Helper()
	en := &env{t: t, B: b}
	t.Cleanup(func() { _ = b.Close() })
	en.Client, en.E = en.engine(register)
	return en
}

// engine starts another client and engine on the same backend.
func (en *env) engine(register func(e *workflow.Engine)) (*rsvp.Client, *workflow.Engine) {
	t := en.t
	t.Helper()
	ctx := context.Background()
	c, err := rsvp.New(ctx, en.B, rsvp.Config{RecheckInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e, err := workflow.New(c, workflow.Config{SweepInterval: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if register != nil {
		register(e)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Stop(ctx); err != nil {
			t.Errorf("engine stop: %v", err)
		}
		if err := c.Close(ctx); err != nil {
			t.Errorf("client close: %v", err)
		}
	})
	return c, e
}

// respond runs fn as a typed responder on queue until the test ends.
func respond[Req, Resp any](t *testing.T, c *rsvp.Client, queue string, opts rsvp.HandleOptions, fn func(ctx context.Context, req Req) (Resp, error)) {
	t.Helper()
	r, err := rsvp.HandleTyped(c, queue, fn, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Stop(ctx)
	})
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
