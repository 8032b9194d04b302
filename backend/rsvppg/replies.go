package rsvppg

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp/backend"
)

// replyPrefix starts every reply address: rsvp.reply.<correlation id>.<inbox>,
// as on NATS, so that addresses read the same on every backend.
const replyPrefix = "rsvp.reply."

// ReplyAddress implements backend.Backend.
func (b *Backend) ReplyAddress(inbox, correlationID string) string {
	return replyPrefix + correlationID + "." + inbox
}

// replyInbox returns the inbox of replyTo if it is a reply address for
// correlationID.
func replyInbox(replyTo, correlationID string) (string, bool) {
	inbox, ok := strings.CutPrefix(replyTo, replyPrefix+correlationID+".")
	return inbox, ok && backend.ValidateName("inbox", inbox) == nil
}

// replyItem is a reply on its way to the replies batcher.
type replyItem struct {
	inbox string
	r     backend.Reply
}

// PutReply implements backend.Backend. Concurrent calls are stored together
// in one transaction; the first reply to a correlation id wins, by the
// table's primary key.
func (b *Backend) PutReply(ctx context.Context, replyTo string, r *backend.Reply) error {
	if err := backend.ValidateName("correlation id", r.CorrelationID); err != nil {
		return fmt.Errorf("rsvppg: reply: %w", err)
	}
	inbox, ok := replyInbox(replyTo, r.CorrelationID)
	if !ok {
		return fmt.Errorf("rsvppg: %w: %q is not %s<correlation id>.<inbox> for %q", backend.ErrBadAddress, replyTo, replyPrefix, r.CorrelationID)
	}
	if err := b.checkReply(r); err != nil {
		return fmt.Errorf("rsvppg: reply to %s: %w", r.CorrelationID, err)
	}
	ctx, cancel, err := b.callCtx(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	stored, err := b.replies.do(ctx, replyItem{inbox: inbox, r: *r})
	if err != nil {
		return fmt.Errorf("rsvppg: store reply %s: %w", r.CorrelationID, err)
	}
	if !stored {
		return backend.ErrReplyExists
	}
	return nil
}

func (b *Backend) checkReply(r *backend.Reply) error {
	err := errors.Join(checkText("status", string(r.Status)), checkText("error code", r.ErrorCode),
		checkText("error message", r.ErrorMessage), checkText("content type", r.ContentType), checkHeaders(r.Headers),
		checkText("trace parent", r.TraceParent), checkText("trace state", r.TraceState))
	if err != nil {
		return err
	}
	return b.checkSize(r.Body, r.Headers)
}

// execReplies stores a batch of replies and reports which were stored. Of
// two replies to one correlation id in a batch, the second is never stored.
func (b *Backend) execReplies(ctx context.Context, items []replyItem, again bool) ([]bool, []error, error) {
	first := make(map[string]bool, len(items))
	distinct := items[:0:0]
	for _, it := range items {
		if !first[it.r.CorrelationID] {
			first[it.r.CorrelationID] = true
			distinct = append(distinct, it)
		}
	}
	stored, err := b.putReplies(ctx, b.durable, distinct)
	if err == nil && again {
		err = b.ownReplies(ctx, distinct, stored)
	}
	if err != nil {
		return nil, nil, err
	}
	ok := make([]bool, len(items))
	for i, it := range items {
		if inbox, found := stored[it.r.CorrelationID]; found {
			ok[i] = true
			delete(stored, it.r.CorrelationID) // a second reply in the batch was not
			b.notifyLater(replyNote(it.r.CorrelationID, inbox))
		}
	}
	return ok, make([]error, len(items)), nil
}

// ownReplies adds to stored (the inboxes by correlation id of the replies
// of items that a batch run again stored) those of items found stored as
// they are: by the batch's first run, whose answer was lost.
func (b *Backend) ownReplies(ctx context.Context, items []replyItem, stored map[string]string) error {
	var corrs []string
	for _, it := range items {
		if _, ok := stored[it.r.CorrelationID]; !ok {
			corrs = append(corrs, it.r.CorrelationID)
		}
	}
	if len(corrs) == 0 {
		return nil
	}
	found, err := b.getReplies(ctx, corrs)
	if err != nil {
		return err
	}
	byID := make(map[string]storedReply, len(found))
	for _, f := range found {
		byID[f.reply.CorrelationID] = f
	}
	for _, it := range items {
		f, ok := byID[it.r.CorrelationID]
		r := it.r
		if ok && f.inbox == it.inbox && f.reply.Status == cmp.Or(r.Status, backend.StatusSucceeded) &&
			f.reply.ErrorCode == r.ErrorCode && f.reply.ErrorMessage == r.ErrorMessage && f.reply.ContentType == r.ContentType &&
			bytes.Equal(f.reply.Body, r.Body) && f.reply.CreatedAt.Equal(r.CreatedAt.Truncate(time.Microsecond)) {
			stored[r.CorrelationID] = it.inbox
		}
	}
	return nil
}

// putReplies stores replies to distinct correlation ids, each unless one is
// stored already, and returns the inboxes of those stored by their
// correlation ids. It sends no notifications.
func (b *Backend) putReplies(ctx context.Context, q querier, items []replyItem) (map[string]string, error) {
	var cols columns
	for _, it := range items {
		r := it.r
		cols.add(r.CorrelationID, it.inbox, string(cmp.Or(r.Status, backend.StatusSucceeded)), r.ErrorCode,
			r.ErrorMessage, r.ContentType, headersJSON(r.Headers, r.TraceParent, r.TraceState), body(r.Body), timeOrNil(r.CreatedAt))
	}
	rows, err := q.Query(ctx, b.sql.putReplies, cols.args()...)
	if err != nil {
		return nil, err
	}
	stored := make(map[string]string, len(items))
	var corr, inbox string
	_, err = pgx.ForEachRow(rows, []any{&corr, &inbox}, func() error {
		stored[corr] = inbox
		return nil
	})
	return stored, err
}

// GetReply implements backend.Backend.
func (b *Backend) GetReply(ctx context.Context, correlationID string) (*backend.Reply, error) {
	if err := backend.ValidateName("correlation id", correlationID); err != nil {
		return nil, fmt.Errorf("rsvppg: get reply: %w", err)
	}
	ctx, cancel, err := b.callCtx(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	var rs []storedReply
	err = b.retryOnce(ctx, b.fast, func() (err error) {
		rs, err = b.getReplies(ctx, []string{correlationID})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("rsvppg: get reply %s: %w", correlationID, err)
	}
	if len(rs) == 0 {
		return nil, backend.ErrNotFound
	}
	return rs[0].reply, nil
}

// DeleteReply implements backend.ReplyDeleter.
func (b *Backend) DeleteReply(ctx context.Context, r *backend.Reply) error {
	if err := backend.ValidateName("correlation id", r.CorrelationID); err != nil {
		return fmt.Errorf("rsvppg: delete reply: %w", err)
	}
	ctx, cancel, err := b.callCtx(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	tag, err := b.durable.Exec(ctx, b.schemaSQL(deleteReplySQL), r.CorrelationID,
		string(cmp.Or(r.Status, backend.StatusSucceeded)), timeOrNil(r.CreatedAt))
	if err != nil {
		return fmt.Errorf("rsvppg: delete reply %s: %w", r.CorrelationID, err)
	}
	if tag.RowsAffected() > 0 {
		return nil
	}
	// Nothing deleted: the reply was gone already (taken back by a
	// concurrent replay), or another took its place. A statement of its
	// own sees the table as it is now, after any delete the one above
	// waited for.
	var stored bool
	if err := b.durable.QueryRow(ctx, b.schemaSQL(replyStoredSQL), r.CorrelationID).Scan(&stored); err != nil {
		return fmt.Errorf("rsvppg: delete reply %s: %w", r.CorrelationID, err)
	}
	if stored {
		return fmt.Errorf("rsvppg: delete reply %s: another reply took its place: %w", r.CorrelationID, backend.ErrReplyExists)
	}
	return nil
}

// deleteReplySQL deletes the reply $1 if it is still the one read: status
// $2, created at $3.
const deleteReplySQL = `DELETE FROM {s}.replies WHERE correlation_id = $1 AND status = $2 AND created_at IS NOT DISTINCT FROM $3`

const replyStoredSQL = `SELECT EXISTS (SELECT 1 FROM {s}.replies WHERE correlation_id = $1)`

var _ backend.ReplyDeleter = (*Backend)(nil)

// storedReply is a reply with the inbox it was addressed to.
type storedReply struct {
	inbox string
	reply *backend.Reply
}

// getReplies reads the stored replies of correlation ids.
func (b *Backend) getReplies(ctx context.Context, corrs []string) ([]storedReply, error) {
	rows, err := b.fast.Query(ctx, b.sql.getReplies, corrs)
	if err != nil {
		return nil, err
	}
	return scanReplies(rows)
}

// scanReplies reads rows of replyCols.
func scanReplies(rows pgx.Rows) ([]storedReply, error) {
	var out []storedReply
	var (
		inbox   string
		r       backend.Reply
		status  string
		headers []byte
		created *time.Time
	)
	_, err := pgx.ForEachRow(rows, []any{&r.CorrelationID, &inbox, &status, &r.ErrorCode, &r.ErrorMessage, &r.ContentType,
		&headers, &r.Body, &created}, func() error {
		rep := r
		rep.Status, rep.CreatedAt = backend.Status(status), timeOrZero(created)
		var err error
		if rep.Headers, rep.TraceParent, rep.TraceState, err = parseHeaders(headers); err != nil {
			return fmt.Errorf("reply %s: %w", rep.CorrelationID, err)
		}
		out = append(out, storedReply{inbox: inbox, reply: &rep})
		return nil
	})
	return out, err
}

// SubscribeReplies implements backend.Backend. The backend listens for
// stored replies on one connection; a subscription costs no query of its
// own, and a notified reply is read once for all its subscriptions.
func (b *Backend) SubscribeReplies(ctx context.Context, inbox string, fn func(*backend.Reply)) (backend.Subscription, error) {
	if err := backend.ValidateName("inbox", inbox); err != nil {
		return nil, fmt.Errorf("rsvppg: subscribe to replies: %w", err)
	}
	return b.subscribeReplies(b.reg.inboxes, inbox, fn)
}

// WatchReply implements backend.Backend.
func (b *Backend) WatchReply(ctx context.Context, correlationID string, fn func(*backend.Reply)) (backend.Subscription, error) {
	if err := backend.ValidateName("correlation id", correlationID); err != nil {
		return nil, fmt.Errorf("rsvppg: watch reply: %w", err)
	}
	return b.subscribeReplies(b.reg.watches, correlationID, fn)
}
