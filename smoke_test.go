package rsvp_test

import (
	"context"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
)

func TestRequestReply(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	_, err := c.Handle("echo", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: append([]byte("re: "), m.Body...), ContentType: "text/plain"}, nil
	}), rsvp.HandleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.Request(ctx, "echo", &rsvp.Message{Body: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Body) != "re: hi" || r.ContentType != "text/plain" {
		t.Fatalf("reply %q %q", r.Body, r.ContentType)
	}
}
