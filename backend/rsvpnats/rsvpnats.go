// Package rsvpnats is the NATS JetStream backend of rsvp.
//
// Embedded runs a nats-server inside the process, with its data in a
// directory (or in memory, for tests); Connect uses an external server or
// cluster. Both create their streams idempotently, so any number of
// processes can share one engine: responders on the same queue compete for
// its requests.
//
// What an external server's version gives:
//
//   - Before 2.10: nothing. Connect refuses it (its consumers cannot have
//     several filter subjects, so no responder could take a request).
//   - 2.10 and 2.11: everything but scheduled requests. Enqueue refuses a
//     request with Message.NotBefore in the future, storing nothing (the
//     server would keep it and never deliver it); rsvp's Send then fails,
//     and a request sent with a deadline gets no expiry task (see
//     rsvp.ExpiryQueue). On 2.10, moreover, "first reply wins" holds per
//     reply inbox only (docs/wire.md, section 14).
//   - 2.12 and newer, and the embedded engine: everything.
//
// Both errors wrap errors.ErrUnsupported and name the server's version.
// Connect reads the version of the server it connects to, and whether
// scheduled requests work from the stream RSVP_REQUESTS as the engine
// stored it (a server before 2.12 drops the setting), once, when it opens.
// In a cluster, run every server at the same version: while one is older,
// rsvp gets what that one gives only if it is the one connected to or the
// one that stored the stream, so an upgrade is done once every process has
// reconnected after it.
//
// docs/wire.md describes the streams, subjects and headers, for programs that
// speak to the engine with a plain NATS client.
package rsvpnats

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/internal/tally"
)

// Options configures a backend. The zero value works.
type Options struct {
	// ReplyRetention is how long replies are kept for Await. Default 24h.
	ReplyRetention time.Duration
	// DedupeWindow is how long a request id is remembered so that sending it
	// again stores nothing. Default 2m.
	DedupeWindow time.Duration
	// DeadLetterRetention is how long dead letters are kept. Default 14 days.
	DeadLetterRetention time.Duration
	// Timeout bounds each call to the engine that has no deadline of its own.
	// Default 10s.
	Timeout time.Duration
	// Logger receives the backend's log lines. Default: discard.
	Logger *slog.Logger

	// NATSOptions are passed to nats.Connect (credentials, TLS, ...). Connect
	// only. A nats.ClosedHandler given here is replaced: watch Backend.Done.
	NATSOptions []nats.Option

	// The fields below apply to Embedded only.

	// Sync chooses when the embedded engine fsyncs. Default SyncAlways.
	Sync Sync
	// SyncInterval is the fsync period for SyncInterval. Default 1s.
	SyncInterval time.Duration
	// Memory keeps everything in memory: nothing survives Close. For tests.
	Memory bool
	// Listen serves the embedded engine on a loopback TCP port, guarded by a
	// random token. The address and token are written to the data directory
	// (mode 0600), where another process opening the same directory finds
	// them and connects instead of failing on the lock. Default: no port.
	Listen bool
}

// Sync is the fsync policy of the embedded engine.
type Sync int

const (
	// SyncAlways fsyncs before acknowledging every write: an acknowledged
	// request survives a process kill and a power cut.
	SyncAlways Sync = iota
	// SyncInterval fsyncs every Options.SyncInterval: an acknowledged request
	// survives a process kill, but a power cut may lose the last interval.
	SyncInterval
)

