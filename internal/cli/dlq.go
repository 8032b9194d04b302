package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/rsvp-go/rsvp"
)

// rsvp dlq: list, show, replay and purge the dead letters of a queue.

const dlqUsage = `Usage: rsvp dlq ls QUEUE [--reason R] [--since DUR|TIME] [--until DUR|TIME] [--limit N] [--output table|json]
       rsvp dlq show QUEUE KEY [--output table|json]
       rsvp dlq replay QUEUE KEY|--all [--reason R] [--since ...] [--until ...]
       rsvp dlq purge QUEUE KEY|--all [--reason R] [--since ...] [--until ...]

Operate on the dead letters of QUEUE: requests that failed for good, expired,
or could not be read or answered. Each has a KEY (the first column of 'ls').

  ls      list them, oldest first: KEY, AT (when dead-lettered), REASON,
          ATTEMPT (the last attempt), ID (the request's correlation id), ERROR
  show    print one: the original request (headers, body), why it died,
          and its failed attempts, oldest first: each attempt's number,
          time, error code and error (HISTORY lines). The history is kept
          as long as replies (24h by default)
  replay  send the request again under its own correlation id (its
          failure reply is taken back), then delete the dead letter. The
          original requester, or 'rsvp await ID' with the id replay prints
          (with --all, the count), gets the new outcome. Attempts start
          again at 1
  purge   delete them

--since and --until take a duration back from now (90m, 24h) or a time
(2026-01-02T15:04:05Z): --since keeps dead letters at or after it, --until
those before it. With --all, replay and purge act on every dead letter the
filters select.

Exit status 1 if there is no dead letter KEY on QUEUE.

Example:
  rsvp dlq ls thumbnail --reason failed --since 24h
  rsvp dlq show thumbnail 42
  rsvp dlq replay thumbnail 42
  rsvp dlq purge thumbnail --all --reason expired
`

// deadLetterEntryJSON is a dead letter as 'rsvp dlq ls' and 'show' print it
// with --output json.
type deadLetterEntryJSON struct {
	Key           string            `json:"key"`
	Queue         string            `json:"queue"`
	ID            string            `json:"id"`
	CorrelationID string            `json:"correlation_id"`
	Reason        string            `json:"reason"`
	Error         string            `json:"error,omitempty"`
	At            time.Time         `json:"at,omitzero"`
	Attempt       int               `json:"attempt"`
	Type          string            `json:"type,omitempty"`
	ContentType   string            `json:"content_type,omitempty"`
	CreatedAt     time.Time         `json:"created_at,omitzero"`
	Headers       map[string]string `json:"headers,omitempty"`
	TraceParent   string            `json:"traceparent,omitempty"` // the W3C trace context of the request's sender
	Size          int               `json:"size"`
	Body          *string           `json:"body,omitempty"`        // show only; valid UTF-8
	BodyBase64    []byte            `json:"body_base64,omitempty"` // show only; otherwise
	Attempts      []dlqAttemptJSON  `json:"attempts,omitzero"`     // show only: the failed attempts, oldest first
}

// dlqAttemptJSON is a failed attempt (rsvp.Attempt) as 'rsvp dlq show' prints
// it with --output json.
type dlqAttemptJSON struct {
	Attempt int       `json:"attempt"`
	At      time.Time `json:"at"`
	Code    string    `json:"code,omitempty"`
	Error   string    `json:"error"`
	Final   bool      `json:"final,omitempty"` // the failure that dead-lettered it
}

func newDLQAttemptsJSON(as []rsvp.Attempt) []dlqAttemptJSON {
	out := make([]dlqAttemptJSON, len(as)) // not nil: show prints [] for none
	for i, a := range as {
		out[i] = dlqAttemptJSON{Attempt: a.Attempt, At: a.At.UTC(), Code: a.Code, Error: a.Error, Final: a.Final}
	}
	return out
}

func newDeadLetterEntryJSON(dl *rsvp.DeadLetter, withBody bool) deadLetterEntryJSON {
	m := dl.Message
	v := deadLetterEntryJSON{Key: dl.Key, Queue: m.Queue, ID: m.ID, CorrelationID: m.CorrelationID, Reason: dl.Reason,
		Error: dl.LastError, At: dl.At.UTC(), Attempt: m.Attempt, Type: m.Type, ContentType: m.ContentType,
		CreatedAt: m.CreatedAt.UTC(), Headers: m.Headers, TraceParent: m.TraceParent, Size: len(m.Body)}
	if m.CreatedAt.IsZero() {
		v.CreatedAt = time.Time{}
	}
	if dl.At.IsZero() {
		v.At = time.Time{}
	}
	if withBody {
		if utf8.Valid(m.Body) {
			s := string(m.Body)
			v.Body = &s
		} else {
			v.BodyBase64 = m.Body
		}
	}
	return v
}

