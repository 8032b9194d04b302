package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/bench"
)

// benchFields are the fields every JSON result must have.
var benchFields = []string{"workload", "engine", "concurrency", "ops", "throughput_per_s", "p50_ms", "p99_ms", "lost", "duplicates"}

// benchJSON runs 'rsvp bench args... --json', checks that it exits 0 and
// returns its results, each checked for the fields every result has and
// for exactly one reply per request.
func benchJSON(t *testing.T, args ...string) ([]bench.Result, result) {
	t.Helper()
	r := run(t, nil, append(append([]string{"bench"}, args...), "--json")...)
	r.want(t, 0)
	var results []bench.Result
	for line := range strings.Lines(r.stdout) {
		var fields map[string]any
		if err := json.Unmarshal([]byte(line), &fields); err != nil {
			t.Fatalf("stdout line %q: %v", line, err)
		}
		for _, f := range benchFields {
			if _, ok := fields[f]; !ok {
				t.Errorf("result %s has no %q", line, f)
			}
		}
		var res bench.Result
		if err := json.Unmarshal([]byte(line), &res); err != nil {
			t.Fatal(err)
		}
		if res.Ops <= 0 || res.Lost != 0 || res.Duplicates != 0 || res.Errors != 0 || res.ThroughputPerS <= 0 || res.P99ms < res.P50ms {
			t.Errorf("result %s: want ops, no loss, no duplicates, no errors", line)
		}
		results = append(results, res)
	}
	return results, r
}

// one returns the only result of rs.
func one(t *testing.T, rs []bench.Result) bench.Result {
	t.Helper()
	if len(rs) != 1 {
		t.Fatalf("%d results, want 1: %+v", len(rs), rs)
	}
	return rs[0]
}

// tempEngineDir matches the temporary engine named on stderr.
var tempEngineDir = regexp.MustCompile(`\(embedded:(\S+), removed afterwards\)`)

func TestBenchRoundTripAndEnqueue(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		workload string
		args     []string
		engine   string
	}{
		{"roundtrip", []string{"-c", "16"}, "embedded:fsync"},
		{"enqueue", []string{"--sync", "interval", "--size", "100"}, "embedded:interval"},
	} {
		t.Run(tc.workload, func(t *testing.T) {
			t.Parallel()
			rs, r := benchJSON(t, append([]string{tc.workload, "-d", "300ms", "--warmup", "100ms"}, tc.args...)...)
			res := one(t, rs)
			if res.Workload != tc.workload || res.Engine != tc.engine || res.Mode != "closed" {
				t.Errorf("result %+v, want %s on %s in a closed loop", res, tc.workload, tc.engine)
			}
			// The default engine, not $RSVP_ENGINE: a temporary directory, gone now.
			m := tempEngineDir.FindStringSubmatch(r.stderr)
			if m == nil {
				t.Fatalf("stderr names no temporary engine:\n%s", r.stderr)
			}
			if _, err := os.Stat(m[1]); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("engine directory %s left behind: %v", m[1], err)
			}
		})
	}
}

func TestBenchOpenLoop(t *testing.T) {
	t.Parallel()
	rs, _ := benchJSON(t, "roundtrip", "--rate", "200", "-d", "500ms", "--warmup", "100ms", "--engine", "embedded:mem")
	res := one(t, rs)
	if res.Mode != "open" || res.Rate != 200 || res.Engine != "embedded:mem" || res.Ops < 50 {
		t.Fatalf("result %+v, want an open loop at 200/s on embedded:mem with about 100 ops", res)
	}
}

// On a lasting engine, given before the command, a run reports as a
// human reads it and leaves nothing behind.
func TestBenchOnLastingEngine(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	r := run(t, nil, "--engine", "embedded:"+dir, "bench", "enqueue", "-d", "200ms", "--warmup", "0", "-c", "4")
	r.want(t, 0, "rsvp bench: enqueue on embedded:fsync (embedded:"+dir+"): closed loop, concurrency 4")
	for _, s := range []string{"enqueue on embedded:fsync, closed loop, concurrency 4", "every request got exactly one reply"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("stdout lacks %q:\n%s", s, r.stdout)
		}
	}
	benchJSON(t, "roundtrip", "-d", "200ms", "--warmup", "0", "-c", "4", "--engine", "embedded:"+dir)
	wantEmptyEngine(t, dir, "RSVP_REQUESTS", "RSVP_REPLIES")
}