func (o Options) withDefaults() Options {
	o.ReplyRetention = cmp.Or(o.ReplyRetention, 24*time.Hour)
	o.DedupeWindow = cmp.Or(o.DedupeWindow, 2*time.Minute)
	o.DeadLetterRetention = cmp.Or(o.DeadLetterRetention, 14*24*time.Hour)
	o.Timeout = cmp.Or(o.Timeout, 10*time.Second)
	o.SyncInterval = cmp.Or(o.SyncInterval, time.Second)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

func (o Options) validate() error {
	var errs []error
	if o.ReplyRetention < 0 || o.DedupeWindow < 0 || o.DeadLetterRetention < 0 || o.Timeout < 0 || o.SyncInterval < 0 {
		errs = append(errs, errors.New("durations must not be negative"))
	}
	if o.Sync != SyncAlways && o.Sync != SyncInterval {
		errs = append(errs, fmt.Errorf("unknown Sync %d", o.Sync))
	}
	return errors.Join(errs...)
}

// Backend is a backend.Backend on NATS JetStream.
type Backend struct {
	opts    Options
	nc      *nats.Conn
	js      jetstream.JetStream
	reqs    jetstream.Stream
	replies jetstream.Stream
	dlq     jetstream.Stream
	events  jetstream.Stream
	syncs   map[string]*groupSync // by stream; only for an embedded engine with SyncAlways
	storage jetstream.StorageType // of the streams
	onClose func() error          // stops an embedded server, releases the lock
	done    chan struct{}         // closed when the connection is closed for good
	life    context.Context       // ends at Close; consumers end with it
	end     context.CancelFunc

	closeOnce sync.Once
	closeErr  error

	leasesMu sync.Mutex
	leases   jetstream.KeyValue // the lease registry (see shareLease), once made

	tally *tally.Tally // counts requests in and out of each queue (rates.go)

	version   string // of the server connected to when the backend opened
	schedules bool   // RSVP_REQUESTS allows message schedules (NATS 2.12 or newer)
}

var (
	_ backend.Backend      = (*Backend)(nil)
	_ backend.ReplyDeleter = (*Backend)(nil)
)

// Connect opens a backend on the NATS server or cluster at url (comma
// separated URLs for a cluster). The server must run JetStream, version 2.10
// or newer: Connect refuses an older one with an error that wraps
// errors.ErrUnsupported and names its version, before it creates anything
// there. In a cluster it checks the server it connects to; run every server
// at the same version (see the package documentation).
func Connect(ctx context.Context, url string, opts Options) (*Backend, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("rsvpnats: %w", err)
	}
	done := make(chan struct{})
	nopts := append([]nats.Option{nats.Name("rsvp"), nats.MaxReconnects(-1)}, opts.NATSOptions...)
	nopts = append(nopts, closedHandler(done))
	nc, err := nats.Connect(url, nopts...)
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: connect to %s: %w", Redact(url), err)
	}
	if v := nc.ConnectedServerVersion(); !atLeast(v, 2, 10) {
		nc.Close()
		return nil, fmt.Errorf("rsvpnats: connect to %s: %w: the server runs NATS %s; rsvp needs 2.10 or newer (2.12 or newer for scheduled requests)",
			Redact(url), errors.ErrUnsupported, v)
	}
	b, err := open(ctx, nc, opts, false, "")
	if err != nil {
		nc.Close()
		return nil, err
	}
	b.done = done
	return b, nil
}

// atLeast reports whether version, a NATS server's ("2.11.4",
// "2.12.0-RC.1"), is major.minor or newer. A version it cannot read counts
// as new enough: the engine's own errors then tell what it lacks.
func atLeast(version string, major, minor int) bool {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) < 2 {
		return true
	}
	gotMajor, err1 := strconv.Atoi(parts[0])
	gotMinor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return true
	}
	return gotMajor > major || gotMajor == major && gotMinor >= minor
}

// closedHandler closes done once the connection is closed for good.
func closedHandler(done chan struct{}) nats.Option {
	return nats.ClosedHandler(func(*nats.Conn) { close(done) })
}

// Done is closed when the backend can no longer reach its engine: after
// Close, or when a connection gives up reconnecting. A process connected to
// the embedded engine of another process (see Embedded) loses it when that
// process exits; Connect keeps reconnecting to an external server and never
// gives up by itself. Once it is closed, Next on the backend's consumers
// returns backend.ErrClosed.
func (b *Backend) Done() <-chan struct{} { return b.done }

// Redact hides the credentials (user, password or token) in a server URL,
// or in each of a comma-separated list, for messages and logs.
func Redact(url string) string { return userinfo.ReplaceAllString(url, "://***@") }

// userinfo matches the credentials in a URL.
var userinfo = regexp.MustCompile(`://[^@/,]*@`)

