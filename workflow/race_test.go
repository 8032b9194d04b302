package workflow_test

import (
	"context"
	"errors"
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
	ctx := context.Background()
	c, err := rsvp.New(ctx, b, rsvp.Config{RecheckInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e, err := workflow.New(c, workflow.Config{Queue: queue, SweepInterval: 500 * time.Millisecond})
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
