package rsvppg

import (
	"time"
)

// cleanupBatch is how many rows of each table one clean-up statement
// deletes at most: small enough that no delete holds its locks for long.
const cleanupBatch = 1000

// cleanup deletes expired replies, events, dead letters, dedupe markers and
// queue counts, and folds the heartbeats of consumers gone into their
// queue's summary, every Options.CleanupInterval, in batches, until the
// backend closes. Rows another backend is deleting at the same time are
// skipped.
func (b *Backend) cleanup() {
	t := time.NewTicker(b.opts.CleanupInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-b.life.Done():
			return
		}
		for b.life.Err() == nil && b.cleanupOnce() == cleanupBatch {
		}
	}
}

// cleanupOnce runs one clean-up statement and returns the largest number
// of rows it deleted from one table.
func (b *Backend) cleanupOnce() int64 {
	ctx, cancel := b.opCtx()
	defer cancel()
	var n int64
	err := b.fast.QueryRow(ctx, b.sql.cleanup, micros(b.opts.ReplyRetention), micros(b.opts.DeadLetterRetention),
		micros(b.opts.DedupeWindow), cleanupBatch, micros(heartbeatStale), micros(countRetention)).Scan(&n)
	if err != nil {
		b.opts.Logger.Warn("rsvppg: deleting expired rows failed; trying again later", "err", err)
		return 0
	}
	return n
}