// open creates the streams (idempotently). With syncDir (the embedded
// server's store directory) set, writes are made durable by group commit.
func open(ctx context.Context, nc *nats.Conn, opts Options, memory bool, syncDir string) (*Backend, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: %w", err)
	}
	storage := jetstream.FileStorage
	if memory {
		storage = jetstream.MemoryStorage
	}
	maxMsg := int32(nc.MaxPayload())
	cfgs := []jetstream.StreamConfig{{
		Name:              streamRequests,
		Description:       "rsvp requests: one subject per queue, one per session of a queue, and scheduled requests",
		Subjects:          []string{subjRequests + "*", subjSessions + "*.*", subjSchedule + "*.*"},
		Retention:         jetstream.WorkQueuePolicy,
		Storage:           storage,
		Duplicates:        opts.DedupeWindow,
		MaxMsgSize:        maxMsg,
		AllowMsgSchedules: true,
		AllowDirect:       true, // sessions read the first request of a session
	}, {
		Name:                 streamReplies,
		Description:          "rsvp replies, one subject per correlation id",
		Subjects:             []string{subjReplies + "*.*"},
		Storage:              storage,
		MaxAge:               opts.ReplyRetention,
		MaxMsgsPerSubject:    1,
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		MaxMsgSize:           maxMsg,
		AllowDirect:          true,
		RePublish:            &jetstream.RePublish{Source: subjReplies + "*.*", Destination: subjNotify + "{{wildcard(1)}}.{{wildcard(2)}}"},
	}, {
		Name:        streamDLQ,
		Description: "rsvp dead letters, one subject per queue",
		Subjects:    []string{subjDLQ + "*"},
		Storage:     storage,
		MaxAge:      opts.DeadLetterRetention,
		Duplicates:  opts.DedupeWindow,
		MaxMsgSize:  maxMsg,
		AllowDirect: true,
	}, {
		Name:        streamEvents,
		Description: "rsvp request events: one subject per correlation id, and one per channel",
		Subjects:    []string{subjEvents + "*", subjChannel + "*"},
		Storage:     storage,
		MaxAge:      opts.ReplyRetention,
		Duplicates:  opts.DedupeWindow,
		MaxMsgSize:  maxMsg,
		AllowDirect: true,
		RePublish:   &jetstream.RePublish{Source: subjEvents + "*", Destination: subjEvNotify + "{{wildcard(1)}}"},
	}}
	streams := make([]jetstream.Stream, len(cfgs))
	for i, cfg := range cfgs {
		cctx, cancel := context.WithTimeout(ctx, opts.Timeout)
		streams[i], err = js.CreateOrUpdateStream(cctx, cfg)
		cancel()
		if errors.Is(err, nats.ErrNoResponders) {
			// Nothing answers the JetStream API: the server does not run it.
			return nil, fmt.Errorf("rsvpnats: create stream %s: %w: the server does not run JetStream (start nats-server with -js)", cfg.Name, jetstream.ErrJetStreamNotEnabled)
		}
		if err != nil {
			return nil, fmt.Errorf("rsvpnats: create stream %s: %w", cfg.Name, err)
		}
	}
	// Not in cfgs: its writes need no fsync (see rates.go).
	cctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	_, err = js.CreateOrUpdateStream(cctx, ratesStream(storage, maxMsg))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: create stream %s: %w", streamRates, err)
	}
	b := &Backend{opts: opts, nc: nc, js: js, reqs: streams[0], replies: streams[1], dlq: streams[2], events: streams[3], storage: storage,
		// A server before 2.12 does not know the setting: it stores the
		// stream without it, and a scheduled request as a plain message
		// that is never delivered.
		version: nc.ConnectedServerVersion(), schedules: streams[0].CachedInfo().Config.AllowMsgSchedules}
	b.life, b.end = context.WithCancel(context.Background())
	if syncDir != "" {
		b.syncs = make(map[string]*groupSync, len(cfgs))
		for _, cfg := range cfgs {
			g, err := newGroupSync(filepath.Join(syncDir, "jetstream", "$G", "streams", cfg.Name))
			if err != nil {
				b.stopSyncs()
				return nil, err
			}
			b.syncs[cfg.Name] = g
		}
	}
	b.tally = tally.Start(tally.Interval, min(opts.Timeout, tally.StoreTimeout), opts.Logger, b.storeCounts)
	return b, nil
}

func (b *Backend) stopSyncs() {
	for _, g := range b.syncs {
		g.close()
	}
}

