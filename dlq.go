package rsvp

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

// DeadLetter is a request that will not be retried, with why; Key names it
// for Replay and Purge.
type DeadLetter = backend.DeadLetter

// DeadLetterQuery selects the dead letters of one queue.
type DeadLetterQuery = backend.DeadLetterQuery

// ErrNoDeadLetter: no dead letter is stored under that key on that queue
// (it was replayed or purged, or never existed).
var ErrNoDeadLetter = errors.New("rsvp: no such dead letter")

// DeadLetters returns the dead letters q selects, oldest first: at most
// q.Limit (default 100). To read the next page, pass the Key of the last
// one as q.After.
func (c *Client) DeadLetters(ctx context.Context, q DeadLetterQuery) ([]*DeadLetter, error) {
	if err := backend.ValidateName("queue", q.Queue); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	dls, err := c.b.DeadLetters(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("rsvp: dead letters of %s: %w", q.Queue, err)
	}
	return dls, nil
}

// Attempt is one failed attempt of a request, as the request's event log
// recorded it: see Client.Attempts.
type Attempt struct {
	Attempt int       // the attempt's number: 1 on first delivery
	At      time.Time // when it failed
	// Code is the error code: CodeFailed, or the Code of a *RemoteError
	// the handler returned; for the final entry, the dead letter's reason
	// (CodeExpired, CodeAttemptsExhausted, ...). Empty for a retried
	// attempt recorded by a version of rsvp before Attempts.
	Code  string
	Error string // the error text, cut to 1 KiB
	// Final marks the failure that ended the request (its failed or
	// expired final event); the others were retried.
	Final bool
}

