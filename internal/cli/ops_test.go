package cli

import (
	"encoding/json"
	"maps"
	neturl "net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
	"github.com/rsvp-go/rsvp/internal/pgtest"
)

// TestQueuesAndRequestsGet runs the operator commands against a running
// 'rsvp serve --demo' on an engine directory, as an operator would from
// another terminal.
func TestQueuesAndRequestsGet(t *testing.T) {
	t.Parallel()
	engine := "embedded:" + t.TempDir()
	s := startServe(t, "--demo", "--engine", engine)

	ok := s.submit(t, "thumbnail", `{"url":"https://example.com/a.png"}`)
	bad := s.submit(t, "thumbnail", `{"image":"a.png"}`)
	flaky := s.submit(t, "flaky", `"hi"`)
	for _, loc := range []string{ok, bad, flaky} {
		s.finish(t, loc)
	}
	// An untracked request, on a queue without responders.
	r := run(t, nil, "send", "backlog", "--data", "later", "--engine", engine)
	r.want(t, 0)
	untracked := strings.TrimSpace(r.stdout)

	// The demo responders wait with 8 pulls each (renewed every few
	// seconds, so look until all are there).
	var table string
	waitUntil(t, "queues shows idle demo responders", func() bool {
		r := run(t, nil, "queues", "--engine", engine)
		r.want(t, 0)
		table = r.stdout
		// IN/MIN and OUT/MIN: serve hands in its counts every 5s.
		return regexp.MustCompile(`(?m)^flaky +0 +0 +8 +1 +1 +- +0\n`).MatchString(table) &&
			regexp.MustCompile(`(?m)^thumbnail +0 +0 +8 +2 +2 +- +1\n`).MatchString(table)
	})
	// The queues of the demo workflows (their activities', the workflow
	// engine's) and of expiry tasks are not this test's.
	demoWorkflowQueue := func(q string) bool {
		return q == "PublishDocument" || q == "ReviewDocument" || q == "rsvp-workflows" || q == "rsvp-expiry"
	}
	lines := slices.DeleteFunc(strings.Split(strings.TrimSuffix(table, "\n"), "\n"), func(l string) bool {
		return demoWorkflowQueue(strings.Fields(l)[0])
	})
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "QUEUE DEPTH IN-FLIGHT IDLE IN/MIN OUT/MIN OLDEST DEAD" ||
		!regexp.MustCompile(`^backlog +1 +0 +0 +1 +0 +\d+\.\ds +0$`).MatchString(lines[1]) {
		t.Fatalf("queues:\n%s", table)
	}

	r = run(t, nil, "queues", "--engine", engine, "--output", "json")
	r.want(t, 0)
	var qs []queueJSON
	err := json.Unmarshal([]byte(r.stdout), &qs)
	qs = slices.DeleteFunc(qs, func(q queueJSON) bool { return demoWorkflowQueue(q.Queue) })
	if err != nil || len(qs) != 3 {
		t.Fatalf("queues --output json: %v\n%s", err, r.stdout)
	}
	if q := qs[0]; q.Queue != "backlog" || q.Depth != 1 || q.Consumer || q.Oldest.IsZero() || q.OldestAge <= 0 {
		t.Fatalf("backlog: %+v", q)
	}
	if q := qs[2]; q.Queue != "thumbnail" || !q.Consumer || q.DeadLetters != 1 || q.LastDelivered.IsZero() || !q.Oldest.IsZero() ||
		q.InLastMinute != 2 || q.OutLastMinute != 2 {
		t.Fatalf("thumbnail: %+v", q)
	}

	get := func(loc string, output ...string) result {
		t.Helper()
		id := strings.TrimPrefix(loc, "/v1/requests/")
		r := run(t, nil, append([]string{"requests", "get", id, "--engine", engine}, output...)...)
		r.want(t, 0)
		return r
	}
	wantLines := func(out string, res ...string) {
		t.Helper()
		for _, re := range res {
			if !regexp.MustCompile(`(?m)^` + re + `$`).MatchString(out) {
				t.Fatalf("no line matching %q in:\n%s", re, out)
			}
		}
	}
	const ts = `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z`
	wantLines(get(flaky).stdout,
		`QUEUE +flaky`, `STATE +succeeded`, `IN QUEUE +no`, `EVENTS +queued running retrying running succeeded`,
		`ATTEMPT 1 +`+ts+`  retried after \S+: simulated failure of the first attempt; retrying in 500ms; retry at `+ts,
		`ATTEMPT 2 +`+ts+`  succeeded after \S+`,
		`REPLY +succeeded at `+ts,
		`BODY +\d+ bytes of application/json: \{"attempt":2,"message":"succeeded on attempt 2"\}`,
		`DEAD LETTERS +none`)
	wantLines(get(bad).stdout,
		`STATE +failed`, `ATTEMPT 1 +`+ts+`  failed after \S+: bad_payload: the body has no "url": .*`,
		`REPLY +failed at `+ts+`: bad_payload: .*`, `BODY +empty`,
		`DEAD LETTER +attempt 1, bad_payload, at `+ts+`: the body has no "url": .*`)
	wantLines(get(untracked).stdout,
		`QUEUE +backlog`, `STATE +queued`, `IN QUEUE +yes, stored `+ts,
		`EVENTS +none: the request is not tracked, so only failed attempts would be recorded`, `REPLY +none`)

	var v requestJSON
	if err := json.Unmarshal([]byte(get(flaky, "--output", "json").stdout), &v); err != nil {
		t.Fatal(err)
	}
	if v.State != "succeeded" || v.Queue != "flaky" || !v.Tracked || v.InQueue != "no" || len(v.Attempts) != 2 ||
		v.Attempts[0].Outcome != "retried" || v.Attempts[0].RetryAt.IsZero() || v.Attempts[1].Outcome != "succeeded" ||
		v.Reply == nil || v.Reply.Body == nil || !strings.Contains(*v.Reply.Body, `"attempt":2`) || len(v.Events) != 5 {
		t.Fatalf("requests get --output json: %+v", v)
	}
}

