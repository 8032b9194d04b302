// Package bench is the benchmark harness behind `rsvp bench` and the peer
// benchmarks in bench/peers: it drives an operation in a closed or an open
// loop and reports throughput, latency percentiles from an HDR histogram,
// CPU time per operation, and whether every request got exactly one reply.
//
// In a closed loop, Concurrency workers each start the next operation when
// the last one ends, which hides queueing delay (coordinated omission). In an
// open loop, operations start on a fixed schedule at Rate per second,
// whatever is still running, and latency is measured from each operation's
// intended start, so a stall shows up in the percentiles as it would for
// real clients.
package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Op performs one operation for id — a request and its reply, say — and
// returns once it is complete, with the id the reply carried. The harness
// checks that every id comes back exactly once.
type Op func(ctx context.Context, id string) (replyID string, err error)

// Config describes a run. The zero value is a 10s closed loop at
// concurrency 1.
type Config struct {
	Workload    string        // label: "roundtrip", "enqueue", ...
	Engine      string        // label: where it ran
	Concurrency int           // closed loop: workers (default 1); open loop: most operations in flight (default 10,000)
	Rate        float64       // > 0: open loop at Rate operations per second
	Duration    time.Duration // how long operations are started; default 10s
	Warmup      time.Duration // operations run first for this long, unmeasured; default 0
	Timeout     time.Duration // an operation taking longer is lost; default 30s
	Progress    io.Writer     // a progress line every second; nil: none
}

func (c Config) withDefaults() Config {
	c.Duration = cmp.Or(c.Duration, 10*time.Second)
	c.Timeout = cmp.Or(c.Timeout, 30*time.Second)
	if c.Rate > 0 {
		c.Concurrency = cmp.Or(c.Concurrency, 10_000)
	}
	c.Concurrency = cmp.Or(c.Concurrency, 1)
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("concurrency %d is below 1", c.Concurrency))
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		errs = append(errs, fmt.Errorf("rate %v is not a positive number", c.Rate))
	}
	if c.Duration < 0 || c.Warmup < 0 || c.Timeout < 0 {
		errs = append(errs, errors.New("durations must not be negative"))
	}
	return errors.Join(errs...)
}

// Result is what a run measured. Its JSON form is the machine-readable
// output of `rsvp bench --json`.
type Result struct {
	Workload       string  `json:"workload"`
	Engine         string  `json:"engine"`
	Mode           string  `json:"mode"` // "closed" or "open"
	Concurrency    int     `json:"concurrency"`
	Rate           float64 `json:"rate_per_s,omitempty"`
	Ops            int64   `json:"ops"`        // completed with the right reply
	Errors         int64   `json:"errors"`     // failed (not timed out)
	Lost           int64   `json:"lost"`       // no reply within the timeout
	Duplicates     int64   `json:"duplicates"` // a reply seen again, or for another id
	Seconds        float64 `json:"duration_s"`
	ThroughputPerS float64 `json:"throughput_per_s"`
	P50ms          float64 `json:"p50_ms"`
	P90ms          float64 `json:"p90_ms"`
	P99ms          float64 `json:"p99_ms"`
	P999ms         float64 `json:"p999_ms"`
	MaxMs          float64 `json:"max_ms"`
	CPUPer1000     float64 `json:"cpu_s_per_1000_ops"` // this process's user+system CPU seconds
	FirstError     string  `json:"first_error,omitempty"`
}

// OK reports whether every operation got exactly one correct reply.
func (r Result) OK() bool { return r.Errors == 0 && r.Lost == 0 && r.Duplicates == 0 && r.Ops > 0 }

// JSON returns r as one line of JSON.
func (r Result) JSON() string {
	b, _ := json.Marshal(r) // plain fields: cannot fail
	return string(b)
}

func (r Result) String() string {
	mode := fmt.Sprintf("closed loop, concurrency %d", r.Concurrency)
	if r.Mode == "open" {
		mode = fmt.Sprintf("open loop at %.0f/s", r.Rate)
	}
	s := fmt.Sprintf("%s on %s, %s, %.1fs\n", r.Workload, r.Engine, mode, r.Seconds)
	s += fmt.Sprintf("  %d ops, %.0f ops/s; latency p50 %.3fms p90 %.3fms p99 %.3fms p99.9 %.3fms max %.3fms\n",
		r.Ops, r.ThroughputPerS, r.P50ms, r.P90ms, r.P99ms, r.P999ms, r.MaxMs)
	s += fmt.Sprintf("  CPU %.3fs per 1000 ops; errors %d, lost %d, duplicates %d", r.CPUPer1000, r.Errors, r.Lost, r.Duplicates)
	if r.FirstError != "" {
		s += "\n  first error: " + r.FirstError
	}
	if r.OK() {
		s += "\n  every request got exactly one reply"
	}
	return s
}

// tally is the shared state of a run.
type tally struct {
	mu        sync.Mutex
	hist      *hdrhistogram.Histogram
	seen      map[string]bool
	ops       int64
	errs      int64
	lost      int64
	dups      int64
	firstErr  string
	measuring atomic.Bool
	ids       atomic.Int64
}