// parseSince reads a --since or --until value: a duration back from now,
// or a time in RFC 3339.
func parseSince(name, s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, usagef("--%s %q is not a duration (24h) or a time (2006-01-02T15:04:05Z)", name, s)
}

func runDLQ(ctx context.Context, e *env, cmd *command, args []string) error {
	flags := e.newFlagSet(cmd)
	output := outputFlag(flags)
	reason := flags.String("reason", "", "only dead letters of this `reason` (failed, expired, bad_payload, ...)")
	since := flags.String("since", "", "only dead letters at or after this `time`, or this duration ago")
	until := flags.String("until", "", "only dead letters before this `time`, or this duration ago")
	limit := flags.Int("limit", 1000, "ls: list at most `N` dead letters")
	all := flags.Bool("all", false, "replay, purge: every dead letter the filters select")
	pos, err := e.parse(flags, cmd, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("missing ls, show, replay or purge")
	}
	action, pos := pos[0], pos[1:]
	now := time.Now()
	q := rsvp.DeadLetterQuery{Reason: *reason}
	if q.Since, err = parseSince("since", *since, now); err != nil {
		return err
	}
	if q.Until, err = parseSince("until", *until, now); err != nil {
		return err
	}
	if err := checkOutput(*output); err != nil {
		return err
	}
	filtered := *reason != "" || *since != "" || *until != ""
	var key string
	switch action {
	case "ls":
		if err := exactArgs(pos, "QUEUE"); err != nil {
			return err
		}
		if isSet(flags, "all") {
			return usagef("--all is for replay and purge")
		}
		if *limit <= 0 {
			return usagef("--limit %d: want 1 or more", *limit)
		}
	case "show":
		if err := exactArgs(pos, "QUEUE", "KEY"); err != nil {
			return err
		}
		if filtered || isSet(flags, "all") || isSet(flags, "limit") {
			return usagef("show takes no --reason, --since, --until, --limit or --all")
		}
		key = pos[1]
	case "replay", "purge":
		if *all {
			if err := exactArgs(pos, "QUEUE"); err != nil {
				return err
			}
		} else {
			if len(pos) == 1 {
				return usagef("missing KEY (or --all)")
			}
			if err := exactArgs(pos, "QUEUE", "KEY"); err != nil {
				return err
			}
			if filtered {
				return usagef("--reason, --since and --until go with --all")
			}
			key = pos[1]
		}
		if isSet(flags, "output") || isSet(flags, "limit") {
			return usagef("%s takes no --output or --limit", action)
		}
	default:
		return usagef("unknown dlq command %q: want ls, show, replay or purge", action)
	}
	q.Queue = pos[0]

	spec, err := engineFlag(flags)
	if err != nil {
		return err
	}
	if err := spec.mustExist(); err != nil {
		return err
	}
	s, err := open(ctx, spec, openOptions{})
	if err != nil {
		return err
	}
	defer s.close(ctx, e.stderr)
	c := s.client
	notFound := func(err error) error {
		if errors.Is(err, rsvp.ErrNoDeadLetter) {
			return fmt.Errorf("no dead letter %s on queue %s", key, q.Queue)
		}
		return err
	}
	switch action {
	case "ls":
		return e.dlqList(ctx, c, q, *limit, *output)
	case "show":
		dl, err := findDeadLetter(ctx, c, q.Queue, key)
		if err != nil {
			return notFound(err)
		}
		attempts, err := c.Attempts(ctx, dl.Message.CorrelationID)
		if errors.Is(err, rsvp.ErrInvalid) {
			attempts, err = nil, nil // an unreadable request's id: no history
		}
		if err != nil {
			return err
		}
		if *output == "json" {
			v := newDeadLetterEntryJSON(dl, true)
			v.Attempts = newDLQAttemptsJSON(attempts)
			return writeJSON(e.stdout, v)
		}
		return writeDeadLetter(e, dl, attempts)
	case "replay":
		if *all {
			n, err := c.ReplayAll(ctx, q)
			fmt.Fprintf(e.stdout, "replayed %d dead letters\n", n)
			return err
		}
		t, err := c.Replay(ctx, q.Queue, key)
		if err != nil {
			return notFound(err)
		}
		if _, err := fmt.Fprintln(e.stdout, t.CorrelationID); err != nil {
			return fmt.Errorf("dead letter replayed as request %s, but printing its id failed: %w", t.CorrelationID, err)
		}
		return nil
	default: // purge
		if *all {
			n, err := c.Purge(ctx, q)
			fmt.Fprintf(e.stdout, "purged %d dead letters\n", n)
			return err
		}
		if err := c.PurgeOne(ctx, q.Queue, key); err != nil {
			return notFound(err)
		}
		fmt.Fprintf(e.stdout, "purged dead letter %s\n", key)
		return nil
	}
}

