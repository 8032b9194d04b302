package workflow_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/workflow"
)

func approvalEnv(t *testing.T) *env {
	en := newEnv(t, func(e *workflow.Engine) {
		if err := workflow.Register(e, "approval", Approval); err != nil {
			t.Fatal(err)
		}
	})
	respond(t, en.Client, "ReviewDocument", rsvp.HandleOptions{}, func(ctx context.Context, d Document) (string, error) {
		return "reviewed " + d.ID, nil
	})
	respond(t, en.Client, "PublishDocument", rsvp.HandleOptions{}, func(ctx context.Context, d Document) (string, error) {
		return "published " + d.ID, nil
	})
	return en
}

func TestApprovalEventRaisedAfterWaiting(t *testing.T) {
	en := approvalEnv(t)
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "approval", Document{ID: "d2"}, workflow.StartOptions{ID: "a-2"}))
	// Wait until the workflow waits for the decision (its custom status says so).
	for after := uint64(0); ; {
		st = must[*workflow.Status](t)(en.E.WaitChange(ctx, st.ID, after))
		after = st.Position
		if strings.Contains(string(st.CustomStatus), "awaiting approval") {
			break
		}
	}
	if st.State != workflow.StateRunning {
		t.Fatalf("state %s, want running", st.State)
	}
	if err := en.E.RaiseEvent(ctx, st.ID, "ApprovalReceived", "Rejected: typos", ""); err != nil {
		t.Fatal(err)
	}
	out, err := workflow.Result[string](ctx, en.E, st.ID)
	if err != nil || out != "rejected: Rejected: typos" {
		t.Fatalf("result %q, %v", out, err)
	}
	// A finished instance takes no more events, and says why.
	err = en.E.RaiseEvent(ctx, st.ID, "ApprovalReceived", "Approved", "")
	if !errors.Is(err, workflow.ErrFinished) || !strings.Contains(err.Error(), "a-2 is completed") {
		t.Fatalf("raise on finished: %v", err)
	}
}

// A wait that timed out does not consume an event raised later: the next
// wait gets it. Duplicate event ids are ignored.
func TestEventTimeoutAndDuplicates(t *testing.T) {
	type out struct {
		First  string
		Second string
		Third  string
	}
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "waits", func(ctx workflow.Context, _ int) (out, error) {
			var o out
			_, err := workflow.WaitForEvent[string](ctx, "x", 300*time.Millisecond)
			o.First = fmt.Sprint(err)
			if err := workflow.SetCustomStatus(ctx, "timed out"); err != nil {
				return o, err
			}
			o.Second, _ = workflow.WaitForEvent[string](ctx, "x", 0)
			o.Third, err = workflow.WaitForEvent[string](ctx, "x", 500*time.Millisecond)
			if err != nil {
				o.Third = err.Error()
			}
			return o, nil
		})
	})
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "waits", 0, workflow.StartOptions{ID: "w1"}))
	for after := uint64(0); !strings.Contains(string(st.CustomStatus), "timed out"); after = st.Position {
		st = must[*workflow.Status](t)(en.E.WaitChange(ctx, "w1", after))
	}
	for range 3 { // the same event three times: one counts
		if err := en.E.RaiseEvent(ctx, "w1", "x", "late", "ev-1"); err != nil {
			t.Fatal(err)
		}
	}
	got, err := workflow.Result[out](ctx, en.E, "w1")
	if err != nil {
		t.Fatal(err)
	}
	want := out{First: workflow.ErrEventTimeout.Error(), Second: "late", Third: workflow.ErrEventTimeout.Error()}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestActivityRetryPolicy(t *testing.T) {
	var calls atomic.Int32
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "retry", func(ctx workflow.Context, max int) (string, error) {
			return workflow.CallActivity[string](ctx, "flaky", "x", workflow.ActivityOptions{
				Retry: workflow.RetryPolicy{MaxAttempts: max, Backoff: 50 * time.Millisecond}}).Get(ctx)
		})
	})
	respond(t, en.Client, "flaky", rsvp.HandleOptions{MaxAttempts: 1}, func(ctx context.Context, s string) (string, error) {
		if n := calls.Add(1); n%3 != 0 {
			return "", fmt.Errorf("call %d fails", n)
		}
		return "ok", nil
	})
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "retry", 3, workflow.StartOptions{}))
	if out, err := workflow.Result[string](ctx, en.E, st.ID); err != nil || out != "ok" || calls.Load() != 3 {
		t.Fatalf("3 attempts: %q, %v after %d calls", out, err, calls.Load())
	}
	// Two attempts are not enough for the next one: the call fails with
	// the responder's error and the instance with it.
	st = must[*workflow.Status](t)(en.E.StartInstance(ctx, "retry", 2, workflow.StartOptions{}))
	st = must[*workflow.Status](t)(en.E.Await(ctx, st.ID))
	if st.State != workflow.StateFailed || !strings.Contains(st.Error.Message, "after 2 attempt(s)") || !strings.Contains(st.Error.Message, "call 5 fails") {
		t.Fatalf("2 attempts: %+v %+v", st, st.Error)
	}
}

