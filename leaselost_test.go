package rsvp_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// lostLease is the lease of the lost-lease tests: short, for the lease to
// run out soon, and longer than a renewal's round trip on a busy machine.
const lostLease = time.Second

// TestHandlerLeaseLost: a handler whose lease renewal came too late, when
// its request was with another worker already, has its ctx cancelled
// with cause ErrLeaseLost, and its outcome is not recorded: no reply, no
// event, and the other worker settles the request. The renewal is held
// (the HandleOptions.beforeExtend seam) until a Consumer has leased the
// request again.
func TestHandlerLeaseLost(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		const queue = "lost"
		ctx := ctxWithin(t, 30*time.Second)
		spans := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
		rc, err := rsvp.New(ctx, e.b, rsvp.Config{TracerProvider: tp})
		if err != nil {
			t.Fatal(err)
		}
		giveUp := make(chan struct{}) // ends a handler that is never cancelled
		t.Cleanup(func() {
			close(giveUp)
			closeWithin(t, "close responder client", rc.Close)
			_ = tp.Shutdown(context.Background())
		})

		stalled, resume := make(chan struct{}), make(chan struct{})
		var first sync.Once
		hold := func(ctx context.Context) { // holds the first renewal until resume
			first.Do(func() {
				close(stalled)
				select {
				case <-resume:
				case <-ctx.Done():
				}
			})
		}
		causes := make(chan error, 1)
		resp, err := rc.Handle(queue, rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
			select {
			case <-ctx.Done():
				causes <- context.Cause(ctx)
			case <-giveUp:
			}
			return &rsvp.Reply{Body: []byte("stale")}, nil
		}), rsvp.WithBeforeExtend(rsvp.HandleOptions{Lease: lostLease}, hold))
		if err != nil {
			t.Fatal(err)
		}

		c := e.client()
		cons, err := c.Consume(ctx, queue, rsvp.HandleOptions{Lease: lostLease})
		if err != nil {
			t.Fatal(err)
		}
		defer cons.Close()
		tk, err := c.Send(ctx, queue, &rsvp.Message{Body: []byte("x"), Track: true})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-stalled:
		case <-ctx.Done():
			t.Fatal("the handler's lease was never renewed")
		}
		l, err := cons.Next(ctx) // once the handler's lease ran out
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if m := l.Message(); m.ID != tk.ID || m.Attempt != 2 {
			t.Fatalf("leased %s attempt %d, want %s attempt 2", m.ID, m.Attempt, tk.ID)
		}
		close(resume)

		select {
		case cause := <-causes:
			if !errors.Is(cause, rsvp.ErrLeaseLost) {
				t.Fatalf("the handler's ctx ended with cause %v, want rsvp.ErrLeaseLost", cause)
			}
		case <-time.After(10 * lostLease):
			t.Fatalf("the handler was not cancelled within %v of its lease being lost", 10*lostLease)
		}
		// Stop waits for the handler's outcome to be dealt with.
		if err := resp.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if rep, err := c.Backend().GetReply(ctx, tk.CorrelationID); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("the handler whose lease was lost stored a reply: %+v, %v", rep, err)
		}

		if err := l.Reply(ctx, &rsvp.Reply{Body: []byte("fresh")}); err != nil {
			t.Fatal(err)
		}
		rep, err := c.Await(ctx, tk.CorrelationID)
		if err != nil || string(rep.Body) != "fresh" {
			t.Fatalf("Await: %+v, %v; want the second worker's reply", rep, err)
		}
		evs, err := c.Backend().Events(ctx, backend.EventQuery{CorrelationID: tk.CorrelationID})
		if err != nil {
			t.Fatal(err)
		}
		var types []string
		for _, ev := range evs {
			types = append(types, ev.Type)
		}
		if want := []string{"running", "running", "succeeded"}; !slices.Equal(types, want) {
			t.Errorf("events %v, want %v: the lost attempt records only its start", types, want)
		}
		var outcomes []string
		for _, s := range spans.Ended() {
			for _, kv := range s.Attributes() {
				if kv.Key == "rsvp.outcome" {
					outcomes = append(outcomes, kv.Value.AsString())
				}
			}
		}
		if !slices.Equal(outcomes, []string{"lease_lost"}) {
			t.Errorf("the responder's attempt outcomes %v, want [lease_lost]", outcomes)
		}
	})
}

// TestLeaseExtendLost: a Lease whose Extend finds it lost (the request
// was leased again) is settled with nothing recorded: Reply then returns
// ErrSettled and stores nothing, and the new holder settles the request.
func TestLeaseExtendLost(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		const queue = "lostpull"
		ctx := ctxWithin(t, 30*time.Second)
		c := e.client()
		var cons [2]*rsvp.Consumer
		for i := range cons {
			var err error
			if cons[i], err = c.Consume(ctx, queue, rsvp.HandleOptions{Lease: lostLease}); err != nil {
				t.Fatal(err)
			}
			defer cons[i].Close()
		}
		tk, err := c.Send(ctx, queue, &rsvp.Message{Body: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		stale, err := cons[0].Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fresh, err := cons[1].Next(ctx) // once stale's lease ran out
		if err != nil {
			t.Fatal(err)
		}
		if fresh.Message().ID != tk.ID || fresh.Message().Attempt != 2 {
			t.Fatalf("leased %s attempt %d, want %s attempt 2", fresh.Message().ID, fresh.Message().Attempt, tk.ID)
		}
		if err := stale.Extend(ctx); !errors.Is(err, rsvp.ErrLeaseLost) {
			t.Fatalf("Extend of the lost lease: %v, want rsvp.ErrLeaseLost", err)
		}
		if err := stale.Reply(ctx, &rsvp.Reply{Body: []byte("stale")}); !errors.Is(err, rsvp.ErrSettled) {
			t.Fatalf("Reply on the lost lease: %v, want rsvp.ErrSettled", err)
		}
		if err := fresh.Reply(ctx, &rsvp.Reply{Body: []byte("fresh")}); err != nil {
			t.Fatal(err)
		}
		rep, err := c.Await(ctx, tk.CorrelationID)
		if err != nil || string(rep.Body) != "fresh" {
			t.Fatalf("Await: %+v, %v; want the second worker's reply", rep, err)
		}
	})
}
