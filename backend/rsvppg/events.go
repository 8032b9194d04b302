package rsvppg

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp/backend"
)

// AppendEvent implements backend.Backend. Concurrent appends are stored
// together in one transaction, under a lock that makes events visible in
// seq order (see lockEvents).
func (b *Backend) AppendEvent(ctx context.Context, ev *backend.Event) error {
	if err := b.checkEvent(ev); err != nil {
		return fmt.Errorf("rsvppg: append event: %w", err)
	}
	ctx, cancel, err := b.callCtx(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	e := *ev
	seq, err := b.events.do(ctx, &e)
	if err != nil {
		return fmt.Errorf("rsvppg: append %s event of %s: %w", ev.Type, ev.CorrelationID, err)
	}
	ev.Seq = seq
	return nil
}

func (b *Backend) checkEvent(ev *backend.Event) error {
	errs := []error{backend.ValidateName("correlation id", ev.CorrelationID),
		checkText("event type", ev.Type), checkText("dedupe key", ev.DedupeKey)}
	if ev.Channel != "" {
		errs = append(errs, backend.ValidateChannel(ev.Channel))
	}
	if ev.Type == "" {
		errs = append(errs, errors.New("event type is empty"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return b.checkSize(ev.Data, nil)
}

// execEvents appends a batch of events and returns their seqs (0 for a
// duplicate). The statement returns the seqs of the stored events in
// ascending order, which is the order of the batch: the events are
// inserted in that order, under the lock.
func (b *Backend) execEvents(ctx context.Context, evs []*backend.Event, _ bool) ([]uint64, []error, error) {
	keys := make(map[string]bool, len(evs))
	include := make([]bool, len(evs)) // not a repeated dedupe key of the batch
	dedupe := make([]string, len(evs))
	var cols columns
	for i, ev := range evs {
		dedupe[i] = dedupeKey(ev.DedupeKey)
		if dedupe[i] != "" && keys[dedupe[i]] {
			continue
		}
		keys[dedupe[i]], include[i] = true, true
		cols.add(ev.CorrelationID, ev.Channel, ev.Type, timeOrNil(ev.At), body(ev.Data), dedupe[i])
	}
	batch := &pgx.Batch{}
	batch.Queue(b.sql.lockEvents, lockKey("events", b.opts.Schema))
	batch.Queue(b.sql.appendEvents, cols.args(micros(b.opts.DedupeWindow))...)
	br := b.durable.SendBatch(ctx, batch)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, nil, err
	}
	rows, err := br.Query()
	if err != nil {
		return nil, nil, err
	}
	var seqs []uint64
	stored := map[string]bool{}
	var seq int64
	var key string
	if _, err := pgx.ForEachRow(rows, []any{&seq, &key}, func() error {
		seqs, stored[key] = append(seqs, uint64(seq)), true
		return nil
	}); err != nil {
		return nil, nil, err
	}
	if err := br.Close(); err != nil { // the commit
		return nil, nil, err
	}
	for _, s := range seqs {
		b.notifyLater(eventNote(s))
	}
	out := make([]uint64, len(evs))
	for i, ev := range evs {
		if include[i] && (ev.DedupeKey == "" || stored[dedupe[i]]) && len(seqs) > 0 {
			out[i], seqs = seqs[0], seqs[1:]
		}
	}
	return out, make([]error, len(evs)), nil
}

// maxDedupeKey is the longest event dedupe key stored as it is. The
// dedupe table's index takes keys of up to about 2.7 KB; a longer one is
// stored as "sha256:" and its hex SHA-256.
const maxDedupeKey = 2000

// dedupeKey is the key under which an event's dedupe key is stored.
func dedupeKey(key string) string {
	if len(key) <= maxDedupeKey {
		return key
	}
	sum := sha256.Sum256([]byte(key))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Events implements backend.Backend.
func (b *Backend) Events(ctx context.Context, q backend.EventQuery) ([]*backend.Event, error) {
	var sql, key string
	switch {
	case q.CorrelationID != "" && q.Channel == "":
		if err := backend.ValidateName("correlation id", q.CorrelationID); err != nil {
			return nil, fmt.Errorf("rsvppg: events: %w", err)
		}
		sql, key = b.sql.eventsByID, q.CorrelationID
	case q.Channel != "" && q.CorrelationID == "":
		if err := backend.ValidateChannel(q.Channel); err != nil {
			return nil, fmt.Errorf("rsvppg: events: %w", err)
		}
		sql, key = b.sql.eventsByChannel, q.Channel
	default:
		return nil, errors.New("rsvppg: events: set exactly one of CorrelationID and Channel")
	}
	ctx, cancel, err := b.callCtx(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	if q.After > math.MaxInt64 {
		return nil, nil // after every seq the table can hold
	}
	rows, err := b.fast.Query(ctx, sql, key, int64(q.After), q.DefaultLimit())
	if err != nil {
		return nil, fmt.Errorf("rsvppg: events of %s: %w", key, err)
	}
	evs, err := scanEvents(rows)
	if err != nil {
		return nil, fmt.Errorf("rsvppg: events of %s: %w", key, err)
	}
	return evs, nil
}

// eventsBySeq reads the events with the given seqs.
func (b *Backend) eventsBySeq(ctx context.Context, seqs []int64) ([]*backend.Event, error) {
	rows, err := b.fast.Query(ctx, b.sql.eventsBySeq, seqs)
	if err != nil {
		return nil, err
	}
	return scanEvents(rows)
}

// scanEvents reads rows of eventCols.
func scanEvents(rows pgx.Rows) ([]*backend.Event, error) {
	var out []*backend.Event
	var (
		ev  backend.Event
		seq int64
		at  *time.Time
	)
	_, err := pgx.ForEachRow(rows, []any{&seq, &ev.CorrelationID, &ev.Channel, &ev.Type, &at, &ev.Data}, func() error {
		e := ev
		e.Seq, e.At = uint64(seq), timeOrZero(at)
		if len(e.Data) == 0 {
			e.Data = nil
		}
		out = append(out, &e)
		return nil
	})
	return out, err
}

// SubscribeEvents implements backend.Backend.
func (b *Backend) SubscribeEvents(ctx context.Context, fn func(*backend.Event)) (backend.Subscription, error) {
	if b.life.Err() != nil {
		return nil, backend.ErrClosed
	}
	s := &sub[*backend.Event]{fn: fn}
	s.remove = func() {
		b.reg.mu.Lock()
		defer b.reg.mu.Unlock()
		delete(b.reg.events, s)
	}
	b.reg.mu.Lock()
	defer b.reg.mu.Unlock()
	b.reg.events[s] = struct{}{}
	return s, nil
}