func TestActivityTimeout(t *testing.T) {
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "slow", func(ctx workflow.Context, _ int) (string, error) {
			_, err := workflow.CallActivity[string](ctx, "nobody-listens", "x", workflow.ActivityOptions{Timeout: 300 * time.Millisecond}).Get(ctx)
			var ae *workflow.ActivityError
			if errors.As(err, &ae) && ae.Code == workflow.CodeTimeout {
				return "timed out", nil
			}
			return "", fmt.Errorf("want a timeout, got %v", err)
		})
	})
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "slow", 0, workflow.StartOptions{}))
	if out, err := workflow.Result[string](ctx, en.E, st.ID); err != nil || out != "timed out" {
		t.Fatalf("%q, %v", out, err)
	}
}

func TestSubWorkflowAndContinueAsNew(t *testing.T) {
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "count", func(ctx workflow.Context, n int) (int, error) {
			if n < 5 {
				if err := workflow.Sleep(ctx, 10*time.Millisecond); err != nil {
					return 0, err
				}
				return 0, workflow.ContinueAsNew(ctx, n+1)
			}
			return n * 10, nil
		})
		_ = workflow.Register(e, "parent", func(ctx workflow.Context, _ int) (int, error) {
			a := workflow.CallWorkflow[int](ctx, "count", 0)
			b := workflow.CallWorkflow[int](ctx, "count", 3)
			x, err := a.Get(ctx)
			if err != nil {
				return 0, err
			}
			y, err := b.Get(ctx)
			return x + y, err
		})
	})
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "parent", 0, workflow.StartOptions{}))
	if out, err := workflow.Result[int](ctx, en.E, st.ID); err != nil || out != 100 {
		t.Fatalf("%d, %v", out, err)
	}
	// A sub-workflow tells its parent before it records its own end, so
	// the parent may finish first.
	subs := must[[]*workflow.Status](t)(en.E.List(ctx, workflow.ListQuery{Name: "count"}))
	if len(subs) != 2 {
		t.Fatalf("%d sub-workflows, want 2", len(subs))
	}
	for _, sub := range subs {
		if st := must[*workflow.Status](t)(en.E.Await(ctx, sub.ID)); st.State != workflow.StateCompleted {
			t.Fatalf("sub-workflow %s: %s", sub.ID, st.State)
		}
	}
}

// Starting an id twice, even at once, gives one instance.
func TestStartSameIDOnce(t *testing.T) {
	var runs atomic.Int32
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "once", func(ctx workflow.Context, s string) (string, error) {
			if !ctx.IsReplaying() {
				runs.Add(1)
			}
			return workflow.CallActivity[string](ctx, "echo", s, workflow.ActivityOptions{}).Get(ctx)
		})
	})
	var echoes atomic.Int32
	respond(t, en.Client, "echo", rsvp.HandleOptions{}, func(ctx context.Context, s string) (string, error) {
		echoes.Add(1)
		return s, nil
	})
	ctx := ctxT(t, 20*time.Second)
	var wg sync.WaitGroup
	ids := make([]string, 8)
	for i := range ids {
		wg.Go(func() {
			st, err := en.E.StartInstance(ctx, "once", fmt.Sprint("input-", i), workflow.StartOptions{ID: "same"})
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = string(st.Input)
		})
	}
	wg.Wait()
	for _, in := range ids[1:] {
		if in != ids[0] {
			t.Fatalf("starts saw different instances: %q", ids)
		}
	}
	out := must[string](t)(workflow.Result[string](ctx, en.E, "same"))
	if fmt.Sprintf("%q", out) != ids[0] || echoes.Load() != 1 {
		t.Fatalf("result %q from input %s; the activity ran %d times", out, ids[0], echoes.Load())
	}
	list := must[[]*workflow.Status](t)(en.E.List(ctx, workflow.ListQuery{Name: "once"}))
	if len(list) != 1 {
		t.Fatalf("%d instances listed", len(list))
	}
}

