package workflow_test

import (
	"context"
	"fmt"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/workflow"
)

// Document is what the approval workflow reviews and publishes.
type Document struct {
	ID   string `json:"id"`
	Text string `json:"text"`
}

// Approval is the seed article's workflow: review a document, wait up to
// a timeout for a person's decision (the external event
// "ApprovalReceived", raised by instance id), then publish it if approved.
func Approval(ctx workflow.Context, doc Document) (string, error) {
	review, err := workflow.CallActivity[string](ctx, "ReviewDocument", doc, workflow.ActivityOptions{}).Get(ctx)
	if err != nil {
		return "", err
	}
	if err := workflow.SetCustomStatus(ctx, map[string]string{"review": review, "step": "awaiting approval"}); err != nil {
		return "", err
	}
	decision, err := workflow.WaitForEvent[string](ctx, "ApprovalReceived", 24*time.Hour)
	if err == workflow.ErrEventTimeout {
		return "not approved in time", nil
	} else if err != nil {
		return "", err
	}
	if decision != "Approved" {
		return "rejected: " + decision, nil
	}
	return workflow.CallActivity[string](ctx, "PublishDocument", doc, workflow.ActivityOptions{}).Get(ctx)
}

// The approval workflow end to end: activities are ordinary rsvp
// responders; the decision arrives as an event raised by instance id.
func Example_approval() {
	ctx := context.Background()
	b, _ := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	defer b.Close()
	c, _ := rsvp.New(ctx, b, rsvp.Config{})
	defer c.Close(ctx)

	review, _ := rsvp.HandleTyped(c, "ReviewDocument", func(ctx context.Context, d Document) (string, error) {
		return "reviewed " + d.ID, nil
	}, rsvp.HandleOptions{})
	defer review.Stop(ctx)
	publish, _ := rsvp.HandleTyped(c, "PublishDocument", func(ctx context.Context, d Document) (string, error) {
		return "published " + d.ID, nil
	}, rsvp.HandleOptions{})
	defer publish.Stop(ctx)

	e, _ := workflow.New(c, workflow.Config{})
	_ = workflow.Register(e, "approval", Approval)
	_ = e.Start(ctx)
	defer e.Stop(ctx)

	st, err := e.StartInstance(ctx, "approval", Document{ID: "doc-1", Text: "..."}, workflow.StartOptions{ID: "approve-doc-1"})
	if err != nil {
		fmt.Println(err)
		return
	}
	// A person approves; raising before the workflow waits is fine.
	if err := e.RaiseEvent(ctx, st.ID, "ApprovalReceived", "Approved", "decision-1"); err != nil {
		fmt.Println(err)
		return
	}
	out, err := workflow.Result[string](ctx, e, st.ID)
	fmt.Println(out, err)
	// Output: published doc-1 <nil>
}

// Thumbnails fans out one activity call per image and aggregates their
// results (fan-out/fan-in).
func Thumbnails(ctx workflow.Context, images []string) (int, error) {
	var calls []workflow.Future[int]
	var all []workflow.Awaitable
	for _, img := range images {
		f := workflow.CallActivity[int](ctx, "resize", img, workflow.ActivityOptions{
			Retry: workflow.RetryPolicy{MaxAttempts: 3, Backoff: 100 * time.Millisecond}})
		calls, all = append(calls, f), append(all, f)
	}
	if err := workflow.AwaitAll(ctx, all...); err != nil {
		return 0, err
	}
	total := 0
	for _, f := range calls {
		n, _ := f.Get(ctx)
		total += n
	}
	return total, nil
}

func Example_fanOut() {
	ctx := context.Background()
	b, _ := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	defer b.Close()
	c, _ := rsvp.New(ctx, b, rsvp.Config{})
	defer c.Close(ctx)

	resize, _ := rsvp.HandleTyped(c, "resize", func(ctx context.Context, img string) (int, error) {
		return len(img) * 100, nil // bytes saved, say
	}, rsvp.HandleOptions{Concurrency: 4})
	defer resize.Stop(ctx)

	e, _ := workflow.New(c, workflow.Config{})
	_ = workflow.Register(e, "thumbnails", Thumbnails)
	_ = e.Start(ctx)
	defer e.Stop(ctx)

	st, _ := e.StartInstance(ctx, "thumbnails", []string{"a.png", "bb.png", "ccc.png"}, workflow.StartOptions{})
	saved, err := workflow.Result[int](ctx, e, st.ID)
	fmt.Println(saved, err)
	// Output: 1800 <nil>
}
