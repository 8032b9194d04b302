package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

// The operator's commands: rsvp queues and rsvp requests get. They read
// the engine and change nothing in it.

const queuesUsage = `Usage: rsvp queues [flags]

Show the queues of the engine: every queue that has requests, a consumer
(some responder took its requests), dead letters, or traffic in the last
minute. Columns:

  QUEUE       the queue's name
  DEPTH       requests not finished: waiting, running, or waiting for a
              retry (not those scheduled for later and not yet due)
  IN-FLIGHT   of those, the ones delivered to a responder: running, or
              waiting for a retry after a failed attempt
  RESPONDERS  (PostgreSQL) responders consuming the queue now, in any
              process: a worker counts 1 whatever its --concurrency
  IDLE        (NATS) responder slots waiting at the engine for a request:
              an idle worker of --concurrency 8 counts 8. IDLE 0 while
              DEPTH exceeds IN-FLIGHT: every responder is busy, or none is
              running
  IN/MIN      requests stored on the queue in the last minute (one
              scheduled for later counts when it is stored)
  OUT/MIN     requests that left it in the last minute: answered, failed
              for good, cancelled or expired. Each process hands in its
              count every 5 s and when it stops (on PostgreSQL, requests
              in are counted as they are stored), so the figures may lag
              by 5 s, and a process killed loses its last 5 s
  OLDEST      how long the oldest request not finished has been stored
  DEAD        dead letters kept (for 14 days by default)

--output json prints a JSON array of objects with these fields and more:
redelivered (in flight past their first attempt), scheduled (requests
scheduled for later, not yet due), consumer (whether a responder ever
consumed the queue: on NATS its durable consumer exists, on PostgreSQL one
was seen within the reply retention), last_delivered (NATS), oldest (a
time), oldest_age_seconds, in_last_minute and out_last_minute. responders
and idle are left out where the engine cannot count them.

The engine is that of a running 'rsvp serve' or 'rsvp worker' when given
the same --engine: embedded:DIR connects to the process that runs it. A
PostgreSQL schema is read as it is: one that is missing or older than this
rsvp is refused, not migrated.

Example:
  rsvp queues
  rsvp queues --engine nats://127.0.0.1:4222 --output json
  rsvp queues --engine postgres://rsvp@db.internal/rsvp
`

const requestsUsage = `Usage: rsvp requests get ID [flags]

Show what the engine knows of the request with correlation id ID (printed
by 'rsvp send', or the id of a request submitted over HTTP): its state, its
attempts with their times and errors, its reply and its dead letters.

STATE is one of queued, running, succeeded, failed, expired, cancelled, or
unknown. Requests accepted by 'rsvp serve' have an event log that records
each attempt. Of other requests, such as those of 'rsvp send', the engine
keeps the request while it is queued, the reply, any dead letters and the
failed attempts only (each with its end and error, not its start): an
attempt that succeeded is not listed, and once such a request has left
its queue, its QUEUE is unknown (no queue in the JSON) unless it has a
dead letter. Replies and event logs are kept for 24 hours, dead letters
for 14 days. Without an event log the queues and the dead letters are
searched (on NATS, up to 10000 messages each).

--output json prints one JSON object: id, queue, state, tracked, in_queue
(yes, no or unknown), attempts, reply (with the body as text, or as
body_base64), dead_letters and events.

Exit status 1 if the engine knows nothing of ID.

Example:
  rsvp requests get 019a4c2e-7d3b-7c61-9f0e-2b5d8a1c4e77
  rsvp requests get "$id" --output json | jq -r .state
`

// outputFlag adds the --output flag to fs.
func outputFlag(fs *flag.FlagSet) *string {
	return fs.String("output", "table", "output `format`: table or json")
}

func checkOutput(output string) error {
	if output != "table" && output != "json" {
		return usagef("--output %q is not table or json", output)
	}
	return nil
}

// mustExist returns an error if spec names an engine directory that does
// not exist or holds no engine: for commands that read an engine, which
// must not make one there.
func (spec engineSpec) mustExist() error {
	if spec.dir == "" {
		return nil
	}
	if _, err := os.Stat(spec.dir); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no engine at %s: directory %s does not exist (name the engine with --engine or $RSVP_ENGINE)", spec.raw, spec.dir)
	}
	if !rsvpnats.HasEngine(spec.dir) {
		return fmt.Errorf("no engine at %s: directory %s holds no rsvp engine (name the engine with --engine or $RSVP_ENGINE)", spec.raw, spec.dir)
	}
	return nil
}

