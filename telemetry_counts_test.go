package rsvp_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// failDeadLetterOnce is an engine whose first DeadLetter call fails.
type failDeadLetterOnce struct {
	backend.Backend
	failed atomic.Bool
}

func (b *failDeadLetterOnce) DeadLetter(ctx context.Context, dl *backend.DeadLetter) error {
	if b.failed.CompareAndSwap(false, true) {
		return errors.New("dead letters are unavailable for now")
	}
	return b.Backend.DeadLetter(ctx, dl)
}

// TestDeadLetteredCountedOnceStored: a request whose dead letter could not
// be stored at first comes back and is dead-lettered on a later attempt;
// rsvp.requests.dead_lettered counts it once, when it was stored.
func TestDeadLetteredCountedOnceStored(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		const queue = "dl-count"
		ctx := ctxWithin(t, 30*time.Second)
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer mp.Shutdown(context.Background())
		c, err := rsvp.New(ctx, &failDeadLetterOnce{Backend: e.b}, rsvp.Config{MeterProvider: mp})
		if err != nil {
			t.Fatal(err)
		}
		defer closeWithin(t, "close client", c.Close)
		r, err := c.Handle(queue, rsvp.HandlerFunc(func(context.Context, *rsvp.Message) (*rsvp.Reply, error) {
			return nil, rsvp.Permanent(&rsvp.RemoteError{Code: "gone", Message: "none left"})
		}), rsvp.HandleOptions{Backoff: func(int) time.Duration { return 0 }})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Request(ctx, queue, &rsvp.Message{Body: []byte("x")}); err == nil {
			t.Fatal("Request succeeded, want its failure")
		}
		if err := r.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		sums := metricSums(t, reader)
		if got := sums["rsvp.requests.dead_lettered/gone"]; got != 1 {
			t.Fatalf("rsvp.requests.dead_lettered/gone = %d, want 1 (one dead letter stored); metrics %v", got, sums)
		}
	})
}
