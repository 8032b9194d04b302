package rsvp_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
	"github.com/rsvp-go/rsvp/internal/pgtest"
)

// A handler's reply with a header value or content type that is not UTF-8
// text (binary data copied into a header, say) fails the request at once
// with code failed, naming what is wrong, as a header with a line break
// does. On PostgreSQL, which stores no other text, the reply was refused
// on every attempt, the handler ran MaxAttempts times, and the request
// ended as attempts_exhausted ("lease ran out on all 3 attempts").
func TestReplyWithBinaryHeaderFails(t *testing.T) {
	t.Parallel()
	url := os.Getenv("RSVP_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("RSVP_TEST_POSTGRES_URL is not set")
	}
	schema := pgtest.Schema(t, url, "rsvp_replytext_test_")
	octx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	be, err := rsvppg.Open(octx, url, rsvppg.Options{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	c, err := rsvp.New(context.Background(), be, rsvp.Config{})
	if err != nil {
		be.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		closeWithin(t, "close client", c.Close)
		closeWithin(t, "close backend", func(context.Context) error { return be.Close() })
	})
	tc := &testClient{Client: c}
	for name, reply := range map[string]*rsvp.Reply{
		"header":       {Body: []byte("ok"), Headers: map[string]string{"X-Digest": "\xff\xfe"}},
		"nul":          {Body: []byte("ok"), Headers: map[string]string{"X-Digest": "a\x00b"}},
		"content type": {Body: []byte("ok"), ContentType: "text/plain; charset=\xff"},
	} {
		t.Run(name, func(t *testing.T) {
			var calls atomic.Int32
			q := "bin-" + strings.ReplaceAll(name, " ", "-")
			handle(t, tc, q, rsvp.HandleOptions{MaxAttempts: 3, Backoff: fastRetry}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
				calls.Add(1)
				return reply, nil
			})
			_, err := c.Request(ctxWithin(t, 20*time.Second), q, &rsvp.Message{Body: []byte("x")})
			var re *rsvp.RemoteError
			if !errors.As(err, &re) || re.Code != rsvp.CodeFailed || calls.Load() != 1 {
				t.Fatalf("Request: %v after %d handler call(s); want code failed after 1", err, calls.Load())
			}
		})
	}
}