// Changing the calls of a running instance is detected, not replayed wrongly.
func TestNonDeterminismDetected(t *testing.T) {
	var changed atomic.Bool
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "fickle", func(ctx workflow.Context, _ int) (string, error) {
			queue := "first"
			if changed.Load() {
				queue = "other"
			}
			if _, err := workflow.CallActivity[string](ctx, queue, 1, workflow.ActivityOptions{}).Get(ctx); err != nil {
				return "", err
			}
			return workflow.WaitForEvent[string](ctx, "go", 0)
		})
	})
	respond(t, en.Client, "first", rsvp.HandleOptions{}, func(ctx context.Context, n int) (string, error) { return "", nil })
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "fickle", 0, workflow.StartOptions{ID: "f1"}))
	for after := uint64(0); ; after = st.Position { // until it waits for the event, past the activity
		st = must[*workflow.Status](t)(en.E.WaitChange(ctx, "f1", after))
		h := must[[]workflow.HistoryEvent](t)(en.E.History(ctx, "f1"))
		if last := h[len(h)-1]; last.Type == "wf.step" && strings.Contains(string(last.Data), `"kind":"event"`) {
			break
		}
	}
	changed.Store(true)
	if err := en.E.RaiseEvent(ctx, "f1", "go", "now", ""); err != nil {
		t.Fatal(err)
	}
	st = must[*workflow.Status](t)(en.E.Await(ctx, "f1"))
	if st.State != workflow.StateFailed || st.Error.Code != workflow.CodeNonDeterministic ||
		!strings.Contains(st.Error.Message, "call 1 of workflow fickle v1 is activity other, but the history recorded activity first") {
		t.Fatalf("%s %+v", st.State, st.Error)
	}
}

// Code changed so that it makes fewer calls than the history recorded (it
// returns before a recorded call) is a changed sequence of calls too: it
// fails as nondeterministic, not complete with what the new code says.
func TestNonDeterminismFewerCalls(t *testing.T) {
	var changed atomic.Bool
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "shrinks", func(ctx workflow.Context, _ int) (string, error) {
			if _, err := workflow.CallActivity[string](ctx, "first", 1, workflow.ActivityOptions{}).Get(ctx); err != nil {
				return "", err
			}
			if changed.Load() {
				return "skipped the recorded wait", nil
			}
			return workflow.WaitForEvent[string](ctx, "go", 0)
		})
	})
	respond(t, en.Client, "first", rsvp.HandleOptions{}, func(ctx context.Context, n int) (string, error) { return "", nil })
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "shrinks", 0, workflow.StartOptions{ID: "s1"}))
	for after := uint64(0); ; after = st.Position { // until the wait for "go" is recorded
		st = must[*workflow.Status](t)(en.E.WaitChange(ctx, "s1", after))
		h := must[[]workflow.HistoryEvent](t)(en.E.History(ctx, "s1"))
		if last := h[len(h)-1]; last.Type == "wf.step" && strings.Contains(string(last.Data), `"kind":"event"`) {
			break
		}
	}
	changed.Store(true)
	if err := en.E.RaiseEvent(ctx, "s1", "go", "now", ""); err != nil {
		t.Fatal(err)
	}
	st = must[*workflow.Status](t)(en.E.Await(ctx, "s1"))
	if st.State != workflow.StateFailed || st.Error == nil || st.Error.Code != workflow.CodeNonDeterministic ||
		!strings.Contains(st.Error.Message, "history recorded call 2, event go") {
		t.Fatalf("history recorded call 2 (event go), the changed code returned after call 1: state %s, output %s, error %+v; want failed, code nondeterministic",
			st.State, st.Output, st.Error)
	}
	// The error Result returns is the sentinel the package declares for it.
	if _, err := workflow.Result[string](ctx, en.E, "s1"); !errors.Is(err, workflow.ErrNonDeterministic) {
		t.Fatalf("Result of an instance failed as nondeterministic: %v; want errors.Is ErrNonDeterministic", err)
	}
}

func TestPanicFailsInstanceEngineLives(t *testing.T) {
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "boom", func(ctx workflow.Context, n int) (int, error) {
			if n == 0 {
				var m map[string]int
				m["x"] = 1 // panics
			}
			return n, nil
		})
	})
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "boom", 0, workflow.StartOptions{}))
	st = must[*workflow.Status](t)(en.E.Await(ctx, st.ID))
	if st.State != workflow.StateFailed || st.Error.Code != workflow.CodePanic ||
		!strings.Contains(st.Error.Message, "assignment to entry in nil map") || !strings.Contains(st.Error.Stack, "workflow_test.go") {
		t.Fatalf("%s %+v", st.State, st.Error)
	}
	st = must[*workflow.Status](t)(en.E.StartInstance(ctx, "boom", 7, workflow.StartOptions{}))
	if out, err := workflow.Result[int](ctx, en.E, st.ID); err != nil || out != 7 {
		t.Fatalf("after a panic: %d, %v", out, err)
	}
}