// queryEngine is an engine opened for the operator's queries.
type queryEngine interface {
	backend.Inspector
	Close() error
}

// openForQuery opens the engine that the --engine flag of flags names, for
// reading: an embedded directory that does not exist is not created, and
// a PostgreSQL schema is neither created nor upgraded.
func openForQuery(ctx context.Context, flags *flag.FlagSet) (queryEngine, error) {
	spec, err := engineFlag(flags)
	if err != nil {
		return nil, err
	}
	if err := spec.mustExist(); err != nil {
		return nil, err
	}
	var b backend.Backend
	if spec.pg != "" {
		opts := spec.pgOptions(nil)
		opts.SkipMigrate = true
		b, err = rsvppg.Open(ctx, spec.pg, opts)
		if err != nil {
			err = fmt.Errorf("cannot open engine %s: %w", spec.raw, err)
		}
	} else {
		b, err = openBackend(ctx, spec, nil)
	}
	if err != nil {
		return nil, err
	}
	q, ok := b.(queryEngine)
	if !ok {
		b.Close()
		return nil, fmt.Errorf("engine %s: this engine does not answer the operator's queries", spec.raw)
	}
	return q, nil
}

func closeQuery(b queryEngine, stderr io.Writer) {
	if err := b.Close(); err != nil {
		fmt.Fprintf(stderr, "rsvp: warning: closing the engine: %v\n", err)
	}
}

