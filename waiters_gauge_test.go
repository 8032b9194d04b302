package rsvp_test

import (
	"context"
	"errors"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/rsvp-go/rsvp"
)

// TestWaitersGaugeCountsCalls: rsvp.waiters counts the calls waiting for
// a reply ("Calls waiting for a reply."), two Awaits of one request as
// two, and returns to 0 when they are cancelled.
func TestWaitersGaugeCountsCalls(t *testing.T) {
	t.Parallel()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	c := setup(t, rsvp.Config{MeterProvider: mp})
	ctx, cancel := context.WithCancel(ctxWithin(t, 10*time.Second))
	defer cancel()
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := c.Await(ctx, "awaited-twice")
			errs <- err
		}()
	}
	waitFor(t, func() bool { return rsvp.WaitingCalls(c.Client) == 2 })
	if n := metricSums(t, reader)["rsvp.waiters"]; n != 2 {
		t.Errorf("rsvp.waiters = %d, want 2 (two Awaits of one request)", n)
	}
	cancel()
	for range 2 {
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Fatalf("Await: %v, want context.Canceled", err)
		}
	}
	if n := metricSums(t, reader)["rsvp.waiters"]; n != 0 {
		t.Errorf("rsvp.waiters = %d after both Awaits were cancelled, want 0", n)
	}
}