func TestManagementErrors(t *testing.T) {
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.RegisterVersion(e, "wait", 2, func(ctx workflow.Context, in struct{ N int }) (int, error) {
			if err := workflow.SetCustomStatus(ctx, map[string]int{"waiting": in.N}); err != nil {
				return 0, err
			}
			return workflow.WaitForEvent[int](ctx, "n", 0)
		})
	})
	ctx := ctxT(t, 20*time.Second)
	cases := []struct {
		name string
		err  error
		want error
		msg  string
	}{
		{"unknown name", errOf(en.E.StartInstance(ctx, "nope", 1, workflow.StartOptions{})), workflow.ErrUnknownWorkflow, `unknown workflow "nope"`},
		{"unknown version", errOf(en.E.StartInstance(ctx, "wait", 1, workflow.StartOptions{Version: 1})), workflow.ErrUnknownWorkflow, `"wait" version 1 (registered: up to 2)`},
		{"bad input", errOf(en.E.StartJSON(ctx, "wait", []byte(`{"N":"x"}`), workflow.StartOptions{})), workflow.ErrBadInput, "cannot unmarshal string"},
		{"bad id", errOf(en.E.StartJSON(ctx, "wait", []byte(`{"N":1}`), workflow.StartOptions{ID: "a b"})), workflow.ErrInvalid, `instance id "a b" has character ' '`},
		{"status unknown", errOf(en.E.Status(ctx, "ghost")), workflow.ErrNotFound, "ghost"},
		{"raise unknown", en.E.RaiseEvent(ctx, "ghost", "n", 1, ""), workflow.ErrNotFound, "ghost"},
		{"terminate unknown", en.E.Terminate(ctx, "ghost", ""), workflow.ErrNotFound, "ghost"},
	}
	for _, c := range cases {
		if !errors.Is(c.err, c.want) || !strings.Contains(c.err.Error(), c.msg) {
			t.Errorf("%s: got %v, want %v with %q", c.name, c.err, c.want, c.msg)
		}
	}
	if list := must[[]*workflow.Status](t)(en.E.List(ctx, workflow.ListQuery{})); len(list) != 0 {
		t.Fatalf("failed starts stored %d instances", len(list))
	}

	st := must[*workflow.Status](t)(en.E.StartJSON(ctx, "wait", []byte(`{"N":4}`), workflow.StartOptions{ID: "m1"}))
	if st.Version != 2 {
		t.Fatalf("version %d, want the newest, 2", st.Version)
	}
	for after := uint64(0); string(st.CustomStatus) != `{"waiting":4}`; after = st.Position {
		st = must[*workflow.Status](t)(en.E.WaitChange(ctx, "m1", after))
	}
	if err := en.E.Purge(ctx, "m1"); !errors.Is(err, workflow.ErrRunning) {
		t.Fatalf("purge running: %v", err)
	}
	if err := en.E.Terminate(ctx, "m1", "changed my mind"); err != nil {
		t.Fatal(err)
	}
	if err := en.E.Terminate(ctx, "m1", "again"); !errors.Is(err, workflow.ErrFinished) {
		t.Fatalf("terminate twice: %v", err)
	}
	st = must[*workflow.Status](t)(en.E.Status(ctx, "m1"))
	if st.State != workflow.StateTerminated || st.Error.Message != "changed my mind" {
		t.Fatalf("%+v", st)
	}
	if list := must[[]*workflow.Status](t)(en.E.List(ctx, workflow.ListQuery{State: workflow.StateTerminated})); len(list) != 1 || list[0].ID != "m1" {
		t.Fatalf("list terminated: %v", list)
	}
	if err := en.E.Purge(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	if _, err := en.E.Status(ctx, "m1"); !errors.Is(err, workflow.ErrNotFound) {
		t.Fatalf("status after purge: %v", err)
	}
	// A purged id starts afresh.
	st = must[*workflow.Status](t)(en.E.StartJSON(ctx, "wait", []byte(`{"N":5}`), workflow.StartOptions{ID: "m1"}))
	if err := en.E.RaiseEvent(ctx, "m1", "n", 9, ""); err != nil {
		t.Fatal(err)
	}
	if out, err := workflow.Result[int](ctx, en.E, "m1"); err != nil || out != 9 {
		t.Fatalf("restarted id: %d, %v", out, err)
	}
}

// An instance goes on in another engine after its engine stopped while it
// slept.
func TestResumesInAnotherEngine(t *testing.T) {
	reg := func(e *workflow.Engine) {
		_ = workflow.Register(e, "nap", func(ctx workflow.Context, _ int) (string, error) {
			if err := workflow.SetCustomStatus(ctx, "sleeping"); err != nil {
				return "", err
			}
			if err := workflow.Sleep(ctx, time.Second); err != nil {
				return "", err
			}
			return "rested", nil
		})
	}
	en := newEnv(t, reg)
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "nap", 0, workflow.StartOptions{ID: "n1"}))
	for after := uint64(0); string(st.CustomStatus) != `"sleeping"`; after = st.Position {
		st = must[*workflow.Status](t)(en.E.WaitChange(ctx, "n1", after))
	}
	if err := en.E.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	_, e2 := en.engine(reg)
	if out, err := workflow.Result[string](ctx, e2, "n1"); err != nil || out != "rested" {
		t.Fatalf("%q, %v", out, err)
	}
}

func errOf[T any](_ T, err error) error { return err }

