package workflow_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/internal/natstest"
	"github.com/rsvp-go/rsvp/workflow"
)

// TestTimerWithoutSchedules: on an engine that cannot schedule requests
// (NATS 2.11), a workflow's timer could never fire. The instance fails
// at once with code unsupported, naming what is needed, instead of having
// its task retried until it is dead-lettered and the instance left running
// for good.
func TestTimerWithoutSchedules(t *testing.T) {
	url := natstest.StartVersion(t, natstest.NATS211)
	b, err := rsvpnats.Connect(context.Background(), url, rsvpnats.Options{})
	if err != nil {
		t.Fatal(err)
	}
	en := newEnvOn(t, b, func(e *workflow.Engine) {
		err := workflow.Register(e, "napper", func(ctx workflow.Context, in string) (string, error) {
			if err := workflow.Sleep(ctx, time.Hour); err != nil {
				return "", err
			}
			return "rested", nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	ctx := ctxT(t, 30*time.Second)
	st := must[*workflow.Status](t)(en.E.StartInstance(ctx, "napper", "x", workflow.StartOptions{ID: "nap-1"}))
	_, err = workflow.Result[string](ctx, en.E, st.ID)
	var f *workflow.Failure
	if !errors.As(err, &f) || f.Code != workflow.CodeUnsupported || !strings.Contains(f.Message, "2.12") {
		t.Fatalf("result: %v; want a failure with code %s naming NATS 2.12", err, workflow.CodeUnsupported)
	}
}