// The http workload's runs leave nothing behind either, events included.
func TestBenchHTTPOnLastingEngine(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	benchJSON(t, "http", "push", "--streams", "10", "--rate", "1000", "--engine", "embedded:"+dir)
	benchJSON(t, "http", "submit", "-d", "200ms", "--warmup", "0", "-c", "4", "--engine", "embedded:"+dir)
	wantEmptyEngine(t, dir, "RSVP_REQUESTS", "RSVP_REPLIES", "RSVP_EVENTS")
}

// wantEmptyEngine checks that the engine in dir holds no messages and no
// consumers in the streams named.
func wantEmptyEngine(t *testing.T, dir string, streams ...string) {
	t.Helper()
	b, err := rsvpnats.Embedded(dir, rsvpnats.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	js, err := jetstream.New(b.Conn())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range streams {
		s, err := js.Stream(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != 0 || info.State.Consumers != 0 {
			t.Errorf("%s after the runs: %d messages, %d consumers; want none", name, info.State.Msgs, info.State.Consumers)
		}
	}
}

func TestBenchLimits(t *testing.T) {
	t.Parallel()
	rs, _ := benchJSON(t, "limits", "-d", "200ms", "--warmup", "0", "-c", "8")
	var got []string
	for _, r := range rs {
		got = append(got, fmt.Sprintf("%s %s %d", r.Workload, r.Engine, r.Concurrency))
	}
	disk := "disk:" + os.TempDir()
	want := []string{
		"limit:tcp-echo loopback 8",
		"limit:http loopback 8",
		"limit:nats-request embedded:mem 8",
		"limit:fsync " + disk + " 1",
		"limit:group-commit " + disk + " 1",
		"limit:group-commit " + disk + " 8",
		"limit:group-commit " + disk + " 64",
		"limit:group-commit " + disk + " 512",
		"limit:jetstream embedded:fsync 8",
		"limit:jetstream embedded:interval 8",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("limits ran\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// With an engine in memory, the JetStream loop runs on it, once.
func TestBenchLimitsOnMemoryEngine(t *testing.T) {
	t.Parallel()
	rs, _ := benchJSON(t, "limits", "-d", "100ms", "--warmup", "0", "-c", "4", "--engine", "embedded:mem")
	last := rs[len(rs)-1]
	if len(rs) != 9 || last.Workload != "limit:jetstream" || last.Engine != "embedded:mem" {
		t.Fatalf("%d results, the last %+v; want 9, the last limit:jetstream on embedded:mem", len(rs), last)
	}
}

func TestBenchUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{}, "missing WORKLOAD"},
		{[]string{"bogus"}, `unknown workload "bogus"`},
		{[]string{"http"}, "missing MODE"},
		{[]string{"http", "bogus"}, `unknown http mode "bogus": want submit, push, idle`},
		{[]string{"http", "submit", "extra"}, `unexpected argument "extra"`},
		{[]string{"roundtrip", "--streams", "5"}, "--streams applies to http push and http idle"},
		{[]string{"http", "submit", "--streams", "5"}, "--streams applies to http push and http idle"},
		{[]string{"http", "push", "--streams", "-1"}, "--streams -1 is negative"},
		{[]string{"http", "push", "--kind", "sse"}, "--kind applies to http idle"},
		{[]string{"http", "idle", "--kind", "websocket"}, `--kind "websocket": want longpoll or sse`},
		{[]string{"http", "idle", "-c", "5"}, "-c, --rate and --handlers do not apply to http idle"},
		{[]string{"http", "push", "-c", "5"}, "-c does not apply to http push"},
		{[]string{"workflow"}, `workload "workflow" needs workflows`},
		{[]string{"roundtrip", "--sync", "sometimes"}, `--sync "sometimes": want always or interval`},
		{[]string{"roundtrip", "-c", "-3"}, "-c -3: concurrency must be at least 1"},
		{[]string{"roundtrip", "-c", "0"}, "-c 0: concurrency must be at least 1"},
		{[]string{"roundtrip", "-d", "0s"}, "-d 0s: the duration must be positive"},
		{[]string{"roundtrip", "--rate", "-5"}, "--rate -5: the rate must be"},
		{[]string{"enqueue", "--size", "-1"}, "--size -1: the body size must be"},
		{[]string{"enqueue", "--size", "2000000"}, "--size 2000000"},
		{[]string{"roundtrip", "--warmup", "-1s"}, "--warmup -1s is negative"},
		{[]string{"roundtrip", "--handlers", "-1"}, "--handlers -1 is negative"},
		{[]string{"limits", "--size", "10"}, "--size does not apply to limits"},
		{[]string{"enqueue", "--handlers", "3", "-d", "1ms", "--warmup", "0"}, "--handlers applies to roundtrip and http push"},
		{[]string{"http", "submit", "--handlers", "3", "-d", "1ms", "--warmup", "0"}, "--handlers applies to roundtrip and http push"},
		{[]string{"roundtrip", "--engine", "embedded:mem", "--sync", "interval"}, "--sync applies to an embedded engine on disk, not to embedded:mem"},
		{[]string{"roundtrip", "--engine", "nats://user:secret@localhost:4222", "--sync", "always"}, "--sync applies to an embedded engine on disk, not to nats://***@localhost:4222"},
		{[]string{"roundtrip", "--engine", "bogus"}, `engine "bogus" is not one of`},
		{[]string{"roundtrip", "--engine", "postgres://user:secret@127.0.0.1:1/db"}, "engine postgres://user:***@127.0.0.1:1/db: rsvp bench measures NATS engines only, not PostgreSQL"},
		{[]string{"enqueue", "--engine", "postgresql://127.0.0.1:1/db"}, "engine postgresql://127.0.0.1:1/db: rsvp bench measures NATS engines only, not PostgreSQL"},
		{[]string{"roundtrip", "extra"}, `unexpected argument "extra"`},
		{[]string{"roundtrip", "--bogus"}, "flag provided but not defined: -bogus"},
	} {
		r := run(t, nil, append([]string{"bench"}, tc.args...)...)
		r.want(t, 2, "rsvp bench: "+tc.want, "Run 'rsvp help bench' for usage.")
		if r.stdout != "" || strings.Contains(r.stderr, "secret") {
			t.Errorf("%v: stdout %q, stderr %q", tc.args, r.stdout, r.stderr)
		}
	}
	// The global --engine too: it was opened as the default NATS URL,
	// nats://127.0.0.1:4222, and the run went to whatever listened there.
	r := run(t, nil, "--engine", "postgres://127.0.0.1:1/db", "bench", "roundtrip")
	r.want(t, 2, "rsvp bench: engine postgres://127.0.0.1:1/db: rsvp bench measures NATS engines only, not PostgreSQL")
}

func TestBenchHelp(t *testing.T) {
	t.Parallel()
	r := run(t, nil, "help", "bench")
	r.want(t, 0)
	for _, s := range []string{"rsvp bench roundtrip -c 64 -d 10s", "rsvp bench roundtrip --rate 5000 -d 10s", "rsvp bench limits -d 3s",
		"new temporary directory, removed afterwards", "-warmup", "-sync"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("help lacks %q:\n%s", s, r.stdout)
		}
	}
	if r := run(t, nil, "help"); !strings.Contains(r.stdout, "\n  bench ") {
		t.Errorf("the command list lacks bench:\n%s", r.stdout)
	}
}

// A run that lost, duplicated or failed anything is named, and exits 1.
func TestBenchVerdict(t *testing.T) {
	t.Parallel()
	b := &benchRun{results: []bench.Result{
		{Workload: "roundtrip", Engine: "embedded:fsync", Ops: 10},
		{Workload: "enqueue", Engine: "embedded:mem", Ops: 8, Lost: 2, Duplicates: 1, FirstError: "rsvp: await x: context deadline exceeded"},
	}, failures: []string{"limit:http did not run: boom"}}
	err := b.verdict()
	if err == nil {
		t.Fatal("no error")
	}
	for _, s := range []string{"enqueue on embedded:mem: 8 ops, 2 lost, 1 duplicates, 0 errors (first: rsvp: await x", "limit:http did not run: boom"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("verdict %q lacks %q", err, s)
		}
	}
	if strings.Contains(err.Error(), "roundtrip") {
		t.Errorf("verdict %q names a good run", err)
	}
	e := &env{stderr: new(strings.Builder)}
	if code := e.report(&command{name: "bench"}, err); code != exitFailure {
		t.Errorf("exit code %d, want %d", code, exitFailure)
	}
}