// A durable timer fires within a second of its time: measured between
// the history entries that set it and that record it fired.
func TestTimerFiresOnTime(t *testing.T) {
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "sleeper", func(ctx workflow.Context, ms int) (int, error) {
			return ms, workflow.Sleep(ctx, time.Duration(ms)*time.Millisecond)
		})
	})
	ctx := ctxT(t, 20*time.Second)
	for _, ms := range []int{0, 300, 1200} {
		st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "sleeper", ms, workflow.StartOptions{}))
		if _, err := workflow.Result[int](ctx, en.E, st.ID); err != nil {
			t.Fatal(err)
		}
		var set, fired time.Time
		for _, ev := range must[[]workflow.HistoryEvent](t)(en.E.History(ctx, st.ID)) {
			switch {
			case ev.Type == "wf.step" && strings.Contains(string(ev.Data), `"kind":"timer"`):
				set = ev.At
			case ev.Type == "wf.timer":
				fired = ev.At
			}
		}
		due := set.Add(time.Duration(ms) * time.Millisecond)
		if set.IsZero() || fired.IsZero() || fired.Before(due.Add(-100*time.Millisecond)) || fired.After(due.Add(time.Second)) {
			t.Errorf("timer of %dms: set %s, due %s, fired %s", ms, set.Format("15:04:05.000"), due.Format("15:04:05.000"), fired.Format("15:04:05.000"))
		}
	}
}

// An engine that starts workflows it does not run checks only that the
// input is JSON; the engine that runs the instance fails it with code
// bad_input when the input does not decode, and unknown_workflow never
// comes from an engine that merely lacks the workflow.
func TestStartUnregistered(t *testing.T) {
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "typed", func(ctx workflow.Context, in struct{ N int }) (int, error) { return in.N, nil })
	})
	ctx := ctxT(t, 20*time.Second)
	front := must[*workflow.Engine](t)(workflow.New(en.Client, workflow.Config{StartUnregistered: true}))
	defer front.Stop(context.Background())
	if _, err := front.StartJSON(ctx, "typed", []byte(`{"N":`), workflow.StartOptions{}); !errors.Is(err, workflow.ErrBadInput) {
		t.Fatalf("not JSON: %v", err)
	}
	st := must[*workflow.Status](t)(front.StartJSON(ctx, "typed", []byte(`{"N":"x"}`), workflow.StartOptions{ID: "u1"}))
	st = must[*workflow.Status](t)(front.Await(ctx, st.ID))
	if st.State != workflow.StateFailed || st.Error.Code != workflow.CodeBadInput {
		t.Fatalf("bad input: %s %+v", st.State, st.Error)
	}
	if _, err := workflow.Result[int](ctx, front, st.ID); !errors.Is(err, workflow.ErrBadInput) {
		t.Fatalf("Result of an instance failed with code bad_input: %v; want errors.Is ErrBadInput", err)
	}
	st = must[*workflow.Status](t)(front.StartJSON(ctx, "typed", []byte(`{"N":7}`), workflow.StartOptions{ID: "u2"}))
	if out, err := workflow.Result[int](ctx, front, st.ID); err != nil || out != 7 {
		t.Fatalf("%d, %v", out, err)
	}
	if st = must[*workflow.Status](t)(front.Status(ctx, "u2")); st.Version != 1 {
		t.Fatalf("version %d, want 1 pinned by the engine that ran it", st.Version)
	}
}

// A version below 1 can never run: StartInstance refuses it at once
// (ErrInvalid), also on an engine that starts workflows it does not run,
// rather than store an instance that fails after every engine's task
// retries.
func TestStartNegativeVersion(t *testing.T) {
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "typed", func(ctx workflow.Context, n int) (int, error) { return n, nil })
	})
	ctx := ctxT(t, 20*time.Second)
	front := must[*workflow.Engine](t)(workflow.New(en.Client, workflow.Config{StartUnregistered: true}))
	defer front.Stop(context.Background())
	for _, e := range []*workflow.Engine{front, en.E} {
		st, err := e.StartJSON(ctx, "typed", []byte(`1`), workflow.StartOptions{ID: "neg", Version: -1})
		if !errors.Is(err, workflow.ErrInvalid) {
			t.Fatalf("StartOptions.Version -1: err %v, status %+v; want ErrInvalid", err, st)
		}
	}
	if _, err := en.E.Status(ctx, "neg"); !errors.Is(err, workflow.ErrNotFound) {
		t.Fatalf("status of the refused start: %v; want ErrNotFound", err)
	}
}