func newTally() *tally {
	// 1µs to 10 minutes, 3 significant digits.
	return &tally{hist: hdrhistogram.New(1, int64(10*time.Minute/time.Microsecond), 3), seen: map[string]bool{}}
}

// do runs op once, timing it from start (its intended start in an open
// loop).
func (t *tally) do(ctx context.Context, cfg Config, op Op, start time.Time) {
	id := fmt.Sprintf("b%d-%d", time.Now().UnixNano()%1e9, t.ids.Add(1))
	octx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	got, err := op(octx, id)
	cancel()
	if !t.measuring.Load() {
		return
	}
	lat := time.Since(start)
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case err != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		t.lost++
		t.noteErr(err)
	case err != nil:
		if ctx.Err() != nil {
			return // the run was cancelled: not the system's fault
		}
		t.errs++
		t.noteErr(err)
	case got != id || t.seen[id]:
		t.dups++
		t.noteErr(fmt.Errorf("reply for %q came back as %q", id, got))
	default:
		t.seen[id] = true
		t.ops++
		_ = t.hist.RecordValue(max(lat.Microseconds(), 1))
	}
}

func (t *tally) noteErr(err error) {
	if t.firstErr == "" {
		t.firstErr = err.Error()
	}
}

// Run drives op as cfg says and reports what it measured. It returns an
// error only for a bad Config or a cancelled ctx; failed operations are
// counted in the Result.
func Run(ctx context.Context, cfg Config, op Op) (Result, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return Result{}, fmt.Errorf("bench: %w", err)
	}
	t := newTally()
	if cfg.Warmup > 0 {
		// Warm up the way the run will go: an open loop at its rate, or the
		// closed loop's workers.
		wctx, cancel := context.WithTimeout(ctx, cfg.Warmup)
		if cfg.Rate > 0 {
			openLoop(wctx, ctx, cfg, op, t)
		} else {
			closedLoop(wctx, cfg, op, t)
		}
		cancel()
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	t.measuring.Store(true)
	cpu0 := cpuTime()
	start := time.Now()
	stopProgress := progress(cfg, t, start)
	rctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	if cfg.Rate > 0 {
		openLoop(rctx, ctx, cfg, op, t)
	} else {
		closedLoop(rctx, cfg, op, t)
	}
	cancel()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	stopProgress()
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	r := Result{
		Workload: cfg.Workload, Engine: cfg.Engine, Mode: "closed", Concurrency: cfg.Concurrency,
		Ops: t.ops, Errors: t.errs, Lost: t.lost, Duplicates: t.dups, Seconds: elapsed.Seconds(),
		ThroughputPerS: float64(t.ops) / elapsed.Seconds(), FirstError: t.firstErr,
		P50ms: ms(t.hist.ValueAtQuantile(50)), P90ms: ms(t.hist.ValueAtQuantile(90)),
		P99ms: ms(t.hist.ValueAtQuantile(99)), P999ms: ms(t.hist.ValueAtQuantile(99.9)), MaxMs: ms(t.hist.Max()),
	}
	if cfg.Rate > 0 {
		r.Mode, r.Rate = "open", cfg.Rate
	}
	if t.ops > 0 {
		r.CPUPer1000 = cpu.Seconds() / float64(t.ops) * 1000
	}
	return r, nil
}

func ms(us int64) float64 { return float64(us) / 1000 }

// closedLoop runs cfg.Concurrency workers until ctx ends; each finishes the
// operation it is in.
func closedLoop(ctx context.Context, cfg Config, op Op, t *tally) {
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				t.do(context.WithoutCancel(ctx), cfg, op, time.Now())
			}
		}()
	}
	wg.Wait()
}

// openLoop starts operations at cfg.Rate per second until schedule ends,
// then waits for those in flight. An operation whose turn comes while
// cfg.Concurrency are in flight waits for a slot, and its waiting counts in
// its latency.
func openLoop(schedule, run context.Context, cfg Config, op Op, t *tally) {
	interval := time.Duration(float64(time.Second) / cfg.Rate)
	slots := make(chan struct{}, cfg.Concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for i := 0; ; i++ {
		due := start.Add(time.Duration(i) * interval)
		timer.Reset(time.Until(due))
		select {
		case <-schedule.Done():
			wg.Wait()
			return
		case <-timer.C:
		}
		select {
		case slots <- struct{}{}:
		case <-schedule.Done():
			wg.Wait()
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			t.do(run, cfg, op, due)
		}()
	}
}

// progress prints a line a second to cfg.Progress until the returned
// function is called.
func progress(cfg Config, t *tally, start time.Time) (stop func()) {
	if cfg.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		last, lastAt := int64(0), start
		for {
			select {
			case <-done:
				fmt.Fprintln(cfg.Progress)
				return
			case now := <-tick.C:
				t.mu.Lock()
				ops, bad := t.ops, t.errs+t.lost+t.dups
				t.mu.Unlock()
				fmt.Fprintf(cfg.Progress, "\r%s: %4.0fs %9d ops %8.0f/s now, %d failed   ",
					cfg.Workload, now.Sub(start).Seconds(), ops, float64(ops-last)/now.Sub(lastAt).Seconds(), bad)
				last, lastAt = ops, now
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// cpuTime is the user and system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