// The idle clients' process of 'rsvp bench http idle' is this test binary,
// run as the rsvp command line.
func init() {
	benchIdleClients = func(ctx context.Context) *exec.Cmd {
		cmd := exec.CommandContext(ctx, os.Args[0], "bench", "http", idleClientsMode)
		cmd.Env = append(os.Environ(), childEnv+"=1")
		return cmd
	}
}

// benchFieldsOf runs 'rsvp bench args... --json' and returns its only
// result as a map, after benchJSON's checks.
func benchFieldsOf(t *testing.T, args ...string) map[string]any {
	t.Helper()
	_, r := benchJSON(t, args...)
	var m map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &m); err != nil {
		t.Fatalf("stdout %q: %v", r.stdout, err)
	}
	return m
}

// wantFields checks that m has each field, and each of positive a value
// above 0.
func wantFields(t *testing.T, m map[string]any, fields []string, positive ...string) {
	t.Helper()
	for _, f := range fields {
		if _, ok := m[f]; !ok {
			t.Errorf("result lacks %q: %v", f, m)
		}
	}
	for _, f := range positive {
		if v, _ := m[f].(float64); v <= 0 {
			t.Errorf("result %q = %v, want above 0", f, m[f])
		}
	}
}

func TestBenchHTTPSubmit(t *testing.T) {
	t.Parallel()
	rs, _ := benchJSON(t, "http", "submit", "--duration", "1s", "--warmup", "0", "-c", "8", "--size", "100", "--engine", "embedded:mem")
	res := one(t, rs)
	if res.Workload != "http:submit" || res.Engine != "embedded:mem" || res.Mode != "closed" || res.Concurrency != 8 || res.Ops < 10 {
		t.Fatalf("result %+v, want http:submit on embedded:mem in a closed loop of 8", res)
	}
}

