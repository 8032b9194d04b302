// Package cli implements the rsvp command: its subcommands, their flags and
// their exit codes. cmd/rsvp only wires it to the process.
package cli

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/rsvp-go/rsvp"
)

// Exit codes of Run.
const (
	exitOK      = 0 // success: a reply, a stored request, a clean stop
	exitFailure = 1 // remote error, timeout, engine unreachable, I/O error
	exitUsage   = 2 // unknown command, bad flag, missing or invalid argument
)

// defaultEngine is the engine used when neither --engine nor RSVP_ENGINE
// says otherwise.
const defaultEngine = "embedded:./rsvp-data"

const topUsage = `rsvp sends requests to named queues and waits for their replies, through a
durable engine: an embedded NATS JetStream server, an external one, or a
PostgreSQL database.

Usage:
  rsvp [--engine ENGINE] COMMAND [ARGUMENTS] [FLAGS]

Commands:
  request   send a request and wait for its reply
  send      store a request and print its correlation id, without waiting
  await     wait for the reply to a request sent earlier
  worker    answer the requests of a queue by running a shell command
  serve     serve the HTTP API (202 Accepted, status, result) on the engine
  key       make an API key for 'rsvp serve', or a webhook secret
  queues    show the queues: depth, in flight, responders, in/out per minute, dead letters
  requests  show a request: state, attempts, reply, dead letters ('requests get ID')
  dlq       list, show, replay or purge the dead letters of a queue
  workflow  start, inspect, signal, terminate or purge durable workflow instances
  migrate   create or upgrade the tables of a PostgreSQL engine
  demo      run the image-thumbnail scenario end to end
  bench     measure throughput and latency, and the engine's limits
  help      show the help of a command

Engine of the commands that use one (--engine before or after the command,
else $RSVP_ENGINE, else embedded:./rsvp-data):
  embedded:DIR       run the engine in this process, its data in DIR; when
                     another rsvp process already runs it, connect to that one
                     (start workers first: the engine stops with the process
                     that runs it, and the others lose it)
  embedded:mem       an in-memory engine private to this process (for trying
                     things out: nothing is kept)
  nats://HOST:PORT   an external NATS server with JetStream (2.10 or newer;
  tls://HOST:PORT    2.12 or newer for delays and workflow timers); several
                     URLs may be given, separated by commas
  postgres://...     a PostgreSQL database (tables in schema "rsvp", or
                     that of a schema=NAME parameter, made or upgraded on
                     first use, but by neither 'rsvp queues' nor 'rsvp
                     requests', which refuse it until then); not for
                     'rsvp bench'

Exit status: 0 on success, 1 on failure (the request failed or timed out, the
engine is unreachable, ...), 2 on a usage error. A command that is stopping
on SIGINT or SIGTERM ends at once on a second one. 'rsvp help' prints this text
to stdout and exits 0; 'rsvp' without a command prints it to stderr and
exits 2.

Run 'rsvp help COMMAND' for the flags of a command and an example.
`

// Run runs the rsvp command line args (without the program name) and
// returns the exit code: 0 success, 1 failure, 2 usage error. ctx ends the
// command early (a worker then stops gracefully). A nil stdin reads as
// empty.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	return e.main(ctx, args)
}

// env is what the commands share: the standard streams and the global
// flags.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	engine    string // global --engine, or its default
	engineSet bool   // whether --engine was given before the command
}

// command is one subcommand.
type command struct {
	name    string
	usage   string // the help text, before the flag list
	noFlags bool   // the help text lists no flags
	run     func(ctx context.Context, e *env, cmd *command, args []string) error
}

// commands returns the subcommands by name.
func commands() map[string]*command {
	cs := []*command{
		{name: "request", usage: requestUsage, run: runRequest},
		{name: "send", usage: sendUsage, run: runSend},
		{name: "await", usage: awaitUsage, run: runAwait},
		{name: "worker", usage: workerUsage, run: runWorker},
		{name: "serve", usage: serveUsage, run: runServe},
		{name: "key", usage: keyUsage, run: runKey},
		{name: "queues", usage: queuesUsage, run: runQueues},
		{name: "requests", usage: requestsUsage, run: runRequestsCmd},
		{name: "dlq", usage: dlqUsage, run: runDLQ},
		{name: "workflow", usage: workflowUsage, run: runWorkflow},
		{name: "migrate", usage: migrateUsage, run: runMigrate},
		{name: "demo", usage: demoUsage, run: runDemo},
		{name: "bench", usage: benchUsage, run: runBench},
		{name: "help", usage: helpUsage, noFlags: true, run: runHelp},
	}
	m := make(map[string]*command, len(cs))
	for _, c := range cs {
		m[c.name] = c
	}
	return m
}

