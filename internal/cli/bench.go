package cli

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/bench"
)

const benchUsage = `Usage: rsvp bench WORKLOAD [MODE] [flags]

Measure rsvp and report, per run, throughput, latency percentiles (p50 to
max, from an HDR histogram), this process's CPU time per 1000 operations,
and whether every request got exactly one reply. WORKLOAD is one of:

  roundtrip  Request: send, an echo responder in this process replies,
             await the reply; --size bytes of body. The responder handles
             max(-c, 8) requests at once (--handlers to choose)
  enqueue    Send only: store requests durably; nobody answers them, and
             they are purged afterwards
  limits     the ceilings under rsvp, each measured without rsvp:
               limit:tcp-echo       1 KiB round trip over loopback TCP
               limit:http           net/http POST answered 202, keep-alive
               limit:nats-request   NATS core request-reply, in process
               limit:fsync          append 1 KiB to a file, fdatasync
               limit:group-commit   1, 8, 64, 512 writers appending to one
                                    file and sharing fdatasyncs
               limit:jetstream      a hand-written JetStream request ->
                                    consumer -> reply loop, fsync and interval
             -c and --rate apply to the request-reply limits; files and
             engines go where the engine would (see below)
  http MODE  the HTTP gateway, served on 127.0.0.1 by this process on the
             engine, driven by HTTP clients; MODE is one of
               submit  POST /v1/queues/Q/requests, --size bytes of body,
                       from -c clients in this process keeping their
                       connections alive; done at 202 Accepted (stored)
               push    --streams event streams (default 1000), one per
                       pending request, then a responder in this process
                       answers them at --rate per second (default 500);
                       latency from the reply stored to the client's read
                       of the final event (also from the handler's return,
                       and from the engine's notice of the event: the
                       gateway's part)
               idle    --streams idle connections (default 10000), long-
                       polls (?wait=60s) or event streams (--kind sse), on
                       pending requests, from raw TCP clients in a second
                       rsvp process; reports the RSS and the CPU use over
                       -d (default 10s) of idling of the gateway's process
                       and of the clients'. The open file limit is raised
                       to --streams and some if need be
  workflow   not yet: it needs workflows

By default a run is a closed loop: -c workers each send their next request
when the last one is answered. With --rate it is an open loop: requests
start on a fixed schedule whatever is still in flight, and latency counts
from each request's scheduled start, so a stall shows as clients see it.

The engine is a new temporary directory, removed afterwards, unless --engine
is given (before or after 'bench'; RSVP_ENGINE is not used). --sync applies
to an embedded engine on disk. A run on a lasting engine purges what it
stored (requests, replies, its consumer, an http run's events) when it ends.

Results go to stdout, each as a report or, with --json, as one JSON line; a
progress line goes to stderr every second. Exit status: 0 when every request
got exactly one reply, 1 when any was lost, duplicated or failed (the runs
concerned are named on stderr), 2 on a usage error.

Example:
  rsvp bench roundtrip -c 64 -d 10s
  rsvp bench roundtrip --rate 5000 -d 10s
  rsvp bench enqueue --sync interval --json
  rsvp bench limits -d 3s
  rsvp bench http submit -d 20s
  rsvp bench http push --streams 1000
  rsvp bench http idle --streams 10000 --kind sse
`

// benchFlags are the flags of the bench command.
type benchFlags struct {
	engine      string
	concurrency int
	duration    time.Duration
	rate        float64
	size        int
	warmup      time.Duration
	sync        string
	handlers    int
	json        bool
	streams     int
	kind        string
	cpuProfile  string
	mode        string // of the http workload
}

