package workflow_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
	"github.com/rsvp-go/rsvp/internal/pgtest"
	"github.com/rsvp-go/rsvp/workflow"
)

// The workflows run on the PostgreSQL backend too: the approval (an event
// raised before the wait), the fan-out, a durable timer and a
// sub-workflow. Needs RSVP_TEST_POSTGRES_URL (see README, Tests); it fails
// when that server does not answer.
func TestWorkflowsOnPostgres(t *testing.T) {
	url := os.Getenv("RSVP_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("set RSVP_TEST_POSTGRES_URL (see README, Tests) to run the PostgreSQL tests")
	}
	ctx := ctxT(t, 60*time.Second)
	schema := pgtest.Schema(t, url, "rsvp_wf_")
	b, err := rsvppg.Open(ctx, url, rsvppg.Options{Schema: schema})
	if err != nil {
		t.Fatalf("RSVP_TEST_POSTGRES_URL: %v", err)
	}
	en := newEnvOn(t, b, func(e *workflow.Engine) {
		_ = workflow.Register(e, "approval", Approval)
		_ = workflow.Register(e, "thumbnails", Thumbnails)
		_ = workflow.Register(e, "both", func(ctx workflow.Context, doc Document) (int, error) {
			if err := workflow.Sleep(ctx, 200*time.Millisecond); err != nil {
				return 0, err
			}
			return workflow.CallWorkflow[int](ctx, "thumbnails", []string{doc.ID, doc.Text}).Get(ctx)
		})
	})
	for _, q := range []string{"ReviewDocument", "PublishDocument"} {
		respond(t, en.Client, q, rsvp.HandleOptions{}, func(ctx context.Context, d Document) (string, error) {
			return map[string]string{"ReviewDocument": "reviewed ", "PublishDocument": "published "}[q] + d.ID, nil
		})
	}
	respond(t, en.Client, "resize", rsvp.HandleOptions{Concurrency: 4}, func(ctx context.Context, img string) (int, error) {
		return len(img), nil
	})

	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "approval", Document{ID: "pg-doc"}, workflow.StartOptions{ID: "pg-approval"}))
	if err := en.E.RaiseEvent(ctx, st.ID, "ApprovalReceived", "Approved", "once"); err != nil {
		t.Fatal(err)
	}
	if out, err := workflow.Result[string](ctx, en.E, st.ID); err != nil || out != "published pg-doc" {
		t.Fatalf("approval: %q, %v", out, err)
	}
	began := time.Now()
	st = must[*workflow.Status](t)(en.E.StartInstance(ctx, "both", Document{ID: "abc", Text: "de"}, workflow.StartOptions{}))
	if out, err := workflow.Result[int](ctx, en.E, st.ID); err != nil || out != 5 {
		t.Fatalf("timer, sub-workflow, fan-out: %d, %v", out, err)
	}
	if d := time.Since(began); d < 200*time.Millisecond {
		t.Fatalf("finished after %s, before its 200ms timer", d)
	}
}