// A custom status set in the last step of a workflow, before it returns
// or before ContinueAsNew, is the instance's custom status afterwards.
func TestCustomStatusSetBeforeTheEnd(t *testing.T) {
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "progress", func(ctx workflow.Context, _ int) (string, error) {
			if err := workflow.SetCustomStatus(ctx, "50%"); err != nil {
				return "", err
			}
			if err := workflow.Sleep(ctx, 10*time.Millisecond); err != nil {
				return "", err
			}
			if err := workflow.SetCustomStatus(ctx, "100%"); err != nil {
				return "", err
			}
			return "ok", nil
		})
		_ = workflow.Register(e, "epochs", func(ctx workflow.Context, n int) (string, error) {
			if n == 0 {
				if err := workflow.SetCustomStatus(ctx, "epoch 0 done"); err != nil {
					return "", err
				}
				return "", workflow.ContinueAsNew(ctx, 1)
			}
			return workflow.WaitForEvent[string](ctx, "x", 0)
		})
	})
	ctx := ctxT(t, 20*time.Second)
	must[*workflow.Status](t)(en.E.StartInstance(ctx, "progress", 0, workflow.StartOptions{ID: "p1"}))
	st := must[*workflow.Status](t)(en.E.Await(ctx, "p1"))
	if st.State != workflow.StateCompleted || string(st.CustomStatus) != `"100%"` {
		t.Errorf("state %s, custom status %s; want completed with \"100%%\"", st.State, st.CustomStatus)
	}
	must[*workflow.Status](t)(en.E.StartInstance(ctx, "epochs", 0, workflow.StartOptions{ID: "e1"}))
	waitStep(t, ctx, en.E, "e1", `"target":"x"`) // epoch 1 waits for its event
	if st := must[*workflow.Status](t)(en.E.Status(ctx, "e1")); string(st.CustomStatus) != `"epoch 0 done"` {
		t.Errorf("custom status after ContinueAsNew %s; want \"epoch 0 done\"", st.CustomStatus)
	}
}

// Events raised in one epoch and not consumed there wait for the next
// (ContinueAsNew keeps them).
func TestContinueAsNewKeepsUnconsumedEvents(t *testing.T) {
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "loop", func(ctx workflow.Context, n int) (string, error) {
			if n == 0 {
				if err := workflow.Sleep(ctx, 700*time.Millisecond); err != nil {
					return "", err
				}
				if _, err := workflow.WaitForEvent[string](ctx, "x", 0); err != nil {
					return "", err
				}
				return "", workflow.ContinueAsNew(ctx, 1)
			}
			v, err := workflow.WaitForEvent[string](ctx, "x", 3*time.Second)
			return fmt.Sprint(v, err), nil
		})
	})
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "loop", 0, workflow.StartOptions{}))
	for _, p := range []string{"e1", "e2"} {
		if err := en.E.RaiseEvent(ctx, st.ID, "x", p, p); err != nil {
			t.Fatal(err)
		}
	}
	out, err := workflow.Result[string](ctx, en.E, st.ID)
	if err != nil || out != "e2<nil>" {
		t.Errorf("unconsumed event e2 lost across ContinueAsNew: %q, %v", out, err)
	}
}

// A timer (or a reply) of an earlier epoch does not finish the call with
// the same number in the next.
func TestContinueAsNewIgnoresEarlierTimers(t *testing.T) {
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "loop", func(ctx workflow.Context, n int) (string, error) {
			if n == 0 {
				if _, err := workflow.WaitForEvent[string](ctx, "x", time.Second); err != nil {
					return "", err
				}
				return "", workflow.ContinueAsNew(ctx, 1)
			}
			start := ctx.Now()
			_, err := workflow.WaitForEvent[string](ctx, "x", time.Hour)
			return fmt.Sprint(err, " after ", ctx.Now().Sub(start).Round(100*time.Millisecond)), nil
		})
	})
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "loop", 0, workflow.StartOptions{}))
	if err := en.E.RaiseEvent(ctx, st.ID, "x", "a", "a"); err != nil {
		t.Fatal(err)
	}
	c2 := ctxT(t, 3*time.Second) // epoch 0's 1s timer must not end epoch 1's hour
	out, err := workflow.Result[string](c2, en.E, st.ID)
	if err == nil {
		t.Errorf("epoch 1's one-hour wait ended early: %q", out)
	}
}

// A recover in the workflow function does not catch replay's unwinding.
func TestRecoverInWorkflowDoesNotStopReplay(t *testing.T) {
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "rec", func(ctx workflow.Context, _ int) (s string, err error) {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("recovered: %v", r)
				}
			}()
			if err := workflow.Sleep(ctx, 300*time.Millisecond); err != nil {
				return "", err
			}
			return "ok", nil
		})
	})
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "rec", 0, workflow.StartOptions{}))
	out, err := workflow.Result[string](ctx, en.E, st.ID)
	if out != "ok" {
		t.Errorf("workflow with recover wrapper: %q %v", out, err)
	}
}

// TestActivityExpiredIsATimeout: an attempt whose request expires (its
// deadline is the attempt's timeout) fails with CodeTimeout, as when the
// engine's timeout timer comes first: the two race. Here the expired
// reply comes long before the timer.
func TestActivityExpiredIsATimeout(t *testing.T) {
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "expiring", func(ctx workflow.Context, _ int) (string, error) {
			_, err := workflow.CallActivity[string](ctx, "expires", "x", workflow.ActivityOptions{Timeout: time.Minute}).Get(ctx)
			var ae *workflow.ActivityError
			if errors.As(err, &ae) && ae.Code == workflow.CodeTimeout {
				return "timed out", nil
			}
			return "", fmt.Errorf("want a timeout, got %v", err)
		})
	})
	respond(t, en.Client, "expires", rsvp.HandleOptions{}, func(ctx context.Context, s string) (string, error) {
		return "", rsvp.Permanent(&rsvp.RemoteError{Code: rsvp.CodeExpired, Message: "the deadline passed before a reply"})
	})
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "expiring", 0, workflow.StartOptions{}))
	if out, err := workflow.Result[string](ctx, en.E, st.ID); err != nil || out != "timed out" {
		t.Fatalf("%q, %v", out, err)
	}
}