func (f *benchFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.engine, "engine", "", "`engine`: embedded:DIR, embedded:mem, nats://HOST:PORT or tls://HOST:PORT (default: a new temporary directory, removed afterwards)")
	fs.IntVar(&f.concurrency, "c", 64, "how many requests are in flight: in a closed loop, the workers; with --rate, the most (10000 unless given)")
	fs.DurationVar(&f.duration, "d", 10*time.Second, "how long each run measures (http idle: how long it idles)")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "the same as -d")
	fs.Float64Var(&f.rate, "rate", 0, "requests started per second, in an open loop; 0: a closed loop (http push: requests answered per second, default 500)")
	fs.IntVar(&f.size, "size", 1024, "request body size in `bytes` (roundtrip, enqueue, http)")
	fs.DurationVar(&f.warmup, "warmup", time.Second, "how long each run first runs unmeasured")
	fs.StringVar(&f.sync, "sync", "always", "embedded engine: fsync before acknowledging every write (always) or every second (interval)")
	fs.IntVar(&f.handlers, "handlers", 0, "roundtrip: how many requests the responder handles at once (default max(-c, 8); http push: 16)")
	fs.IntVar(&f.streams, "streams", 0, "http push: event streams open at once (default 1000); http idle: idle connections (default 10000)")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of the run (setup included) to `file`, for go tool pprof")
	fs.StringVar(&f.kind, "kind", "longpoll", "http idle: the idle connections are long-polls (longpoll) or event streams (sse)")
	fs.BoolVar(&f.json, "json", false, "print each result as one line of JSON")
}

// validate checks the flags for workload w; fs tells which were given.
func (f *benchFlags) validate(fs *flag.FlagSet, w *benchWorkload) error {
	switch {
	case f.concurrency < 1:
		return usagef("-c %d: concurrency must be at least 1", f.concurrency)
	case f.duration <= 0:
		return usagef("-d %s: the duration must be positive", f.duration)
	case f.rate < 0 || math.IsNaN(f.rate) || math.IsInf(f.rate, 0):
		return usagef("--rate %v: the rate must be a positive number of requests per second", f.rate)
	case f.size < 0 || f.size > maxBody:
		return usagef("--size %d: the body size must be 0 to %d bytes", f.size, maxBody)
	case f.warmup < 0:
		return usagef("--warmup %s is negative", f.warmup)
	case f.sync != "always" && f.sync != "interval":
		return usagef("--sync %q: want always or interval", f.sync)
	case f.handlers < 0:
		return usagef("--handlers %d is negative", f.handlers)
	case w.name == "limits" && isSet(fs, "size"):
		return usagef("--size does not apply to limits: they use %d-byte messages", bench.LimitMessageSize)
	case w.name == "limits" && isSet(fs, "handlers"):
		return usagef("--handlers does not apply to limits")
	case f.streams < 0:
		return usagef("--streams %d is negative", f.streams)
	case f.kind != "longpoll" && f.kind != "sse":
		return usagef("--kind %q: want longpoll or sse", f.kind)
	case isSet(fs, "streams") && (w.name != "http" || f.mode == "submit"):
		return usagef("--streams applies to http push and http idle")
	case isSet(fs, "kind") && (w.name != "http" || f.mode != "idle"):
		return usagef("--kind applies to http idle")
	case w.name == "http" && f.mode == "idle" && (isSet(fs, "rate") || isSet(fs, "handlers") || isSet(fs, "c")):
		return usagef("-c, --rate and --handlers do not apply to http idle")
	case w.name == "http" && f.mode == "push" && isSet(fs, "c"):
		return usagef("-c does not apply to http push (--streams, --handlers)")
	case isSet(fs, "handlers") && w.name != "roundtrip" && (w.name != "http" || f.mode != "push"):
		return usagef("--handlers applies to roundtrip and http push, whose responders it sizes")
	}
	return nil
}

// benchWorkload is a workload of the bench command.
type benchWorkload struct {
	name    string
	modes   []string // the MODE argument it takes; none: it takes none
	missing string   // what it needs that does not exist yet; "": it runs
	run     func(ctx context.Context, b *benchRun) error
}

// benchWorkloads returns the workloads by name.
func benchWorkloads() map[string]*benchWorkload {
	ws := []*benchWorkload{
		{name: "roundtrip", run: benchRoundTrip},
		{name: "enqueue", run: benchEnqueue},
		{name: "limits", run: benchLimits},
		{name: "http", modes: []string{"submit", "push", "idle"}, run: benchHTTP},
		{name: "workflow", missing: "workflows"},
	}
	m := make(map[string]*benchWorkload, len(ws))
	for _, w := range ws {
		m[w.name] = w
	}
	return m
}

// lookupWorkload returns the workload named name, or a usage error.
func lookupWorkload(name string) (*benchWorkload, error) {
	w, ok := benchWorkloads()[name]
	switch {
	case !ok:
		return nil, usagef("unknown workload %q: want roundtrip, enqueue, limits or http", name)
	case w.missing != "":
		return nil, usagef("workload %q needs %s, which rsvp does not have yet", name, w.missing)
	}
	return w, nil
}

