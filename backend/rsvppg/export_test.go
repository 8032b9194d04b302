package rsvppg

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// Beat runs one heartbeat for the consumer id of queue, as the backend's
// heartbeat goroutine does every heartbeatInterval for its open consumers.
func Beat(b *Backend, queue, id string) {
	ctx, cancel := b.opCtx()
	defer cancel()
	b.beat(ctx, []string{queue}, []string{id})
}

// MigrateTo brings schema in the database at url up to version v (at most
// SchemaVersion), as an older rsvp would have left it.
func MigrateTo(ctx context.Context, url, schema string, v int) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error { return migrateTx(ctx, tx, schema, v) })
}

// SessionLockKey is the key of the advisory lock that enqueues of requests
// of queue with session key take (see sessionLockKey).
func SessionLockKey(schema, queue, key string) int64 { return sessionLockKey(schema, queue, key) }

// EventsLockKey is the key of the advisory lock that serializes event
// appends in schema (see lockEvents).
func EventsLockKey(schema string) int64 { return lockKey("events", schema) }

// WithListenCheck returns o with the listening connection pinged every d
// (listenCheck).
func WithListenCheck(o Options, d time.Duration) Options {
	o.listenCheck = d
	return o
}
