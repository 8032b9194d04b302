package rsvpnats_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/internal/natstest"
)

// TestConcurrentOpensKeepLongestLease opens consumers of one queue at
// the same moment, each asking for another lease, from several
// connections: however their reads and writes of the consumer interleave,
// it ends with the longest lease.
func TestConcurrentOpensKeepLongestLease(t *testing.T) {
	t.Parallel()
	for _, engine := range []string{"embedded", "external"} {
		t.Run(engine, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var handles []*rsvpnats.Backend
			if engine == "embedded" {
				b, err := rsvpnats.Embedded(t.TempDir(), rsvpnats.Options{Listen: true})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { b.Close() })
				handles = append(handles, b)
			} else {
				url := natstest.Start(t)
				for range 2 {
					b, err := rsvpnats.Connect(ctx, url, rsvpnats.Options{})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { b.Close() })
					handles = append(handles, b)
				}
			}
			js, err := jetstream.New(handles[0].Conn())
			if err != nil {
				t.Fatal(err)
			}
			const rounds, opens = 20, 6
			short := 0
			for round := range rounds {
				queue := fmt.Sprintf("race%d", round)
				leases := rand.Perm(opens)
				start := make(chan struct{})
				var wg sync.WaitGroup
				cons := make([]backend.Consumer, opens)
				errs := make([]error, opens)
				for i, l := range leases {
					wg.Go(func() {
						<-start
						cons[i], errs[i] = handles[i%len(handles)].Consume(ctx, queue, backend.ConsumeParams{Lease: time.Duration(l+1) * time.Second})
					})
				}
				close(start)
				wg.Wait()
				for i, c := range cons {
					if errs[i] != nil {
						t.Fatalf("round %d: consume: %v", round, errs[i])
					}
					_ = c.Close()
				}
				c, err := js.Consumer(ctx, "RSVP_REQUESTS", "rsvp_"+queue)
				if err != nil {
					t.Fatal(err)
				}
				if got, want := c.CachedInfo().Config.AckWait, opens*time.Second; got != want {
					short++
					t.Errorf("round %d: the consumer's lease is %s, want the longest asked for, %s", round, got, want)
				}
			}
			if short > 0 {
				t.Logf("%d of %d rounds ended with a shorter lease", short, rounds)
			}
		})
	}
}

// TestLeaseOfAConsumerMadeAnew: deleting the JetStream consumer (with the
// queue's responders stopped) is the way to shorten the lease again; the
// leases registered for the old consumer do not carry over.
func TestLeaseOfAConsumerMadeAnew(t *testing.T) {
	t.Parallel()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, err := jetstream.New(b.Conn())
	if err != nil {
		t.Fatal(err)
	}
	ackWait := func() time.Duration {
		t.Helper()
		c, err := js.Consumer(ctx, "RSVP_REQUESTS", "rsvp_re:made")
		if err != nil {
			t.Fatal(err)
		}
		return c.CachedInfo().Config.AckWait
	}
	for _, l := range []time.Duration{time.Minute, time.Second} {
		c, err := b.Consume(ctx, "re:made", backend.ConsumeParams{Lease: l})
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
	}
	if got := ackWait(); got != time.Minute {
		t.Fatalf("lease %s, want the longest asked for, 1m", got)
	}
	if err := js.DeleteConsumer(ctx, "RSVP_REQUESTS", "rsvp_re:made"); err != nil {
		t.Fatal(err)
	}
	c, err := b.Consume(ctx, "re:made", backend.ConsumeParams{Lease: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	if got := ackWait(); got != time.Second {
		t.Fatalf("lease of the consumer made anew %s, want 1s", got)
	}
}