// idleClientsMode is the hidden mode of the http workload that holds the
// clients' ends of an http idle run's connections, in a process of their
// own: 'rsvp bench http idle' runs it, and speaks to it on its standard
// input and output.
const idleClientsMode = "idle-clients"

// benchIdleClients makes the command of the idle clients' process: this
// program, run again.
var benchIdleClients = func(ctx context.Context) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	return exec.CommandContext(ctx, exe, "bench", "http", idleClientsMode)
}

// workloadMode checks the arguments of w and returns its mode, if it
// takes one.
func workloadMode(w *benchWorkload, pos []string) (string, error) {
	if len(w.modes) == 0 {
		return "", exactArgs(pos, "WORKLOAD")
	}
	if err := exactArgs(pos, "WORKLOAD", "MODE"); err != nil {
		return "", err
	}
	if !slices.Contains(w.modes, pos[1]) && (w.name != "http" || pos[1] != idleClientsMode) {
		return "", usagef("unknown %s mode %q: want %s", w.name, pos[1], strings.Join(w.modes, ", "))
	}
	return pos[1], nil
}

func runBench(ctx context.Context, e *env, cmd *command, args []string) error {
	fs := bareFlagSet(cmd)
	var f benchFlags
	f.register(fs)
	pos, err := e.parse(fs, cmd, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return exactArgs(pos, "WORKLOAD")
	}
	w, err := lookupWorkload(pos[0])
	if err != nil {
		return err
	}
	if f.mode, err = workloadMode(w, pos); err != nil {
		return err
	}
	if f.mode == idleClientsMode {
		return bench.ServeIdleClients(ctx, e.stdin, e.stdout)
	}
	if err := f.validate(fs, w); err != nil {
		return err
	}
	b, err := e.newBenchRun(fs, &f)
	if err != nil {
		return err
	}
	defer b.cleanup()
	if f.cpuProfile != "" {
		stop, err := startCPUProfile(f.cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	if err := w.run(ctx, b); err != nil {
		return err
	}
	return b.verdict()
}

// startCPUProfile starts writing a CPU profile to path; stop ends it.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("bench: cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("bench: cpu profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); _ = f.Close() }, nil
}

// benchRun is one bench command under way: its flags, its engine and the
// results so far.
type benchRun struct {
	e        *env
	f        *benchFlags
	fs       *flag.FlagSet
	spec     engineSpec
	sync     rsvpnats.Sync
	temp     bool   // spec.dir is a temporary directory
	cleanup  func() // removes the temporary directory
	results  []bench.Result
	failures []string // runs that failed to start
}

// newBenchRun resolves the engine: --engine, the global --engine, or a new
// temporary directory.
func (e *env) newBenchRun(fs *flag.FlagSet, f *benchFlags) (*benchRun, error) {
	b := &benchRun{e: e, f: f, fs: fs, sync: rsvpnats.SyncAlways, cleanup: func() {}}
	if f.sync == "interval" {
		b.sync = rsvpnats.SyncInterval
	}
	var err error
	switch {
	case isSet(fs, "engine"):
		b.spec, err = parseEngine(f.engine)
	case e.engineSet:
		b.spec, err = parseEngine(e.engine)
	default:
		err = b.makeTempEngine()
	}
	if err != nil {
		return nil, err
	}
	if b.spec.pg != "" { // it would be opened as the default NATS URL
		return nil, usagef("engine %s: rsvp bench measures NATS engines only, not PostgreSQL", b.spec.raw)
	}
	if isSet(fs, "sync") && b.spec.dir == "" {
		return nil, usagef("--sync applies to an embedded engine on disk, not to %s", b.spec.raw)
	}
	return b, nil
}

func (b *benchRun) makeTempEngine() error {
	dir, err := os.MkdirTemp("", "rsvp-bench-*")
	if err != nil {
		return fmt.Errorf("bench: engine directory: %w", err)
	}
	b.spec, b.temp = engineSpec{raw: "embedded:" + dir, dir: dir}, true
	b.cleanup = func() {
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintf(b.e.stderr, "rsvp: warning: removing %s: %v\n", dir, err)
		}
	}
	return nil
}

