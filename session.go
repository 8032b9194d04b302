package rsvp

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

// Sessions.
//
// A request sent with Message.SessionKey belongs to a session of its
// queue: the requests of one session are handled one at a time, in the
// order they were sent, by whichever responder takes them; different
// sessions run in parallel. While a request is retried (after its
// backoff), its session waits for it; after it is dead-lettered the
// session goes on. A session request cannot be scheduled.
//
// A request sent with Message.ReplySession has its reply listed under
// that reply session once it is stored: by a responder, or as expired when
// its deadline passed. A request cancelled (Client.Cancel) before it started
// has its cancelled reply listed when a responder takes it (the canceller
// does not know the reply session). SessionReplies reads the
// list in order, from any process: a requester can consume the replies of
// one session in the order they were stored. For the requests of one
// session that is the order they were sent, but for a request that expired
// while it waited behind another: its expired reply is stored, and listed,
// at its deadline.

// SessionReply is a reply listed under a reply session.
type SessionReply struct {
	// Seq is the reply's position in the session's list; pass it to
	// SessionReplies as after to read on from it.
	Seq   uint64
	Reply *Reply
}

// replySessionLog is the event log the replies of a reply session are
// listed in: a name the engines carry, whatever the key.
func replySessionLog(session string) string {
	sum := sha256.Sum256([]byte(session))
	return "rsvp-rs-" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// listReply lists m's reply under its reply session, once however often
// the request is handled. Failing to list it does not fail the request;
// it is logged.
func (r *settler) listReply(ctx context.Context, m *Message, log *slog.Logger) {
	if m.ReplySession == "" {
		return
	}
	data, _ := json.Marshal(map[string]string{"correlation_id": m.CorrelationID}) // plain strings always encode
	ev := &backend.Event{CorrelationID: replySessionLog(m.ReplySession), Type: "reply", At: time.Now(), Data: data,
		DedupeKey: "rs:" + m.ID} // once per request, and again for a replay (a new id)
	if err := r.c.b.AppendEvent(ctx, ev); err != nil {
		log.Warn("rsvp: listing the reply under its reply session failed", "reply_session", m.ReplySession, "err", err)
	}
}

// SessionReplies returns up to 100 replies listed under the reply session
// after position after (0: from the start), in the order they were
// stored. It waits until at least one is there, or ctx ends, looking
// again every Config.RecheckInterval in case a notification was lost.
// Replies are listed as long as the backend keeps replies; one that is
// gone is skipped. As Await does, it makes the client run expiry tasks,
// so that an expired reply is listed even when the client that sent the
// request is gone.
func (c *Client) SessionReplies(ctx context.Context, session string, after uint64) ([]SessionReply, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	if err := backend.ValidateSessionKey("reply session", session); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	// Its requests' expired replies are listed by their expiry tasks,
	// which the requester that sent them (or any other client) may no
	// longer be running: as Await does.
	c.startExpirer()
	id := replySessionLog(session)
	more := make(chan struct{}, 1)
	sub, err := c.b.SubscribeEvents(ctx, func(ev *backend.Event) {
		if ev.CorrelationID == id {
			select {
			case more <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("rsvp: session replies: %w", err)
	}
	defer sub.Close()
	// Notifications are best effort (one is lost to a reconnect, say):
	// look again now and then.
	recheck := time.NewTimer(c.cfg.RecheckInterval)
	defer recheck.Stop()
	for {
		evs, err := c.b.Events(ctx, backend.EventQuery{CorrelationID: id, After: after})
		if err != nil {
			return nil, fmt.Errorf("rsvp: session replies of %q: %w", session, err)
		}
		var out []SessionReply
		for _, ev := range evs {
			after = ev.Seq
			var d struct {
				CorrelationID string `json:"correlation_id"`
			}
			if json.Unmarshal(ev.Data, &d) != nil {
				continue
			}
			r, err := c.b.GetReply(ctx, d.CorrelationID)
			if errors.Is(err, backend.ErrNotFound) {
				continue
			}
			if err != nil {
				return out, fmt.Errorf("rsvp: session replies of %q: %w", session, err)
			}
			out = append(out, SessionReply{Seq: ev.Seq, Reply: r})
		}
		if len(out) > 0 {
			return out, nil
		}
		if len(evs) > 0 {
			continue // all gone: read on
		}
		select {
		case <-more:
		case <-recheck.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		recheck.Reset(c.cfg.RecheckInterval)
	}
}