func runQueues(ctx context.Context, e *env, cmd *command, args []string) error {
	flags := e.newFlagSet(cmd)
	output := outputFlag(flags)
	pos, err := e.parse(flags, cmd, args)
	if err != nil {
		return err
	}
	if err := exactArgs(pos); err != nil {
		return err
	}
	if err := checkOutput(*output); err != nil {
		return err
	}
	b, err := openForQuery(ctx, flags)
	if err != nil {
		return err
	}
	defer closeQuery(b, e.stderr)
	qs, err := b.Queues(ctx)
	if err != nil {
		return fmt.Errorf("read the queues: %w", err)
	}
	now := time.Now()
	if *output == "json" {
		out := make([]queueJSON, len(qs))
		for i, q := range qs {
			out[i] = newQueueJSON(q, now)
		}
		return writeJSON(e.stdout, out)
	}
	// Each engine counts one of RESPONDERS and IDLE (-1: the other); with
	// no queue listed, the engine's kind tells.
	_, responders := b.(*rsvppg.Backend)
	responders = responders && len(qs) == 0
	var idle bool
	for _, q := range qs {
		responders = responders || q.Responders >= 0
		idle = idle || q.Waiting >= 0
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	cols := []string{"QUEUE", "DEPTH", "IN-FLIGHT"}
	if responders {
		cols = append(cols, "RESPONDERS")
	}
	if idle || !responders {
		cols = append(cols, "IDLE")
	}
	fmt.Fprintln(tw, strings.Join(append(cols, "IN/MIN", "OUT/MIN", "OLDEST", "DEAD"), "\t"))
	for _, q := range qs {
		row := []string{q.Queue, strconv.FormatUint(q.Depth, 10), strconv.Itoa(q.InFlight)}
		if responders {
			row = append(row, count(q.Responders))
		}
		if idle || !responders {
			row = append(row, count(q.Waiting))
		}
		oldest := "-"
		if !q.Oldest.IsZero() {
			oldest = age(now.Sub(q.Oldest))
		}
		row = append(row, strconv.FormatUint(q.In, 10), strconv.FormatUint(q.Out, 10), oldest, strconv.FormatUint(q.DeadLetters, 10))
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

// count formats a count that may be unknown (-1) for a table column.
func count(n int) string {
	if n < 0 {
		return "-"
	}
	return strconv.Itoa(n)
}

// queueJSON is a queue in the output of 'rsvp queues --output json'.
type queueJSON struct {
	Queue         string    `json:"queue"`
	Depth         uint64    `json:"depth"`
	InFlight      int       `json:"in_flight"`
	Redelivered   int       `json:"redelivered"`
	Responders    *int      `json:"responders,omitempty"` // nil: the engine cannot count them
	Idle          *int      `json:"idle,omitempty"`       // likewise
	Scheduled     uint64    `json:"scheduled"`
	Consumer      bool      `json:"consumer"`
	LastDelivered time.Time `json:"last_delivered,omitzero"`
	Oldest        time.Time `json:"oldest,omitzero"`
	OldestAge     float64   `json:"oldest_age_seconds"`
	DeadLetters   uint64    `json:"dead_letters"`
	InLastMinute  uint64    `json:"in_last_minute"`
	OutLastMinute uint64    `json:"out_last_minute"`
}

func newQueueJSON(q backend.QueueStats, now time.Time) queueJSON {
	j := queueJSON{Queue: q.Queue, Depth: q.Depth, InFlight: q.InFlight, Redelivered: q.Redelivered, Scheduled: q.Scheduled,
		Consumer: q.Consumer, LastDelivered: q.LastDelivered.UTC(), Oldest: q.Oldest.UTC(), DeadLetters: q.DeadLetters,
		InLastMinute: q.In, OutLastMinute: q.Out}
	if q.Responders >= 0 {
		j.Responders = &q.Responders
	}
	if q.Waiting >= 0 {
		j.Idle = &q.Waiting
	}
	if !q.Oldest.IsZero() {
		j.OldestAge = max(now.Sub(q.Oldest), 0).Round(time.Millisecond).Seconds()
	}
	return j
}

// age formats d for a table column: 0.3s, 12.5s, 4m05s, 3h04m, 2d03h.
func age(d time.Duration) string {
	d = max(d, 0)
	switch {
	case d < time.Minute:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", d/time.Minute, d%time.Minute/time.Second)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", d/time.Hour, d%time.Hour/time.Minute)
	}
	return fmt.Sprintf("%dd%02dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runRequestsCmd(ctx context.Context, e *env, cmd *command, args []string) error {
	flags := e.newFlagSet(cmd)
	output := outputFlag(flags)
	pos, err := e.parse(flags, cmd, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("missing what to do: get ID")
	}
	if pos[0] != "get" {
		return usagef("unknown requests command %q: want get", pos[0])
	}
	if err := exactArgs(pos[1:], "ID"); err != nil {
		return err
	}
	id := pos[1]
	if err := backend.ValidateName("correlation id", id); err != nil {
		return &usageError{err}
	}
	if err := checkOutput(*output); err != nil {
		return err
	}
	b, err := openForQuery(ctx, flags)
	if err != nil {
		return err
	}
	defer closeQuery(b, e.stderr)
	ri, err := b.Request(ctx, id)
	if errors.Is(err, backend.ErrNotFound) {
		_, why, _ := strings.Cut(err.Error(), backend.ErrNotFound.Error()+": ")
		return fmt.Errorf("no such request %s: %s (replies and event logs are kept for 24 hours, dead letters for 14 days)", id, cmp.Or(why, "the engine has no record of it"))
	}
	if err != nil {
		return fmt.Errorf("read request %s: %w", id, err)
	}
	v := newRequestJSON(ri)
	if *output == "json" {
		return writeJSON(e.stdout, v)
	}
	return v.writeTable(e.stdout)
}

// requestJSON is the output of 'rsvp requests get --output json'; the
// table shows the same.
type requestJSON struct {
	ID          string           `json:"id"`
	Queue       string           `json:"queue,omitempty"`
	State       string           `json:"state"`
	Tracked     bool             `json:"tracked"`
	InQueue     string           `json:"in_queue"`
	StoredAt    time.Time        `json:"stored_at,omitzero"` // while in the queue
	Attempts    []attemptJSON    `json:"attempts"`
	Reply       *replyJSON       `json:"reply,omitempty"`
	DeadLetters []deadLetterJSON `json:"dead_letters"`
	Events      []eventJSON      `json:"events"`

	lastAttempt  int  // the highest attempt any record names
	deadComplete bool // every dead letter was searched
}

type attemptJSON struct {
	Attempt   int       `json:"attempt"`
	StartedAt time.Time `json:"started_at,omitzero"` // unknown for untracked requests
	EndedAt   time.Time `json:"ended_at,omitzero"`
	// Outcome is running, retried (failed, and tried again), or the final
	// state the attempt ended in.
	Outcome string    `json:"outcome"`
	Error   string    `json:"error,omitempty"`
	RetryAt time.Time `json:"retry_at,omitzero"`
}

type replyJSON struct {
	Status       string    `json:"status"`
	ErrorCode    string    `json:"error_code,omitempty"`
	ErrorMessage string    `json:"error_message,omitempty"`
	ContentType  string    `json:"content_type,omitempty"`
	CreatedAt    time.Time `json:"created_at,omitzero"`
	Size         int       `json:"size"`
	Body         *string   `json:"body,omitempty"`        // valid UTF-8
	BodyBase64   []byte    `json:"body_base64,omitempty"` // otherwise

	body []byte
}

type deadLetterJSON struct {
	Attempt int       `json:"attempt"`
	Reason  string    `json:"reason"`
	Error   string    `json:"error,omitempty"`
	At      time.Time `json:"at,omitzero"`
}

type eventJSON struct {
	Seq  uint64          `json:"seq"`
	Type string          `json:"type"`
	At   time.Time       `json:"at,omitzero"`
	Data json.RawMessage `json:"data,omitempty"`
}

// eventData is the union of the fields the events of docs/wire.md carry.
type eventData struct {
	Attempt int       `json:"attempt"`
	Error   string    `json:"error"`
	RetryAt time.Time `json:"retry_at"`
	Code    string    `json:"code"`
	Message string    `json:"message"`
}

func newRequestJSON(ri *backend.RequestInfo) *requestJSON {
	v := &requestJSON{ID: ri.CorrelationID, Queue: ri.Queue, State: ri.State, Tracked: ri.Tracked,
		InQueue: ri.InQueue.String(), Attempts: []attemptJSON{}, DeadLetters: []deadLetterJSON{}, Events: []eventJSON{},
		lastAttempt: ri.Attempts, deadComplete: ri.DeadLettersComplete}
	if ri.InQueue == backend.Present {
		v.StoredAt = ri.StoredAt.UTC()
	}
	for _, ev := range ri.Events {
		j := eventJSON{Seq: ev.Seq, Type: ev.Type, At: ev.At.UTC()}
		if json.Valid(ev.Data) {
			j.Data = ev.Data
		}
		v.Events = append(v.Events, j)
		v.foldAttempt(ev)
	}
	if r := ri.Reply; r != nil {
		v.Reply = &replyJSON{Status: string(r.Status), ErrorCode: r.ErrorCode, ErrorMessage: r.ErrorMessage,
			ContentType: r.ContentType, CreatedAt: r.CreatedAt.UTC(), Size: len(r.Body), body: r.Body}
		if utf8.Valid(r.Body) {
			s := string(r.Body)
			v.Reply.Body = &s
		} else {
			v.Reply.BodyBase64 = r.Body
		}
		// The reply is stored before the final event: it may end the
		// running attempt before the log does.
		if n := len(v.Attempts); n > 0 && v.Attempts[n-1].Outcome == backend.StateRunning {
			a := &v.Attempts[n-1]
			a.Outcome, a.EndedAt, a.Error = string(r.Status), r.CreatedAt.UTC(), failure(r.ErrorCode, r.ErrorMessage)
		}
	}
	for _, dl := range ri.DeadLetters {
		v.DeadLetters = append(v.DeadLetters, deadLetterJSON{Attempt: dl.Message.Attempt, Reason: dl.Reason, Error: dl.LastError, At: dl.At.UTC()})
	}
	return v
}

// foldAttempt updates the attempts with one event of the log.
func (v *requestJSON) foldAttempt(ev *backend.Event) {
	var d eventData
	_ = json.Unmarshal(ev.Data, &d) // tolerate what a foreign writer stored
	at := ev.At.UTC()
	last := func() *attemptJSON {
		if n := len(v.Attempts); n > 0 && v.Attempts[n-1].Outcome == backend.StateRunning {
			return &v.Attempts[n-1]
		}
		return nil
	}
	switch ev.Type {
	case backend.EventQueued, backend.EventProgress, backend.EventWebhook:
	case backend.EventRunning:
		if a := last(); a != nil {
			a.Outcome = "interrupted" // its responder stopped or died: delivered again
		}
		v.Attempts = append(v.Attempts, attemptJSON{Attempt: cmp.Or(d.Attempt, len(v.Attempts)+1), StartedAt: at, Outcome: backend.StateRunning})
	case backend.EventRetrying:
		a := last()
		if a == nil { // untracked: no running event, only its failures are recorded
			v.Attempts = append(v.Attempts, attemptJSON{Attempt: cmp.Or(d.Attempt, len(v.Attempts)+1)})
			a = &v.Attempts[len(v.Attempts)-1]
		}
		a.Outcome, a.EndedAt, a.Error, a.RetryAt = "retried", at, d.Error, d.RetryAt.UTC()
	default: // a final state
		a := last()
		if a == nil && d.Attempt > 0 && ev.Type != string(backend.StatusSucceeded) { // an untracked request's last failure
			v.Attempts = append(v.Attempts, attemptJSON{Attempt: d.Attempt})
			a = &v.Attempts[len(v.Attempts)-1]
		}
		if a != nil {
			a.Outcome, a.EndedAt = ev.Type, at
			if ev.Type != string(backend.StatusSucceeded) {
				a.Error = failure(d.Code, d.Message)
			}
		}
	}
}

// failure formats an error code and message as "code: message".
func failure(code, msg string) string {
	switch {
	case code == "":
		return msg
	case msg == "":
		return code
	}
	return code + ": " + msg
}

// took formats how long an attempt took: 0.4ms, 307.2ms, 1.5s, 2m3s.
func took(d time.Duration) string {
	if d < time.Second {
		return strconv.FormatFloat(float64(max(d, 0))/float64(time.Millisecond), 'f', 1, 64) + "ms"
	}
	return d.Round(100 * time.Millisecond).String()
}

// timeText formats t for the table: UTC, to the millisecond.
func timeText(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// writeTable writes v as lines of "LABEL  value".
func (v *requestJSON) writeTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	line := func(label, format string, args ...any) {
		fmt.Fprintf(tw, "%s\t%s\n", label, fmt.Sprintf(format, args...))
	}
	line("ID", "%s", v.ID)
	line("QUEUE", "%s", cmp.Or(v.Queue, "unknown"))
	line("STATE", "%s", v.State)
	inQueue := v.InQueue
	switch {
	case inQueue == "yes":
		inQueue += ", stored " + timeText(v.StoredAt)
	case inQueue == "unknown":
		inQueue += fmt.Sprintf(" (not among the oldest %d requests searched)", rsvpnats.RequestScanLimit)
	}
	line("IN QUEUE", "%s", inQueue)
	if v.Tracked {
		types := make([]string, len(v.Events))
		for i, ev := range v.Events {
			types[i] = ev.Type
		}
		line("EVENTS", "%s", strings.Join(types, " "))
	} else if len(v.Attempts) > 0 {
		line("EVENTS", "the request is not tracked: only its failed attempts are recorded")
	} else {
		line("EVENTS", "none: the request is not tracked, so only failed attempts would be recorded")
	}
	if len(v.Attempts) == 0 && v.lastAttempt > 0 {
		line("ATTEMPTS", "%d", v.lastAttempt)
	}
	for _, a := range v.Attempts {
		var text string
		switch {
		case a.StartedAt.IsZero(): // untracked: only its end is known
			text = timeText(a.EndedAt) + "  " + a.Outcome
		case a.EndedAt.IsZero():
			text = timeText(a.StartedAt) + "  " + a.Outcome
		default:
			text = timeText(a.StartedAt) + "  " + a.Outcome + " after " + took(a.EndedAt.Sub(a.StartedAt))
		}
		if a.Error != "" {
			text += ": " + oneLine(a.Error, 200)
		}
		if !a.RetryAt.IsZero() {
			text += "; retry at " + timeText(a.RetryAt)
		}
		line(fmt.Sprintf("ATTEMPT %d", a.Attempt), "%s", text)
	}
	if r := v.Reply; r != nil {
		text := r.Status + " at " + timeText(r.CreatedAt)
		if e := failure(r.ErrorCode, r.ErrorMessage); e != "" {
			text += ": " + oneLine(e, 200)
		}
		line("REPLY", "%s", text)
		desc := "empty"
		if r.Size > 0 {
			desc = fmt.Sprintf("%d bytes", r.Size)
			if r.ContentType != "" {
				desc += " of " + r.ContentType
			}
			desc += ": " + preview(r.body, 200)
		}
		line("BODY", "%s", desc)
	} else {
		line("REPLY", "none")
	}
	switch {
	case len(v.DeadLetters) == 0 && v.deadComplete:
		line("DEAD LETTERS", "none")
	case len(v.DeadLetters) == 0:
		line("DEAD LETTERS", "none among the oldest %d searched", rsvpnats.RequestScanLimit)
	}
	for _, dl := range v.DeadLetters {
		text := fmt.Sprintf("attempt %d, %s, at %s", dl.Attempt, dl.Reason, timeText(dl.At))
		if dl.Error != "" {
			text += ": " + oneLine(dl.Error, 200)
		}
		line("DEAD LETTER", "%s", text)
	}
	return tw.Flush()
}

// preview shows up to n bytes of body on one line: as it is if it is
// printable text, else quoted; binary data by its size only.
func preview(body []byte, n int) string {
	if !utf8.Valid(body) {
		return "(binary)"
	}
	s := strings.TrimRight(string(body), "\r\n")
	cut := len(s) > n
	if cut {
		s = s[:n]
		for !utf8.ValidString(s) { // do not split a character
			s = s[:len(s)-1]
		}
	}
	printable := strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) < 0
	if !printable {
		s = strconv.Quote(s)
	}
	if cut {
		s += "…"
	}
	return s
}