// label names the engine in results: embedded:fsync, embedded:interval,
// embedded:mem, or the URL without its credentials.
func (b *benchRun) label() string {
	switch {
	case b.spec.memory:
		return "embedded:mem"
	case b.spec.dir != "" && b.sync == rsvpnats.SyncInterval:
		return "embedded:interval"
	case b.spec.dir != "":
		return "embedded:fsync"
	default:
		return b.spec.raw
	}
}

// config returns the harness configuration of a run of workload.
func (b *benchRun) config(workload string) bench.Config {
	cfg := bench.Config{
		Workload: workload, Engine: b.label(), Concurrency: b.f.concurrency, Rate: b.f.rate,
		Duration: b.f.duration, Warmup: b.f.warmup, Progress: b.e.stderr,
	}
	if cfg.Rate > 0 && !isSet(b.fs, "c") {
		cfg.Concurrency = 0 // the harness's open-loop default
	}
	return cfg
}

// announce says on stderr what is about to run.
func (b *benchRun) announce(cfg bench.Config) {
	loop := fmt.Sprintf("closed loop, concurrency %d", cfg.Concurrency)
	if cfg.Rate > 0 {
		loop = fmt.Sprintf("open loop at %g/s", cfg.Rate)
	}
	where := b.spec.raw
	if b.temp {
		where += ", removed afterwards"
	}
	fmt.Fprintf(b.e.stderr, "rsvp bench: %s on %s (%s): %s, %s warmup, %s\n", cfg.Workload, cfg.Engine, where, loop, cfg.Warmup, cfg.Duration)
}

// report prints r and keeps it for the verdict.
func (b *benchRun) report(r bench.Result) { b.reportAs(r, r) }

// benchReport is a result as it is printed.
type benchReport interface {
	String() string
	JSON() string
}

// reportAs prints out, a result that extends r, and keeps r for the
// verdict.
func (b *benchRun) reportAs(r bench.Result, out benchReport) {
	b.results = append(b.results, r)
	if b.f.json {
		fmt.Fprintln(b.e.stdout, out.JSON())
		return
	}
	fmt.Fprintf(b.e.stdout, "%s\n\n", out)
}

// verdict returns an error naming every run that lost, duplicated or
// failed anything, or could not run.
func (b *benchRun) verdict() error {
	bad := append([]string(nil), b.failures...)
	for _, r := range b.results {
		if r.OK() {
			continue
		}
		s := fmt.Sprintf("%s on %s: %d ops, %d lost, %d duplicates, %d errors", r.Workload, r.Engine, r.Ops, r.Lost, r.Duplicates, r.Errors)
		if r.FirstError != "" {
			s += " (first: " + r.FirstError + ")"
		}
		bad = append(bad, s)
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("bench: not every request got exactly one reply:\n  %s", strings.Join(bad, "\n  "))
}

// benchSession is an open engine and a client for a workload, with the
// names it uses there.
type benchSession struct {
	backend *rsvpnats.Backend
	client  *rsvp.Client
	queue   string
	inbox   string
	channel string // the requests' notify channel, if any
	temp    bool   // the engine is a temporary directory: nothing to purge
}

// open opens the engine and a client with an inbox of its own, for a
// queue of its own.
func (b *benchRun) open(ctx context.Context) (*benchSession, error) {
	opts := rsvpnats.Options{Sync: b.sync}
	var (
		be  *rsvpnats.Backend
		err error
	)
	switch {
	case b.spec.memory:
		opts.Memory = true
		be, err = rsvpnats.Embedded("", opts)
	case b.spec.dir != "":
		opts.Listen = !b.temp // so that other rsvp processes on dir can connect
		be, err = rsvpnats.Embedded(b.spec.dir, opts)
	default:
		be, err = rsvpnats.Connect(ctx, b.spec.url, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot open engine %s: %w", b.spec.raw, err)
	}
	id := strings.ReplaceAll(rsvp.NewID(), "-", "")[20:] // the random end
	s := &benchSession{backend: be, queue: "bench-" + id, inbox: "bench" + id, temp: b.temp}
	s.client, err = rsvp.New(ctx, be, rsvp.Config{MaxBodySize: maxBody, Inbox: s.inbox, NoExpiryTasks: true})
	if err != nil {
		be.Close()
		return nil, fmt.Errorf("start client on engine %s: %w", b.spec.raw, err)
	}
	return s, nil
}

// close stops the client and its responders, purges what the run stored,
// and closes the engine. Failures are warnings: the results are in.
func (s *benchSession) close(ctx context.Context, b *benchRun) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	defer cancel()
	err := s.client.Close(ctx)
	if !s.temp { // a temporary engine goes as a whole
		err = errors.Join(err, purgeBench(ctx, s.backend.Conn(), s.queue, s.inbox, s.channel))
	}
	err = errors.Join(err, s.backend.Close())
	if err != nil {
		fmt.Fprintf(b.e.stderr, "rsvp: warning: closing the engine: %v\n", err)
	}
}

// purgeBench removes from the engine what a run on queue, with replies to
// inbox, stored: its requests, its replies, its responders' consumer, and
// the events of channel if not empty (names of docs/wire.md).
func purgeBench(ctx context.Context, nc *nats.Conn, queue, inbox, channel string) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("purge: %w", err)
	}
	var errs []error
	if err := js.DeleteConsumer(ctx, "RSVP_REQUESTS", "rsvp_"+queue); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		errs = append(errs, fmt.Errorf("delete consumer rsvp_%s: %w", queue, err))
	}
	purge := [][2]string{{"RSVP_REQUESTS", "rsvp.req." + queue}, {"RSVP_REPLIES", "rsvp.reply.*." + inbox}}
	if channel != "" {
		// The run's requests are those of its channel: their event logs,
		// then the channel's.
		ids, err := channelRequests(ctx, js, channel)
		if err != nil {
			errs = append(errs, err)
		}
		for _, id := range ids {
			purge = append(purge, [2]string{"RSVP_EVENTS", "rsvp.event." + id})
		}
		purge = append(purge, [2]string{"RSVP_EVENTS", "rsvp.chan." + channel})
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	work := make(chan [2]string)
	for range 16 {
		wg.Go(func() {
			for p := range work {
				s, err := js.Stream(ctx, p[0])
				if err == nil {
					err = s.Purge(ctx, jetstream.WithPurgeSubject(p[1]))
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("purge %s of %s: %w", p[0], p[1], err))
					mu.Unlock()
				}
			}
		})
	}
	for _, p := range purge {
		work <- p
	}
	close(work)
	wg.Wait()
	return errors.Join(errs...)
}

