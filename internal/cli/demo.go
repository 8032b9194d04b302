package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"path"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rsvp-go/rsvp"
)

const demoUsage = `Usage: rsvp demo [flags]

Run the image-thumbnail scenario end to end. A responder on queue
"thumbnail" turns {"image_url": ...} requests into {"thumbnail_url": ...}
replies after 5 to 40ms of simulated work, while --requests requests are sent
at once with the typed helper rsvp.Call. One image fails on its first attempt,
to show a retry. The demo prints one line per reply (image, thumbnail URL,
latency) and a summary; it exits 0 if every request got its thumbnail.

The engine is a new temporary directory, removed afterwards, unless --engine
is given (before or after 'demo'; RSVP_ENGINE is not used). On a shared
engine, other workers of queue "thumbnail" would take part: those of
'rsvp serve --demo' fail its requests (bad_payload: they want a "url").

Example:
  rsvp demo --requests 200 --concurrency 16
`

const (
	demoQueue   = "thumbnail"
	demoBackoff = 50 * time.Millisecond // so that the retry shows quickly
	demoTimeout = 30 * time.Second      // per request

	// maxDemoRequests bounds --requests: each is a goroutine and a line of
	// output, all at once.
	maxDemoRequests = 100_000
)

// maxConcurrency bounds --concurrency: each handler is a goroutine (and for
// 'rsvp worker', a process), started at once.
const maxConcurrency = 10_000

// thumbnailRequest and thumbnailReply are the demo's messages.
type thumbnailRequest struct {
	ImageURL string `json:"image_url"`
}

type thumbnailReply struct {
	ThumbnailURL string `json:"thumbnail_url"`
}

func runDemo(ctx context.Context, e *env, cmd *command, args []string) error {
	fs := e.newFlagSet(cmd)
	// Without --engine the demo makes its own (demoEngine): say so in the
	// help, rather than the default other commands use.
	ef := fs.Lookup("engine")
	ef.Usage += " (default: a new temporary directory, removed afterwards)"
	ef.DefValue = ""
	n := fs.Int("requests", 20, "how many thumbnail requests to send, all at once (1 to 100000)")
	conc := fs.Int("concurrency", 8, "how many thumbnails the responder makes at once (1 to 10000)")
	pos, err := e.parse(fs, cmd, args)
	if err != nil {
		return err
	}
	if err := exactArgs(pos); err != nil {
		return err
	}
	switch {
	case *n < 1 || *conc < 1:
		return usagef("--requests and --concurrency must be at least 1")
	case *n > maxDemoRequests:
		return usagef("--requests %d is above %d", *n, maxDemoRequests)
	case *conc > maxConcurrency:
		return usagef("--concurrency %d is above %d", *conc, maxConcurrency)
	}
	spec, cleanup, err := e.demoEngine(fs)
	if err != nil {
		return err
	}
	defer cleanup()
	s, err := open(ctx, spec, openOptions{})
	if err != nil {
		return err
	}
	defer s.close(ctx, e.stderr)

	out := &syncWriter{w: e.stdout}
	fmt.Fprintf(out, "demo: engine %s; %d requests to queue %s, %d thumbnails made at once\n", spec.raw, *n, demoQueue, *conc)
	t := &thumbnailer{victim: imageURL(min(3, *n)), out: out}
	if _, err := rsvp.HandleTyped(s.client, demoQueue, t.make, rsvp.HandleOptions{
		Concurrency: *conc,
		MaxAttempts: 3,
		Backoff:     func(int) time.Duration { return demoBackoff },
	}); err != nil {
		return fmt.Errorf("demo: start responder: %w", err)
	}
	// Client.Close, in s.close, stops the responder.
	return runRequests(ctx, s.client, *n, out)
}

