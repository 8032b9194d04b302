package rsvp_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
)

// A typed responder whose request type names its schema (a Typer) refuses
// a request of another type, such as a newer version, as unsupported_type
// instead of decoding what it can of it: a resize.v2 body read as a
// resize.v1 would have lost its width and height without a word. A request
// with no type is still decoded, as before.
func TestTypedRefusesAnotherType(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	var calls atomic.Int32
	if _, err := rsvp.HandleTyped(c.Client, "resize", func(ctx context.Context, r resizeV1) (string, error) {
		calls.Add(1)
		return r.URL + "@" + itoa(r.Size), nil
	}, rsvp.HandleOptions{MaxAttempts: 3, Backoff: fastRetry}); err != nil {
		t.Fatal(err)
	}
	ctx := ctxWithin(t, 10*time.Second)

	got, err := rsvp.Call[resizeV2, string](ctx, c.Client, "resize", resizeV2{URL: "a.png", Width: 3, Height: 4})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || re.Code != rsvp.CodeUnsupportedType || !strings.Contains(re.Message, "resize.v1") {
		t.Fatalf("a resize.v2 request to a resize.v1 handler: %q, %v; want unsupported_type naming resize.v1", got, err)
	}
	if dls := deadLetters(t, c, "resize"); len(dls) != 1 || dls[0].Reason != rsvp.CodeUnsupportedType || dls[0].Message.Attempt != 1 {
		t.Fatalf("dead letters: %+v", dls)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("the handler ran %d times for a request of another type", n)
	}

	// Its own type, and no type at all, are handled.
	if got, err := rsvp.Call[resizeV1, string](ctx, c.Client, "resize", resizeV1{URL: "b.png", Size: 9}); err != nil || got != `b.png@9` {
		t.Fatalf("resize.v1: %q, %v", got, err)
	}
	r, err := c.Request(ctx, "resize", &rsvp.Message{Body: []byte(`{"url":"c.png","size":2}`)})
	if err != nil || string(r.Body) != `"c.png@2"` {
		t.Fatalf("untyped: %v", err)
	}
}

// Call with a nil pointer of a Typer type sends it (JSON null) with its
// type, as any other value: RSVPType has a value receiver, which cannot be
// called on the nil pointer.
func TestCallNilPointerRequest(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	mux := rsvp.NewMux() // only resize.v1: an untyped request would fail
	mux.Handle("resize.v1", rsvp.Typed(rsvp.JSON, func(ctx context.Context, r *resizeV1) (string, error) {
		if r == nil {
			return "nil", nil
		}
		return r.URL, nil
	}))
	handle(t, c, "resize-ptr", rsvp.HandleOptions{}, mux.ServeRequest)
	var got string
	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("Call panicked: %v", p)
			}
		}()
		got, err = rsvp.Call[*resizeV1, string](ctxWithin(t, 10*time.Second), c.Client, "resize-ptr", nil)
	}()
	if err != nil || got != "nil" {
		t.Fatalf("Call with a nil *resizeV1: %q, %v", got, err)
	}
}

// A handler that replied nothing (a nil Reply: an empty body) answers a
// Call with Resp's zero value, whatever the codec makes of an empty body.
func TestCallEmptyReply(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	handle(t, c, "quiet", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return nil, nil
	})
	ctx := ctxWithin(t, 10*time.Second)
	if got, err := rsvp.Call[string, struct{}](ctx, c.Client, "quiet", "x"); err != nil || got != (struct{}{}) {
		t.Fatalf("Call for struct{}: %v, %v", got, err)
	}
	if got, err := rsvp.Call[string, *resizeV1](ctx, c.Client, "quiet", "x"); err != nil || got != nil {
		t.Fatalf("Call for a pointer: %v, %v; want nil", got, err)
	}
}
