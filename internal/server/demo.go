package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/rsvp-go/rsvp"
)

// The demo responders' queues.
const (
	// DemoThumbnailQueue answers {"url": "https://..."} with
	// {"thumbnail_url": "https://...?size=128"} after DemoWork of simulated
	// work, reporting {"percent": 50} progress halfway. A body without a
	// valid http(s) URL fails at once with code bad_payload.
	DemoThumbnailQueue = "thumbnail"
	// DemoFlakyQueue fails the first attempt of every request, and succeeds
	// on the retry DemoFlakyBackoff later, replying {"attempt": 2, ...}.
	DemoFlakyQueue = "flaky"
)

// Timings of the demo responders.
const (
	DemoWork         = 300 * time.Millisecond
	DemoFlakyBackoff = 500 * time.Millisecond
)

// startDemo starts the demo responders on c and returns the function that
// stops them.
func startDemo(c *rsvp.Client) (stop func(context.Context) error, err error) {
	thumb, err := c.Handle(DemoThumbnailQueue, rsvp.HandlerFunc(demoThumbnail), rsvp.HandleOptions{Concurrency: 8})
	if err != nil {
		return nil, err
	}
	flaky, err := c.Handle(DemoFlakyQueue, rsvp.HandlerFunc(demoFlaky), rsvp.HandleOptions{
		Concurrency: 8,
		MaxAttempts: 3,
		Backoff:     func(int) time.Duration { return DemoFlakyBackoff },
	})
	if err != nil {
		_ = thumb.Stop(context.Background())
		return nil, err
	}
	return func(ctx context.Context) error { return stopAll(ctx, thumb, flaky) }, nil
}

func demoThumbnail(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
	var in struct {
		URL string `json:"url"`
	}
	bad := func(why string) error {
		return rsvp.Permanent(&rsvp.RemoteError{Code: rsvp.CodeBadPayload,
			Message: why + `: send a JSON object such as {"url": "https://example.com/cat.png"}`})
	}
	if err := json.Unmarshal(req.Body, &in); err != nil {
		return nil, bad("the body is not JSON")
	}
	u, err := url.Parse(in.URL)
	switch {
	case in.URL == "":
		return nil, bad(`the body has no "url"`)
	case err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https"):
		return nil, bad(fmt.Sprintf("url %q is not an http(s) URL", in.URL))
	}
	if err := pause(ctx, DemoWork/2); err != nil {
		return nil, err
	}
	_ = rsvp.Progress(ctx, map[string]any{"percent": 50}) // best effort: a lost progress report is no failure
	if err := pause(ctx, DemoWork/2); err != nil {
		return nil, err
	}
	q := u.Query()
	q.Set("size", "128")
	u.RawQuery = q.Encode()
	return jsonReply(map[string]string{"thumbnail_url": u.String()})
}

func demoFlaky(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
	if req.Attempt <= 1 {
		return nil, errors.New("simulated failure of the first attempt; retrying in " + DemoFlakyBackoff.String())
	}
	return jsonReply(map[string]any{"attempt": req.Attempt, "message": "succeeded on attempt " + fmt.Sprint(req.Attempt)})
}

func jsonReply(v any) (*rsvp.Reply, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, rsvp.Permanent(err)
	}
	return &rsvp.Reply{Body: append(body, '\n'), ContentType: "application/json"}, nil // a newline for curl users
}

// pause waits for d or until ctx ends.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// DemoHelp returns the curl commands that try the demo responders and
// workflows of a server at baseURL. With auth, they send "Authorization: Bearer $RSVP_KEY".
func DemoHelp(baseURL string, auth bool) string {
	h := ""
	if auth {
		h = ` -H "Authorization: Bearer $RSVP_KEY"`
	}
	lines := []string{
		"Try the demo responders:",
		"",
		"  # submit: 202 Accepted, Location: /v1/requests/ID",
		fmt.Sprintf(`  curl -si%s %s/v1/queues/thumbnail/requests -H 'Content-Type: application/json' -d '{"url":"https://example.com/cat.png"}'`, h, baseURL),
		"  # poll the status (queued, running with progress 50%, then 303 See Other to the result)",
		fmt.Sprintf(`  curl -si%s %s/v1/requests/ID`, h, baseURL),
		fmt.Sprintf(`  curl -s%s %s/v1/requests/ID/result`, h, baseURL),
		"  # or submit and wait up to 10s for the result in one call",
		fmt.Sprintf(`  curl -s%s %s/v1/queues/thumbnail/requests -H 'Prefer: wait=10' -H 'Content-Type: application/json' -d '{"url":"https://example.com/cat.png"}'`, h, baseURL),
		"  # a permanent failure (no url): 502 with problem details, code bad_payload",
		fmt.Sprintf(`  curl -s%s %s/v1/queues/thumbnail/requests -H 'Prefer: wait=10' -d '{}'`, h, baseURL),
		"  # the first attempt fails, the retry 0.5s later succeeds (\"attempts\": 2 in the status)",
		fmt.Sprintf(`  curl -s%s %s/v1/queues/flaky/requests -H 'Prefer: wait=10' -d 'hi'`, h, baseURL),
		"",
		"Try the demo workflows:",
		"",
		"  # start the approval of a document: 202 Accepted, Location: /v1/instances/doc-1 (starting doc-1 again returns it)",
		fmt.Sprintf(`  curl -si%s '%s/v1/workflows/approval/instances?id=doc-1' -H 'Content-Type: application/json' -d '{"id":"doc-1","text":"The quarterly report."}'`, h, baseURL),
		"  # its status: running, reviewed, \"awaiting approval\" in custom_status",
		fmt.Sprintf(`  curl -s%s %s/v1/instances/doc-1`, h, baseURL),
		"  # approve it: the external event ApprovalReceived (any other text rejects it)",
		fmt.Sprintf(`  curl -si%s %s/v1/instances/doc-1/events/ApprovalReceived -H 'Content-Type: application/json' -d '"Approved"'`, h, baseURL),
		"  # its status changes as Server-Sent Events (the stream ends after the final one)",
		fmt.Sprintf(`  curl -sN%s %s/v1/instances/doc-1/events`, h, baseURL),
		"  # finished: 303 See Other to the result (?wait=10s long-polls for the next change instead)",
		fmt.Sprintf(`  curl -si%s %s/v1/instances/doc-1`, h, baseURL),
		fmt.Sprintf(`  curl -s%s %s/v1/instances/doc-1/result`, h, baseURL),
		"  # fan-out: a thumbnail per image, all at once; -L follows the 303 to the result",
		fmt.Sprintf(`  curl -s%s '%s/v1/workflows/thumbnails/instances?id=thumbs-1' -H 'Content-Type: application/json' -d '["https://example.com/a.png","https://example.com/b.png"]'`, h, baseURL),
		fmt.Sprintf(`  curl -sL%s '%s/v1/instances/thumbs-1?wait=10s'`, h, baseURL),
		"",
	}
	return strings.Join(lines, "\n")
}
