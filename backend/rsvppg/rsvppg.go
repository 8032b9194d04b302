package rsvppg

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/internal/tally"
)

// Options configures a backend. The zero value works.
type Options struct {
	// Schema is the PostgreSQL schema that holds rsvp's tables, so that
	// several applications can share one database. It is created if
	// missing. Lower-case letters, digits and '_', starting with a letter or
	// '_', at most 48 bytes. Default "rsvp".
	Schema string
	// ReplyRetention is how long replies and events are kept. Default 24h.
	ReplyRetention time.Duration
	// DedupeWindow is how long a request id (and an event's DedupeKey) is
	// remembered so that storing it again stores nothing. Default 2m.
	DedupeWindow time.Duration
	// DeadLetterRetention is how long dead letters are kept. Default 14 days.
	DeadLetterRetention time.Duration
	// Timeout bounds each call to the database that has no deadline of its
	// own, and Open. Default 10s.
	Timeout time.Duration
	// PollInterval is how often an idle consumer looks for requests while
	// the listening connection is down and notifications may be missed.
	// While it is up, an idle consumer waits for a notification or for the
	// time its queue's next delayed or leased request comes due, and looks
	// once a minute besides. Default 1s.
	PollInterval time.Duration
	// CleanupInterval is how often expired replies, events, dead letters and
	// dedupe markers are deleted, in batches. Default 1m.
	CleanupInterval time.Duration
	// MaxConns bounds each of the backend's four connection pools (one for
	// writes that wait for the disk, one for the rest, one for the
	// enqueues of session requests that wait for their session's lock,
	// and one for the transactions of handlers and of the application
	// (Delivery.Begin, HandleTx, Pool); the last two open connections only
	// for them); one more connection listens for notifications. Default 8.
	MaxConns int32
	// MaxMessageSize is the largest request, reply, dead letter or event
	// accepted, in bytes of body (or data) and headers. Default 8 MiB.
	MaxMessageSize int
	// DurableSettle makes leases and settlements (taking a request,
	// Ack, Nack, Extend) wait for their commit to reach the disk, as
	// requests, replies, dead letters and events always do. By default they
	// commit with synchronous_commit off: a crash of the database server may
	// forget the last fraction of a second of them, so that a request comes
	// back whose reply is already stored (the responder then just
	// acknowledges it) or with an attempt count one lower. Nothing stored
	// for a requester is lost either way. Default false.
	DurableSettle bool
	// ConnConfig, if set, may change the configuration of every connection
	// the backend makes (TLS, a query tracer, runtime parameters, ...),
	// after it is parsed from the URL.
	ConnConfig func(*pgx.ConnConfig)
	// Logger receives the backend's log lines. Default: discard.
	Logger *slog.Logger
	// SkipMigrate makes Open leave the schema as it is: it fails with
	// ErrSchemaNotReady unless the schema exists at SchemaVersion. For
	// tools that must not change the database, such as the operator's
	// commands, and for deployments that migrate in a step of their own
	// (Migrate). Default false: Open creates or upgrades the schema.
	SkipMigrate bool

	listenCheck time.Duration // see listenCheck; set by tests
}