// A sub-workflow whose input does not decode into its input type fails
// the call with code bad_input, as a start with such input is ErrBadInput;
// an unknown sub-workflow with code unknown_workflow.
func TestSubWorkflowBadInputOrUnknown(t *testing.T) {
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "child", func(ctx workflow.Context, n int) (int, error) { return n, nil })
		_ = workflow.Register(e, "parent", func(ctx workflow.Context, _ int) ([]string, error) {
			var codes []string
			for _, call := range []struct {
				name  string
				input any
			}{{"child", "not a number"}, {"no-such-child", 1}} {
				_, err := workflow.CallWorkflow[int](ctx, call.name, call.input).Get(ctx)
				var ae *workflow.ActivityError
				if !errors.As(err, &ae) {
					return nil, fmt.Errorf("sub-workflow %s: %v, want an *ActivityError", call.name, err)
				}
				codes = append(codes, ae.Code)
			}
			return codes, nil
		})
	})
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "parent", 0, workflow.StartOptions{}))
	out, err := workflow.Result[[]string](ctx, en.E, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{workflow.CodeBadInput, workflow.CodeUnknownWorkflow}; fmt.Sprint(out) != fmt.Sprint(want) {
		t.Fatalf("codes %q, want %q", out, want)
	}
}

// What a run must record and the backend can never store (an output, a
// custom status or a sub-workflow's input over its size limit) fails the
// instance, or the call, with code too_large: the instance was retried
// for good and stayed running.
func TestTooLargeToRecord(t *testing.T) {
	big := strings.Repeat("x", 9<<20) // over the embedded engine's 8 MiB
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "big-output", func(ctx workflow.Context, _ int) (string, error) {
			return big, nil
		})
		_ = workflow.Register(e, "big-status", func(ctx workflow.Context, _ int) (string, error) {
			if err := workflow.SetCustomStatus(ctx, big); err != nil {
				return "", err
			}
			return "", workflow.Sleep(ctx, time.Millisecond)
		})
		_ = workflow.Register(e, "child", func(ctx workflow.Context, s string) (int, error) { return len(s), nil })
		_ = workflow.Register(e, "big-child", func(ctx workflow.Context, _ int) (string, error) {
			_, err := workflow.CallWorkflow[int](ctx, "child", big).Get(ctx)
			var ae *workflow.ActivityError
			if !errors.As(err, &ae) {
				return "", fmt.Errorf("sub-workflow: %v, want an *ActivityError", err)
			}
			return ae.Code, nil
		})
	})
	ctx := ctxT(t, 20*time.Second)
	for _, name := range []string{"big-output", "big-status"} {
		st := must[*workflow.Status](t)(en.E.StartInstance(ctx, name, 0, workflow.StartOptions{}))
		st = must[*workflow.Status](t)(en.E.Await(ctx, st.ID))
		if st.State != workflow.StateFailed || st.Error.Code != workflow.CodeTooLarge {
			t.Errorf("%s: %s %+v, want failed with code %s", name, st.State, st.Error, workflow.CodeTooLarge)
		}
	}
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "big-child", 0, workflow.StartOptions{}))
	if out, err := workflow.Result[string](ctx, en.E, st.ID); err != nil || out != workflow.CodeTooLarge {
		t.Errorf("big-child: %q, %v; want %q", out, err, workflow.CodeTooLarge)
	}
}

