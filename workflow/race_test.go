package workflow_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/workflow"
)

// Races between engines (and management calls) on one instance: a backend
// that holds one write lets the test order them.

// gatedBackend holds the first append of an event of type kind until
// release is closed, once armed.
type gatedBackend struct {
	backend.Backend
	kind    string
	mu      sync.Mutex
	armed   bool
	reached chan struct{}
	release chan struct{}
}

func newGated(b backend.Backend, kind string) *gatedBackend {
	return &gatedBackend{Backend: b, kind: kind, reached: make(chan struct{}), release: make(chan struct{})}
}

func (g *gatedBackend) arm() { g.mu.Lock(); g.armed = true; g.mu.Unlock() }

func (g *gatedBackend) AppendEvent(ctx context.Context, ev *backend.Event) error {
	g.mu.Lock()
	hold := g.armed && ev.Type == g.kind
	if hold {
		g.armed = false
	}
	g.mu.Unlock()
	if hold {
		close(g.reached)
		select {
		case <-g.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.Backend.AppendEvent(ctx, ev)
}

// rawBackend is an in-memory embedded engine, closed with the test.
func rawBackend(t *testing.T) backend.Backend {
	t.Helper()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// engineOn makes a client and engine on b with the given queue, started
// if start, and stopped with the test.
func engineOn(t *testing.T, b backend.Backend, queue string, start bool, register func(*workflow.Engine)) *workflow.Engine {
	t.Helper()
	return engineWith(t, b, workflow.Config{Queue: queue, SweepInterval: 500 * time.Millisecond}, start, register)
}

// engineWith is engineOn with the engine's configuration cfg.
func engineWith(t *testing.T, b backend.Backend, cfg workflow.Config, start bool, register func(*workflow.Engine)) *workflow.Engine {
	t.Helper()
	ctx := context.Background()
	c, err := rsvp.New(ctx, b, rsvp.Config{RecheckInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e, err := workflow.New(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if register != nil {
		register(e)
	}
	if start {
		if err := e.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.Stop(ctx)
		_ = c.Close(ctx)
	})
	return e
}

// waitStep waits until the last entry of id's history is a step whose
// data contains s.
func waitStep(t *testing.T, ctx context.Context, e *workflow.Engine, id, s string) {
	t.Helper()
	for after := uint64(0); ; {
		st := must[*workflow.Status](t)(e.WaitChange(ctx, id, after))
		after = st.Position
		h := must[[]workflow.HistoryEvent](t)(e.History(ctx, id))
		if last := h[len(h)-1]; last.Type == "wf.step" && strings.Contains(string(last.Data), s) {
			return
		}
	}
}

// Two engines run the same instance at once (two triggers at once: a
// reply here, a task there) and both reach ContinueAsNew. The slower
// one's record of it lands after the faster one already ran the new
// epoch. It is a repeat, and changes nothing: before, the new epoch
// started at the second record, so what the first execution of the epoch
// recorded (its timer, fired) was lost, and the timer, set again under
// the same task id, was deduplicated away: the instance never woke.
func TestContinueAsNewRecordedTwice(t *testing.T) {
	raw := rawBackend(t)
	reg := func(e *workflow.Engine) {
		_ = workflow.Register(e, "can", func(ctx workflow.Context, n int) (string, error) {
			if n == 0 {
				if _, err := workflow.WaitForEvent[string](ctx, "go", 0); err != nil {
					return "", err
				}
				return "", workflow.ContinueAsNew(ctx, 1)
			}
			if err := workflow.Sleep(ctx, 200*time.Millisecond); err != nil {
				return "", err
			}
			if err := workflow.SetCustomStatus(ctx, "slept"); err != nil {
				return "", err
			}
			v, err := workflow.WaitForEvent[string](ctx, "more", 0)
			return "epoch 1: " + v, err
		})
	}
	gated := newGated(raw, "wf.continued")
	a := engineOn(t, raw, "wf-a", true, reg)
	b := engineOn(t, gated, "wf-b", true, reg)
	c := engineOn(t, raw, "wf-c", false, nil) // raises events; its task queue has no consumer
	ctx := ctxT(t, 30*time.Second)

	st := must[*workflow.Status](t)(a.StartInstance(ctx, "can", 0, workflow.StartOptions{ID: "c1"}))
	waitStep(t, ctx, a, "c1", `"target":"go"`)

	gated.arm()
	if err := c.RaiseEvent(ctx, "c1", "go", "x", "go-1"); err != nil {
		t.Fatal(err)
	}
	// Engine b runs the instance (a repeated start runs it at once) and is
	// held just before it records ContinueAsNew.
	must[*workflow.Status](t)(b.StartInstance(ctx, "can", 0, workflow.StartOptions{ID: "c1"}))
	select {
	case <-gated.reached:
	case <-ctx.Done():
		t.Fatal("engine b never reached ContinueAsNew")
	}
	// Meanwhile engine a runs it too: it continues as new, sleeps, wakes.
	must[*workflow.Status](t)(a.StartInstance(ctx, "can", 0, workflow.StartOptions{ID: "c1"}))
	for after := st.Position; string(st.CustomStatus) != `"slept"`; after = st.Position {
		st = must[*workflow.Status](t)(a.WaitChange(ctx, "c1", after))
	}
	close(gated.release) // engine b's ContinueAsNew lands now

	if err := a.RaiseEvent(ctx, "c1", "more", "y", "more-1"); err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := workflow.Result[string](actx, a, "c1")
	if err != nil || out != "epoch 1: y" {
		h := must[[]workflow.HistoryEvent](t)(a.History(ctx, "c1"))
		for _, ev := range h {
			t.Logf("%d %s %s", ev.Seq, ev.Type, ev.Data)
		}
		t.Fatalf("result %q, %v; want \"epoch 1: y\"", out, err)
	}
}

// Two starts of one id with different workflows at once: the one whose
// start record lost gets ErrIDInUse, not the other workflow's instance as
// if it had started its own.
func TestConcurrentStartOfOtherWorkflowIDInUse(t *testing.T) {
	raw := rawBackend(t)
	reg := func(e *workflow.Engine) {
		_ = workflow.Register(e, "alpha", func(ctx workflow.Context, _ int) (string, error) {
			return workflow.WaitForEvent[string](ctx, "x", 0)
		})
		_ = workflow.Register(e, "beta", func(ctx workflow.Context, _ int) (string, error) {
			return workflow.WaitForEvent[string](ctx, "x", 0)
		})
	}
	gated := newGated(raw, "wf.started")
	a := engineOn(t, gated, "wf-a", false, reg)
	b := engineOn(t, raw, "wf-b", false, reg)
	ctx := ctxT(t, 20*time.Second)

	gated.arm()
	type res struct {
		st  *workflow.Status
		err error
	}
	done := make(chan res, 1)
	go func() {
		st, err := a.StartInstance(ctx, "alpha", 0, workflow.StartOptions{ID: "shared"})
		done <- res{st, err}
	}()
	select { // alpha found the id free and is about to record its start
	case <-gated.reached:
	case <-ctx.Done():
		t.Fatal("alpha's start never reached its write")
	}
	stB, err := b.StartInstance(ctx, "beta", 0, workflow.StartOptions{ID: "shared"})
	if err != nil {
		t.Fatal(err)
	}
	close(gated.release)
	r := <-done
	if !errors.Is(r.err, workflow.ErrIDInUse) {
		name := ""
		if r.st != nil {
			name = r.st.Name
		}
		t.Fatalf("StartInstance(alpha) on an id beta took first: error %v, status of workflow %q (beta's status: %s); want ErrIDInUse", r.err, name, stB.Name)
	}
}

// Terminate of a sub-workflow that is finishing at that moment: either
// the termination wins (Terminate returns nil, the instance is terminated
// and its parent is told so) or the completion does (ErrFinished, and the
// parent gets the result). Before, Terminate could return nil and the
// sub-workflow end terminated while its parent had been given the
// completed result: the parent was told before the final record decided
// which end won.
func TestTerminateChildRacesCompletion(t *testing.T) {
	raw := rawBackend(t)
	reg := func(e *workflow.Engine) {
		_ = workflow.Register(e, "kid", func(ctx workflow.Context, _ int) (string, error) {
			return workflow.WaitForEvent[string](ctx, "go", 0)
		})
		_ = workflow.Register(e, "par", func(ctx workflow.Context, _ int) (string, error) {
			out, err := workflow.CallWorkflow[string](ctx, "kid", 0).Get(ctx)
			var ae *workflow.ActivityError
			if errors.As(err, &ae) {
				return "child failed: " + ae.Code, nil
			}
			return "child said: " + out, err
		})
	}
	gated := newGated(raw, "wf.completed")
	a := engineOn(t, gated, "wf-a", true, reg)
	admin := engineOn(t, raw, "wf-admin", false, nil)
	ctx := ctxT(t, 20*time.Second)

	must[*workflow.Status](t)(a.StartInstance(ctx, "par", 0, workflow.StartOptions{ID: "p1"}))
	kid := waitListed(t, ctx, a, "kid")
	waitStep(t, ctx, a, kid, `"target":"go"`)

	gated.arm() // hold the sub-workflow's own final record
	if err := a.RaiseEvent(ctx, kid, "go", "done", "go-1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gated.reached: // the sub-workflow is about to record its completion
	case <-ctx.Done():
		t.Fatal("the sub-workflow never finished")
	}
	termErr := admin.Terminate(ctx, kid, "stop it")
	close(gated.release)

	kidSt := must[*workflow.Status](t)(a.Await(ctx, kid))
	parOut := must[string](t)(workflow.Result[string](ctx, a, "p1"))
	t.Logf("Terminate: %v; sub-workflow: %s; parent: %q", termErr, kidSt.State, parOut)
	if termErr == nil && (kidSt.State != workflow.StateTerminated || parOut != "child failed: terminated") {
		t.Fatalf("Terminate succeeded and the sub-workflow is %s, but its parent got %q", kidSt.State, parOut)
	}
	if termErr != nil && (!errors.Is(termErr, workflow.ErrFinished) || kidSt.State != workflow.StateCompleted || parOut != "child said: done") {
		t.Fatalf("Terminate: %v; the sub-workflow is %s and its parent got %q", termErr, kidSt.State, parOut)
	}
}

// waitListed returns the id of the one instance of workflow name, once
// it is listed.
func waitListed(t *testing.T, ctx context.Context, e *workflow.Engine, name string) string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if l := must[[]*workflow.Status](t)(e.List(ctx, workflow.ListQuery{Name: name})); len(l) == 1 {
			return l[0].ID
		}
		if time.Now().After(deadline) {
			t.Fatalf("no instance of %s listed", name)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

// failingBackend fails the first append of an event of type kind to the
// history of instance, once armed.
type failingBackend struct {
	backend.Backend
	kind, instance string
	mu             sync.Mutex
	armed          bool
	failed         chan struct{}
}

func (f *failingBackend) AppendEvent(ctx context.Context, ev *backend.Event) error {
	f.mu.Lock()
	fail := f.armed && ev.Type == f.kind && ev.CorrelationID == "wfh:"+f.instance
	if fail {
		f.armed = false
		close(f.failed)
	}
	f.mu.Unlock()
	if fail {
		return errors.New("failingBackend: append failed")
	}
	return f.Backend.AppendEvent(ctx, ev)
}

// registerParentAndKid registers "par", which calls the sub-workflow
// "kid" and returns what it said, and "kid", which returns the data of
// its event "go".
func registerParentAndKid(e *workflow.Engine) {
	_ = workflow.Register(e, "kid", func(ctx workflow.Context, _ int) (string, error) {
		return workflow.WaitForEvent[string](ctx, "go", 0)
	})
	_ = workflow.Register(e, "par", func(ctx workflow.Context, _ int) (string, error) {
		out, err := workflow.CallWorkflow[string](ctx, "kid", 0).Get(ctx)
		return "child said: " + out, err
	})
}

// finishKidUntold starts "par" as instance p1 on a (registerParentAndKid),
// and finishes its sub-workflow with failing armed, so that its result
// does not reach p1. It returns the sub-workflow's id.
func finishKidUntold(t *testing.T, ctx context.Context, a *workflow.Engine, failing *failingBackend) string {
	t.Helper()
	must[*workflow.Status](t)(a.StartInstance(ctx, "par", 0, workflow.StartOptions{ID: "p1"}))
	kid := waitListed(t, ctx, a, "kid")
	waitStep(t, ctx, a, kid, `"target":"go"`)
	failing.mu.Lock()
	failing.armed = true // the sub-workflow's result fails to reach its parent
	failing.mu.Unlock()
	if err := a.RaiseEvent(ctx, kid, "go", "done", "go-1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-failing.failed:
	case <-ctx.Done():
		t.Fatal("the sub-workflow never told its parent")
	}
	return kid
}

// A sub-workflow that finished but could not tell its parent (the write
// failed, or the process died after the final record) is found by the
// sweep, which tells the parent.
func TestSweepTellsParentOfFinishedChild(t *testing.T) {
	raw := rawBackend(t)
	failing := &failingBackend{Backend: raw, kind: "wf.result", instance: "p1", failed: make(chan struct{})}
	a := engineOn(t, failing, "wf-a", true, registerParentAndKid)
	ctx := ctxT(t, 20*time.Second)

	finishKidUntold(t, ctx, a, failing)
	if out, err := workflow.Result[string](ctx, a, "p1"); err != nil || out != "child said: done" {
		t.Fatalf("parent: %q, %v", out, err)
	}
}

// Concurrent starts of one id give one instance: the instance index
// (List, and the sweep) comes to agree with the history about which start
// won, so an instance that completed is listed completed. The backend
// writes a record's index copy and its history copy one after the other,
// so concurrent starts may reach the two in different orders; the test
// makes a few rounds of them. Before, such an instance was listed running
// for good.
func TestConcurrentStartsListedAsTheHistorySays(t *testing.T) {
	en := newEnv(t, func(e *workflow.Engine) {
		_ = workflow.Register(e, "quick", func(ctx workflow.Context, s string) (string, error) { return s, nil })
	})
	ctx := ctxT(t, 120*time.Second)
	const rounds, ids, starts = 5, 200, 8
	for round := range rounds {
		var wg sync.WaitGroup
		for i := range ids {
			for j := range starts {
				wg.Go(func() {
					id := fmt.Sprintf("q-%d-%d", round, i)
					if _, err := en.E.StartInstance(ctx, "quick", fmt.Sprint(j), workflow.StartOptions{ID: id}); err != nil {
						t.Error(err)
					}
				})
			}
		}
		wg.Wait()
		for i := range ids {
			if _, err := en.E.Await(ctx, fmt.Sprintf("q-%d-%d", round, i)); err != nil {
				t.Fatal(err)
			}
		}
		// Every instance has completed (its history says so); the list
		// says so within a few sweep intervals.
		bad := pollList(t, ctx, en.E, "quick", func(st *workflow.Status) bool { return st.State == workflow.StateCompleted })
		if len(bad) == 0 {
			continue
		}
		id := bad[0].ID
		for _, ev := range must[[]*backend.Event](t)(en.B.Events(ctx, backend.EventQuery{Channel: "rsvp-workflows", Limit: 100000})) {
			if strings.HasSuffix(ev.CorrelationID, ":"+id) {
				t.Logf("index copy   %5d %s %s", ev.Seq, ev.Type, ev.Data)
			}
		}
		for _, ev := range must[[]*backend.Event](t)(en.B.Events(ctx, backend.EventQuery{CorrelationID: "wfh:" + id, Limit: 1000})) {
			if ev.Type == "wf.started" || ev.Type == "wf.completed" {
				t.Logf("history copy %5d %s %s", ev.Seq, ev.Type, ev.Data)
			}
		}
		st := must[*workflow.Status](t)(en.E.Status(ctx, id))
		t.Fatalf("round %d: %d instance(s) completed but listed otherwise, e.g. %s listed %s (Status: %s, run of input %s)",
			round, len(bad), id, bad[0].State, st.State, st.Input)
	}
}

// Terminate racing an instance's completion: whichever end wins, List
// (the instance index) comes to show the same one as Status (the
// history). Before, the index could keep the end that lost.
func TestTerminateRacingCompletionListedAsTheHistorySays(t *testing.T) {
	raw := rawBackend(t)
	reg := func(e *workflow.Engine) {
		_ = workflow.Register(e, "racer", func(ctx workflow.Context, _ int) (string, error) {
			return workflow.WaitForEvent[string](ctx, "go", 0)
		})
	}
	a := engineOn(t, raw, "wf-a", true, reg)
	admin := engineOn(t, raw, "wf-admin", false, nil)
	ctx := ctxT(t, 120*time.Second)
	const n = 300
	for i := range n {
		must[*workflow.Status](t)(a.StartInstance(ctx, "racer", 0, workflow.StartOptions{ID: fmt.Sprint("r-", i)}))
	}
	for i := range n {
		waitStep(t, ctx, a, fmt.Sprint("r-", i), `"target":"go"`)
	}
	var wg sync.WaitGroup
	for i := range n {
		id := fmt.Sprint("r-", i)
		wg.Go(func() { _ = a.RaiseEvent(ctx, id, "go", "done", "") })
		wg.Go(func() { _ = admin.Terminate(ctx, id, "race") })
	}
	wg.Wait()
	states := map[string]workflow.State{}
	for i := range n {
		id := fmt.Sprint("r-", i)
		states[id] = must[*workflow.Status](t)(a.Await(ctx, id)).State
	}
	bad := pollList(t, ctx, admin, "racer", func(st *workflow.Status) bool { return st.State == states[st.ID] })
	if len(bad) > 0 {
		var s []string
		for _, st := range bad {
			s = append(s, fmt.Sprintf("%s listed %s, Status %s", st.ID, st.State, states[st.ID]))
		}
		t.Fatalf("%d of %d instances listed in another final state than their history's: %v", len(bad), n, s)
	}
}

// pollList lists the instances of workflow name until ok holds for all
// of them, or for 3 seconds (a few sweep intervals), and returns those it
// does not hold for.
func pollList(t *testing.T, ctx context.Context, e *workflow.Engine, name string, ok func(*workflow.Status) bool) []*workflow.Status {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); ; {
		var bad []*workflow.Status
		for _, st := range must[[]*workflow.Status](t)(e.List(ctx, workflow.ListQuery{Name: name})) {
			if !ok(st) {
				bad = append(bad, st)
			}
		}
		if len(bad) == 0 || time.Now().After(deadline) {
			return bad
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
}

// Terminate does not wait for a run of the instance in its own engine:
// while that run's write hung (a slow backend), Terminate waited for it
// past its ctx, though a Terminate from any other process goes ahead
// (the history keeps one end either way).
func TestTerminateDoesNotWaitForARunHere(t *testing.T) {
	raw := rawBackend(t)
	gated := newGated(raw, "wf.step")
	a := engineOn(t, gated, "wf-a", true, func(e *workflow.Engine) {
		_ = workflow.Register(e, "nap", func(ctx workflow.Context, _ int) (string, error) {
			if _, err := workflow.WaitForEvent[string](ctx, "go", 0); err != nil {
				return "", err
			}
			return "", workflow.Sleep(ctx, time.Hour)
		})
	})
	ctx := ctxT(t, 20*time.Second)
	must[*workflow.Status](t)(a.StartInstance(ctx, "nap", 0, workflow.StartOptions{ID: "t1"}))
	waitStep(t, ctx, a, "t1", `"target":"go"`)
	gated.arm() // hold the step of the run after the event
	if err := a.RaiseEvent(ctx, "t1", "go", "now", "go-1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gated.reached: // a run of t1 in engine a waits for its write
	case <-ctx.Done():
		t.Fatal("the run after the event never recorded its step")
	}
	done := make(chan error, 1)
	go func() {
		tctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		done <- a.Terminate(tctx, "t1", "enough")
	}()
	var termErr error
	select {
	case termErr = <-done:
	case <-time.After(5 * time.Second):
		close(gated.release)
		t.Fatalf("Terminate with a 1s ctx still waiting after 5s, for the run of t1 whose write hangs: %v", <-done)
	}
	close(gated.release)
	if termErr != nil {
		t.Fatalf("Terminate while a run waits for its write: %v", termErr)
	}
	if st := must[*workflow.Status](t)(a.Await(ctx, "t1")); st.State != workflow.StateTerminated || st.Error.Message != "enough" {
		t.Fatalf("after Terminate: %s %+v", st.State, st.Error)
	}
}

// Purging a sub-workflow that finished but could not tell its parent
// tells the parent first: the sweep, which would have told it, finds
// nothing to go on once the history is purged, and the parent waited for
// good.
func TestPurgeTellsParentOfFinishedChild(t *testing.T) {
	raw := rawBackend(t)
	ctx := ctxT(t, 20*time.Second)
	failing := &failingBackend{Backend: raw, kind: "wf.result", instance: "p1", failed: make(chan struct{})}
	// No sweep within the test: only Purge can tell the parent.
	a := engineWith(t, failing, workflow.Config{Queue: "wf-a", SweepInterval: time.Hour}, true, registerParentAndKid)

	kid := finishKidUntold(t, ctx, a, failing)
	if _, err := a.Await(ctx, kid); err != nil {
		t.Fatal(err)
	}
	// Purged through an engine on the plain backend, as an operator would.
	op := engineWith(t, raw, workflow.Config{Queue: "wf-a", SweepInterval: time.Hour}, false, nil)
	if err := op.Purge(ctx, kid); err != nil {
		t.Fatal(err)
	}
	if out, err := workflow.Result[string](ctx, a, "p1"); err != nil || out != "child said: done" {
		t.Fatalf("parent after its sub-workflow was purged: %q, %v", out, err)
	}
}
