// Command peerbench runs rsvp's round-trip workload on other request-reply
// stacks, printing the results as `rsvp bench` does.
//
//	peerbench PEER [-c N] [-d DUR] [--rate R] [--size BYTES] [--warmup DUR] [--handlers N] [--json]
//	peerbench all  [same flags]
//
// The flags mean what they mean to `rsvp bench roundtrip`.
// "all" runs every peer whose server answers and says on stderr which it
// skipped. The exit status is 1 if any result is not OK (a failed, lost or
// duplicated reply) or a peer could not run, 2 for bad usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rsvp-go/rsvp/bench"
	"github.com/rsvp-go/rsvp/bench/peers"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("peerbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	conc := fs.Int("c", 64, "how many requests are in flight: in a closed loop, the workers; with --rate, the most")
	dur := fs.Duration("d", 10*time.Second, "how long each run measures")
	rate := fs.Float64("rate", 0, "requests started per second, in an open loop; 0: a closed loop")
	size := fs.Int("size", 1024, "request body size in `bytes`")
	warmup := fs.Duration("warmup", time.Second, "how long each run first runs unmeasured")
	handlers := fs.Int("handlers", 0, "how many requests the responder handles at once (default max(-c, 8), at most 256)")
	asJSON := fs.Bool("json", false, "print each result as one line of JSON")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: peerbench PEER|all [-c N] [-d DUR] [--rate R] [--size BYTES] [--warmup DUR] [--handlers N] [--json]\npeers: %s\n",
			strings.Join(peers.Names(), ", "))
		fs.PrintDefaults()
	}
	// The peer may stand before, between or after the flags.
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(positional) != 1 {
		fs.Usage()
		return 2
	}

	var todo []peers.Peer
	all := positional[0] == "all"
	if all {
		todo = peers.All()
	} else {
		p, ok := peers.Lookup(positional[0])
		if !ok {
			fmt.Fprintf(stderr, "peerbench: no peer %q (peers: %s)\n", positional[0], strings.Join(peers.Names(), ", "))
			return 2
		}
		todo = []peers.Peer{p}
	}

	switch {
	case *conc < 1:
		fmt.Fprintf(stderr, "peerbench: -c %d: concurrency must be at least 1\n", *conc)
		return 2
	case *dur <= 0 || *warmup < 0:
		fmt.Fprintln(stderr, "peerbench: -d must be positive and --warmup not negative")
		return 2
	case *size < 0 || *handlers < 0:
		fmt.Fprintln(stderr, "peerbench: --size and --handlers must not be negative")
		return 2
	}

	opts := peers.Options{Concurrency: *conc, Workers: *handlers, Size: *size}
	cfg := bench.Config{Concurrency: *conc, Rate: *rate, Duration: *dur, Warmup: *warmup, Progress: stderr}
	failed, ran := false, 0
	for _, p := range todo {
		if err := p.Reachable(ctx, opts); err != nil {
			if all && errors.Is(err, peers.ErrUnreachable) {
				fmt.Fprintf(stderr, "peerbench: skipping %s: %v\n", p.Name, err)
				continue
			}
			fmt.Fprintf(stderr, "peerbench: %v\n", err)
			failed = true
			continue
		}
		res, err := p.Run(ctx, opts, cfg)
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "peerbench: interrupted")
			return 1
		}
		if err != nil {
			fmt.Fprintf(stderr, "peerbench: %s: %v\n", p.Name, err)
			failed = true
			if res.Ops+res.Errors+res.Lost == 0 {
				continue // nothing ran
			}
		}
		if *asJSON {
			fmt.Fprintln(stdout, res.JSON())
		} else {
			fmt.Fprintf(stdout, "%s\n\n", res)
		}
		ran++
		if !res.OK() {
			failed = true
		}
	}
	if failed || ran == 0 {
		return 1
	}
	return 0
}
