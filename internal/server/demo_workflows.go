package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/workflow"
)

// The demo workflows, registered on the server's engine with Config.Demo,
// and the queues of their activities.
const (
	// DemoApprovalWorkflow reviews a document ({"id": "...", "text":
	// "..."}) with the activity on DemoReviewQueue, waits up to
	// DemoApprovalTimeout for the external event DemoApprovalEvent, and
	// publishes the document with the activity on DemoPublishQueue if the
	// event's payload is "Approved"; its output is then "published ID
	// at URL". Another payload: "rejected: PAYLOAD"; no decision in time:
	// "not approved in time".
	DemoApprovalWorkflow = "approval"
	// DemoThumbnailsWorkflow makes the thumbnails of a list of image URLs
	// (["https://...", ...]) with one request per image to the demo
	// responder on DemoThumbnailQueue, all at once, and outputs the list of
	// thumbnail URLs in the same order.
	DemoThumbnailsWorkflow = "thumbnails"

	DemoReviewQueue     = "ReviewDocument"
	DemoPublishQueue    = "PublishDocument"
	DemoApprovalEvent   = "ApprovalReceived"
	DemoApprovalTimeout = 10 * time.Minute
)

// demoDocument is the input of the approval workflow and of its
// activities.
type demoDocument struct {
	ID   string `json:"id"`
	Text string `json:"text"`
}

// demoApproval is the seed article's approval workflow.
func demoApproval(ctx workflow.Context, doc demoDocument) (string, error) {
	review, err := workflow.CallActivity[string](ctx, DemoReviewQueue, doc, workflow.ActivityOptions{
		Retry: workflow.RetryPolicy{MaxAttempts: 3}}).Get(ctx)
	if err != nil {
		return "", err
	}
	if err := workflow.SetCustomStatus(ctx, map[string]string{"review": review, "step": "awaiting approval",
		"raise": "POST /v1/instances/" + ctx.InstanceID() + "/events/" + DemoApprovalEvent}); err != nil {
		return "", err
	}
	decision, err := workflow.WaitForEvent[string](ctx, DemoApprovalEvent, DemoApprovalTimeout)
	switch {
	case errors.Is(err, workflow.ErrEventTimeout):
		return "not approved in time", nil
	case err != nil:
		return "", err
	case decision != "Approved":
		return "rejected: " + decision, nil
	}
	return workflow.CallActivity[string](ctx, DemoPublishQueue, doc, workflow.ActivityOptions{
		Retry: workflow.RetryPolicy{MaxAttempts: 3}}).Get(ctx)
}

// demoThumbnails fans out a thumbnail request per image and fans in
// their URLs.
func demoThumbnails(ctx workflow.Context, images []string) ([]string, error) {
	type thumb struct {
		URL string `json:"thumbnail_url"`
	}
	calls := make([]workflow.Future[thumb], len(images))
	all := make([]workflow.Awaitable, len(images))
	for i, img := range images {
		calls[i] = workflow.CallActivity[thumb](ctx, DemoThumbnailQueue, map[string]string{"url": img}, workflow.ActivityOptions{
			Retry: workflow.RetryPolicy{MaxAttempts: 3, Backoff: 200 * time.Millisecond}})
		all[i] = calls[i]
	}
	if err := workflow.AwaitAll(ctx, all...); err != nil {
		return nil, err
	}
	out := make([]string, len(images))
	for i, f := range calls {
		t, err := f.Get(ctx)
		if err != nil {
			return nil, err
		}
		out[i] = t.URL
	}
	return out, nil
}

// registerDemoWorkflows registers the demo workflows on e.
func registerDemoWorkflows(e *workflow.Engine) error {
	return errors.Join(
		workflow.Register(e, DemoApprovalWorkflow, demoApproval),
		workflow.Register(e, DemoThumbnailsWorkflow, demoThumbnails),
	)
}

// startDemoActivities starts the responders of the approval workflow's
// activities on c and returns the function that stops them.
func startDemoActivities(c *rsvp.Client) (stop func(context.Context) error, err error) {
	review, err := rsvp.HandleTyped(c, DemoReviewQueue, demoReview, rsvp.HandleOptions{Concurrency: 8})
	if err != nil {
		return nil, err
	}
	publish, err := rsvp.HandleTyped(c, DemoPublishQueue, demoPublish, rsvp.HandleOptions{Concurrency: 8})
	if err != nil {
		_ = review.Stop(context.Background())
		return nil, err
	}
	return func(ctx context.Context) error { return stopAll(ctx, review, publish) }, nil
}

func demoReview(ctx context.Context, doc demoDocument) (string, error) {
	if doc.ID == "" {
		return "", rsvp.Permanent(&rsvp.RemoteError{Code: rsvp.CodeBadPayload,
			Message: `the document has no "id": start the workflow with {"id": "doc-1", "text": "..."}`})
	}
	if err := pause(ctx, DemoWork); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s: %d words, looks fine", doc.ID, len(strings.Fields(doc.Text))), nil
}

func demoPublish(ctx context.Context, doc demoDocument) (string, error) {
	if err := pause(ctx, DemoWork); err != nil {
		return "", err
	}
	return fmt.Sprintf("published %s at https://example.com/docs/%s", doc.ID, doc.ID), nil
}
