package rsvpnats

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/internal/tally"
)

// JetStream keeps no count of what entered or left a subject of a work
// queue, so each process counts the requests it stored (Enqueue, Publish)
// and those it acknowledged or rejected, and every tally.Interval publishes
// one message per queue that saw any: subject rsvp.rate.<queue>, body
// {"in":N,"out":M}. Queues sums the messages of the last
// backend.RateWindow. The stream keeps them for rateRetention; its writes
// are not fsynced by group commit, as a lost count only blurs a rate.

const rateRetention = 10 * time.Minute

// ratesStream is the configuration of RSVP_RATES; maxMsg is that of the
// other streams (docs/wire.md §3 gives them all the same).
func ratesStream(storage jetstream.StorageType, maxMsg int32) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        streamRates,
		Description: "rsvp queue counts: requests in and out of each queue, as each process counted them",
		Subjects:    []string{subjRates + "*"},
		Storage:     storage,
		MaxAge:      rateRetention,
		MaxMsgSize:  maxMsg,
	}
}

// rateCount is the body of a message of RSVP_RATES.
type rateCount struct {
	In  uint64 `json:"in,omitempty"`
	Out uint64 `json:"out,omitempty"`
}

// storeCounts is the tally's store: one message per queue.
func (b *Backend) storeCounts(ctx context.Context, counts []tally.Count) error {
	futures := make([]jetstream.PubAckFuture, 0, len(counts))
	for _, c := range counts {
		body, err := json.Marshal(rateCount{In: c.In, Out: c.Out})
		if err != nil {
			return err
		}
		f, err := b.js.PublishMsgAsync(&nats.Msg{Subject: subjRates + c.Queue, Data: body})
		if err != nil {
			return fmt.Errorf("rsvpnats: store queue counts: %w", err)
		}
		futures = append(futures, f)
	}
	// A partial failure stores some counts twice when they are tried
	// again; that blurs a rate no more than losing them would.
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("rsvpnats: store queue counts: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("rsvpnats: store queue counts: %w", ctx.Err())
		}
	}
	return nil
}

// recentCounts sums the counts stored in the last backend.RateWindow, by
// queue. It reads them with an ephemeral consumer, which it deletes.
func (b *Backend) recentCounts(ctx context.Context) (map[string]rateCount, error) {
	since := time.Now().Add(-backend.RateWindow)
	cons, err := b.js.CreateConsumer(ctx, streamRates, jetstream.ConsumerConfig{
		DeliverPolicy:     jetstream.DeliverByStartTimePolicy,
		OptStartTime:      &since,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: time.Minute, // removed by the server if the delete below is lost
		MemoryStorage:     true,
	})
	if err != nil {
		return nil, fmt.Errorf("read queue counts: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), b.opts.Timeout)
		defer cancel()
		_ = b.js.DeleteConsumer(dctx, streamRates, cons.CachedInfo().Name)
	}()
	sums := make(map[string]rateCount)
	for pending := cons.CachedInfo().NumPending; pending > 0; {
		wait := time.Second
		if dl, ok := ctx.Deadline(); ok {
			wait = max(time.Until(dl), 10*time.Millisecond)
		}
		batch, err := cons.Fetch(int(min(pending, 1000)), jetstream.FetchMaxWait(wait))
		if err != nil {
			return nil, fmt.Errorf("read queue counts: %w", err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			pending--
			var c rateCount
			if json.Unmarshal(m.Data(), &c) != nil {
				continue // not written by rsvp: ignored
			}
			q := strings.TrimPrefix(m.Subject(), subjRates)
			s := sums[q]
			s.In += c.In
			s.Out += c.Out
			sums[q] = s
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("read queue counts: %w", err)
		}
		if got == 0 {
			return nil, fmt.Errorf("read queue counts: %d messages announced did not come", pending)
		}
	}
	return sums, nil
}
