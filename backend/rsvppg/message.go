package rsvppg

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/rsvp-go/rsvp/backend"
)

// checkText reports a string PostgreSQL cannot store as text: invalid
// UTF-8, or a NUL byte. what names it in the error.
func checkText(what, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s is not valid UTF-8", what)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("%s contains a NUL byte", what)
	}
	return nil
}

// checkHeaders checks the header names and values for checkText.
func checkHeaders(h map[string]string) error {
	var errs []error
	for k, v := range h {
		errs = append(errs, checkText("header name "+fmt.Sprintf("%q", k), k), checkText("header "+k, v))
	}
	return errors.Join(errs...)
}

// size is what a message counts against Options.MaxMessageSize.
func size(body []byte, headers map[string]string) int {
	n := len(body)
	for k, v := range headers {
		n += len(k) + len(v)
	}
	return n
}

func (b *Backend) checkSize(body []byte, headers map[string]string) error {
	if n := size(body, headers); n > b.opts.MaxMessageSize {
		return fmt.Errorf("%w: %d bytes of body and headers, limit %d (Options.MaxMessageSize)", backend.ErrTooLarge, n, b.opts.MaxMessageSize)
	}
	return nil
}

// checkMessage validates a request before it is stored.
func (b *Backend) checkMessage(m *backend.Message) error {
	errs := []error{
		backend.ValidateName("queue", m.Queue),
		backend.ValidateName("id", m.ID),
		backend.ValidateName("correlation id", m.CorrelationID),
		checkText("reply address", m.ReplyTo),
		checkText("type", m.Type),
		checkText("content type", m.ContentType),
		checkHeaders(m.Headers),
		checkText("trace parent", m.TraceParent),
		checkText("trace state", m.TraceState),
	}
	if m.Channel != "" {
		errs = append(errs, backend.ValidateChannel(m.Channel))
	}
	errs = append(errs, backend.CheckSession(m))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return b.checkSize(m.Body, m.Headers)
}

// headersJSON encodes application headers and a trace context (stored
// under the names traceparent and tracestate, which are reserved for
// application headers) for a jsonb column; "" (NULL) for none.
func headersJSON(h map[string]string, traceParent, traceState string) string {
	if traceParent != "" || traceState != "" {
		h = maps.Clone(h)
		if h == nil {
			h = make(map[string]string, 2)
		}
		if traceParent != "" {
			h["traceparent"] = traceParent
		}
		if traceState != "" {
			h["tracestate"] = traceState
		}
	}
	if len(h) == 0 {
		return ""
	}
	data, _ := json.Marshal(h) // a map of strings always encodes
	return string(data)
}

// parseHeaders is the inverse of headersJSON.
func parseHeaders(data []byte) (h map[string]string, traceParent, traceState string, err error) {
	if data == nil {
		return nil, "", "", nil
	}
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, "", "", fmt.Errorf("headers: %w", err)
	}
	traceParent, traceState = h["traceparent"], h["tracestate"]
	delete(h, "traceparent")
	delete(h, "tracestate")
	if len(h) == 0 {
		h = nil
	}
	return h, traceParent, traceState, nil
}

// timeOrNil maps the zero time to NULL.
func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func timeOrZero(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// messageRow receives the msgCols of a row.
type messageRow struct {
	m       backend.Message
	headers []byte
	// Scanned as pgtype values, which take 'infinity' (that another
	// program may have written) where a time.Time fails the whole scan.
	created, deadline pgtype.Timestamptz
	sessionKey        *string // NULL: none
}

// dest returns the scan destinations of msgCols.
func (r *messageRow) dest() []any {
	m := &r.m
	return []any{&m.Queue, &m.ID, &m.CorrelationID, &m.ReplyTo, &m.Type, &m.ContentType, &r.headers, &m.Body,
		&r.created, &r.deadline, &m.Track, &m.Channel, &r.sessionKey, &m.ReplySession, &m.Attempt}
}

// message finishes the scanned message.
func (r *messageRow) message() (*backend.Message, error) {
	m := r.m
	var errs []error
	m.CreatedAt, errs = finiteTime("created_at", r.created, errs)
	m.Deadline, errs = finiteTime("deadline", r.deadline, errs)
	if r.sessionKey != nil {
		m.SessionKey = *r.sessionKey
	}
	var err error
	m.Headers, m.TraceParent, m.TraceState, err = parseHeaders(r.headers)
	return &m, errors.Join(append(errs, err)...)
}

// finiteTime is the time of column col (zero for NULL), with an error
// appended to errs if it is infinite.
func finiteTime(col string, t pgtype.Timestamptz, errs []error) (time.Time, []error) {
	switch {
	case !t.Valid:
		return time.Time{}, errs
	case t.InfinityModifier != pgtype.Finite:
		return time.Time{}, append(errs, fmt.Errorf("%s is %s, not a time", col, t.InfinityModifier))
	}
	return t.Time, errs
}

// scanMessage reads a row of msgCols followed by the destinations in
// after.
func scanMessage(row pgx.Row, after ...any) (*backend.Message, error) {
	var r messageRow
	if err := row.Scan(append(r.dest(), after...)...); err != nil {
		return nil, err
	}
	return r.message()
}

// messageArgs returns the arguments $N.. of the columns a message is
// stored in, as msgCols less attempt, one value each. The statements store
// an empty session key as NULL.
func messageArgs(m *backend.Message) []any {
	return []any{m.Queue, m.ID, m.CorrelationID, m.ReplyTo, m.Type, m.ContentType, headersJSON(m.Headers, m.TraceParent, m.TraceState), body(m.Body),
		timeOrNil(m.CreatedAt), timeOrNil(m.Deadline), m.Track, m.Channel, m.SessionKey, m.ReplySession}
}

// body maps a nil body to an empty one (the column is NOT NULL).
func body(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// columns turns rows of values into one array argument per column, for
// the statements that take a batch as arrays (unnest).
type columns [][]any

// add appends a row; every row has the same number of values.
func (c *columns) add(row ...any) {
	if *c == nil {
		*c = make(columns, len(row))
	}
	for i, v := range row {
		(*c)[i] = append((*c)[i], v)
	}
}

// args returns the columns as statement arguments, followed by more.
func (c columns) args(more ...any) []any {
	out := make([]any, 0, len(c)+len(more))
	for _, col := range c {
		out = append(out, col)
	}
	return append(out, more...)
}