func TestOpsErrors(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args []string
		code int
		want string
	}{
		"unknown id": {[]string{"requests", "get", "01a2-nobody"}, exitFailure,
			"rsvp: no such request 01a2-nobody: no event log, reply or dead letter, and it is not queued"},
		"queues unreachable": {[]string{"queues", "--engine", "nats://127.0.0.1:1"}, exitFailure,
			"rsvp: cannot open engine nats://127.0.0.1:1: "},
		"get unreachable": {[]string{"requests", "get", "x", "--engine", "nats://u:secret@127.0.0.1:1"}, exitFailure,
			"rsvp: cannot open engine nats://***@127.0.0.1:1: "},
		"postgres unreachable": {[]string{"queues", "--engine", "postgres://u:secret@127.0.0.1:1/db?sslmode=disable"}, exitFailure,
			"rsvp: cannot open engine postgres://u:***@127.0.0.1:1/db?sslmode=disable: "},
		"no directory": {[]string{"queues", "--engine", "embedded:" + filepath.Join(t.TempDir(), "none")}, exitFailure,
			"/none does not exist"},
		"bad output":      {[]string{"queues", "--output", "yaml"}, exitUsage, `rsvp queues: --output "yaml" is not table or json`},
		"queues argument": {[]string{"queues", "extra"}, exitUsage, `unexpected argument "extra"`},
		"bad flag":        {[]string{"queues", "--nope"}, exitUsage, "flag provided but not defined: -nope"},
		"no subcommand":   {[]string{"requests"}, exitUsage, "rsvp requests: missing what to do: get ID"},
		"bad subcommand":  {[]string{"requests", "list"}, exitUsage, `unknown requests command "list"`},
		"missing id":      {[]string{"requests", "get"}, exitUsage, "missing ID"},
		"two ids":         {[]string{"requests", "get", "a", "b"}, exitUsage, `unexpected argument "b"`},
		"invalid id":      {[]string{"requests", "get", "a.b"}, exitUsage, `correlation id "a.b" has character '.'`},
		"get bad output":  {[]string{"requests", "get", "a", "--output", "xml"}, exitUsage, `--output "xml" is not table or json`},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := run(t, nil, tc.args...)
			r.want(t, tc.code, tc.want)
			if strings.Contains(r.stderr, "secret") {
				t.Fatalf("stderr shows the password:\n%s", r.stderr)
			}
		})
	}
}