func TestBenchHTTPPush(t *testing.T) {
	t.Parallel()
	m := benchFieldsOf(t, "http", "push", "--streams", "50", "--rate", "1000", "--engine", "embedded:mem")
	wantFields(t, m, []string{"setup_s", "handler_p99_ms", "gateway_p99_ms"}, "streams", "answered", "p50_ms", "p99_ms", "handler_p50_ms", "gateway_p50_ms")
	if m["workload"] != "http:push" || m["mode"] != "push" || m["ops"] != 50.0 || m["streams"] != 50.0 || m["answered"] != 50.0 || m["rate_per_s"] != 1000.0 {
		t.Errorf("result %v, want 50 final events of 50 streams answered at 1000/s", m)
	}
}

func TestBenchHTTPIdle(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"longpoll", "sse"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			m := benchFieldsOf(t, "http", "idle", "--streams", "100", "--kind", kind, "-d", "500ms", "--engine", "embedded:mem")
			wantFields(t, m, []string{"idle_cpu_s", "idle_cpu_percent", "server_mb", "client_kb_per_conn", "heap_live_mb", "settle_s"},
				"rss_mb", "rss_baseline_mb", "rss_peak_mb", "client_rss_mb", "total_rss_mb", "goroutines", "open_s")
			if m["workload"] != "http:idle" || m["kind"] != kind || m["clients"] != "process" || m["ops"] != 100.0 || m["concurrency"] != 100.0 {
				t.Errorf("result %v, want 100 %s connections open at the end, clients in a process", m, kind)
			}
			if g, _ := m["goroutines"].(float64); g < 200 {
				t.Errorf("%v goroutines with 100 connections open: want a connection's and its reader's each", g)
			}
		})
	}
}

// Reported as a human reads it.
func TestBenchHTTPText(t *testing.T) {
	t.Parallel()
	r := run(t, nil, "bench", "http", "push", "--streams", "10", "--rate", "1000", "--engine", "embedded:mem")
	r.want(t, 0, "rsvp bench: http:push on embedded:mem (embedded:mem): 10 event streams, answered at 1000/s by 16 handlers")
	for _, s := range []string{"http:push on embedded:mem, 10 event streams", "reply stored -> client read: p50", "every stream got exactly one final event"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("stdout lacks %q:\n%s", s, r.stdout)
		}
	}
}
