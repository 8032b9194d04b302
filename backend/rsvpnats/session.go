package rsvpnats

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Sessions on JetStream.
//
// A session's requests are stored on a subject of their own,
// rsvp.ses.<queue>.<key>, in the queue's work-queue stream, so a request
// leaves the stream when it is acked (or dead-lettered, which acks it).
// The rule that keeps a session in order, across any number of processes,
// is: a request is handed to a worker only while it is the first message
// stored on its session's subject. The queue's one JetStream consumer
// delivers session requests like any other; one that is not first yet is
// held by the consumer that pulled it (its lease kept renewed) and handed
// out once its turn comes: at once when the request before it was acked
// here, or by polling when it is settled elsewhere.

const (
	// sessionPoll is how often held requests check for their turn.
	sessionPoll = 100 * time.Millisecond
	// maxHeld bounds the requests one consumer holds ahead of their turn.
	// Beyond it, the newest is handed back to the stream for a second.
	maxHeld = 10_000
)

// sessions holds the session requests a consumer pulled before their turn.
// Workers check the turns in Next (promote), so that checks run in
// parallel; run polls for turns that come through other processes.
type sessions struct {
	c     *consumer
	lease time.Duration

	mu      sync.Mutex
	keys    map[string]*session
	held    int
	pending []*session        // sessions whose first held request may be due
	bounced map[uint64]uint64 // deliveries handed back (maxHeld), by stream sequence
	wake    chan struct{}     // pending is not empty: a worker waiting in a pull should check
	kick    chan struct{}     // a request was held: make sure run polls
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

// keepDone is how long a session's state outlives its last request here:
// an ack is sent without waiting for the engine, so for a moment the acked
// request may still be the first stored, and done says to look past it.
const keepDone = 5 * time.Second

func newSessions(c *consumer, lease time.Duration) *sessions {
	return &sessions{c: c, lease: lease, keys: map[string]*session{}, bounced: map[uint64]uint64{},
		wake: make(chan struct{}, 1), kick: make(chan struct{}, 1)}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// busy reports whether s's turn is taken by a delivery out from here.
func (s *session) busy(now time.Time) bool { return s.out != nil && now.Before(s.outUntil) }

// admit decides about a session request a worker pulled: true hands it to
// the worker; false means it is held (or dropped, if it was settled
// already through an earlier delivery).
func (ss *sessions) admit(ctx context.Context, d *delivery) bool {
	key := d.msg.SessionKey
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if n := ss.bounced[d.seq]; n > 0 {
		d.msg.Attempt -= int(n) // hand-backs are not attempts
	}
	for {
		s := ss.keys[key]
		if s == nil {
			s = &session{key: key}
			ss.keys[key] = s
		}
		if d.seq <= s.done {
			return false // a second delivery of a request acked here
		}
		if s.busy(time.Now()) || s.checking || len(s.held) > 0 && s.held[0].seq < d.seq {
			ss.hold(s, d)
			return false
		}
		after := s.done
		s.checking = true
		ss.mu.Unlock()
		first, err := ss.first(ctx, key, after)
		ss.mu.Lock()
		s.checking = false
		if ss.keys[key] != s {
			continue // pruned meanwhile: decide again
		}
		switch {
		case err == nil && first == d.seq && !s.busy(time.Now()):
			ss.take(s, d)
			return true
		case err == nil && first > d.seq, errors.Is(err, jetstream.ErrMsgNotFound):
			return false // settled through another delivery: it is gone
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
	delete(ss.bounced, d.seq)
}

// hold keeps d until its turn, in stream order. Over maxHeld, it hands d
// back to the stream instead.
func (ss *sessions) hold(s *session, d *delivery) {
	if ss.held >= maxHeld {
		ss.bounced[d.seq]++
		_ = d.m.NakWithDelay(time.Second)
		return
	}
	i, _ := slices.BinarySearchFunc(s.held, d.seq, func(h *delivery, seq uint64) int { return cmp.Compare(h.seq, seq) })
	s.held = slices.Insert(s.held, i, d)
	ss.held++
	ss.queue(s) // its turn may have come meanwhile
	signal(ss.kick)
}

// queue marks s for a check of its first held request.
func (ss *sessions) queue(s *session) {
	if !s.queued && len(s.held) > 0 {
		s.queued = true
		ss.pending = append(ss.pending, s)
		signal(ss.wake)
	}
}

func (ss *sessions) hasPending() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.pending) > 0
}

// promote checks pending sessions and returns the first held request whose
// turn came, taken for the calling worker, or nil.
func (ss *sessions) promote(ctx context.Context) *delivery {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for len(ss.pending) > 0 {
		s := ss.pending[0]
		ss.pending = ss.pending[1:]
		s.queued = false
		if len(ss.pending) > 0 {
			signal(ss.wake) // for another worker
		}
		for len(s.held) > 0 && s.held[0].seq <= s.done {
			ss.drop(s) // acked here through an earlier delivery
		}
		if len(s.held) == 0 || s.busy(time.Now()) || s.checking || ss.keys[s.key] != s {
			continue
		}
		d, after := s.held[0], s.done
		s.checking = true
		ss.mu.Unlock()
		first, err := ss.first(ctx, s.key, after)
		ss.mu.Lock()
		s.checking = false
		if len(s.held) == 0 || s.held[0] != d || s.busy(time.Now()) {
			ss.queue(s)
			continue
		}
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound), err == nil && first > d.seq:
			ss.drop(s) // settled through another delivery: gone
			ss.queue(s)
		case err == nil && first == d.seq:
			ss.drop(s)
			ss.take(s, d)
			return d
		}
		// Not its turn yet, or no answer: the poll queues it again.
	}
	return nil
}

// drop removes s's first held request.
func (ss *sessions) drop(s *session) {
	s.held = s.held[1:]
	ss.held--
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

// extended is told that d's lease was renewed.
func (ss *sessions) extended(d *delivery) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if s := ss.keys[d.msg.SessionKey]; s != nil && s.out == d {
		s.outUntil = time.Now().Add(ss.lease)
	}
}

// run polls every sessionPoll while requests are held: it queues their
// sessions for a check (their turn may come through another process, or
// a lease running out), renews their leases every lease/3, and forgets
// idle sessions. It returns when ctx ends.
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
		extend := time.Since(lastExtend) > ss.lease/3
		if extend {
			lastExtend = time.Now()
		}
		now := time.Now()
		ss.mu.Lock()
		for key, s := range ss.keys {
			if extend {
				for _, d := range s.held {
					_ = d.m.InProgress()
				}
			}
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

// release hands every held request back to the stream, at once, for other
// consumers: the consumer is closing.
func (ss *sessions) release() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for _, s := range ss.keys {
		for _, d := range s.held {
			_ = d.m.Nak()
		}
	}
	ss.keys, ss.pending, ss.held = map[string]*session{}, nil, 0
}
