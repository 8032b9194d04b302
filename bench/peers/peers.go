// Package peers runs the round-trip workload of `rsvp bench` on other
// request-reply stacks, so that rsvp's numbers can be read against theirs:
// a hand-written JetStream loop, Watermill's request-reply component,
// RabbitMQ RPC with direct reply-to, asynq and River.
//
// Every peer runs the same workload through the shared harness
// (github.com/rsvp-go/rsvp/bench): a requester sends a request body of
// Options.Size bytes carrying the harness id, an echo responder in the same
// process replies, the requester waits for the correlated reply, and the
// operation returns the id the reply carried. Each peer is set up in its
// most natural durable configuration; README.md says which, and how durable
// that is.
//
// The package lives in its own module so that the main module does not
// depend on the peers' client libraries.
package peers

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/rsvp-go/rsvp/bench"
)

// Environment variables naming the peers' servers, and their defaults.
const (
	EnvRedis    = "RSVP_PEER_REDIS"    // host:port
	EnvAMQP     = "RSVP_PEER_AMQP"     // amqp:// URL
	EnvPostgres = "RSVP_PEER_POSTGRES" // postgres:// URL or key=value DSN

	DefaultRedis    = "127.0.0.1:6379"
	DefaultAMQP     = "amqp://guest:guest@127.0.0.1:5672/"
	DefaultPostgres = "postgres://postgres@127.0.0.1:5432/test"
)

// Options configure a peer. The zero value works: servers come from the
// environment or the defaults above.
type Options struct {
	// Concurrency is how many requests may be in flight: the harness's
	// Config.Concurrency. Default 1.
	Concurrency int
	// Workers is the responder's concurrency. Default Concurrency, at least
	// 8 (as `rsvp bench` does) and at most 256.
	Workers int
	// Size is the request body in bytes; the reply echoes it. Default 1024.
	Size int

	// Redis is asynq's server, host:port. Default $RSVP_PEER_REDIS, else
	// DefaultRedis.
	Redis string
	// AMQP is RabbitMQ's URL. Default $RSVP_PEER_AMQP, else DefaultAMQP.
	AMQP string
	// Postgres is River's database. Default $RSVP_PEER_POSTGRES, else
	// DefaultPostgres (and, if its user is refused, the same with user root).
	Postgres string
}

func (o Options) withDefaults() Options {
	o.Concurrency = cmp.Or(o.Concurrency, 1)
	o.Workers = cmp.Or(o.Workers, min(max(o.Concurrency, 8), 256))
	o.Size = cmp.Or(o.Size, 1024)
	o.Redis = cmp.Or(o.Redis, os.Getenv(EnvRedis), DefaultRedis)
	o.AMQP = cmp.Or(o.AMQP, os.Getenv(EnvAMQP), DefaultAMQP)
	o.Postgres = cmp.Or(o.Postgres, os.Getenv(EnvPostgres), DefaultPostgres)
	return o
}

func (o Options) validate() error {
	var errs []error
	if o.Concurrency < 1 || o.Workers < 1 {
		errs = append(errs, fmt.Errorf("concurrency %d and workers %d must be at least 1", o.Concurrency, o.Workers))
	}
	if o.Size < 0 {
		errs = append(errs, fmt.Errorf("size %d is negative", o.Size))
	}
	return errors.Join(errs...)
}

// Peer is one request-reply stack.
type Peer struct {
	// Name is what peerbench calls it: "raw-jetstream", "asynq", ...
	Name string
	// Server names the server it needs ("embedded" when it runs one
	// inside this process).
	Server string

	addr  func(Options) (string, error) // host:port to reach; nil: embedded
	start func(ctx context.Context, o Options) (*instance, error)
}

// instance is a peer set up and ready: requester and responder.
type instance struct {
	engine string       // Result.Engine: name and durability class
	op     bench.Op     // one request-reply
	close  func() error // stops the responder and releases everything
}

// All returns every peer, in the order peerbench runs them.
func All() []Peer {
	return []Peer{rawJetStream, rawJetStreamFsync, watermillPeer, rabbitPeer, asynqPeer, riverPeer}
}

// Lookup returns the peer called name.
func Lookup(name string) (Peer, bool) {
	for _, p := range All() {
		if p.Name == name {
			return p, true
		}
	}
	return Peer{}, false
}

// Names lists the peers' names.
func Names() []string {
	var names []string
	for _, p := range All() {
		names = append(names, p.Name)
	}
	return names
}

// ErrUnreachable says that a peer's server does not answer.
var ErrUnreachable = errors.New("peers: server unreachable")

// Reachable reports whether the peer's server accepts TCP connections (an
// embedded server always does). It fails with ErrUnreachable if not.
func (p Peer) Reachable(ctx context.Context, o Options) error {
	if p.addr == nil {
		return nil
	}
	o = o.withDefaults()
	addr, err := p.addr(o)
	if err != nil {
		return fmt.Errorf("peers: %s: %w", p.Name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("%w: %s needs %s at %s: %v", ErrUnreachable, p.Name, p.Server, addr, err)
	}
	return conn.Close()
}

// Run sets the peer up, drives its round trip through bench.Run with cfg
// (Workload and Engine are filled in; Concurrency comes from cfg when
// o.Concurrency is 0) and tears it down. Failed operations are counted in
// the Result; an error means the peer could not be set up or torn down, or
// ctx ended.
func (p Peer) Run(ctx context.Context, o Options, cfg bench.Config) (bench.Result, error) {
	if o.Concurrency == 0 {
		o.Concurrency = cfg.Concurrency
		if o.Concurrency == 0 && cfg.Rate > 0 {
			o.Concurrency = 10_000 // the harness's open-loop default
		}
	}
	o = o.withDefaults()
	if err := o.validate(); err != nil {
		return bench.Result{}, fmt.Errorf("peers: %w", err)
	}
	in, err := p.start(ctx, o)
	if err != nil {
		return bench.Result{}, fmt.Errorf("peers: start %s: %w", p.Name, err)
	}
	cfg.Workload = "roundtrip"
	cfg.Engine = in.engine
	res, err := bench.Run(ctx, cfg, in.op)
	if cerr := in.close(); cerr != nil && err == nil {
		err = fmt.Errorf("peers: stop %s: %w", p.Name, cerr)
	}
	return res, err
}

// payload returns a request body of size bytes (more if the id needs it)
// that starts with id and a newline.
func payload(id string, size int) []byte {
	b := make([]byte, max(size, len(id)+1))
	copy(b, id)
	b[len(id)] = '\n'
	for i := len(id) + 1; i < len(b); i++ {
		b[i] = 'x'
	}
	return b
}

// payloadID returns the id a body made by payload carries.
func payloadID(b []byte) string {
	id, _, _ := bytes.Cut(b, []byte{'\n'})
	return string(id)
}

// hostPort returns host:port, adding port if hostport has none.
func hostPort(hostport, port string) string {
	if _, _, err := net.SplitHostPort(hostport); err == nil {
		return hostport
	}
	return net.JoinHostPort(strings.Trim(hostport, "[]"), port)
}

// closeStack closes what a peer opened, last first.
type closeStack []func() error

func (c *closeStack) push(f func() error) { *c = append(*c, f) }

func (c closeStack) close() error {
	var errs []error
	for i := len(c) - 1; i >= 0; i-- {
		errs = append(errs, c[i]())
	}
	return errors.Join(errs...)
}