// publish stores m in stream and returns once it is as durable as the
// backend is configured to make it.
func (b *Backend) publish(ctx context.Context, stream string, m *nats.Msg) error {
	_, err := b.publishAck(ctx, stream, m)
	return err
}

// publishAck is publish returning the engine's acknowledgement.
func (b *Backend) publishAck(ctx context.Context, stream string, m *nats.Msg) (*jetstream.PubAck, error) {
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	g := b.syncs[stream]
	if g == nil {
		return b.js.PublishMsg(ctx, m)
	}
	g.begin()
	ack, err := b.js.PublishMsg(ctx, m)
	if err != nil {
		g.end()
		return nil, err
	}
	return ack, g.wait()
}

// Conn returns the backend's NATS connection, for programs that also speak
// the wire format directly. A JetStream publish on it is acknowledged before
// it is fsynced; Publish waits as rsvp's own writes do.
func (b *Backend) Conn() *nats.Conn { return b.nc }

// Publish stores m, a message of the wire format (docs/wire.md) published
// by a program of its own, and returns once it is as durable as rsvp's own
// writes: with SyncAlways on an embedded engine, fsynced by group commit.
// The requests it stores count in their queue's rates (QueueStats.In) as
// Enqueue's do, so counts a program publishes on rsvp.rate.<queue> leave
// them out.
func (b *Backend) Publish(ctx context.Context, m *nats.Msg) error {
	switch {
	case strings.HasPrefix(m.Subject, subjRequests), strings.HasPrefix(m.Subject, subjSessions), strings.HasPrefix(m.Subject, subjSchedule):
		if strings.HasPrefix(m.Subject, subjSchedule) && !b.schedules {
			return fmt.Errorf("rsvpnats: publish to %s: %w", m.Subject, b.errNoSchedules())
		}
		ack, err := b.publishAck(ctx, streamRequests, m)
		if err == nil && !ack.Duplicate {
			b.tally.In(queueOf(m.Subject))
		}
		return err
	case strings.HasPrefix(m.Subject, subjReplies):
		return b.publish(ctx, streamReplies, m)
	case strings.HasPrefix(m.Subject, subjDLQ):
		return b.publish(ctx, streamDLQ, m)
	case strings.HasPrefix(m.Subject, subjEvents), strings.HasPrefix(m.Subject, subjChannel):
		return b.publish(ctx, streamEvents, m)
	case strings.HasPrefix(m.Subject, subjRates):
		return b.publish(ctx, streamRates, m)
	}
	return fmt.Errorf("rsvpnats: publish: %q is not a subject of the wire format", m.Subject)
}

// Close ends the consumers, closes the connection and, for an embedded
// engine, stops the server and releases its directory.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.end()
		b.tally.Close()
		b.stopSyncs()
		// Settles (acks, naks) still buffered go out before the connection
		// closes; anything lost here comes back after its lease.
		_ = b.nc.FlushTimeout(b.opts.Timeout)
		b.nc.Close()
		if b.onClose != nil {
			b.closeErr = b.onClose()
		}
	})
	return b.closeErr
}

func (b *Backend) checkSize(m *nats.Msg) error {
	size := len(m.Data) + len(m.Subject)
	for k, vs := range m.Header {
		for _, v := range vs {
			size += len(k) + len(v) + 4
		}
	}
	if max := b.nc.MaxPayload(); int64(size) > max-256 {
		return fmt.Errorf("%w: %d bytes with headers, engine limit %d", backend.ErrTooLarge, size, max-256)
	}
	return nil
}

// wireExcess is how many bytes m, as the engine counts it (body and
// encoded headers), is over the engine's limit: 0 or less if it fits.
// checkSize keeps 256 bytes below that limit for what is added later: the
// headers of a dead letter.
func (b *Backend) wireExcess(m *nats.Msg) int {
	size := len(m.Data) + len("NATS/1.0\r\n\r\n")
	for k, vs := range m.Header {
		for _, v := range vs {
			size += len(k) + len(": \r\n") + len(v)
		}
	}
	return size - int(b.nc.MaxPayload())
}