// channelRequests returns the correlation ids of the events in a channel's
// log.
func channelRequests(ctx context.Context, js jetstream.JetStream, channel string) ([]string, error) {
	cons, err := js.OrderedConsumer(ctx, "RSVP_EVENTS", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"rsvp.chan." + channel}})
	if err != nil {
		return nil, fmt.Errorf("purge: read channel %s: %w", channel, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("purge: read channel %s: %w", channel, err)
	}
	seen := make(map[string]bool)
	var ids []string
	for left := info.NumPending; left > 0; {
		batch, err := cons.FetchNoWait(int(min(left, 1000)))
		if err != nil {
			return ids, fmt.Errorf("purge: read channel %s: %w", channel, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if id := m.Headers().Get("Rsvp-Correlation-Id"); id != "" && !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
		if n == 0 {
			break
		}
		left -= uint64(n)
	}
	return ids, nil
}

// benchRoundTrip runs Request against an echo responder in this process.
func benchRoundTrip(ctx context.Context, b *benchRun) error {
	s, err := b.open(ctx)
	if err != nil {
		return err
	}
	defer s.close(ctx, b)
	handlers := b.f.handlers
	if handlers == 0 {
		handlers = max(b.f.concurrency, 8)
	}
	// The harness id travels in a header, so that requests take the usual
	// path (a caller-chosen message id would add a look-up of its stored
	// reply to every request).
	echo := rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: m.Body, Headers: map[string]string{benchIDHeader: m.Headers[benchIDHeader]}}, nil
	})
	if _, err := s.client.Handle(s.queue, echo, rsvp.HandleOptions{Concurrency: handlers}); err != nil {
		return fmt.Errorf("bench: start responder: %w", err)
	}
	body := make([]byte, b.f.size)
	return b.measure(ctx, "roundtrip", func(ctx context.Context, id string) (string, error) {
		r, err := s.client.Request(ctx, s.queue, &rsvp.Message{Body: body, Headers: map[string]string{benchIDHeader: id}})
		if err != nil {
			return "", err
		}
		return r.Headers[benchIDHeader], nil
	})
}

