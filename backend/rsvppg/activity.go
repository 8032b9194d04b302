package rsvppg

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

// This file holds the consumers' heartbeats, from which LastActive tells
// any process whether a queue has a responder.

// heartbeatInterval is how often a backend records that its open consumers
// are alive: one statement for all of them, none while it has none. It
// bounds how long a crashed process's consumers still count as live
// (heartbeatStale), at the cost of one write per backend every 15 seconds:
// short enough for a RequireResponder window of a minute, rare enough that
// an idle backend stays nearly silent.
const heartbeatInterval = 15 * time.Second

// heartbeatStale is how long after its last heartbeat an open consumer
// counts as live: two intervals, so that one slow or lost heartbeat does
// not make a live responder look gone.
const heartbeatStale = 2 * heartbeatInterval

var _ backend.ActivityReporter = (*Backend)(nil)

// LastActive implements backend.ActivityReporter: now while a consumer of
// queue is open, in this process or another (whose heartbeat is at most
// 30 seconds old), else when a consumer of queue was last seen, zero if
// none was within Options.ReplyRetention. A consumer counts from Consume to
// Close, whether or not a Next call waits. A crashed process's consumers
// count as open for up to 30 seconds after its last heartbeat. It costs no
// query while this backend has a consumer of queue open, else one.
func (b *Backend) LastActive(ctx context.Context, queue string) (time.Time, error) {
	if err := backend.ValidateName("queue", queue); err != nil {
		return time.Time{}, fmt.Errorf("rsvppg: last active: %w", err)
	}
	if b.reg.hasConsumer(queue) {
		return time.Now(), nil
	}
	ctx, cancel, err := b.callCtx(ctx)
	if err != nil {
		return time.Time{}, err
	}
	defer cancel()
	var alive bool
	var last *time.Time
	err = b.retryOnce(ctx, b.fast, func() error {
		return b.fast.QueryRow(ctx, b.sql.lastActive, queue, micros(heartbeatStale)).Scan(&alive, &last)
	})
	switch {
	case err != nil:
		return time.Time{}, fmt.Errorf("rsvppg: last active on %s: %w", queue, err)
	case alive:
		return time.Now(), nil
	case last != nil:
		return *last, nil
	}
	return time.Time{}, nil
}

// heartbeat records every heartbeatInterval that the backend's open
// consumers are alive, until the backend closes.
func (b *Backend) heartbeat() {
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-b.life.Done():
			return
		}
		queues, ids := b.reg.consumerIDs()
		if len(ids) > 0 {
			ctx, cancel := b.opCtx()
			b.beat(ctx, queues, ids)
			cancel()
		}
	}
}

// beat records that the consumers named by queues and ids are open now.
// A consumer closed meanwhile stays closed.
func (b *Backend) beat(ctx context.Context, queues, ids []string) {
	err := b.retryOnce(ctx, b.fast, func() error {
		_, err := b.fast.Exec(ctx, b.sql.heartbeat, queues, ids)
		return err
	})
	if err != nil {
		b.opts.Logger.Warn("rsvppg: recording consumer heartbeats failed; trying again later", "consumers", len(ids), "err", err)
	}
}

// goneTimeout bounds recording that a consumer closed: it is best effort
// (without it, other processes count the consumer as live for up to 30
// seconds more), and Close waits for it, so a database that does not answer
// must not hold Close for Options.Timeout, or twice that.
const goneTimeout = 2 * time.Second

// gone records that consumer c closed: it no longer counts as live, and
// its queue was last active now.
func (c *consumer) gone() {
	ctx, cancel := context.WithTimeout(context.Background(), min(c.b.opts.Timeout, goneTimeout))
	defer cancel()
	err := c.b.retryOnce(ctx, c.b.fast, func() error {
		_, err := c.b.fast.Exec(ctx, c.b.sql.consumerGone, c.queue, c.id)
		return err
	})
	if err != nil {
		c.log.Warn("rsvppg: recording a consumer's close failed; other processes count it as live for up to 30s more", "err", err)
	}
}

// newInstanceID names a backend among the processes sharing a schema, for
// the ids of its consumers: host, process id and a random part.
func newInstanceID() string {
	host, _ := os.Hostname()
	r := make([]byte, 4)
	_, _ = rand.Read(r)
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(r))
}

// hasConsumer reports whether the backend has a consumer of queue open.
func (r *registry) hasConsumer(queue string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.consumers[queue]) > 0
}

// consumerIDs returns the queues and ids of the open consumers.
func (r *registry) consumerIDs() (queues, ids []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for q, cs := range r.consumers {
		for c := range cs {
			queues = append(queues, q)
			ids = append(ids, c.id)
		}
	}
	return queues, ids
}