// demoEngine returns the engine given with --engine, or a new temporary
// one and the function that removes it.
func (e *env) demoEngine(fs *flag.FlagSet) (engineSpec, func(), error) {
	if e.engineSet || isSet(fs, "engine") {
		spec, err := engineFlag(fs)
		return spec, func() {}, err
	}
	dir, err := os.MkdirTemp("", "rsvp-demo-*")
	if err != nil {
		return engineSpec{}, nil, fmt.Errorf("demo: engine directory: %w", err)
	}
	return engineSpec{raw: "embedded:" + dir, dir: dir}, func() { os.RemoveAll(dir) }, nil
}

func imageURL(i int) string {
	return fmt.Sprintf("https://images.example.com/photos/img-%03d.jpg", i)
}

// thumbnailer is the demo's responder. It fails the victim image once.
type thumbnailer struct {
	victim string
	failed atomic.Bool
	out    io.Writer
}

func (t *thumbnailer) make(ctx context.Context, req thumbnailRequest) (thumbnailReply, error) {
	u, err := url.Parse(req.ImageURL)
	if err != nil || u.Host == "" {
		return thumbnailReply{}, rsvp.Permanent(fmt.Errorf("image_url %q is not a URL", req.ImageURL))
	}
	if req.ImageURL == t.victim && t.failed.CompareAndSwap(false, true) {
		fmt.Fprintf(t.out, "demo: %s: attempt 1 failed (simulated: image store busy); retry in %s\n", path.Base(u.Path), demoBackoff)
		return thumbnailReply{}, errors.New("image store busy (simulated)")
	}
	work := time.NewTimer(time.Duration(5+rand.IntN(36)) * time.Millisecond)
	defer work.Stop()
	select {
	case <-work.C:
	case <-ctx.Done():
		return thumbnailReply{}, ctx.Err()
	}
	u.Path = path.Join("/thumb", path.Base(u.Path))
	return thumbnailReply{ThumbnailURL: u.String()}, nil
}

// demoResult is the outcome of one demo request.
type demoResult struct {
	image   int
	thumb   string
	latency time.Duration
	err     error
}

// runRequests sends n requests at once, prints a line per reply as it
// comes and a summary at the end.
func runRequests(ctx context.Context, c *rsvp.Client, n int, out io.Writer) error {
	results := make(chan demoResult, n) // no sender ever blocks
	var wg sync.WaitGroup
	defer wg.Wait()
	start := time.Now()
	for i := range n {
		wg.Go(func() { results <- callThumbnail(ctx, c, i+1) })
	}
	var latencies []time.Duration
	failed := 0
	for range n {
		r := <-results
		name := path.Base(imageURL(r.image))
		if r.err != nil {
			failed++
			fmt.Fprintf(out, "%s  FAILED: %v  %s\n", name, r.err, ms(r.latency))
			continue
		}
		latencies = append(latencies, r.latency)
		fmt.Fprintf(out, "%s  %s  %s\n", name, r.thumb, ms(r.latency))
	}
	elapsed := time.Since(start)
	fmt.Fprintf(out, "demo: %d requests, %d replies, %d failed, %s, %.0f req/s\n",
		n, len(latencies), failed, latencySummary(latencies), float64(n)/elapsed.Seconds())
	if failed > 0 {
		return fmt.Errorf("demo: %d of %d requests failed", failed, n)
	}
	return nil
}

func callThumbnail(ctx context.Context, c *rsvp.Client, image int) demoResult {
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()
	start := time.Now()
	resp, err := rsvp.Call[thumbnailRequest, thumbnailReply](ctx, c, demoQueue, thumbnailRequest{ImageURL: imageURL(image)})
	return demoResult{image: image, thumb: resp.ThumbnailURL, latency: time.Since(start), err: err}
}

// latencySummary returns "p50 X, max Y" of ls.
func latencySummary(ls []time.Duration) string {
	if len(ls) == 0 {
		return "p50 -, max -"
	}
	slices.Sort(ls)
	return fmt.Sprintf("p50 %s, max %s", ms(ls[(len(ls)+1)/2-1]), ms(ls[len(ls)-1]))
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}