func (e *env) dlqList(ctx context.Context, c *rsvp.Client, q rsvp.DeadLetterQuery, limit int, output string) error {
	var dls []*rsvp.DeadLetter
	for len(dls) < limit {
		q.Limit = min(limit-len(dls), 500)
		page, err := c.DeadLetters(ctx, q)
		if err != nil {
			return err
		}
		dls = append(dls, page...)
		if len(page) < q.Limit {
			break
		}
		q.After = page[len(page)-1].Key
	}
	if output == "json" {
		out := make([]deadLetterEntryJSON, len(dls))
		for i, dl := range dls {
			out[i] = newDeadLetterEntryJSON(dl, false)
		}
		return writeJSON(e.stdout, out)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tAT\tREASON\tATTEMPT\tID\tERROR")
	for _, dl := range dls {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", dl.Key, timeText(dl.At), dl.Reason, dl.Message.Attempt,
			dl.Message.CorrelationID, preview([]byte(dl.LastError), 60))
	}
	return tw.Flush()
}

// findDeadLetter returns the dead letter key of queue, or an error
// matching rsvp.ErrNoDeadLetter.
func findDeadLetter(ctx context.Context, c *rsvp.Client, queue, key string) (*rsvp.DeadLetter, error) {
	q := rsvp.DeadLetterQuery{Queue: queue, Limit: 500}
	for {
		dls, err := c.DeadLetters(ctx, q)
		if err != nil {
			return nil, err
		}
		for _, dl := range dls {
			if dl.Key == key {
				return dl, nil
			}
		}
		if len(dls) < q.Limit {
			return nil, rsvp.ErrNoDeadLetter
		}
		q.After = dls[len(dls)-1].Key
	}
}

// writeDeadLetter prints dl as lines of "LABEL  value", then its failed
// attempts (one HISTORY line each: attempt, time, code, error), then the
// body.
func writeDeadLetter(e *env, dl *rsvp.DeadLetter, attempts []rsvp.Attempt) error {
	m := dl.Message
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	line := func(label, format string, args ...any) {
		fmt.Fprintf(tw, "%s\t%s\n", label, fmt.Sprintf(format, args...))
	}
	line("KEY", "%s", dl.Key)
	line("QUEUE", "%s", m.Queue)
	line("ID", "%s", m.ID)
	line("CORRELATION", "%s", m.CorrelationID)
	line("REASON", "%s", dl.Reason)
	line("ERROR", "%s", dl.LastError)
	line("AT", "%s", timeText(dl.At))
	line("ATTEMPT", "%s", strconv.Itoa(m.Attempt))
	line("CREATED", "%s", timeText(m.CreatedAt))
	if m.Type != "" {
		line("TYPE", "%s", m.Type)
	}
	if m.ContentType != "" {
		line("CONTENT-TYPE", "%s", m.ContentType)
	}
	for _, k := range slices.Sorted(maps.Keys(m.Headers)) {
		line("HEADER", "%s: %s", k, m.Headers[k])
	}
	if m.TraceParent != "" {
		line("TRACE", "%s", m.TraceParent)
	}
	if len(attempts) == 0 {
		line("HISTORY", "none recorded")
	}
	for _, a := range attempts {
		final := ""
		if a.Final {
			final = " (final)"
		}
		// Cells, so that the attempts' columns line up.
		line("HISTORY", "attempt %d\t%s\t%s\t%s%s", a.Attempt, timeText(a.At), cmp.Or(a.Code, "-"),
			preview([]byte(a.Error), 500), final)
	}
	line("SIZE", "%d", len(m.Body))
	line("BODY", "%s", preview(m.Body, 2000))
	return tw.Flush()
}