// Enqueue implements backend.Backend.
func (b *Backend) Enqueue(ctx context.Context, msg *backend.Message) error {
	if err := backend.ValidateName("queue", msg.Queue); err != nil {
		return fmt.Errorf("rsvpnats: enqueue: %w", err)
	}
	if err := backend.CheckSession(msg); err != nil {
		return fmt.Errorf("rsvpnats: enqueue: %w", err)
	}
	if !b.schedules && time.Until(msg.NotBefore) > 0 {
		return fmt.Errorf("rsvpnats: enqueue on %s: %w", msg.Queue, b.errNoSchedules())
	}
	m := encodeRequest(msg)
	if err := b.checkSize(m); err != nil {
		return fmt.Errorf("rsvpnats: enqueue: %w", err)
	}
	ack, err := b.publishAck(ctx, streamRequests, m)
	if err != nil {
		return fmt.Errorf("rsvpnats: enqueue on %s: %w", msg.Queue, err)
	}
	if !ack.Duplicate {
		b.tally.In(msg.Queue)
	}
	return nil
}

// errNoSchedules is the error of a request scheduled for later on an
// engine whose streams cannot schedule messages.
func (b *Backend) errNoSchedules() error {
	return fmt.Errorf("%w: a request scheduled for later (NotBefore) needs NATS 2.12 or newer on every server, and the server runs %s",
		errors.ErrUnsupported, b.version)
}

// ReplyAddress implements backend.Backend.
func (b *Backend) ReplyAddress(inbox, correlationID string) string {
	return subjReplies + correlationID + "." + inbox
}

// PutReply implements backend.Backend.
func (b *Backend) PutReply(ctx context.Context, replyTo string, r *backend.Reply) error {
	rest, ok := strings.CutPrefix(replyTo, subjReplies+r.CorrelationID+".")
	if !ok || backend.ValidateName("inbox", rest) != nil {
		return fmt.Errorf("rsvpnats: %w: %q is not %s<correlation id>.<inbox> for %q", backend.ErrBadAddress, replyTo, subjReplies, r.CorrelationID)
	}
	m := encodeReply(replyTo, r)
	// Stored only if no reply to this correlation id exists under any inbox
	// (the stream's one-per-subject limit covers one inbox only).
	m.Header.Set("Nats-Expected-Last-Subject-Sequence", "0")
	m.Header.Set("Nats-Expected-Last-Subject-Sequence-Subject", subjReplies+r.CorrelationID+".*")
	if err := b.checkSize(m); err != nil {
		return fmt.Errorf("rsvpnats: reply: %w", err)
	}
	if err := b.publish(ctx, streamReplies, m); err != nil {
		if isReplyConflict(err) {
			return backend.ErrReplyExists
		}
		return fmt.Errorf("rsvpnats: store reply %s: %w", r.CorrelationID, err)
	}
	return nil
}

// isReplyConflict reports whether a reply was refused because one is
// stored already: by the expected-sequence check, or by the stream's
// one-message-per-subject limit.
func isReplyConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		strings.Contains(apiErr.Description, "maximum messages per subject"))
}

// DeleteReply implements backend.ReplyDeleter.
func (b *Backend) DeleteReply(ctx context.Context, r *backend.Reply) error {
	if err := backend.ValidateName("correlation id", r.CorrelationID); err != nil {
		return fmt.Errorf("rsvpnats: delete reply: %w", err)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	subject := subjReplies + r.CorrelationID + ".*"
	raw, err := b.replies.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("rsvpnats: delete reply %s: %w", r.CorrelationID, err)
	}
	if !sameReply(decodeReply(raw.Subject, raw.Header, raw.Data), r) {
		return fmt.Errorf("rsvpnats: delete reply %s: another reply took its place: %w", r.CorrelationID, backend.ErrReplyExists)
	}
	// Up to the reply read, never a later one.
	if err := b.replies.Purge(ctx, jetstream.WithPurgeSubject(subject), jetstream.WithPurgeSequence(raw.Sequence+1)); err != nil {
		return fmt.Errorf("rsvpnats: delete reply %s: %w", r.CorrelationID, err)
	}
	return nil
}

// sameReply reports whether stored is the reply r was read as.
func sameReply(stored, r *backend.Reply) bool {
	return stored.Status == r.Status && stored.CreatedAt.Equal(r.CreatedAt)
}

