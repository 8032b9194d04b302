package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

// maxBody is the largest request or reply body the commands accept, the
// client's limit too.
const maxBody = 1 << 20

// closeTimeout bounds closing the client on exit.
const closeTimeout = 10 * time.Second

// engineCloseTimeout bounds closing the engine on exit, after the client.
const engineCloseTimeout = 5 * time.Second

// engineSpec is a parsed --engine value.
type engineSpec struct {
	raw    string // as given, with its credentials hidden: for messages
	memory bool   // embedded:mem
	dir    string // embedded:DIR
	url    string // nats://... or tls://...
	pg     string // postgres://... (or postgresql://)
	schema string // of pg's schema=NAME parameter: rsvp's schema (rsvppg.Options.Schema)
}

// pgOptions are the rsvppg options of spec. The schema parameter is rsvp's,
// not one for the server, which would refuse it: the driver reads the URL
// as it is, and its connections leave that parameter out.
func (spec engineSpec) pgOptions(log *slog.Logger) rsvppg.Options {
	return rsvppg.Options{Schema: spec.schema, Logger: log, ConnConfig: func(c *pgx.ConnConfig) { delete(c.RuntimeParams, "schema") }}
}

// parseEngine parses an --engine value. Its errors are usage errors.
func parseEngine(s string) (engineSpec, error) {
	spec := engineSpec{raw: rsvpnats.Redact(s)}
	switch {
	case s == "embedded:mem":
		spec.memory = true
	case strings.HasPrefix(s, "embedded:"):
		spec.dir = strings.TrimPrefix(s, "embedded:")
		if spec.dir == "" {
			return spec, usagef("engine %q names no directory: use embedded:DIR or embedded:mem", spec.raw)
		}
	case strings.HasPrefix(s, "nats://"), strings.HasPrefix(s, "tls://"):
		spec.url = s
	case strings.HasPrefix(s, "postgres://"), strings.HasPrefix(s, "postgresql://"):
		spec.pg, spec.raw = s, rsvppg.Redact(s)         // also a password=... parameter
		if cfg, err := pgx.ParseConfig(s); err == nil { // else opening it says what is wrong
			schema, given := cfg.RuntimeParams["schema"] // read as the driver reads the URL
			if given && schema == "" {                   // an unset shell variable, say: not the default schema
				return spec, usagef("engine %s: the schema parameter is empty: name a schema, or leave the parameter out for schema rsvp", spec.raw)
			}
			spec.schema = schema
		}
	default:
		return spec, usagef("engine %q is not one of embedded:DIR, embedded:mem, nats://HOST:PORT, tls://HOST:PORT, postgres://...", spec.raw)
	}
	return spec, nil
}

// engineFlag parses the --engine flag of fs.
func engineFlag(fs *flag.FlagSet) (engineSpec, error) {
	return parseEngine(fs.Lookup("engine").Value.String())
}

// session is an open engine and a client on it.
type session struct {
	spec    engineSpec
	backend backend.Backend
	client  *rsvp.Client
}

// engineLost returns a channel closed when b can no longer reach its
// engine for good (rsvpnats.Backend.Done), or nil if b does not say.
func engineLost(b backend.Backend) <-chan struct{} {
	if d, ok := b.(interface{ Done() <-chan struct{} }); ok {
		return d.Done()
	}
	return nil
}

// openOptions tune open for the command at hand.
type openOptions struct {
	log *slog.Logger // for the backend and the client; nil: discard
}

// open opens the engine of spec and a client on it.
func open(ctx context.Context, spec engineSpec, o openOptions) (*session, error) {
	b, err := openBackend(ctx, spec, o.log)
	if err != nil {
		return nil, err
	}
	c, err := rsvp.New(ctx, b, rsvp.Config{MaxBodySize: maxBody, Logger: o.log})
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("start client on engine %s: %w", spec.raw, err)
	}
	return &session{spec: spec, backend: b, client: c}, nil
}

func openBackend(ctx context.Context, spec engineSpec, log *slog.Logger) (backend.Backend, error) {
	opts := rsvpnats.Options{Logger: log}
	var (
		b   backend.Backend
		err error
	)
	switch {
	case spec.memory:
		opts.Memory = true
		b, err = rsvpnats.Embedded("", opts)
	case spec.dir != "":
		opts.Listen = true // so that other rsvp processes on dir can connect
		b, err = rsvpnats.Embedded(spec.dir, opts)
	case spec.pg != "":
		b, err = rsvppg.Open(ctx, spec.pg, spec.pgOptions(log))
	default:
		b, err = rsvpnats.Connect(ctx, spec.url, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot open engine %s: %w", spec.raw, err)
	}
	return b, nil
}

// close closes the client, then the engine. A failure is worth a warning
// only: the command's work is done or abandoned by now.
func (s *session) close(ctx context.Context, stderr io.Writer) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	defer cancel()
	if err := errors.Join(s.client.Close(ctx), closeBackend(s.backend)); err != nil {
		fmt.Fprintf(stderr, "rsvp: warning: closing the engine: %v\n", err)
	}
}

// closeBackend closes b, waiting up to engineCloseTimeout: a database that
// stopped answering would hold the process for long (the PostgreSQL
// driver gives each connection whose query was abandoned 15s to cancel
// it). The process exits soon after; the engine's side ends with it.
func closeBackend(b backend.Backend) error {
	done := make(chan error, 1)
	go func() { done <- b.Close() }()
	t := time.NewTimer(engineCloseTimeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("the engine did not close within %s; exiting without waiting", engineCloseTimeout)
	}
}
