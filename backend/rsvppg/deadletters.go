package rsvppg

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp/backend"
)

// DeadLetter implements backend.Backend. A dead letter is stored once per
// request id and attempt within the dedupe window.
func (b *Backend) DeadLetter(ctx context.Context, dl *backend.DeadLetter) error {
	m := dl.Message
	if err := b.checkDeadLetter(dl); err != nil {
		return fmt.Errorf("rsvppg: dead-letter: %w", err)
	}
	ctx, cancel, err := b.callCtx(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	args := append([]any{deadLetterKey(m), micros(b.opts.DedupeWindow)}, messageArgs(m)...)
	args = append(args, m.Attempt, dl.Reason, dl.LastError, timeOrNil(dl.At))
	if _, err := b.durable.Exec(ctx, b.sql.deadLetter, args...); err != nil {
		return fmt.Errorf("rsvppg: dead-letter %s: %w", m.ID, err)
	}
	return nil
}

// deadLetterKey is the dedupe key of a dead letter of m: its id and
// attempt, id:attempt, or for an id longer than backend.MaxNameLen (of a
// request another program wrote, dead-lettered as unreadable) "sha256:"
// and the hex SHA-256 of that, as a key that long does not fit the dedupe
// table's index.
func deadLetterKey(m *backend.Message) string {
	key := m.ID + ":" + strconv.Itoa(m.Attempt)
	if len(m.ID) > backend.MaxNameLen {
		sum := sha256.Sum256([]byte(key))
		return "sha256:" + hex.EncodeToString(sum[:])
	}
	return key
}

// checkDeadLetter accepts any ids, as the request may be one that could
// not be read, but only text PostgreSQL can store.
func (b *Backend) checkDeadLetter(dl *backend.DeadLetter) error {
	m := dl.Message
	if m == nil {
		return errors.New("no message")
	}
	err := errors.Join(backend.ValidateName("queue", m.Queue), checkText("id", m.ID), checkText("correlation id", m.CorrelationID),
		checkText("reply address", m.ReplyTo), checkText("type", m.Type), checkText("content type", m.ContentType),
		checkText("channel", m.Channel), checkText("session key", m.SessionKey), checkText("reply session", m.ReplySession),
		checkHeaders(m.Headers), checkText("trace parent", m.TraceParent), checkText("trace state", m.TraceState),
		checkText("reason", dl.Reason), checkText("last error", dl.LastError))
	if err != nil {
		return err
	}
	return b.checkSize(m.Body, m.Headers)
}

// The dead-letter queries, with "{s}" the schema and "{msg}" msgCols. They
// are kept here, beside the code that runs them, and made per call: they
// serve operators, not the request path.
const (
	// Lists the dead letters of queue $1 after seq $2, of reason $3 (''
	// any), with at in [$4, $5) (null: unbounded), oldest first, at most $6.
	listDeadLettersSQL = `SELECT seq, {msg}, reason, last_error, at FROM {s}.dead_letters
WHERE queue = $1 AND seq > $2 AND ($3 = '' OR reason = $3)
	AND ($4::timestamptz IS NULL OR at >= $4) AND ($5::timestamptz IS NULL OR at IS NULL OR at < $5)
ORDER BY seq LIMIT $6`
	deleteDeadLetterSQL = `DELETE FROM {s}.dead_letters WHERE queue = $1 AND seq = $2`
)

// schemaSQL fills in the schema ({s}) and the message columns ({msg}).
func (b *Backend) schemaSQL(sql string) string {
	return strings.NewReplacer("{s}", ident(b.opts.Schema), "{msg}", msgCols).Replace(sql)
}

// DeadLetters implements backend.Backend. A dead letter's Key is its row's
// seq, in decimal.
func (b *Backend) DeadLetters(ctx context.Context, q backend.DeadLetterQuery) ([]*backend.DeadLetter, error) {
	if err := backend.ValidateName("queue", q.Queue); err != nil {
		return nil, fmt.Errorf("rsvppg: dead letters: %w", err)
	}
	var after int64
	if q.After != "" {
		var err error
		if after, err = strconv.ParseInt(q.After, 10, 64); err != nil {
			return nil, fmt.Errorf("rsvppg: dead letters: cursor %q is not a dead-letter key", q.After)
		}
	}
	if err := checkText("reason", q.Reason); err != nil {
		return nil, fmt.Errorf("rsvppg: dead letters: %w", err)
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 100
	}
	ctx, cancel, err := b.callCtx(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	rows, err := b.fast.Query(ctx, b.schemaSQL(listDeadLettersSQL), q.Queue, after, q.Reason, timeOrNil(q.Since), timeOrNil(q.Until), limit)
	if err != nil {
		return nil, fmt.Errorf("rsvppg: dead letters of %s: %w", q.Queue, err)
	}
	dls, err := pgx.CollectRows(rows, scanDeadLetter)
	if err != nil {
		return nil, fmt.Errorf("rsvppg: dead letters of %s: %w", q.Queue, err)
	}
	return dls, nil
}

// scanDeadLetter reads a row of seq, msgCols, reason, last_error and at.
func scanDeadLetter(row pgx.CollectableRow) (*backend.DeadLetter, error) {
	dl := &backend.DeadLetter{}
	var (
		seq int64
		at  *time.Time
		r   messageRow
	)
	if err := row.Scan(append(append([]any{&seq}, r.dest()...), &dl.Reason, &dl.LastError, &at)...); err != nil {
		return nil, err
	}
	m, err := r.message()
	dl.Key, dl.Message, dl.At = strconv.FormatInt(seq, 10), m, timeOrZero(at)
	return dl, err
}

// DeleteDeadLetter implements backend.Backend.
func (b *Backend) DeleteDeadLetter(ctx context.Context, queue, key string) error {
	if err := backend.ValidateName("queue", queue); err != nil {
		return fmt.Errorf("rsvppg: delete dead letter: %w", err)
	}
	seq, err := strconv.ParseInt(key, 10, 64)
	if err != nil {
		return fmt.Errorf("rsvppg: dead letter %q of %s: %w", key, queue, backend.ErrNotFound)
	}
	ctx, cancel, err := b.callCtx(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	tag, err := b.durable.Exec(ctx, b.schemaSQL(deleteDeadLetterSQL), queue, seq)
	if err != nil {
		return fmt.Errorf("rsvppg: delete dead letter %s of %s: %w", key, queue, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("rsvppg: dead letter %s of %s: %w", key, queue, backend.ErrNotFound)
	}
	return nil
}