// GetReply implements backend.Backend.
func (b *Backend) GetReply(ctx context.Context, correlationID string) (*backend.Reply, error) {
	if err := backend.ValidateName("correlation id", correlationID); err != nil {
		return nil, fmt.Errorf("rsvpnats: get reply: %w", err)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	raw, err := b.replies.GetLastMsgForSubject(ctx, subjReplies+correlationID+".*")
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, backend.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: get reply %s: %w", correlationID, err)
	}
	return decodeReply(raw.Subject, raw.Header, raw.Data), nil
}

func (b *Backend) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, b.opts.Timeout)
}

// SubscribeReplies implements backend.Backend.
func (b *Backend) SubscribeReplies(ctx context.Context, inbox string, fn func(*backend.Reply)) (backend.Subscription, error) {
	return b.subscribeNotify(subjNotify+"*."+inbox, fn)
}

// WatchReply implements backend.Backend.
func (b *Backend) WatchReply(ctx context.Context, correlationID string, fn func(*backend.Reply)) (backend.Subscription, error) {
	return b.subscribeNotify(subjNotify+correlationID+".*", fn)
}

func (b *Backend) subscribeNotify(subject string, fn func(*backend.Reply)) (backend.Subscription, error) {
	sub, err := b.nc.Subscribe(subject, func(m *nats.Msg) {
		fn(decodeReply(m.Subject, m.Header, m.Data))
	})
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: subscribe %s: %w", subject, err)
	}
	// Make sure the server has the interest before any caller looks for a
	// stored reply, so nothing falls between the look and the subscription.
	if err := b.nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("rsvpnats: subscribe %s: %w", subject, err)
	}
	return natsSub{sub}, nil
}

type natsSub struct{ s *nats.Subscription }

func (s natsSub) Close() error {
	if err := s.s.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		return err
	}
	return nil
}

// DeadLetter implements backend.Backend.
func (b *Backend) DeadLetter(ctx context.Context, dl *backend.DeadLetter) error {
	m := encodeDeadLetter(dl)
	// A request Enqueue took fits as a dead letter with its error text
	// shortened as much as needed.
	if over := b.wireExcess(m); over > 0 {
		text := m.Header.Get(hdrDeadError)
		if over > len(text) {
			return fmt.Errorf("rsvpnats: dead-letter %s: %w: %d bytes over the engine limit %d", dl.Message.ID, backend.ErrTooLarge, over, b.nc.MaxPayload())
		}
		m.Header.Set(hdrDeadError, cutText(text, len(text)-over))
	}
	if err := b.publish(ctx, streamDLQ, m); err != nil {
		return fmt.Errorf("rsvpnats: dead-letter %s: %w", dl.Message.ID, err)
	}
	return nil
}

// DeadLetters implements backend.Backend. A dead letter's Key is its
// sequence in the dead-letter stream, in decimal. Filters are applied while
// reading the queue's dead letters in order.
func (b *Backend) DeadLetters(ctx context.Context, q backend.DeadLetterQuery) ([]*backend.DeadLetter, error) {
	if err := backend.ValidateName("queue", q.Queue); err != nil {
		return nil, fmt.Errorf("rsvpnats: dead letters: %w", err)
	}
	seq := uint64(1)
	if q.After != "" {
		after, err := strconv.ParseUint(q.After, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("rsvpnats: dead letters: cursor %q is not a dead-letter key", q.After)
		}
		seq = after + 1
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 100
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	var out []*backend.DeadLetter
	for len(out) < limit {
		raw, err := b.dlq.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subjDLQ+q.Queue))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return out, fmt.Errorf("rsvpnats: dead letters of %s: %w", q.Queue, err)
		}
		seq = raw.Sequence + 1
		dl := decodeDeadLetter(raw.Subject, raw.Header, raw.Data)
		dl.Key = strconv.FormatUint(raw.Sequence, 10)
		if q.Matches(dl) {
			out = append(out, dl)
		}
	}
	return out, nil
}

