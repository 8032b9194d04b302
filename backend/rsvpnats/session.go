package rsvpnats

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend"
)

// Sessions on JetStream.
//
// A session's requests are stored on a subject of their own,
// rsvp.ses.<queue>.<key>, in the queue's work-queue stream, so a request
// leaves the stream when it is acked (or dead-lettered, which acks it).
// The rule that keeps a session in order, across any number of processes,
// is: a request is handed to a worker only while it is the first message
// stored on its subject. The queue's one JetStream consumer delivers
// session requests like any other; one that is not first yet is held by
// the consumer that pulled it (its lease kept renewed) and handed out once
// its turn comes: at once when the request before it was acked here, or
// by polling when it is settled elsewhere. While requests are held, pulls
// expire after sessionPoll, so that waiting workers come back to check.
//
// A held request given back to the stream (the consumer closes, holds too
// many, or has no worker waiting when its turn comes) is delivered again
// later, which JetStream counts as a delivery. So that only real attempts
// count, each hand-back is recorded as a "handed_back" event of the
// request, and the attempt of a redelivered session request is its
// delivery count less its hand-backs.

const (
	// sessionPoll is how often held requests check for their turn.
	sessionPoll = 100 * time.Millisecond
	// idleGiveBack is how long a consumer goes without Next calls before
	// it hands back held requests whose turn came (a busy responder's
	// workers come back sooner).
	idleGiveBack = time.Second
	// maxHeld bounds the requests one consumer holds ahead of their turn.
	// Beyond it, the newest is handed back to the stream for a second.
	maxHeld = 10_000
)

// sessions holds the session requests a consumer pulled before their turn.
// Workers check the turns in Next (promote); run polls for turns that come
// through other processes, and renews the held requests' leases.
type sessions struct {
	c     *consumer
	lease time.Duration

	mu      sync.Mutex
	closed  bool
	keys    map[string]*session
	held    int
	pending []*session    // sessions whose first held request may be due
	kick    chan struct{} // a request was held: make sure run polls
}

// session is one session key's state in this consumer.
type session struct {
	key      string
	out      *delivery // handed to a worker and not settled
	outUntil time.Time // out's lease ends; after it the turn is free again
	done     uint64    // highest stream sequence acked from here
	doneAt   time.Time // when done was set
	held     []*delivery
	queued   bool // in pending
	checking bool // a worker is reading its first request
}

// keepDone is how long a session's state outlives its last request here,
// so that a redelivery of a request acked here is recognised.
const keepDone = 5 * time.Second

func newSessions(c *consumer, lease time.Duration) *sessions {
	return &sessions{c: c, lease: lease, keys: map[string]*session{}, kick: make(chan struct{}, 1)}
}

// busy reports whether s's turn is taken by a delivery out from here.
func (s *session) busy(now time.Time) bool { return s.out != nil && now.Before(s.outUntil) }

// holding reports whether any request is held.
func (ss *sessions) holding() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.held > 0
}

// session returns the state of key, made if new.
func (ss *sessions) session(key string) *session {
	s := ss.keys[key]
	if s == nil {
		s = &session{key: key}
		ss.keys[key] = s
	}
	return s
}

// turn reads whether d, the first held (or just pulled) request of s, is
// the first stored of its session: its turn came (first), it was settled
// through another delivery (gone), or neither (wait). ss.mu is held on
// entry and on return, and released while the engine answers; s.checking
// keeps other workers off s meanwhile.
func (ss *sessions) turn(ctx context.Context, s *session, d *delivery) (first, gone bool) {
	after := s.done
	s.checking = true
	ss.mu.Unlock()
	seq, err := ss.first(ctx, s.key, after)
	ss.mu.Lock()
	s.checking = false
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return false, true
	case err != nil:
		return false, false // no answer: check again later
	}
	return seq == d.seq, seq > d.seq
}

// admit decides about a session request a worker pulled: true hands it to
// the worker; false means it is held (or dropped, if it was settled
// already through an earlier delivery).
func (ss *sessions) admit(ctx context.Context, d *delivery) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for {
		if ss.closed {
			ss.handBackUnlocked(d, "the consumer closed")
			return false
		}
		s := ss.session(d.msg.SessionKey)
		if d.seq <= s.done {
			return false // a second delivery of a request acked here
		}
		if s.busy(time.Now()) || s.checking || len(s.held) > 0 && s.held[0].seq < d.seq {
			ss.hold(s, d)
			return false
		}
		first, gone := ss.turn(ctx, s, d)
		switch {
		case ss.keys[s.key] != s || ss.closed:
			continue // pruned or closed meanwhile: decide again
		case first && !s.busy(time.Now()):
			ss.take(s, d)
			return true
		case gone:
			return false
		default:
			ss.hold(s, d)
			return false
		}
	}
}

