package workflow_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/workflow"
)

// Replay ends a workflow function where it waits by unwinding its
// goroutine (runtime.Goexit), which runs the function's deferred code.
// These tests check that deferred code does no harm then.

func init() { children["panic-in-defer"] = panicInDeferChild }

// panicInDeferChild runs a workflow whose deferred function panics when
// the function did not get its event, and prints "engine survived" once
// the instance waits for the event.
func panicInDeferChild() int {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		fmt.Println(err)
		return 2
	}
	defer b.Close()
	c, err := rsvp.New(ctx, b, rsvp.Config{})
	if err != nil {
		fmt.Println(err)
		return 2
	}
	e, _ := workflow.New(c, workflow.Config{})
	_ = workflow.Register(e, "strict", func(ctx workflow.Context, _ int) (out string, err error) {
		defer func() {
			if out == "" && err == nil {
				panic("strict: returned without a decision")
			}
		}()
		return workflow.WaitForEvent[string](ctx, "decision", 0)
	})
	if err := e.Start(ctx); err != nil {
		fmt.Println(err)
		return 2
	}
	defer e.Stop(context.Background())
	if _, err := e.StartInstance(ctx, "strict", 0, workflow.StartOptions{ID: "s1"}); err != nil {
		fmt.Println(err)
		return 2
	}
	for after := uint64(0); ; { // until the instance waits for its event
		st, err := e.WaitChange(ctx, "s1", after)
		if err != nil {
			fmt.Println(err)
			return 2
		}
		after = st.Position
		if st.State.Final() {
			fmt.Println("instance ended", st.State, st.Error)
			return 1
		}
		h, _ := e.History(ctx, "s1")
		if len(h) > 0 && h[len(h)-1].Type == "wf.step" {
			break
		}
	}
	fmt.Println("engine survived")
	return 0
}

// A panic in a workflow function's deferred code while replay unwinds the
// function (where it waits) is not the function's: it is ignored, and
// neither kills the process (as it did) nor fails the instance. The
// workflow runs in a child process, so that the test survives the bug.
func TestPanicInDeferWhileUnwinding(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "RSVP_TEST_CHILD=panic-in-defer")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "engine survived") {
		lines := strings.Split(string(out), "\n")
		if len(lines) > 12 {
			lines = lines[:12]
		}
		t.Fatalf("the process running the engine died, or the instance ended (%v):\n%s", err, strings.Join(lines, "\n"))
	}
}