// A long event loop of ContinueAsNew does not grow its continued records:
// each lists only the events still waiting (not every event consumed in
// every earlier epoch, which grew without bound until a record was too
// large to store). The events are still each consumed once, in order.
func TestContinueAsNewRecordsStaySmall(t *testing.T) {
	const epochs = 12
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "ticker", func(ctx workflow.Context, n int) (int, error) {
			if n == epochs {
				return n, nil
			}
			got, err := workflow.WaitForEvent[int](ctx, "tick", 0)
			if err != nil {
				return 0, err
			}
			if got != n {
				return 0, fmt.Errorf("epoch %d got tick %d", n, got)
			}
			return 0, workflow.ContinueAsNew(ctx, n+1)
		})
	})
	ctx := ctxT(t, 60*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "ticker", 0, workflow.StartOptions{}))
	// Two ticks ahead of the loop: one of them always waits across a
	// ContinueAsNew.
	for i := range epochs {
		if err := en.E.RaiseEvent(ctx, st.ID, "tick", i, fmt.Sprint("t", i)); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			continue
		}
		deadline := time.Now().Add(20 * time.Second)
		for { // until epoch i-1 consumed its tick
			s := must[*workflow.Status](t)(en.E.Status(ctx, st.ID))
			var at int
			if json.Unmarshal(s.Input, &at) == nil && at >= i || s.State.Final() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("epoch %d not reached within 20s: %+v", i, s)
			}
			time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
		}
	}
	if out, err := workflow.Result[int](ctx, en.E, st.ID); err != nil || out != epochs {
		t.Fatalf("result %d, %v; want %d", out, err, epochs)
	}
	evs, err := en.B.Events(ctx, backend.EventQuery{CorrelationID: "wfh:" + st.ID, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	continued := 0
	for _, ev := range evs {
		if ev.Type != "wf.continued" {
			continue
		}
		continued++
		var r struct{ Consumed, Pending []string }
		if err := json.Unmarshal(ev.Data, &r); err != nil {
			t.Fatal(err)
		}
		if n := len(r.Consumed) + len(r.Pending); n > 1 {
			t.Fatalf("continued record %d lists %d event ids (consumed %v, pending %v); want at most the one tick waiting", continued, n, r.Consumed, r.Pending)
		}
	}
	if continued != epochs {
		t.Fatalf("%d continued records, want %d", continued, epochs)
	}
}

// IsReplaying is false exactly where the function runs code for the first
// time: a line logged when it is false is logged once. Here the events
// are in the history before the first run, so that run takes several
// steps at once, none of them a repeat.
func TestIsReplayingOnlyForRepeats(t *testing.T) {
	var mu sync.Mutex
	fresh := map[string]int{} // lines reached with IsReplaying false
	reg := func(e *workflow.Engine) {
		_ = workflow.Register(e, "log", func(ctx workflow.Context, _ int) (string, error) {
			note := func(line string) {
				mu.Lock()
				defer mu.Unlock()
				if !ctx.IsReplaying() {
					fresh[line]++
				}
			}
			note("start")
			a, err := workflow.WaitForEvent[string](ctx, "a", 0)
			if err != nil {
				return "", err
			}
			note("got a")
			b, err := workflow.WaitForEvent[string](ctx, "b", 0)
			if err != nil {
				return "", err
			}
			note("got b")
			if err := workflow.Sleep(ctx, 10*time.Millisecond); err != nil { // one more run, replaying the lines above
				return "", err
			}
			note("slept")
			return a + b, nil
		})
	}
	e := engineOn(t, rawBackend(t), "rsvp-workflows", false, reg)
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(e.StartInstance(ctx, "log", 0, workflow.StartOptions{ID: "r1"}))
	for _, ev := range []string{"a", "b"} {
		if err := e.RaiseEvent(ctx, st.ID, ev, ev, ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Start(ctx); err != nil { // its first run sees both events
		t.Fatal(err)
	}
	if out, err := workflow.Result[string](ctx, e, st.ID); err != nil || out != "ab" {
		t.Fatalf("result %q, %v", out, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := map[string]int{"start": 1, "got a": 1, "got b": 1, "slept": 1}; fmt.Sprint(fresh) != fmt.Sprint(want) {
		t.Fatalf("lines reached with IsReplaying false: %v; want each once: %v", fresh, want)
	}
}

// An activity attempt's timeout counts from when the attempt is made,
// as its request's deadline does: not from the history entry the run
// replayed last, which is old when the run comes late (a backlog of
// tasks, engines down for a while).
func TestActivityTimeoutCountsFromTheAttempt(t *testing.T) {
	reg := func(e *workflow.Engine) {
		_ = workflow.Register(e, "call", func(ctx workflow.Context, _ int) (string, error) {
			return workflow.CallActivity[string](ctx, "takes-a-moment", "x", workflow.ActivityOptions{Timeout: 2 * time.Second}).Get(ctx)
		})
	}
	b := rawBackend(t)
	e := engineOn(t, b, "rsvp-workflows", false, reg)
	c, err := rsvp.New(context.Background(), b, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	respond(t, c, "takes-a-moment", rsvp.HandleOptions{}, func(ctx context.Context, s string) (string, error) {
		select {
		case <-time.After(300 * time.Millisecond):
			return "done", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	})
	ctx := ctxT(t, 20*time.Second)
	st := must[*workflow.Status](t)(e.StartInstance(ctx, "call", 0, workflow.StartOptions{ID: "late"}))
	// No engine runs it for a while: its first run comes 3s after the
	// start, past the attempt's 2s timeout if that counted from the start.
	for time.Since(st.CreatedAt) < 3*time.Second {
		time.Sleep(50 * time.Millisecond) // waiting for the start to be old, not for another goroutine
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := workflow.Result[string](ctx, e, st.ID); err != nil || out != "done" {
		t.Fatalf("an activity answering in 300ms with a 2s timeout, run 3s after the start: %q, %v", out, err)
	}
}
