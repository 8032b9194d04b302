package rsvppg

import (
	"context"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rsvp-go/rsvp/backend"
)

// A batcher runs concurrent calls of one kind as one statement: group
// commit. Each of its workers takes a call, adds whatever other calls are
// waiting (up to max), and runs them together. One caller alone waits for
// no one; many share a round trip and a commit, and so the disk flush that
// the commit waits for.
type batcher[T, R any] struct {
	calls chan *call[T, R]
	stop  <-chan struct{}
	max   int
	// exec runs a batch and returns one result and error per item, or an
	// error for the whole batch. again: the batch runs again after a
	// connection error, so what its first run did may have committed.
	exec func(ctx context.Context, items []T, again bool) ([]R, []error, error)
	// retry reports whether a batch that failed with a connection error may
	// run again: true where running it twice does no harm.
	retry func(error) bool
	pool  *pgxpool.Pool // the pool exec uses
}

type call[T, R any] struct {
	item T
	res  R
	err  error
	done chan struct{}
}

// startBatchers starts the backend's batchers, each with its workers.
func (b *Backend) startBatchers() {
	// Storing a request or a reply twice stores it once (dedupe, first reply
	// wins), and an ack twice deletes once; an event without a dedupe key
	// would be stored twice.
	b.enqueues = newBatcher(b, 2, 256, b.execEnqueues, b.durable, isConnErr)
	b.replies = newBatcher(b, 2, 256, b.execReplies, b.durable, isConnErr)
	b.events = newBatcher(b, 2, 256, b.execEvents, b.durable, pgconn.SafeToRetry)
	b.acks = newBatcher(b, 2, 256, b.execAcks, b.fast, isConnErr)
	b.sessions.init(b)
}

func newBatcher[T, R any](b *Backend, workers, max int, exec func(context.Context, []T, bool) ([]R, []error, error),
	pool *pgxpool.Pool, retry func(error) bool) *batcher[T, R] {
	bt := &batcher[T, R]{calls: make(chan *call[T, R]), stop: b.life.Done(), max: max, exec: exec, retry: retry, pool: pool}
	for range workers {
		b.goRun(func() { bt.work(b) })
	}
	return bt
}

// do runs item in a batch. When ctx ends first, do returns its error, and
// the item may or may not have been stored.
func (bt *batcher[T, R]) do(ctx context.Context, item T) (R, error) {
	c := &call[T, R]{item: item, done: make(chan struct{})}
	var zero R
	select {
	case bt.calls <- c:
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-bt.stop:
		return zero, backend.ErrClosed
	}
	select {
	case <-c.done:
		return c.res, c.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

func (bt *batcher[T, R]) work(b *Backend) {
	batch := make([]*call[T, R], 0, bt.max)
	for {
		select {
		case c := <-bt.calls:
			batch = append(batch[:0], c)
		case <-bt.stop:
			return
		}
	fill:
		for len(batch) < bt.max {
			select {
			case c := <-bt.calls:
				batch = append(batch, c)
			default:
				break fill
			}
		}
		bt.run(b, batch)
	}
}

// run executes batch. A statement the server refused (bad data in one
// item, say) is run again item by item, so that one bad item fails alone.
func (bt *batcher[T, R]) run(b *Backend, batch []*call[T, R]) {
	ctx, cancel := b.opCtx()
	defer cancel()
	items := make([]T, len(batch))
	for i, c := range batch {
		items[i] = c.item
	}
	res, errs, err := bt.exec(ctx, items, false)
	if err != nil && bt.retry(err) && ctx.Err() == nil {
		b.dropConns(bt.pool, err)
		res, errs, err = bt.exec(ctx, items, true)
	}
	if err != nil && len(batch) > 1 && !isConnErr(err) && !errors.Is(err, context.DeadlineExceeded) {
		for _, c := range batch {
			bt.run(b, []*call[T, R]{c})
		}
		return
	}
	for i, c := range batch {
		switch {
		case err != nil:
			c.err = err
		default:
			c.res, c.err = res[i], errs[i]
		}
		close(c.done)
	}
}

// isConnErr reports whether err broke the connection rather than the
// statement: an I/O error, or a FATAL error the server sent before it
// closed the connection (administrator command, shutdown). A connection
// the server closed (it restarted, say) is found broken when the pool hands
// it out next, and the call may succeed on another.
func isConnErr(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Severity == "FATAL" || pgErr.Severity == "PANIC" || strings.HasPrefix(pgErr.Code, "08") || strings.HasPrefix(pgErr.Code, "57P")
	}
	var scanErr pgx.ScanArgError
	return !errors.As(err, &scanErr) // a value that did not fit: the connection is fine
}

// retryOnce runs f, and once more if it failed with a connection error.
// For statements that may run twice.
func (b *Backend) retryOnce(ctx context.Context, pool *pgxpool.Pool, f func() error) error {
	err := f()
	if isConnErr(err) && ctx.Err() == nil {
		b.dropConns(pool, err)
		err = f()
	}
	return err
}

// dropConns closes the idle connections of pool, and the others when they
// are released, after a connection error: when the server restarted, all
// of them are broken, and each would fail a call before the pool knew.
func (b *Backend) dropConns(pool *pgxpool.Pool, why error) {
	b.opts.Logger.Warn("rsvppg: a database connection broke; reconnecting", "err", why)
	pool.Reset()
}
