package rsvppg

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp/backend"
)

// Enqueue implements backend.Backend. Concurrent calls are stored together
// in one transaction (see batcher), which commits before any of them
// returns; those of session requests by session (see sessionQueues), as
// they may wait for their session's lock.
func (b *Backend) Enqueue(ctx context.Context, msg *backend.Message) error {
	m, err := b.prepare(msg)
	if err != nil {
		return err
	}
	ctx, cancel, err := b.callCtx(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if m.SessionKey != "" {
		err = b.sessions.do(ctx, b, sessionLockKey(b.opts.Schema, m.Queue, m.SessionKey), m)
	} else {
		_, err = b.enqueues.do(ctx, m)
	}
	if err != nil {
		return fmt.Errorf("rsvppg: enqueue on %s: %w", msg.Queue, err)
	}
	return nil
}

// EnqueueTx stores msg as Enqueue does, but in tx, a transaction of the
// caller's on the backend's database: the request exists if and only if tx
// commits, and consumers are woken when it does. Use it to enqueue work in
// the same transaction as the business write that calls for it (the outbox
// pattern, without an outbox). tx may come from any pool or connection,
// whatever its search_path; its synchronous_commit decides how durable the
// request is. A request with a session key takes its session's enqueue lock
// in tx, until tx ends: other enqueues of that session (Enqueue too, which
// fails after Options.Timeout) wait for it, so that the session's requests
// are delivered in the order they became visible; enqueues of other
// sessions and without one do not. A tx that enqueues into several
// sessions takes their locks in the order it enqueues them, so two
// transactions that enqueue into the same sessions in opposite orders can
// deadlock, and PostgreSQL then aborts one of them (SQLSTATE 40P01): enqueue
// the sessions of a transaction in one order everywhere (say, sorted by
// queue and session key) to avoid it.
//
// Keep such transactions short. Until tx ends, an Enqueue elsewhere of a
// request with the same id waits for it (to learn whether it is a
// duplicate), inside this backend's shared enqueue batches: two such
// waits hold up every Enqueue of the backend, up to Options.Timeout.
func (b *Backend) EnqueueTx(ctx context.Context, tx pgx.Tx, msg *backend.Message) error {
	m, err := b.prepare(msg)
	if err != nil {
		return err
	}
	queues, err := b.enqueue(ctx, tx, []*backend.Message{m})
	if err == nil && len(queues) > 0 {
		_, err = tx.Exec(ctx, b.sql.notify, b.channel, []string{queueNote(msg.Queue)})
	}
	if err != nil {
		return fmt.Errorf("rsvppg: enqueue on %s in a transaction: %w", msg.Queue, err)
	}
	return nil
}

// prepare returns a checked copy of msg, its correlation id defaulted to
// its id. The copy is the batcher's: the caller may reuse msg as soon as
// Enqueue returns, even on a context that ended.
func (b *Backend) prepare(msg *backend.Message) (*backend.Message, error) {
	m := *msg
	m.CorrelationID = cmp.Or(m.CorrelationID, m.ID)
	if err := b.checkMessage(&m); err != nil {
		return nil, fmt.Errorf("rsvppg: enqueue: %w", err)
	}
	return &m, nil
}

// querier runs statements: a pool, or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	batchSender
}

// enqueue stores msgs (distinct ids) and returns the queues of those
// stored, the others being duplicates. With session requests among them it
// first takes their sessions' enqueue locks, in the same round trip and
// transaction (see headOfSession).
func (b *Backend) enqueue(ctx context.Context, q querier, msgs []*backend.Message) ([]string, error) {
	locks := b.sessionLocks(msgs)
	if len(locks) == 0 {
		rows, err := q.Query(ctx, b.sql.enqueue, b.enqueueArgs(msgs)...)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowTo[string])
	}
	batch := &pgx.Batch{}
	batch.Queue(b.sql.lockSessions, locks)
	batch.Queue(b.sql.enqueue, b.enqueueArgs(msgs)...)
	br := q.SendBatch(ctx, batch)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	queues, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	return queues, br.Close()
}

// sessionLocks returns the enqueue lock keys of the sessions of msgs,
// sorted and distinct; none if no message has a session key.
func (b *Backend) sessionLocks(msgs []*backend.Message) []int64 {
	var keys []int64
	for _, m := range msgs {
		if m.SessionKey != "" {
			keys = append(keys, sessionLockKey(b.opts.Schema, m.Queue, m.SessionKey))
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// sessionLockKey is the key of the transaction-scoped advisory lock that an
// enqueue of a request of queue with session key takes before it inserts
// the row: FNV-1a 64 of "rsvp:session:<schema>:<queue> <session key>", as
// a signed integer. Two keys may share a lock; that only makes their
// enqueues take turns.
func sessionLockKey(schema, queue, key string) int64 {
	return lockKey("session", schema+":"+queue+" "+key)
}

// execEnqueues stores a batch of requests without a session. An id twice
// in one batch is a duplicate within the dedupe window: only its first
// message is passed on.
func (b *Backend) execEnqueues(ctx context.Context, msgs []*backend.Message, _ bool) ([]struct{}, []error, error) {
	if _, err := b.enqueue(ctx, b.durable, distinctIDs(msgs)); err != nil {
		return nil, nil, err
	}
	b.notifyQueues(msgs)
	return make([]struct{}, len(msgs)), make([]error, len(msgs)), nil
}

// notifyQueues tells the consumers of the queues of msgs, stored just now,
// that they have requests. Every queue of the batch is told, whether its
// requests were stored or deduplicated: a batch run again after its answer
// was lost finds its own requests stored, and its consumers must still
// hear of them.
func (b *Backend) notifyQueues(msgs []*backend.Message) {
	told := make(map[string]bool, 1)
	for _, m := range msgs {
		if !told[m.Queue] {
			told[m.Queue] = true
			b.notifyLater(queueNote(m.Queue))
		}
	}
}

// enqueueArgs are the arguments of the enqueue statement: one array per
// column, and the dedupe window.
func (b *Backend) enqueueArgs(msgs []*backend.Message) []any {
	var cols columns
	for _, m := range msgs {
		cols.add(append(messageArgs(m), timeOrNil(m.NotBefore))...)
	}
	return cols.args(micros(b.opts.DedupeWindow))
}

// micros is d in whole microseconds, as the statements take durations.
func micros(d time.Duration) int64 { return d.Microseconds() }
