package workflow_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/workflow"
)

// traced returns a span recorder, a tracer provider that records to it,
// and a client on a memory engine traced by it, all closed with the test.
func traced(t *testing.T, ctx context.Context) (*tracetest.SpanRecorder, *sdktrace.TracerProvider, *rsvp.Client) {
	t.Helper()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	c := must[*rsvp.Client](t)(rsvp.New(ctx, b, rsvp.Config{TracerProvider: tp}))
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return spans, tp, c
}

// One trace follows an approval instance: from the caller's span through
// every run of the instance, the requests it sends, their handling, and
// the timer of its wait.
func TestTraceFollowsInstance(t *testing.T) {
	ctx := ctxT(t, 20*time.Second)
	spans, tp, c := traced(t, ctx)
	for _, q := range []string{"ReviewDocument", "PublishDocument"} {
		respond(t, c, q, rsvp.HandleOptions{}, func(ctx context.Context, d Document) (string, error) { return q + " " + d.ID, nil })
	}
	e := must[*workflow.Engine](t)(workflow.New(c, workflow.Config{TracerProvider: tp}))
	_ = workflow.Register(e, "approval", Approval)
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer e.Stop(context.Background())

	callerCtx, caller := tp.Tracer("test").Start(ctx, "caller")
	st := must[*workflow.Status](t)(e.StartInstance(callerCtx, "approval", Document{ID: "t1"}, workflow.StartOptions{}))
	caller.End()
	if err := e.RaiseEvent(ctx, st.ID, "ApprovalReceived", "Approved", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := workflow.Result[string](ctx, e, st.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.Stop(ctx); err != nil { // every run's span has ended
		t.Fatal(err)
	}
	// A handler's span ends after its reply is stored: the workflow can
	// finish first. Closing the client waits for the handlers.
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}

	traceID := caller.SpanContext().TraceID()
	count := map[string]int{}
	var runs []sdktrace.ReadOnlySpan
	for _, s := range spans.Ended() {
		if s.SpanContext().TraceID() != traceID {
			continue
		}
		count[s.Name()]++
		if s.Name() == "workflow.run approval" {
			runs = append(runs, s)
		}
	}
	for _, name := range []string{"workflow.run approval", "rsvp.send ReviewDocument", "rsvp.handle ReviewDocument",
		"rsvp.send PublishDocument", "rsvp.handle PublishDocument"} {
		if count[name] == 0 {
			t.Errorf("no %q span in the caller's trace; spans in it: %v", name, count)
		}
	}
	if len(runs) < 3 { // start, review's reply, the event (and the publish reply)
		t.Errorf("%d runs in the trace, want at least 3", len(runs))
	}
	var hasInstance bool
	for _, kv := range runs[0].Attributes() {
		hasInstance = hasInstance || kv.Key == "workflow.instance_id" && kv.Value.AsString() == st.ID
	}
	if !hasInstance || runs[0].Parent().SpanID() != caller.SpanContext().SpanID() {
		t.Errorf("first run: attributes %v, parent %v; want the instance id and the caller as parent", runs[0].Attributes(), runs[0].Parent())
	}
	// Each run says how it ended: the last completed the instance, the
	// others wait for a reply or the event.
	for i, r := range runs {
		want := "waiting"
		if i == len(runs)-1 {
			want = "completed"
		}
		if got := attr(r, "workflow.outcome"); got != want {
			t.Errorf("run %d of %d: workflow.outcome %q, want %q", i+1, len(runs), got, want)
		}
	}
}

// attr returns the string attribute key of s, "" if it has none.
func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.AsString()
		}
	}
	return ""
}

// A run that fails its instance says so on its span: outcome failed, and
// an error status with the failure's code.
func TestRunSpanOfFailure(t *testing.T) {
	ctx := ctxT(t, 20*time.Second)
	spans, tp, c := traced(t, ctx)
	e := must[*workflow.Engine](t)(workflow.New(c, workflow.Config{TracerProvider: tp}))
	_ = workflow.Register(e, "doomed", func(ctx workflow.Context, _ string) (string, error) {
		return "", errors.New("no luck")
	})
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer e.Stop(context.Background())
	st := must[*workflow.Status](t)(e.StartInstance(ctx, "doomed", "x", workflow.StartOptions{}))
	if _, err := workflow.Result[string](ctx, e, st.ID); err == nil {
		t.Fatal("the doomed workflow succeeded")
	}
	if err := e.Stop(ctx); err != nil { // every run's span has ended
		t.Fatal(err)
	}
	var found bool
	for _, s := range spans.Ended() {
		if s.Name() != "workflow.run doomed" {
			continue
		}
		found = true
		if got := attr(s, "workflow.outcome"); got != "failed" || s.Status().Code != codes.Error || s.Status().Description != workflow.CodeFailed {
			// A run whose recording failed has the error as an event.
			t.Errorf("run span of a failure: outcome %q, status %v, events %v; want failed, an error with code %s", got, s.Status(), s.Events(), workflow.CodeFailed)
		}
	}
	if !found {
		t.Fatal("no run span")
	}
}