// benchIDHeader carries the harness id of a roundtrip request to its reply.
const benchIDHeader = "Bench-Id"

// benchEnqueue runs Send alone.
func benchEnqueue(ctx context.Context, b *benchRun) error {
	s, err := b.open(ctx)
	if err != nil {
		return err
	}
	defer s.close(ctx, b)
	body := make([]byte, b.f.size)
	return b.measure(ctx, "enqueue", func(ctx context.Context, id string) (string, error) {
		t, err := s.client.Send(ctx, s.queue, &rsvp.Message{ID: id, Body: body})
		if err != nil {
			return "", err
		}
		return t.ID, nil
	})
}

// measure runs op as the flags say and reports the result.
func (b *benchRun) measure(ctx context.Context, workload string, op bench.Op) error {
	cfg := b.config(workload)
	b.announce(cfg)
	r, err := bench.Run(ctx, cfg, op)
	if err != nil {
		return interrupted(ctx, err)
	}
	b.report(r)
	return nil
}

// interrupted turns the error of a cancelled run into the command's.
func interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return errors.New("bench: interrupted")
	}
	return fmt.Errorf("bench: %w", err)
}

// limitRun is one run of the limits workload.
type limitRun struct {
	cfg   bench.Config
	where string // the directory it writes in, if any
	run   func(ctx context.Context, cfg bench.Config) (bench.Result, error)
}

// benchLimits runs every limit in turn, reporting each as it ends. A limit
// that cannot run is reported on stderr, and the others still run.
func benchLimits(ctx context.Context, b *benchRun) error {
	for _, l := range b.limitRuns() {
		b.announceLimit(l)
		r, err := l.run(ctx, l.cfg)
		if ctx.Err() != nil {
			return interrupted(ctx, ctx.Err())
		}
		if err != nil {
			fmt.Fprintf(b.e.stderr, "rsvp bench: %s: %v\n", l.cfg.Workload, err)
			b.failures = append(b.failures, fmt.Sprintf("%s did not run: %v", l.cfg.Workload, err))
			continue
		}
		b.report(r)
	}
	return nil
}

// limitRuns returns the limits to run, in order. Files and embedded
// engines go in the engine's directory when it is one the user gave, else
// in the system's temporary directory; the JetStream loop runs on an
// embedded engine on disk in each sync mode (--sync: that one), or on the
// engine given when it is in memory or external.
func (b *benchRun) limitRuns() []limitRun {
	dir := ""
	if b.spec.dir != "" && !b.temp {
		dir = b.spec.dir
	}
	where := dir
	if where == "" {
		where = os.TempDir()
	}
	base := b.config("")
	base.Engine = ""
	closed := base
	closed.Rate = 0
	withConc := func(n int) bench.Config { c := closed; c.Concurrency = n; return c }
	runs := []limitRun{
		{cfg: named(base, "limit:tcp-echo"), run: bench.LimitTCPEcho},
		{cfg: named(base, "limit:http"), run: bench.LimitHTTP},
		{cfg: named(base, "limit:nats-request"), run: bench.LimitNATSRequest},
		{cfg: named(withConc(1), "limit:fsync"), where: where, run: func(ctx context.Context, cfg bench.Config) (bench.Result, error) {
			return bench.LimitFsync(ctx, cfg, dir)
		}},
	}
	for _, n := range []int{1, 8, 64, 512} {
		runs = append(runs, limitRun{cfg: named(withConc(n), "limit:group-commit"), where: where, run: func(ctx context.Context, cfg bench.Config) (bench.Result, error) {
			return bench.LimitGroupCommit(ctx, cfg, dir)
		}})
	}
	return append(runs, b.jetStreamLimits(base, dir, where)...)
}

// jetStreamLimits returns the runs of the raw JetStream loop.
func (b *benchRun) jetStreamLimits(base bench.Config, dir, where string) []limitRun {
	cfg := named(base, "limit:jetstream")
	if b.spec.dir == "" { // in memory or external: that engine
		cfg.Engine = b.label()
		return []limitRun{{cfg: cfg, run: func(ctx context.Context, cfg bench.Config) (bench.Result, error) {
			return b.jetStreamOn(ctx, cfg)
		}}}
	}
	var runs []limitRun
	for _, mode := range []struct {
		flag  string
		sync  rsvpnats.Sync
		label string
	}{{"always", rsvpnats.SyncAlways, "embedded:fsync"}, {"interval", rsvpnats.SyncInterval, "embedded:interval"}} {
		if isSet(b.fs, "sync") && b.f.sync != mode.flag {
			continue
		}
		cfg.Engine = mode.label
		runs = append(runs, limitRun{cfg: cfg, where: where, run: func(ctx context.Context, cfg bench.Config) (bench.Result, error) {
			return bench.LimitJetStream(ctx, cfg, dir, mode.sync)
		}})
	}
	return runs
}

