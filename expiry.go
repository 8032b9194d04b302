package rsvp

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

// Expiry of sent requests.
//
// A request sent with Send and a Deadline gets an expiry task: a request on
// the internal queue ExpiryQueue, scheduled for the deadline. Whichever
// client handles it stores the expired reply, unless the request has a
// reply by then, so that Await in any process returns ErrExpired even if no
// responder ever takes the request. A client handles expiry tasks once it
// has sent a request with a deadline, awaited a reply, gathered replies
// (Gather), read a reply session (SessionReplies) or started a responder,
// until it is closed. (Request stores the expired reply itself
// when its wait ends at the deadline; it leaves a task only when its wait
// ends before. So a Request whose process dies while it waits leaves
// none: its request expires when a responder takes it. A task per Request
// would cost every round trip with a deadline a second stored message.)
//
// An engine that cannot schedule requests (NATS 2.10 and 2.11: Enqueue
// fails with errors.ErrUnsupported) gets no expiry tasks: a request sent
// with a deadline is stored all the same, and expires when a responder
// takes it; Request's own expiry is as above.

// ExpiryQueue is the internal queue of expiry tasks.
const ExpiryQueue = "rsvp-expiry"

// expiryTask is the body of an expiry task.
type expiryTask struct {
	ID            string    `json:"id,omitempty"` // the request's, so that its reply is listed once
	CorrelationID string    `json:"correlation_id"`
	ReplyTo       string    `json:"reply_to"`
	Queue         string    `json:"queue"`
	Deadline      time.Time `json:"deadline"`
	Track         bool      `json:"track,omitempty"`
	Channel       string    `json:"channel,omitempty"`
	ReplySession  string    `json:"reply_session,omitempty"`
}

// expiryOf is the expiry task of request m.
func expiryOf(m *Message) expiryTask {
	return expiryTask{ID: m.ID, CorrelationID: m.CorrelationID, ReplyTo: m.ReplyTo, Queue: m.Queue,
		Deadline: m.Deadline, Track: m.Track, Channel: m.Channel, ReplySession: m.ReplySession}
}

// scheduleExpiry stores the expiry task of m. A deadline further ahead than
// Config.MaxDelay is reached in hops: the task comes due earlier and is
// scheduled again.
func (c *Client) scheduleExpiry(ctx context.Context, t expiryTask) error {
	err := c.b.Enqueue(ctx, c.expiryMessage(t))
	if errors.Is(err, errors.ErrUnsupported) {
		// The engine cannot schedule (NATS before 2.12): the request, stored
		// or being stored, goes without a task.
		c.noTasksOnce.Do(func() {
			c.cfg.Logger.WarnContext(ctx, "rsvp: the engine cannot schedule requests, so requests sent with a deadline get no expiry task: "+
				"one expires when a responder takes it, and until then Await waits", "err", err)
		})
		return nil
	}
	if err != nil {
		return fmt.Errorf("rsvp: schedule the expiry of %s: %w", t.CorrelationID, err)
	}
	c.startExpirer()
	return nil
}

// expiryMessage is the request on ExpiryQueue that carries task t.
func (c *Client) expiryMessage(t expiryTask) *backend.Message {
	body, _ := json.Marshal(t) // plain fields always encode
	due := t.Deadline
	if hop := time.Now().Add(c.cfg.MaxDelay * 9 / 10); due.After(hop) {
		due = hop
	}
	id := "rsvp-exp:" + t.CorrelationID + ":" + strconv.FormatInt(due.UnixMilli(), 10)
	if len(id) > backend.MaxNameLen {
		sum := sha256.Sum256([]byte(id))
		id = "rsvp-exp:" + hex.EncodeToString(sum[:16])
	}
	return &backend.Message{ID: id, CorrelationID: id, Queue: ExpiryQueue, ContentType: "application/json",
		Body: body, CreatedAt: time.Now(), NotBefore: due}
}

