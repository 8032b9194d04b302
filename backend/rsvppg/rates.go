package rsvppg

import (
	"context"
	"fmt"
	"time"

	"github.com/rsvp-go/rsvp/internal/tally"
)

// The rates of the operator's queries come from the table queue_counts
// (migration 4): the enqueue statement adds the requests it stored, in its
// own transaction, and each process adds the requests it acknowledged,
// counted in memory, every tally.Interval and when it closes (one row per
// queue, not one per request). Rows older than countRetention go in the
// clean-up.

const countRetention = 10 * time.Minute

// storeCounts is the tally's store.
func (b *Backend) storeCounts(ctx context.Context, counts []tally.Count) error {
	queues := make([]string, len(counts))
	outs := make([]int64, len(counts))
	for i, c := range counts {
		queues[i], outs[i] = c.Queue, int64(c.Out)
	}
	if _, err := b.fast.Exec(ctx, b.sql.countOut, queues, outs); err != nil {
		return fmt.Errorf("rsvppg: store queue counts: %w", err)
	}
	return nil
}
