package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
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

	b, err := rsvpnats.Embedded(dir, rsvpnats.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	js, err := jetstream.New(b.Conn())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"RSVP_REQUESTS", "RSVP_REPLIES"} {
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
		{[]string{"http"}, `workload "http" needs the HTTP gateway`},
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
		{[]string{"roundtrip", "--engine", "embedded:mem", "--sync", "interval"}, "--sync applies to an embedded engine on disk, not to embedded:mem"},
		{[]string{"roundtrip", "--engine", "nats://user:secret@localhost:4222", "--sync", "always"}, "--sync applies to an embedded engine on disk, not to nats://***@localhost:4222"},
		{[]string{"roundtrip", "--engine", "bogus"}, `engine "bogus" is not one of`},
		{[]string{"roundtrip", "extra"}, `unexpected argument "extra"`},
		{[]string{"roundtrip", "--bogus"}, "flag provided but not defined: -bogus"},
	} {
		r := run(t, nil, append([]string{"bench"}, tc.args...)...)
		r.want(t, 2, "rsvp bench: "+tc.want, "Run 'rsvp help bench' for usage.")
		if r.stdout != "" || strings.Contains(r.stderr, "secret") {
			t.Errorf("%v: stdout %q, stderr %q", tc.args, r.stdout, r.stderr)
		}
	}
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