func TestQueuesEmptyEngine(t *testing.T) {
	t.Parallel()
	r := run(t, nil, "queues", "--engine", "embedded:mem")
	r.want(t, 0)
	if strings.Join(strings.Fields(r.stdout), " ") != "QUEUE DEPTH IN-FLIGHT IDLE IN/MIN OUT/MIN OLDEST DEAD" {
		t.Fatalf("queues of an empty engine:\n%s", r.stdout)
	}
	r = run(t, nil, "queues", "--engine", "embedded:mem", "--output", "json")
	r.want(t, 0)
	if r.stdout != "[]\n" {
		t.Fatalf("queues --output json of an empty engine: %q", r.stdout)
	}
}

func TestAge(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		-time.Second:                          "0.0s",
		320 * time.Millisecond:                "0.3s",
		12*time.Second + 460*time.Millisecond: "12.5s",
		4*time.Minute + 5*time.Second:         "4m05s",
		3*time.Hour + 4*time.Minute:           "3h04m",
		51 * time.Hour:                        "2d03h",
	} {
		if got := age(d); got != want {
			t.Errorf("age(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestTook(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		400 * time.Microsecond:  "0.4ms",
		307 * time.Millisecond:  "307.0ms",
		1520 * time.Millisecond: "1.5s",
		123 * time.Second:       "2m3s",
	} {
		if got := took(d); got != want {
			t.Errorf("took(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestPreview(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		body string
		n    int
		want string
	}{
		{`{"a":1}` + "\n", 200, `{"a":1}`},
		{"line one\nline two", 200, `"line one\nline two"`},
		{"\xff\xfe", 200, "(binary)"},
		{"abcdef", 3, "abc…"},
		{"aé", 2, "a…"}, // not half a character
	} {
		if got := preview([]byte(tc.body), tc.n); got != tc.want {
			t.Errorf("preview(%q, %d) = %q, want %q", tc.body, tc.n, got, tc.want)
		}
	}
}

// postgresEngine returns the test server's URL, a fresh schema on it
// (named prefix and random hex, dropped when t ends) and the --engine
// value that names that schema.
func postgresEngine(t *testing.T, prefix string) (url, schema, engine string) {
	t.Helper()
	url = postgresURL(t)
	schema = pgtest.Schema(t, url, prefix)
	u, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("schema", schema)
	u.RawQuery = q.Encode()
	return url, schema, u.String()
}

// TestOpsOnPostgres: rsvp queues and rsvp requests get read a PostgreSQL
// engine (in the schema of the URL's schema parameter), and refuse a
// schema that is not there without making it.
func TestOpsOnPostgres(t *testing.T) {
	t.Parallel()
	url, schema, engine := postgresEngine(t, "cli_ops_")

	for _, args := range [][]string{{"queues"}, {"requests", "get", "some-id"}} {
		r := run(t, nil, append(args, "--engine", engine)...)
		r.want(t, exitFailure, "cannot open engine", `the database has no rsvp schema "`+schema+`" (Migrate, or rsvp migrate, creates it)`)
	}
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists); err != nil || exists {
		t.Fatalf("schema %s exists after the operator's commands: %v, %v", schema, exists, err)
	}

	run(t, nil, "migrate", "--engine", engine).want(t, 0)
	send := func(queue string) string {
		t.Helper()
		r := run(t, nil, "send", queue, "--data", "x", "--engine", engine)
		r.want(t, 0)
		return strings.TrimSpace(r.stdout)
	}
	backlog, busy := send("backlog"), send("busy")
	// A responder of busy, in another process as far as the engine knows,
	// holds its request.
	b, err := rsvppg.Open(ctx, url, rsvppg.Options{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c, err := b.Consume(ctx, "busy", backend.ConsumeParams{Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Next(ctx); err != nil {
		t.Fatal(err)
	}

	r := run(t, nil, "queues", "--engine", engine)
	r.want(t, 0)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "QUEUE DEPTH IN-FLIGHT RESPONDERS IN/MIN OUT/MIN OLDEST DEAD" ||
		!regexp.MustCompile(`^backlog +1 +0 +0 +1 +0 +\d+\.\ds +0$`).MatchString(lines[1]) ||
		!regexp.MustCompile(`^busy +1 +1 +1 +1 +0 +\d+\.\ds +0$`).MatchString(lines[2]) {
		t.Fatalf("queues:\n%s", r.stdout)
	}
	r = run(t, nil, "queues", "--engine", engine, "--output", "json")
	r.want(t, 0)
	var qs []queueJSON
	if err := json.Unmarshal([]byte(r.stdout), &qs); err != nil || len(qs) != 2 || strings.Contains(r.stdout, `"idle"`) {
		t.Fatalf("queues --output json: %v\n%s", err, r.stdout)
	}
	if q := qs[1]; q.Queue != "busy" || q.Responders == nil || *q.Responders != 1 || !q.Consumer || q.InFlight != 1 || q.OldestAge <= 0 ||
		q.InLastMinute != 1 || q.OutLastMinute != 0 {
		t.Fatalf("busy: %+v", q)
	}

	r = run(t, nil, "requests", "get", backlog, "--engine", engine)
	r.want(t, 0)
	for _, re := range []string{`QUEUE +backlog`, `STATE +queued`, `IN QUEUE +yes, stored \S+`, `REPLY +none`, `DEAD LETTERS +none`} {
		if !regexp.MustCompile(`(?m)^` + re + `$`).MatchString(r.stdout) {
			t.Fatalf("no line matching %q in:\n%s", re, r.stdout)
		}
	}
	r = run(t, nil, "requests", "get", busy, "--engine", engine, "--output", "json")
	r.want(t, 0)
	var v requestJSON
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.State != "running" || v.Queue != "busy" || v.InQueue != "yes" {
		t.Fatalf("requests get of a running request: %v\n%s", err, r.stdout)
	}
	run(t, nil, "requests", "get", "nobody-here", "--engine", engine).want(t, exitFailure,
		"rsvp: no such request nobody-here: no event log, reply or dead letter, and it is not queued")
}

// failWriter is a stdout that cannot be written (a full disk, a closed
// pipe).
type failWriter struct{}

func (failWriter) Write(p []byte) (int, error) { return 0, syscall.ENOSPC }

// TestUnwritableStdout: a command whose output is what the caller needs
// (the id of what it stored, a key) exits 1 when it cannot write it, and
// says so on stderr, with the id.
func TestUnwritableStdout(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"send", "q", "--data", "x", "--engine", "embedded:mem"}, {"key", "webhook-secret"}} {
		var stderr strings.Builder
		if code := Run(t.Context(), args, nil, failWriter{}, &stderr); code != exitFailure || !strings.Contains(stderr.String(), "no space left") {
			t.Errorf("rsvp %v with an unwritable stdout: exit %d, stderr %q; want 1 and the error", args, code, stderr.String())
		}
	}
}

// TestEnginePasswordHidden: a PostgreSQL password given as a parameter of
// the URL is not printed in errors.
func TestEnginePasswordHidden(t *testing.T) {
	t.Parallel()
	const secret = "hunter2-secret"
	r := run(t, nil, "request", "q", "--data", "x", "--engine", "postgres://u@127.0.0.1:1/db?sslmode=disable&password="+secret)
	r.want(t, exitFailure, "cannot open engine")
	if strings.Contains(r.stderr, secret) {
		t.Fatalf("the password is printed:\n%s", r.stderr)
	}
}

// TestPostgresSchemaParameter: the schema parameter of a postgres:// engine
// is rsvp's schema, read as the driver reads the URL, and left out of the
// parameters the driver sends the server (which refuses ones it does not
// know); the rest of the URL reaches the driver as it was.
func TestPostgresSchemaParameter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, without, schema string }{
		{"postgres://u@h:5432/db?sslmode=disable&schema=orders", "postgres://u@h:5432/db?sslmode=disable", "orders"},
		{"postgresql://u@h/db?schema=orders", "postgresql://u@h/db", "orders"},
		{"postgres://u@h/db?sslmode=disable", "postgres://u@h/db?sslmode=disable", ""},
		{"postgres://u@h/db?application_name=my%20app&schema=orders", "postgres://u@h/db?application_name=my%20app", "orders"},
		{"postgres://u@h/db?schema=orders&options=-c%20statement_timeout%3D5s", "postgres://u@h/db?options=-c%20statement_timeout%3D5s", "orders"},
		{"postgres://u:p#ss@h/db?schema=orders&sslmode=disable", "postgres://u:p#ss@h/db?sslmode=disable", "orders"},
		{"postgres://u:p%40ss@h1:5432,h2:5433/db?schema=orders", "postgres://u:p%40ss@h1:5432,h2:5433/db", "orders"},
	} {
		spec, err := parseEngine(tc.in)
		if err != nil {
			t.Fatalf("parseEngine(%q): %v", tc.in, err)
		}
		got, err := pgx.ParseConfig(spec.pg)
		if err != nil {
			t.Fatalf("parseEngine(%q): the driver cannot read %q: %v", tc.in, rsvppg.Redact(spec.pg), err)
		}
		opts := spec.pgOptions(nil)
		opts.ConnConfig(got)
		want, err := pgx.ParseConfig(tc.without)
		if err != nil {
			t.Fatal(err)
		}
		if spec.schema != tc.schema || opts.Schema != tc.schema || !maps.Equal(got.RuntimeParams, want.RuntimeParams) ||
			got.Password != want.Password || got.Host != want.Host || got.Database != want.Database || len(got.Fallbacks) != len(want.Fallbacks) {
			t.Errorf("parseEngine(%q): schema %q, the driver sends params %v, password %q, host %s; want schema %q, params %v, password %q, host %s",
				tc.in, spec.schema, got.RuntimeParams, got.Password, got.Host, tc.schema, want.RuntimeParams, want.Password, want.Host)
		}
	}
	// A schema name rsvppg refuses is named in the error, before any
	// connection is tried; an empty one is a usage error, not the default.
	r := run(t, nil, "queues", "--engine", "postgres://u@127.0.0.1:1/db?schema=Bad-Name")
	r.want(t, exitFailure, `schema "Bad-Name": want lower-case letters`)
	r = run(t, nil, "queues", "--engine", "postgres://u@127.0.0.1:1/db?sslmode=disable&schema=")
	r.want(t, exitUsage, "engine postgres://u@127.0.0.1:1/db?sslmode=disable&schema=: the schema parameter is empty")
}

// TestQueuesEmptyOnPostgres: with no queue to list, rsvp queues on
// PostgreSQL still prints its engine's columns: RESPONDERS, not NATS's
// IDLE.
func TestQueuesEmptyOnPostgres(t *testing.T) {
	t.Parallel()
	_, _, engine := postgresEngine(t, "cli_empty_")
	run(t, nil, "migrate", "--engine", engine).want(t, 0)
	r := run(t, nil, "queues", "--engine", engine)
	r.want(t, 0)
	if want := "QUEUE DEPTH IN-FLIGHT RESPONDERS IN/MIN OUT/MIN OLDEST DEAD"; strings.Join(strings.Fields(r.stdout), " ") != want {
		t.Fatalf("rsvp queues on an empty PostgreSQL schema printed %q, want the header %s", r.stdout, want)
	}
}

// TestOpsRefuseDirectoryWithoutEngine: the operator's commands read an
// engine; pointed at a directory that exists but holds none (a typo, the
// wrong working directory), they say so and leave it as it was, as they
// do for a directory that does not exist, instead of making an engine
// there.
func TestOpsRefuseDirectoryWithoutEngine(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"queues"}, {"requests", "get", "x"}, {"dlq", "ls", "q"}, {"workflow", "ls"}} {
		dir := t.TempDir()
		r := run(t, nil, append(args, "--engine", "embedded:"+dir)...)
		r.want(t, exitFailure, "holds no rsvp engine")
		if entries, err := os.ReadDir(dir); err != nil || len(entries) > 0 {
			t.Fatalf("rsvp %s left %d entries in the directory (%v)", strings.Join(args, " "), len(entries), err)
		}
	}
}
