package rsvpnats

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend"
)

// This file holds the operator's queries: what the queues hold and what
// became of one request. They only read; they are meant for people and
// monitoring, not for the hot path.

var _ backend.Inspector = (*Backend)(nil)

// Queues implements backend.Inspector. It costs a few engine calls plus
// one per non-empty queue (for its oldest request), and reads the counts
// of the last minute from RSVP_RATES (rates.go) with an ephemeral
// consumer. InFlight is the consumer's NumAckPending, Redelivered its
// NumRedelivered, Waiting its pull requests waiting; Responders is -1:
// JetStream does not count the clients of a consumer.
func (b *Backend) Queues(ctx context.Context) ([]backend.QueueStats, error) {
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	reqs, err := b.js.Stream(ctx, streamRequests)
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: queues: %w", err)
	}
	info, err := reqs.Info(ctx, jetstream.WithSubjectFilter(subjRequests+"*"))
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: queues: %w", err)
	}
	sessionInfo, err := reqs.Info(ctx, jetstream.WithSubjectFilter(subjSessions+"*.*"))
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: queues: sessions: %w", err)
	}
	schedInfo, err := reqs.Info(ctx, jetstream.WithSubjectFilter(subjSchedule+"*.*"))
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: queues: scheduled: %w", err)
	}
	byName := make(map[string]*backend.QueueStats)
	get := func(name string) *backend.QueueStats {
		q := byName[name]
		if q == nil {
			q = &backend.QueueStats{Queue: name, Responders: -1}
			byName[name] = q
		}
		return q
	}
	for subj, n := range info.State.Subjects {
		get(strings.TrimPrefix(subj, subjRequests)).Depth += n
	}
	for subj, n := range sessionInfo.State.Subjects {
		get(queueOf(subj)).Depth += n
	}
	for subj, n := range schedInfo.State.Subjects {
		get(queueOf(subj)).Scheduled += n
	}

	consumers := reqs.ListConsumers(ctx)
	for ci := range consumers.Info() { // read to the end: the lister's goroutine stops then
		filter := ci.Config.FilterSubject
		if len(ci.Config.FilterSubjects) > 0 {
			filter = ci.Config.FilterSubjects[0] // the queue's; then its sessions'
		}
		name, ok := strings.CutPrefix(filter, subjRequests)
		if !ok || name == "" || strings.ContainsAny(name, ".*>") {
			continue // not a consumer of the wire format
		}
		q := get(name)
		q.Consumer = true
		q.InFlight += ci.NumAckPending
		q.Redelivered += ci.NumRedelivered
		q.Waiting += ci.NumWaiting
		if last := ci.Delivered.Last; last != nil && last.After(q.LastDelivered) {
			q.LastDelivered = *last
		}
	}
	if err := consumers.Err(); err != nil {
		return nil, fmt.Errorf("rsvpnats: queues: list consumers: %w", err)
	}

	dead, err := b.dlq.Info(ctx, jetstream.WithSubjectFilter(subjDLQ+"*"))
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: queues: dead letters: %w", err)
	}
	for subj, n := range dead.State.Subjects {
		get(strings.TrimPrefix(subj, subjDLQ)).DeadLetters = n
	}

	rates, err := b.recentCounts(ctx)
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: queues: %w", err)
	}
	for name, c := range rates {
		q := get(name)
		q.In, q.Out = c.In, c.Out
	}

	first := max(info.State.FirstSeq, 1)
	out := make([]backend.QueueStats, 0, len(byName))
	for _, name := range sortedKeys(byName) {
		q := byName[name]
		for _, subj := range []string{subjRequests + name, subjSessions + name + ".*"} {
			if q.Depth == 0 {
				break
			}
			m, err := reqs.GetMsg(ctx, first, jetstream.WithGetMsgSubject(subj))
			switch {
			case err == nil:
				if q.Oldest.IsZero() || m.Time.Before(q.Oldest) {
					q.Oldest = m.Time
				}
			case !errors.Is(err, jetstream.ErrMsgNotFound): // not found: finished meanwhile
				return nil, fmt.Errorf("rsvpnats: queues: oldest request of %s: %w", name, err)
			}
		}
		out = append(out, *q)
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// RequestScanLimit is how many stored messages Request reads, at most, in
// each of RSVP_REQUESTS and RSVP_DLQ when it looks for a request there.
const RequestScanLimit = 10_000

// Request implements backend.Inspector. When the event log names the
// request's queue, only that queue and its dead letters are searched;
// otherwise all of them, up to RequestScanLimit messages each, oldest
// first.
func (b *Backend) Request(ctx context.Context, correlationID string) (*backend.RequestInfo, error) {
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	ri, err := backend.ReadRequestLog(ctx, b, correlationID)
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: request %s: %w", correlationID, err)
	}
	// In the order a request leaves its records: see ReadRequestLog.
	if err := b.findQueued(ctx, ri); err != nil {
		return nil, fmt.Errorf("rsvpnats: request %s: queue: %w", correlationID, err)
	}
	// Dead letters: of its queue, if known, else of all.
	filter := subjDLQ + cmp.Or(ri.Queue, "*")
	complete, err := scan(ctx, b.dlq, filter, func(m *jetstream.RawStreamMsg) bool {
		if dl := decodeDeadLetter(m.Subject, m.Header, m.Data); dl.Message.CorrelationID == correlationID {
			ri.AddDeadLetter(dl)
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: request %s: dead letters: %w", correlationID, err)
	}
	ri.DeadLettersComplete = complete
	if err := ri.Finish(ctx, b); err != nil {
		return nil, fmt.Errorf("rsvpnats: request %s: %w", correlationID, err)
	}
	return ri, nil
}

// findQueued looks for the request in RSVP_REQUESTS (in its queue, if
// known) and sets InQueue, StoredAt, Delivered and Queue.
func (b *Backend) findQueued(ctx context.Context, ri *backend.RequestInfo) error {
	reqs, err := b.js.Stream(ctx, streamRequests)
	if err != nil {
		return err
	}
	var found *jetstream.RawStreamMsg
	complete := true
	for _, subj := range []string{subjRequests + cmp.Or(ri.Queue, "*"), subjSessions + cmp.Or(ri.Queue, "*") + ".*"} {
		all, err := scan(ctx, reqs, subj, func(m *jetstream.RawStreamMsg) bool {
			msg, _ := decodeRequest(m.Subject, m.Header, m.Data) // read leniently, as dead letters are
			if msg.CorrelationID != ri.CorrelationID {
				return true
			}
			found = m
			return false
		})
		if err != nil {
			return err
		}
		complete = complete && all
		if found != nil {
			break
		}
	}
	switch {
	case found != nil:
		ri.InQueue = backend.Present
	case complete:
		ri.InQueue = backend.Absent
		return nil
	default:
		ri.InQueue = backend.Unknown
		return nil
	}
	queue := queueOf(found.Subject)
	ri.Queue = cmp.Or(ri.Queue, queue)
	ri.StoredAt = found.Time
	c, err := reqs.Consumer(ctx, "rsvp_"+queue)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil // nobody consumes the queue: not delivered
	}
	if err != nil {
		return err
	}
	// Requests of a queue are delivered for the first time in stream
	// order: one at or below the last delivered sequence has been
	// delivered, and, still stored, it is not settled.
	ri.Delivered = found.Sequence <= c.CachedInfo().Delivered.Stream
	return nil
}

// scan calls fn with each message of stream on filter, oldest first, until
// fn returns false or RequestScanLimit messages were read. It reports
// whether it read every message there is (or fn stopped it).
func scan(ctx context.Context, s jetstream.Stream, filter string, fn func(*jetstream.RawStreamMsg) bool) (bool, error) {
	for seq, n := uint64(1), 0; n < RequestScanLimit; n++ {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		if !fn(m) {
			return true, nil
		}
		seq = m.Sequence + 1
	}
	return false, nil
}

var _ backend.ActivityReporter = (*Backend)(nil)

// LastActive implements backend.ActivityReporter: now while a responder's
// pull waits at the engine or a delivery is unsettled, else the time of
// the queue's last delivery (zero if it never had a consumer).
func (b *Backend) LastActive(ctx context.Context, queue string) (time.Time, error) {
	if err := backend.ValidateName("queue", queue); err != nil {
		return time.Time{}, fmt.Errorf("rsvpnats: last active: %w", err)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	c, err := b.js.Consumer(ctx, streamRequests, "rsvp_"+queue)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("rsvpnats: last active on %s: %w", queue, err)
	}
	info := c.CachedInfo()
	if info.NumWaiting > 0 || info.NumAckPending > 0 {
		return time.Now(), nil
	}
	if info.Delivered.Last != nil {
		return *info.Delivered.Last, nil
	}
	return time.Time{}, nil
}