// first returns the stream sequence of the first request stored for the
// session, looking from after+1.
func (ss *sessions) first(ctx context.Context, key string, after uint64) (uint64, error) {
	ctx, cancel := ss.c.b.withTimeout(ctx)
	defer cancel()
	m, err := ss.c.b.reqs.GetMsg(ctx, after+1, jetstream.WithGetMsgSubject(sessionSubject(ss.c.queue, key)))
	if err != nil {
		return 0, err
	}
	return m.Sequence, nil
}

func (ss *sessions) take(s *session, d *delivery) {
	s.out, s.outUntil = d, time.Now().Add(ss.lease)
}

// hold keeps d until its turn, in stream order. Over maxHeld, it hands d
// back to the stream instead.
func (ss *sessions) hold(s *session, d *delivery) {
	if ss.held >= maxHeld {
		ss.handBackUnlocked(d, "the consumer holds too many requests")
		return
	}
	i, _ := slices.BinarySearchFunc(s.held, d.seq, func(h *delivery, seq uint64) int { return cmp.Compare(h.seq, seq) })
	s.held = slices.Insert(s.held, i, d)
	ss.held++
	ss.queue(s) // its turn may have come meanwhile
	select {
	case ss.kick <- struct{}{}:
	default:
	}
}

// queue marks s for a check of its first held request.
func (ss *sessions) queue(s *session) {
	if !s.queued && len(s.held) > 0 {
		s.queued = true
		ss.pending = append(ss.pending, s)
	}
}

// promote checks pending sessions and returns the first held request whose
// turn came, taken for the calling worker, or nil.
func (ss *sessions) promote(ctx context.Context) *delivery {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for len(ss.pending) > 0 && !ss.closed {
		s := ss.pending[0]
		ss.pending = ss.pending[1:]
		s.queued = false
		d := ss.due(s)
		if d == nil {
			continue
		}
		first, gone := ss.turn(ctx, s, d)
		switch {
		case ss.closed:
			return nil
		case len(s.held) == 0 || s.held[0] != d || s.busy(time.Now()):
			ss.queue(s)
		case gone:
			ss.drop(s)
			ss.queue(s) // the next one may be first now
		case first:
			ss.drop(s)
			ss.take(s, d)
			return d
		}
		// Not its turn yet, or no answer: the poll queues it again.
	}
	return nil
}

// due returns the first held request of s if it may be checked now, after
// dropping held requests that no longer count: those acked here through
// an earlier delivery, and those whose lease may have run out (the stream
// delivers them again).
func (ss *sessions) due(s *session) *delivery {
	now := time.Now()
	for len(s.held) > 0 && (s.held[0].seq <= s.done || s.held[0].lost(now)) {
		ss.drop(s)
	}
	if len(s.held) == 0 || s.busy(now) || s.checking || ss.keys[s.key] != s {
		return nil
	}
	return s.held[0]
}

// drop removes s's first held request.
func (ss *sessions) drop(s *session) {
	s.held = s.held[1:]
	ss.held--
}

// countAttempt makes d's Attempt its delivery count less the times it was
// handed back unrun.
func (ss *sessions) countAttempt(ctx context.Context, d *delivery) {
	if d.msg.Attempt <= 1 {
		return
	}
	ctx, cancel := ss.c.b.withTimeout(ctx)
	defer cancel()
	q := backend.EventQuery{CorrelationID: d.msg.CorrelationID, Limit: 1000}
	for {
		evs, err := ss.c.b.Events(ctx, q)
		if err != nil {
			ss.c.log.Warn("rsvpnats: reading hand-backs failed; the attempt count includes them", "id", d.msg.ID, "err", err)
			return
		}
		for _, ev := range evs {
			var data struct {
				ID string `json:"id"`
			}
			if ev.Type == backend.EventHandedBack && json.Unmarshal(ev.Data, &data) == nil && data.ID == d.msg.ID && d.msg.Attempt > 1 {
				d.msg.Attempt--
			}
		}
		if len(evs) < q.Limit {
			return
		}
		q.After = evs[len(evs)-1].Seq
	}
}

// handBack returns d to the stream unrun, recording it so that the
// delivery is not counted as an attempt (countAttempt). One whose lease
// may have run out is left alone: it comes back by itself, and a nak now
// could give back another worker's delivery of it.
func (ss *sessions) handBack(d *delivery, why string) {
	if d.lost(time.Now()) {
		return
	}
	delivered := d.msg.Attempt
	if md, err := d.m.Metadata(); err == nil {
		delivered = int(md.NumDelivered)
	}
	data, _ := json.Marshal(map[string]any{"id": d.msg.ID, "delivery": delivered, "why": why}) // plain values always encode
	ctx, cancel := context.WithTimeout(context.Background(), ss.c.b.opts.Timeout)
	defer cancel()
	err := ss.c.b.AppendEvent(ctx, &backend.Event{CorrelationID: d.msg.CorrelationID, Type: backend.EventHandedBack, At: time.Now(),
		Data: data, DedupeKey: fmt.Sprintf("%s:handed_back:%d", d.msg.ID, delivered)})
	if err != nil {
		ss.c.log.Warn("rsvpnats: recording a hand-back failed; it will count as an attempt", "id", d.msg.ID, "err", err)
	}
	_ = d.m.Nak()
}