// Attempts returns the failed attempts of the request correlationID, in
// the order they were recorded (oldest first): every attempt whose error
// was retried, then the failure that dead-lettered it, if it was. It is
// the history of a dead letter: pass its Message.CorrelationID.
//
// Responders record a failed attempt of every request, tracked or not, in
// its event log (docs/wire.md, section 8a); attempts that succeed record
// nothing. So the history lacks attempts that recorded nothing: those
// whose worker died (their lease ran out), and those that failed while the
// event could not be stored. The final entry may be a delivery that did
// not run the handler (the deadline had passed, or the leases of all
// attempts ran out); its Code says so. The history is kept as long as
// replies (the backend's retention, 24 h by default), so an older dead
// letter has an empty one. A replayed request keeps its correlation id, so
// its history goes on after the replay.
//
// An unknown correlation id, or one with no failed attempt, gives an
// empty slice and no error. A correlation id that is not a valid name
// gives an error matching ErrInvalid.
func (c *Client) Attempts(ctx context.Context, correlationID string) ([]Attempt, error) {
	if err := backend.ValidateName("correlation id", correlationID); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var out []Attempt
	err := c.eachEvent(ctx, correlationID, func(ev *backend.Event) bool {
		if a, ok := attemptOf(ev); ok {
			out = append(out, a)
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("rsvp: attempts of %s: %w", correlationID, err)
	}
	return out, nil
}

// eachEvent calls fn for the events of the request correlationID, oldest
// first, until fn returns false.
func (c *Client) eachEvent(ctx context.Context, correlationID string, fn func(*backend.Event) bool) error {
	q := backend.EventQuery{CorrelationID: correlationID, Limit: 256}
	for {
		evs, err := c.b.Events(ctx, q)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if !fn(ev) {
				return nil
			}
		}
		if len(evs) < q.Limit {
			return nil
		}
		q.After = evs[len(evs)-1].Seq
	}
}

// attemptOf reads a failed attempt from an event: a retrying one, or a
// failed or expired final one that names its attempt (one that does not
// was written by someone other than a responder, the gateway expiring a
// request that never started, say).
func attemptOf(ev *backend.Event) (Attempt, bool) {
	var d struct {
		Attempt int    `json:"attempt"`
		Error   string `json:"error"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	switch ev.Type {
	case backend.EventRetrying:
		if json.Unmarshal(ev.Data, &d) != nil {
			return Attempt{}, false // tolerate what a foreign writer stored
		}
		return Attempt{Attempt: d.Attempt, At: ev.At, Code: d.Code, Error: d.Error}, true
	case string(backend.StatusFailed), string(backend.StatusExpired):
		if json.Unmarshal(ev.Data, &d) != nil || d.Attempt == 0 {
			return Attempt{}, false
		}
		return Attempt{Attempt: d.Attempt, At: ev.At, Code: d.Code, Error: d.Message, Final: true}, true
	}
	return Attempt{}, false
}

// Replay sends the request of the dead letter key of queue again, under
// its own correlation id, and then deletes the dead letter. The original
// requester (or anyone) gets the new outcome with Await of that id, and an
// HTTP client sees the request queued again; whoever replays gets the
// ticket.
//
// The request keeps its type, headers, body, tracking, session and reply
// address; its attempt count starts again at 1, it has no deadline (the
// original's was for the original requester's wait), its CreatedAt is the
// replay's time, and it has a new message ID, derived from the dead letter, so that replaying the same dead
// letter again (after a crash between the send and the delete, say) stores
// nothing new within the dedupe window.
//
// A dead-lettered request usually has its failure reply stored already,
// and each correlation id has one final reply at a time: Replay deletes
// that reply first (the backend must be a backend.ReplyDeleter), and
// records the replay in the request's event log (event type "replayed").
// If the request succeeded meanwhile (a replay that went through before),
// Replay only deletes the dead letter; so it does if another replay of the
// same dead letter, running at the same time, has replaced the failure
// reply, and returns that replay's ticket. If sending fails after the
// reply was deleted, the dead letter stays: replay it again.
//
// Replay returns an error matching ErrNoDeadLetter if there is no dead
// letter key on queue.
func (c *Client) Replay(ctx context.Context, queue, key string) (Ticket, error) {
	if c.isClosed() {
		return Ticket{}, ErrClosed
	}
	if err := backend.ValidateName("queue", queue); err != nil {
		return Ticket{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	dl, err := c.findDeadLetter(ctx, queue, key)
	if err != nil {
		return Ticket{}, err
	}
	return c.replay(ctx, dl)
}

// findDeadLetter returns the dead letter key of queue. Keys are listed in
// order, so the one wanted is the first listed after its predecessor; as
// keys are opaque, the queue is read from its start.
func (c *Client) findDeadLetter(ctx context.Context, queue, key string) (*DeadLetter, error) {
	q := DeadLetterQuery{Queue: queue, Limit: 500}
	for {
		dls, err := c.b.DeadLetters(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("rsvp: dead letters of %s: %w", queue, err)
		}
		for _, dl := range dls {
			if dl.Key == key {
				return dl, nil
			}
		}
		if len(dls) < q.Limit {
			return nil, fmt.Errorf("%w: %s on queue %s", ErrNoDeadLetter, key, queue)
		}
		q.After = dls[len(dls)-1].Key
	}
}

func (c *Client) replay(ctx context.Context, dl *DeadLetter) (Ticket, error) {
	old := dl.Message
	if old == nil {
		return Ticket{}, fmt.Errorf("rsvp: dead letter %s has no message", dl.Key)
	}
	m := *old
	m.ID = replayID(old.Queue, old.ID, dl.Key)
	m.Attempt = 0
	m.Deadline = time.Time{}
	m.NotBefore = time.Time{}
	// Made now: its first attempt's queue wait starts at the replay, not
	// at the original request (before the replay's span, its parent).
	m.CreatedAt = time.Now()
	t := Ticket{ID: m.ID, CorrelationID: m.CorrelationID, Queue: m.Queue}
	fail := func(err error) (Ticket, error) {
		return Ticket{}, fmt.Errorf("rsvp: replay dead letter %s of %s: %w", dl.Key, old.Queue, err)
	}
	if m.ReplyTo != "" {
		r, err := c.b.GetReply(ctx, m.CorrelationID)
		switch {
		case err == nil && r.Status == backend.StatusSucceeded:
			return t, c.deleteReplayed(ctx, dl, t) // replayed before, and done
		case err == nil:
			rd, ok := c.b.(backend.ReplyDeleter)
			if !ok {
				return fail(fmt.Errorf("the %T backend cannot take back the failure reply of %s", c.b, m.CorrelationID))
			}
			err := rd.DeleteReply(ctx, r)
			if errors.Is(err, backend.ErrReplyExists) {
				// A concurrent replay of this dead letter took the failure
				// back and its run has replied: it is replayed.
				return t, c.deleteReplayed(ctx, dl, t)
			}
			if err != nil {
				return fail(err)
			}
		case !errors.Is(err, backend.ErrNotFound):
			return fail(err)
		}
	}
	if err := c.recordDeadLettered(ctx, dl); err != nil {
		return fail(err)
	}
	data, _ := json.Marshal(map[string]string{"dead_letter": dl.Key, "id": m.ID}) // plain strings always encode
	ev := &backend.Event{CorrelationID: m.CorrelationID, Channel: eventChannel(&m), Type: backend.EventReplayed,
		At: time.Now(), Data: data, DedupeKey: m.ID + ":replayed"}
	if err := c.b.AppendEvent(ctx, ev); err != nil {
		return fail(err)
	}
	if _, err := c.send(ctx, &m, true); err != nil {
		return fail(err)
	}
	return t, c.deleteReplayed(ctx, dl, t)
}

// recordDeadLettered appends the final event of a dead letter's request,
// as its responder does just after it stores the failure reply, if the
// request's history does not have it yet. A replay made right after the
// failure then still comes after it in the history; the responder's own
// append, if it comes later, is a duplicate (same dedupe key) and is
// dropped. The history is read in runs: each replayed event starts the
// run of the request it names; the first run is the original request's.
func (c *Client) recordDeadLettered(ctx context.Context, dl *DeadLetter) error {
	old := dl.Message
	var run []*backend.Event // old's run so far
	err := c.eachEvent(ctx, old.CorrelationID, func(ev *backend.Event) bool {
		if ev.Type == backend.EventReplayed && replayedID(ev) == old.ID {
			run = run[:0] // old's run starts after this event
			return true
		}
		run = append(run, ev)
		return true
	})
	if err != nil {
		return err
	}
	for _, ev := range run {
		// A final event is recorded already, or old was replayed since.
		if ev.Type == backend.EventReplayed || slices.Contains(statuses[:], backend.Status(ev.Type)) {
			return nil
		}
	}
	at := dl.At
	if at.IsZero() {
		at = time.Now()
	}
	data, _ := json.Marshal(map[string]any{"code": dl.Reason, "message": cut(dl.LastError), "attempt": old.Attempt}) // plain values always encode
	return c.b.AppendEvent(ctx, &backend.Event{CorrelationID: old.CorrelationID, Channel: eventChannel(old),
		Type: string(failureStatus(dl.Reason)), At: at, Data: data, DedupeKey: finalKey(old)})
}

// replayedID returns the id of the request a replayed event sent, or "".
func replayedID(ev *backend.Event) string {
	var d struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(ev.Data, &d) // a foreign writer's event names none
	return d.ID
}

func (c *Client) deleteReplayed(ctx context.Context, dl *DeadLetter, t Ticket) error {
	if err := c.b.DeleteDeadLetter(ctx, dl.Message.Queue, dl.Key); err != nil && !errors.Is(err, backend.ErrNotFound) {
		return fmt.Errorf("rsvp: replayed dead letter %s of %s as %s, but it was not deleted: %w", dl.Key, dl.Message.Queue, t.ID, err)
	}
	return nil
}

// replayID is the id of the replay of the dead letter key of request id on
// queue: a UUID of version 8 made of their hash.
func replayID(queue, id, key string) string {
	h := sha256.Sum256([]byte("rsvp replay\x00" + queue + "\x00" + id + "\x00" + key))
	h[6] = h[6]&0x0f | 0x80 // version 8
	h[8] = h[8]&0x3f | 0x80 // RFC 9562 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// ReplayAll replays (see Replay) every dead letter q selects (q.After and
// q.Limit are ignored) and returns how many it replayed. It stops at the
// first error.
func (c *Client) ReplayAll(ctx context.Context, q DeadLetterQuery) (int, error) {
	return c.eachDeadLetter(ctx, q, func(dl *DeadLetter) error {
		_, err := c.replay(ctx, dl)
		return err
	})
}

// Purge deletes every dead letter q selects (q.After and q.Limit are
// ignored) and returns how many it deleted.
func (c *Client) Purge(ctx context.Context, q DeadLetterQuery) (int, error) {
	return c.eachDeadLetter(ctx, q, func(dl *DeadLetter) error {
		err := c.b.DeleteDeadLetter(ctx, q.Queue, dl.Key)
		if errors.Is(err, backend.ErrNotFound) {
			return errSkip // deleted by someone else meanwhile
		}
		return err
	})
}

// PurgeOne deletes the dead letter key of queue, or returns an error
// matching ErrNoDeadLetter.
func (c *Client) PurgeOne(ctx context.Context, queue, key string) error {
	if err := backend.ValidateName("queue", queue); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	err := c.b.DeleteDeadLetter(ctx, queue, key)
	if errors.Is(err, backend.ErrNotFound) {
		return fmt.Errorf("%w: %s on queue %s", ErrNoDeadLetter, key, queue)
	}
	if err != nil {
		return fmt.Errorf("rsvp: purge dead letter %s of %s: %w", key, queue, err)
	}
	return nil
}

var errSkip = errors.New("skip")

// eachDeadLetter calls fn for every dead letter q selects, page by page,
// and counts the calls that did not fail.
func (c *Client) eachDeadLetter(ctx context.Context, q DeadLetterQuery, fn func(*DeadLetter) error) (int, error) {
	if c.isClosed() {
		return 0, ErrClosed
	}
	if err := backend.ValidateName("queue", q.Queue); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	q.After, q.Limit = "", 100
	n := 0
	for {
		dls, err := c.b.DeadLetters(ctx, q)
		if err != nil {
			return n, fmt.Errorf("rsvp: dead letters of %s: %w", q.Queue, err)
		}
		for _, dl := range dls {
			switch err := fn(dl); {
			case errors.Is(err, errSkip):
			case err != nil:
				return n, err
			default:
				n++
			}
		}
		if len(dls) < q.Limit {
			return n, nil
		}
		q.After = dls[len(dls)-1].Key
	}
}