// jetStreamOn runs the raw JetStream loop on the engine given, in memory
// or external.
func (b *benchRun) jetStreamOn(ctx context.Context, cfg bench.Config) (bench.Result, error) {
	var (
		be  *rsvpnats.Backend
		err error
	)
	if b.spec.memory {
		be, err = rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	} else {
		be, err = rsvpnats.Connect(ctx, b.spec.url, rsvpnats.Options{})
	}
	if err != nil {
		return bench.Result{}, fmt.Errorf("cannot open engine %s: %w", b.spec.raw, err)
	}
	defer be.Close()
	return bench.LimitJetStreamOn(ctx, cfg, be)
}

// named returns cfg for workload.
func named(cfg bench.Config, workload string) bench.Config {
	cfg.Workload = workload
	return cfg
}

// announceLimit says on stderr which limit is about to run.
func (b *benchRun) announceLimit(l limitRun) {
	loop := fmt.Sprintf("closed loop, concurrency %d", max(l.cfg.Concurrency, 1))
	if l.cfg.Rate > 0 {
		loop = fmt.Sprintf("open loop at %g/s", l.cfg.Rate)
	}
	what := l.cfg.Workload
	if l.cfg.Engine != "" {
		what += " on " + l.cfg.Engine
	}
	if l.where != "" {
		what += " in " + l.where
	}
	fmt.Fprintf(b.e.stderr, "rsvp bench: %s: %s, %s warmup, %s\n", what, loop, l.cfg.Warmup, l.cfg.Duration)
}

// benchHTTP runs a mode of the http workload: the gateway in this process
// on the engine, with its requests on a queue of the run's own and its
// events on a channel of the same name, to purge them from a lasting
// engine.
func benchHTTP(ctx context.Context, b *benchRun) error {
	s, err := b.open(ctx)
	if err != nil {
		return err
	}
	s.channel = s.queue
	defer s.close(ctx, b)
	opts := bench.HTTPOptions{Queue: s.queue, Channel: s.channel, Size: b.f.size}
	var r bench.Result
	var out benchReport
	switch b.f.mode {
	case "submit":
		cfg := b.config("http:submit")
		b.announce(cfg)
		r, err = bench.HTTPSubmit(ctx, cfg, s.client, opts)
		out = r
	case "push":
		cfg := bench.PushConfig{Engine: b.label(), Streams: b.f.streams, Rate: b.f.rate, Handlers: b.f.handlers, Progress: b.e.stderr}
		fmt.Fprintf(b.e.stderr, "rsvp bench: http:push on %s: %d event streams, answered at %g/s by %d handlers\n",
			b.where(), cmp.Or(cfg.Streams, 1000), cmp.Or(cfg.Rate, 500), cmp.Or(cfg.Handlers, 16))
		var pr bench.PushResult
		pr, err = bench.HTTPPush(ctx, cfg, s.client, opts)
		r, out = pr.Result, pr
	case "idle":
		cfg := bench.IdleConfig{Engine: b.label(), Conns: b.f.streams, SSE: b.f.kind == "sse", Window: b.f.duration,
			Clients: benchIdleClients, Progress: b.e.stderr}
		fmt.Fprintf(b.e.stderr, "rsvp bench: http:idle on %s: %d idle %s connections, %s of idling\n",
			b.where(), cmp.Or(cfg.Conns, 10000), b.f.kind, cfg.Window)
		var ir bench.IdleResult
		ir, err = bench.HTTPIdle(ctx, cfg, s.client, opts)
		r, out = ir.Result, ir
	}
	if err != nil {
		return interrupted(ctx, err)
	}
	b.reportAs(r, out)
	return nil
}

// where names the engine of the run as announce does.
func (b *benchRun) where() string {
	s := b.label() + " (" + b.spec.raw
	if b.temp {
		s += ", removed afterwards"
	}
	return s + ")"
}