func (o Options) withDefaults() Options {
	o.Schema = cmp.Or(o.Schema, "rsvp")
	o.ReplyRetention = cmp.Or(o.ReplyRetention, 24*time.Hour)
	o.DedupeWindow = cmp.Or(o.DedupeWindow, 2*time.Minute)
	o.DeadLetterRetention = cmp.Or(o.DeadLetterRetention, 14*24*time.Hour)
	o.Timeout = cmp.Or(o.Timeout, 10*time.Second)
	o.PollInterval = cmp.Or(o.PollInterval, time.Second)
	o.CleanupInterval = cmp.Or(o.CleanupInterval, time.Minute)
	o.MaxConns = cmp.Or(o.MaxConns, 8)
	o.MaxMessageSize = cmp.Or(o.MaxMessageSize, 8<<20)
	o.listenCheck = cmp.Or(o.listenCheck, listenCheck)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,47}$`)

func (o Options) validate() error {
	var errs []error
	if !schemaName.MatchString(o.Schema) {
		errs = append(errs, fmt.Errorf("schema %q: want lower-case letters, digits and '_', starting with a letter or '_', at most 48 bytes", o.Schema))
	}
	if o.ReplyRetention < 0 || o.DedupeWindow < 0 || o.DeadLetterRetention < 0 || o.Timeout < 0 ||
		o.PollInterval < 0 || o.CleanupInterval < 0 {
		errs = append(errs, errors.New("durations must not be negative"))
	}
	if o.MaxConns < 2 {
		errs = append(errs, fmt.Errorf("MaxConns %d: want at least 2", o.MaxConns))
	}
	if o.MaxMessageSize < 0 {
		errs = append(errs, errors.New("MaxMessageSize must not be negative"))
	}
	return errors.Join(errs...)
}

// Backend is a backend.Backend on PostgreSQL.
type Backend struct {
	opts    Options
	url     string // redacted, for messages
	channel string // the notification channel of the schema
	sql     queries
	durable *pgxpool.Pool // commits wait for the disk
	fast    *pgxpool.Pool // settlements and reads; see Options.DurableSettle
	// lockWait is for session enqueues that wait for their session's lock
	// (see sessionQueues), so that they cannot take the connections of
	// durable that other writes need. Its commits wait for the disk.
	lockWait *pgxpool.Pool
	// txs is for transactions that others hold open for as long as they
	// like (Delivery.Begin, so HandleTx's handlers; the application's, from
	// Pool), so that they cannot take the connections of durable either:
	// a handler's Progress or Send would wait for a handler to end. Its
	// commits wait for the disk.
	txs *pgxpool.Pool

	enqueues *batcher[*backend.Message, struct{}]
	replies  *batcher[replyItem, bool]
	events   *batcher[*backend.Event, uint64]
	acks     *batcher[leaseRef, bool]
	sessions sessionQueues // enqueues of session requests

	reg      registry    // local consumers and subscriptions, by what wakes them
	notes    chan string // notification payloads for the dispatcher
	outbox   chan string // notifications for the notifier to send
	listenUp atomic.Bool // the listening connection is up

	instance    string        // names the backend in its consumers' ids
	consumerSeq atomic.Uint64 // numbers its consumers
	tally       *tally.Tally  // counts the requests acknowledged per queue (rates.go)

	life context.Context // ends at Close
	end  context.CancelFunc
	wg   sync.WaitGroup // every goroutine the backend starts

	closeOnce sync.Once
}

var _ backend.Backend = (*Backend)(nil)

// Open connects to the database at url (a postgres:// URL or a key=value
// connection string, as pgx reads them), creates or upgrades the schema
// (see Migrate) and starts listening for notifications. It fails with a
// clear error, within Options.Timeout unless ctx ends first, when the
// server cannot be reached, refuses the credentials, or holds a schema of a
// newer rsvp (ErrSchemaTooNew); with Options.SkipMigrate, also when the
// schema is missing or older (ErrSchemaNotReady).
func Open(ctx context.Context, url string, opts Options) (*Backend, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("rsvppg: %w", err)
	}
	ctx, cancel := withDefaultTimeout(ctx, opts.Timeout)
	defer cancel()
	b := &Backend{opts: opts, url: Redact(url), channel: "rsvp:" + opts.Schema, sql: newQueries(opts.Schema),
		notes: make(chan string, 1024), outbox: make(chan string, 4096), instance: newInstanceID()}
	b.life, b.end = context.WithCancel(context.Background())
	b.reg.init()
	if err := b.connect(ctx, url); err != nil {
		b.end()
		return nil, err
	}
	conn, err := b.dialListener(ctx)
	if err != nil {
		b.closePools()
		b.end()
		return nil, err
	}
	b.startBatchers()
	b.tally = tally.Start(tally.Interval, min(opts.Timeout, tally.StoreTimeout), opts.Logger, b.storeCounts)
	b.goRun(func() { b.listen(conn) })
	b.goRun(b.dispatch)
	b.goRun(b.notifier)
	b.goRun(b.cleanup)
	b.goRun(b.heartbeat)
	return b, nil
}

// connect makes the four pools, checks that the server answers and
// migrates.
func (b *Backend) connect(ctx context.Context, url string) error {
	var err error
	if b.durable, err = b.newPool(ctx, url, false); err != nil {
		return err
	}
	if b.fast, err = b.newPool(ctx, url, !b.opts.DurableSettle); err != nil {
		b.durable.Close()
		return err
	}
	if b.lockWait, err = b.newPool(ctx, url, false); err != nil {
		b.durable.Close()
		b.fast.Close()
		return err
	}
	if b.txs, err = b.newPool(ctx, url, false); err != nil {
		b.durable.Close()
		b.fast.Close()
		b.lockWait.Close()
		return err
	}
	if err := b.durable.Ping(ctx); err != nil {
		b.closePools()
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("rsvppg: connect to %s: no answer in time (Open waits up to Options.Timeout, %s, unless its context says otherwise): %w",
				b.url, b.opts.Timeout, err)
		}
		return fmt.Errorf("rsvppg: connect to %s: %w", b.url, err)
	}
	check := migrate
	if b.opts.SkipMigrate {
		check = checkSchema
	}
	if err := check(ctx, b.durable, b.opts.Schema); err != nil {
		b.closePools()
		return err
	}
	return nil
}

func (b *Backend) newPool(ctx context.Context, url string, async bool) (*pgxpool.Pool, error) {
	cfg, err := poolConfig(url, b.opts, async)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("rsvppg: connect to %s: %w", b.url, err)
	}
	return pool, nil
}

// poolConfig parses url into a pool configuration. With async, the pool's
// commits do not wait for the disk.
func poolConfig(url string, opts Options, async bool) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("rsvppg: database URL %s: %w", Redact(url), err)
	}
	cfg.MaxConns = opts.MaxConns
	cfg.ConnConfig.RuntimeParams["application_name"] = cmp.Or(cfg.ConnConfig.RuntimeParams["application_name"], "rsvp")
	if async {
		cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	}
	if opts.ConnConfig != nil {
		opts.ConnConfig(cfg.ConnConfig)
	}
	return cfg, nil
}

func (b *Backend) closePools() {
	b.durable.Close()
	b.fast.Close()
	b.lockWait.Close()
	b.txs.Close()
}

// goRun runs f on a goroutine that Close waits for.
func (b *Backend) goRun(f func()) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f()
	}()
}

// Close ends the consumers and subscriptions, waits for the backend's
// goroutines (a database call in flight finishes first, within
// Options.Timeout) and closes the connections. Deliveries handed out can no
// longer be settled: their leases run out. Close is safe to call twice.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.end()
		b.wg.Wait()
		b.tally.Close() // after the last ack
		b.closePools()
	})
	return nil
}

// Pool returns a pool whose commits wait for the disk, for programs that
// also use the database directly (with EnqueueTx, say). It is the pool of
// handlers' transactions (Delivery.Begin), not the one of the backend's
// own writes, which an open transaction of the caller's cannot hold up.
func (b *Backend) Pool() *pgxpool.Pool { return b.txs }

// Redact hides the password in a database URL or connection string, for
// messages and logs.
func Redact(url string) string {
	url = urlPassword.ReplaceAllString(url, "$1:***@")
	return kvPassword.ReplaceAllString(url, "${1}***")
}

var (
	urlPassword = regexp.MustCompile(`(://[^:@/]*):[^@/]*@`)
	kvPassword  = regexp.MustCompile(`(password=)('(\\.|[^'])*'|\S*)`)
)

// withDefaultTimeout bounds ctx by d unless it has a deadline already.
func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// callCtx bounds a call by Options.Timeout unless ctx has a deadline, and
// fails it at once when the backend is closed.
func (b *Backend) callCtx(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if b.life.Err() != nil {
		return nil, nil, backend.ErrClosed
	}
	ctx, cancel := withDefaultTimeout(ctx, b.opts.Timeout)
	return ctx, cancel, nil
}

// opCtx is the context of work the backend does on its own behalf
// (batches, claims, clean-up): it outlives the callers that started it but
// not Options.Timeout.
func (b *Backend) opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), b.opts.Timeout)
}