// DeleteDeadLetter implements backend.Backend.
func (b *Backend) DeleteDeadLetter(ctx context.Context, queue, key string) error {
	if err := backend.ValidateName("queue", queue); err != nil {
		return fmt.Errorf("rsvpnats: delete dead letter: %w", err)
	}
	seq, err := strconv.ParseUint(key, 10, 64)
	if err != nil || seq == 0 {
		return fmt.Errorf("rsvpnats: dead letter %q of %s: %w", key, queue, backend.ErrNotFound)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	raw, err := b.dlq.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) || err == nil && raw.Subject != subjDLQ+queue {
		return fmt.Errorf("rsvpnats: dead letter %s of %s: %w", key, queue, backend.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("rsvpnats: dead letter %s of %s: %w", key, queue, err)
	}
	// Deleted by another caller between the read and here: not found.
	if err := b.dlq.DeleteMsg(ctx, seq); err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) || errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) {
			return fmt.Errorf("rsvpnats: dead letter %s of %s: %w", key, queue, backend.ErrNotFound)
		}
		return fmt.Errorf("rsvpnats: delete dead letter %s of %s: %w", key, queue, err)
	}
	return nil
}

// AppendEvent implements backend.Backend.
func (b *Backend) AppendEvent(ctx context.Context, ev *backend.Event) error {
	if err := validateEvent(ev); err != nil {
		return fmt.Errorf("rsvpnats: append event: %w", err)
	}
	m, ch := encodeEvent(ev)
	if err := b.checkSize(m); err != nil {
		return fmt.Errorf("rsvpnats: append event: %w", err)
	}
	// The channel's copy first: subscribers hear of the request's copy
	// (SubscribeEvents), and must then find the channel's in place.
	if ch != nil {
		if err := b.publish(ctx, streamEvents, ch); err != nil {
			return fmt.Errorf("rsvpnats: append %s event of %s to channel %s: %w", ev.Type, ev.CorrelationID, ev.Channel, err)
		}
	}
	ack, err := b.publishAck(ctx, streamEvents, m)
	if err != nil {
		return fmt.Errorf("rsvpnats: append %s event of %s: %w", ev.Type, ev.CorrelationID, err)
	}
	ev.Seq = 0
	if !ack.Duplicate {
		ev.Seq = ack.Sequence
	}
	return nil
}

func validateEvent(ev *backend.Event) error {
	errs := []error{backend.ValidateName("correlation id", ev.CorrelationID)}
	if ev.Channel != "" {
		errs = append(errs, backend.ValidateChannel(ev.Channel))
	}
	if ev.Type == "" {
		errs = append(errs, errors.New("event type is empty"))
	}
	return errors.Join(errs...)
}

// Events implements backend.Backend.
func (b *Backend) Events(ctx context.Context, q backend.EventQuery) ([]*backend.Event, error) {
	var filter string
	switch {
	case q.CorrelationID != "" && q.Channel == "":
		if err := backend.ValidateName("correlation id", q.CorrelationID); err != nil {
			return nil, fmt.Errorf("rsvpnats: events: %w", err)
		}
		filter = subjEvents + q.CorrelationID
	case q.Channel != "" && q.CorrelationID == "":
		if err := backend.ValidateChannel(q.Channel); err != nil {
			return nil, fmt.Errorf("rsvpnats: events: %w", err)
		}
		filter = subjChannel + q.Channel
	default:
		return nil, errors.New("rsvpnats: events: set exactly one of CorrelationID and Channel")
	}
	limit := q.DefaultLimit()
	if q.After == math.MaxUint64 {
		return nil, nil // nothing is after it (and After+1 would wrap to 0)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	var out []*backend.Event
	for seq := q.After + 1; len(out) < limit; {
		raw, err := b.events.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return out, fmt.Errorf("rsvpnats: events: %w", err)
		}
		out = append(out, decodeEvent(raw.Subject, raw.Sequence, raw.Header, raw.Data))
		seq = raw.Sequence + 1
	}
	return out, nil
}

// SubscribeEvents implements backend.Backend.
func (b *Backend) SubscribeEvents(ctx context.Context, fn func(*backend.Event)) (backend.Subscription, error) {
	sub, err := b.nc.Subscribe(subjEvNotify+"*", func(m *nats.Msg) {
		seq, _ := strconv.ParseUint(m.Header.Get(hdrSequence), 10, 64)
		fn(decodeEvent(m.Subject, seq, m.Header, m.Data))
	})
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: subscribe to events: %w", err)
	}
	if err := b.nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("rsvpnats: subscribe to events: %w", err)
	}
	return natsSub{sub}, nil
}
