package rsvppg

import (
	"context"
	"slices"
	"sync"

	"github.com/rsvp-go/rsvp/backend"
)

// sessionQueues runs the Enqueue calls of session requests, apart from the
// batcher of the others: an enqueue of a session waits for its session's
// lock (see headOfSession), which a caller's open transaction (EnqueueTx)
// may hold for as long as it likes, and would hold up every call of its
// batch and the batcher's workers with it.
//
// The calls are queued by session lock key, and each key with calls has
// one runner, which stores the waiting calls (up to 256) together, one
// batch after the other: the calls of a session are stored in the order
// they came, share a commit, and wait for a busy lock on one connection
// between them. A batch first tries the lock without waiting, on the
// durable pool like the batcher (enqueueSession); only if the lock is busy
// does it wait for it, on the pool lockWait. So a session whose lock is
// free never waits behind a blocked one, and blocked ones never take the
// connections of the other writes; only when more sessions wait for their
// locks at once than lockWait has connections (MaxConns) do some wait for a
// connection too.
type sessionQueues struct {
	mu      sync.Mutex
	waiting map[int64][]*call[*backend.Message, struct{}] // by lock key; present while the key's runner runs
	bt      *batcher[*backend.Message, struct{}]          // runs a batch; it has no workers
}

func (s *sessionQueues) init(b *Backend) {
	s.waiting = map[int64][]*call[*backend.Message, struct{}]{}
	// A batch retries on its own (execSessionEnqueues), on whichever pool
	// broke.
	s.bt = &batcher[*backend.Message, struct{}]{max: 256, exec: b.execSessionEnqueues, retry: func(error) bool { return false }}
}

// do stores m, a session request whose lock key is key, after the calls
// of its key that came before. When ctx ends first, do returns its error,
// and m was not stored if its batch had not started, else may have been.
func (s *sessionQueues) do(ctx context.Context, b *Backend, key int64, m *backend.Message) error {
	c := &call[*backend.Message, struct{}]{item: m, done: make(chan struct{})}
	s.mu.Lock()
	q, running := s.waiting[key]
	s.waiting[key] = append(q, c)
	s.mu.Unlock()
	if !running {
		b.goRun(func() { s.run(b, key) })
	}
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		s.mu.Lock()
		if q, ok := s.waiting[key]; ok {
			s.waiting[key] = slices.DeleteFunc(q, func(w *call[*backend.Message, struct{}]) bool { return w == c })
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

// run stores the calls of key in batches until none is waiting. Once the
// backend is closed, the calls still waiting fail.
func (s *sessionQueues) run(b *Backend, key int64) {
	for {
		s.mu.Lock()
		q := s.waiting[key]
		if len(q) == 0 {
			delete(s.waiting, key)
			s.mu.Unlock()
			return
		}
		n := min(len(q), s.bt.max)
		batch := q[:n:n]
		s.waiting[key] = q[n:]
		s.mu.Unlock()
		if b.life.Err() != nil {
			for _, c := range batch {
				c.err = backend.ErrClosed
				close(c.done)
			}
			continue
		}
		s.bt.run(b, batch)
	}
}

// execSessionEnqueues stores a batch of session requests that share a lock
// key, as execEnqueues stores others: first trying the lock without
// waiting, then, if it is busy, waiting for it on a connection of
// lockWait.
func (b *Backend) execSessionEnqueues(ctx context.Context, msgs []*backend.Message, _ bool) ([]struct{}, []error, error) {
	distinct := distinctIDs(msgs)
	m := distinct[0]
	key := sessionLockKey(b.opts.Schema, m.Queue, m.SessionKey)
	var (
		locked bool
		queues []string
	)
	err := b.retryOnce(ctx, b.durable, func() error {
		return b.durable.QueryRow(ctx, b.sql.enqueueSession, append(b.enqueueArgs(distinct), key)...).Scan(&locked, &queues)
	})
	if err == nil && !locked {
		err = b.retryOnce(ctx, b.lockWait, func() (err error) {
			_, err = b.enqueue(ctx, b.lockWait, distinct)
			return err
		})
	}
	if err != nil {
		return nil, nil, err
	}
	b.notifyQueues(msgs)
	return make([]struct{}, len(msgs)), make([]error, len(msgs)), nil
}

// distinctIDs returns msgs less the messages whose ids came before in
// msgs: an id twice in one batch is a duplicate within the dedupe window.
func distinctIDs(msgs []*backend.Message) []*backend.Message {
	seen := make(map[string]bool, len(msgs))
	distinct := msgs[:0:0]
	for _, m := range msgs {
		if !seen[m.ID] {
			seen[m.ID] = true
			distinct = append(distinct, m)
		}
	}
	return distinct
}