// handBackUnlocked is handBack for a caller holding ss.mu: the engine is
// not called under the lock.
func (ss *sessions) handBackUnlocked(d *delivery, why string) {
	ss.mu.Unlock()
	defer ss.mu.Lock()
	ss.handBack(d, why)
}

// settled is told that d was acked (or handed back with nack), so its
// session's turn is free.
func (ss *sessions) settled(d *delivery, acked bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s := ss.keys[d.msg.SessionKey]
	if s == nil {
		return
	}
	if s.out == d {
		s.out = nil
	}
	if acked {
		s.done, s.doneAt = max(s.done, d.seq), time.Now()
	}
	ss.queue(s)
}

// keep holds d again, which a worker took (promote) but did not start:
// its Next call ended before the renewal that starts its lease afresh was
// confirmed. Its lease is as it was while held. If the consumer closed
// meanwhile, d is handed back.
func (ss *sessions) keep(d *delivery) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if s := ss.keys[d.msg.SessionKey]; s != nil && s.out == d {
		s.out = nil
	}
	if ss.closed {
		ss.handBackUnlocked(d, "the consumer closed")
		return
	}
	ss.hold(ss.session(d.msg.SessionKey), d)
}

// extended is told that d's lease was renewed.
func (ss *sessions) extended(d *delivery) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if s := ss.keys[d.msg.SessionKey]; s != nil && s.out == d {
		s.outUntil = time.Now().Add(ss.lease)
	}
}

// run polls every sessionPoll while requests are held, until ctx ends: it
// queues their sessions for a check (their turn may come through another
// process, or a lease running out), renews their leases every lease/3,
// hands back those whose turn came while no worker has called Next for
// idleGiveBack, and forgets idle sessions.
func (ss *sessions) run(ctx context.Context) {
	poll := time.NewTimer(sessionPoll)
	defer poll.Stop()
	armed := true
	lastExtend := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ss.kick:
			if !armed {
				poll.Reset(sessionPoll)
				armed = true
			}
			continue
		case <-poll.C:
			armed = false
		}
		if time.Since(lastExtend) > ss.lease/3 {
			ss.extendHeld(ctx)
			lastExtend = time.Now()
		}
		if ss.c.waiting.Load() == 0 && time.Since(time.Unix(0, ss.c.lastOut.Load())) > idleGiveBack {
			ss.giveBackDue(ctx)
		}
		now := time.Now()
		ss.mu.Lock()
		for key, s := range ss.keys {
			switch {
			case len(s.held) > 0 && !s.busy(now):
				ss.queue(s)
			case len(s.held) == 0 && s.out == nil && !s.checking && now.Sub(s.doneAt) > keepDone:
				delete(ss.keys, key)
			}
		}
		if ss.held > 0 {
			poll.Reset(sessionPoll)
			armed = true
		}
		ss.mu.Unlock()
	}
}

// giveBackDue hands back the held requests whose turn came: no worker of
// this consumer waits to take them, and another consumer may.
func (ss *sessions) giveBackDue(ctx context.Context) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	sessions := make([]*session, 0, len(ss.keys))
	for _, s := range ss.keys {
		sessions = append(sessions, s)
	}
	for _, s := range sessions { // the lock is let go in the loop: no map iteration
		d := ss.due(s)
		if d == nil {
			continue
		}
		first, gone := ss.turn(ctx, s, d)
		if ss.closed || len(s.held) == 0 || s.held[0] != d {
			continue
		}
		if first || gone {
			ss.drop(s)
		}
		if first {
			ss.handBackUnlocked(d, "no worker waits for it here")
		}
	}
}

// extendHeld renews the leases of held requests, taking at most a third
// of the lease. A held request whose renewal was not confirmed in time is
// dropped by due once its lease may have run out.
func (ss *sessions) extendHeld(ctx context.Context) {
	ss.mu.Lock()
	var held []*delivery
	for _, s := range ss.keys {
		held = append(held, s.held...)
	}
	ss.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, ss.lease/3)
	defer cancel()
	for _, d := range held {
		if err := d.renew(ctx); err != nil && ctx.Err() == nil {
			ss.c.log.Warn("rsvpnats: renewing a held session request's lease failed", "id", d.msg.ID, "err", err)
		}
	}
}

// release hands every held request back to the stream, at once, for other
// consumers: the consumer is closing.
func (ss *sessions) release() {
	ss.mu.Lock()
	ss.closed = true
	var all []*delivery
	for _, s := range ss.keys {
		all = append(all, s.held...)
	}
	ss.keys, ss.pending, ss.held = map[string]*session{}, nil, 0
	ss.mu.Unlock()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, d := range all {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ss.handBack(d, "the consumer closed")
		})
	}
	wg.Wait()
}