func (e *env) main(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("rsvp", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by report
	fs.Usage = func() {}
	fs.StringVar(&e.engine, "engine", cmp.Or(os.Getenv("RSVP_ENGINE"), defaultEngine), "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(e.stdout, topUsage)
			return exitOK
		}
		fmt.Fprintf(e.stderr, "rsvp: %v\nRun 'rsvp help' for usage.\n", err)
		return exitUsage
	}
	e.engineSet = isSet(fs, "engine")
	if fs.NArg() == 0 {
		fmt.Fprint(e.stderr, topUsage)
		return exitUsage
	}
	name := fs.Arg(0)
	cmd, ok := commands()[name]
	if !ok {
		fmt.Fprintf(e.stderr, "rsvp: unknown command %q\nRun 'rsvp help' for the list of commands.\n", name)
		return exitUsage
	}
	return e.report(cmd, cmd.run(ctx, e, cmd, fs.Args()[1:]))
}

// report prints err, if any, and returns the exit code it stands for.
func (e *env) report(cmd *command, err error) int {
	var uerr *usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &uerr), errors.Is(err, rsvp.ErrInvalid):
		fmt.Fprintf(e.stderr, "rsvp %s: %s\nRun 'rsvp help %s' for usage.\n", cmd.name, errText(err), cmd.name)
		return exitUsage
	default:
		fmt.Fprintf(e.stderr, "rsvp: %s\n", errText(err))
		return exitFailure
	}
}

// errText is the text of err without a leading "rsvp: " (a library
// error's), which would repeat the prefix of the message it goes into.
func errText(err error) string {
	return strings.TrimPrefix(err.Error(), "rsvp: ")
}

// usageError is a mistake in the command line: exit code 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// newFlagSet returns the flag set of cmd, with the --engine flag every
// command that opens the engine accepts.
func (e *env) newFlagSet(cmd *command) *flag.FlagSet {
	fs := bareFlagSet(cmd)
	fs.String("engine", e.engine, "`engine`: embedded:DIR, embedded:mem, nats://HOST:PORT, tls://HOST:PORT or postgres://...")
	return fs
}

// bareFlagSet returns an empty flag set for cmd.
func bareFlagSet(cmd *command) *flag.FlagSet {
	fs := flag.NewFlagSet("rsvp "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by report, help by parse
	fs.Usage = func() {}
	return fs
}

// parse parses args with fs, allowing flags before, between and after the
// positional arguments, which it returns. "--" ends the flags. On --help it
// prints the help of cmd to stdout and returns flag.ErrHelp.
func (e *env) parse(fs *flag.FlagSet, cmd *command, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				e.printHelp(fs, cmd)
				return nil, err
			}
			return nil, &usageError{err}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if stop := len(args) - len(rest) - 1; stop >= 0 && args[stop] == "--" {
			return append(pos, rest...), nil // everything after "--"
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func (e *env) printHelp(fs *flag.FlagSet, cmd *command) {
	fmt.Fprint(e.stdout, cmd.usage)
	if cmd.noFlags {
		return
	}
	fmt.Fprint(e.stdout, "\nFlags:\n")
	fs.SetOutput(e.stdout)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// isSet reports whether the flag name was given on the command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// exactArgs checks that pos holds exactly the arguments named.
func exactArgs(pos []string, names ...string) error {
	if len(pos) < len(names) {
		return usagef("missing %s", strings.Join(names[len(pos):], " and "))
	}
	if len(pos) > len(names) {
		return usagef("unexpected argument %q", pos[len(names)])
	}
	return nil
}

const helpUsage = `Usage: rsvp help [COMMAND]

Print the list of commands, or the help of COMMAND, to stdout.

Example:
  rsvp help worker
`

func runHelp(ctx context.Context, e *env, cmd *command, args []string) error {
	args, err := e.parse(bareFlagSet(cmd), cmd, args)
	if err != nil {
		return err
	}
	switch len(args) {
	case 0:
		fmt.Fprint(e.stdout, topUsage)
		return nil
	case 1:
		target, ok := commands()[args[0]]
		if !ok {
			return usagef("unknown command %q", args[0])
		}
		return target.run(ctx, e, target, []string{"--help"})
	default:
		return usagef("unexpected argument %q", args[1])
	}
}
