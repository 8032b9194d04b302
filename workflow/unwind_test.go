package workflow_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
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

// A durable call in deferred code (a cleanup or compensation, the usual
// reason for a defer) is made when the function returns, not each time
// replay unwinds the function where it waits: while unwinding, the call
// ends the goroutine at once, and a custom status set is ignored. Before, the first step recorded the deferred
// call, its activity ran before the function got its event, and the
// goroutine stayed blocked in the call for good.
func TestDeferredCallWaitsForReturn(t *testing.T) {
	var cleanups atomic.Int32
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "deferrer", func(ctx workflow.Context, _ int) (string, error) {
			defer func() {
				_ = workflow.SetCustomStatus(ctx, "cleaning up")
				_, _ = workflow.CallActivity[string](ctx, "cleanup", "x", workflow.ActivityOptions{}).Get(ctx)
			}()
			return workflow.WaitForEvent[string](ctx, "go", 0)
		})
	})
	respond(t, en.Client, "cleanup", rsvp.HandleOptions{}, func(ctx context.Context, s string) (string, error) {
		cleanups.Add(1)
		return "cleaned", nil
	})
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "deferrer", 0, workflow.StartOptions{ID: "d1"}))
	// Until the first step is recorded: the instance waits for "go". Its
	// effects were performed before it was recorded.
	var steps []string
	for after := uint64(0); len(steps) == 0; after = st.Position {
		st = must[*workflow.Status](t)(en.E.WaitChange(ctx, "d1", after))
		for _, h := range must[[]workflow.HistoryEvent](t)(en.E.History(ctx, "d1")) {
			if h.Type == "wf.step" {
				steps = append(steps, string(h.Data))
			}
		}
	}
	if strings.Contains(steps[0], "cleanup") || strings.Contains(steps[0], "status") {
		t.Errorf("the first step, recorded while the function waits for the event, has the deferred call or status: %s", steps[0])
	}
	if err := en.E.RaiseEvent(ctx, "d1", "go", "now", ""); err != nil {
		t.Fatal(err)
	}
	if out, err := workflow.Result[string](ctx, en.E, "d1"); err != nil || out != "now" {
		t.Fatalf("result %q, %v", out, err)
	}
	if n := cleanups.Load(); n != 1 {
		t.Errorf("the deferred cleanup activity ran %d times, want once (when the function returned)", n)
	}
	if st := must[*workflow.Status](t)(en.E.Status(ctx, "d1")); string(st.CustomStatus) != `"cleaning up"` {
		t.Errorf("custom status %s, want the one the deferred function set at the return", st.CustomStatus)
	}
	// No workflow goroutine is left blocked once the instance finished.
	for deadline := time.Now().Add(3 * time.Second); ; {
		n := blockedWorkflowGoroutines()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%d workflow goroutine(s) left blocked in (*execution).block after the instance completed", n)
			break
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// blockedWorkflowGoroutines counts the goroutines blocked in a durable call.
func blockedWorkflowGoroutines() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "workflow.(*execution).block") {
			n++
		}
	}
	return n
}