// startExpirer makes this client handle expiry tasks, once.
func (c *Client) startExpirer() {
	c.mu.Lock()
	started := c.expirer
	c.expirer = true
	c.mu.Unlock()
	if started || c.cfg.NoExpiryTasks {
		return
	}
	_, err := c.handle(ExpiryQueue, HandlerFunc(c.handleExpiry), HandleOptions{Concurrency: 4})
	if err != nil && !errors.Is(err, ErrClosed) {
		c.cfg.Logger.Warn("rsvp: handling expiry tasks failed to start; another client will", "err", err)
		c.mu.Lock()
		c.expirer = false
		c.mu.Unlock()
	}
}

// handleExpiry runs an expiry task.
func (c *Client) handleExpiry(ctx context.Context, req *Message) (*Reply, error) {
	var t expiryTask
	if err := json.Unmarshal(req.Body, &t); err != nil || t.CorrelationID == "" {
		return nil, Permanent(fmt.Errorf("not an expiry task: %v", err))
	}
	if wait := time.Until(t.Deadline); wait > time.Minute {
		return &Reply{}, c.scheduleExpiry(ctx, t) // a hop of a far deadline
	} else if wait > 0 {
		// Due a little early (the engine's clock runs ahead of ours). The
		// task cannot be scheduled again for the same time (same id, so
		// deduplicated): wait for the deadline.
		timer := time.NewTimer(wait)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	switch _, err := c.b.GetReply(ctx, t.CorrelationID); {
	case err == nil:
		return &Reply{}, nil // done, failed or cancelled in time
	case !errors.Is(err, backend.ErrNotFound):
		return nil, err
	}
	if replayed, err := c.replayed(ctx, t.CorrelationID); err != nil || replayed {
		return &Reply{}, err // a replay has no deadline (Replay)
	}
	if _, err := c.expire(ctx, t); err != nil && !errors.Is(err, backend.ErrReplyExists) { // exists: answered just now
		return nil, err
	}
	return &Reply{}, nil
}

const expiredText = "the deadline passed before a reply"

// expire stores the expired reply of the request t describes, whose
// deadline passed with no reply, and then does what a responder does with
// a reply it stores: records the final event of a tracked request, and
// lists the reply under its reply session. If a reply was stored before,
// it returns that reply and ErrReplyExists (see storeExpired).
func (c *Client) expire(ctx context.Context, t expiryTask) (*Reply, error) {
	if r, err := c.storeExpired(ctx, t.CorrelationID, t.ReplyTo); err != nil {
		return r, err
	}
	m := &Message{ID: cmp.Or(t.ID, t.CorrelationID), CorrelationID: t.CorrelationID, Queue: t.Queue, Track: t.Track, Channel: t.Channel, ReplySession: t.ReplySession}
	rep := &Reply{Status: backend.StatusExpired, ErrorCode: CodeExpired, ErrorMessage: expiredText}
	log := c.cfg.Logger.With("queue", t.Queue, "correlation_id", t.CorrelationID)
	s := &settler{c: c}
	s.endEvent(ctx, m, rep, false, log)
	s.listReply(ctx, m, log)
	return nil, nil
}

// replayed reports whether the request correlationID was replayed from its
// dead letter (its event log has a replayed event).
func (c *Client) replayed(ctx context.Context, correlationID string) (bool, error) {
	replayed := false
	err := c.eachEvent(ctx, correlationID, func(ev *backend.Event) bool {
		replayed = ev.Type == backend.EventReplayed
		return !replayed
	})
	if err != nil {
		return false, fmt.Errorf("rsvp: events of %s: %w", correlationID, err)
	}
	return replayed, nil
}

// storeExpired stores the expired reply of correlationID at replyTo. It
// returns the reply that was stored before, with ErrReplyExists, if there
// is one.
func (c *Client) storeExpired(ctx context.Context, correlationID, replyTo string) (*Reply, error) {
	rep := &Reply{CorrelationID: correlationID, Status: backend.StatusExpired, ErrorCode: CodeExpired,
		ErrorMessage: expiredText, CreatedAt: time.Now()}
	err := c.b.PutReply(ctx, replyTo, rep)
	if errors.Is(err, backend.ErrReplyExists) {
		if r, gerr := c.b.GetReply(ctx, correlationID); gerr == nil {
			return r, err
		}
	}
	return nil, err
}
