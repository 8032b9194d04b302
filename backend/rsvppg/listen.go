package rsvppg

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp/backend"
)

// Each backend listens on one connection of its own (see notify.go for
// what is sent). Queue notifications wake the backend's consumers of that
// queue; reply and event notifications that a local subscription wants are
// read by the dispatcher (several in one query) and handed to the
// subscriptions.

// dialListener connects the listening connection and listens.
func (b *Backend) dialListener(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, b.durable.Config().ConnConfig)
	if err != nil {
		return nil, fmt.Errorf("rsvppg: connect to %s to listen: %w", b.url, err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+ident(b.channel)); err != nil {
		_ = conn.Close(context.Background())
		return nil, fmt.Errorf("rsvppg: listen on %s: %w", b.channel, err)
	}
	b.listenUp.Store(true)
	return conn, nil
}

// routeFor routes the notifications that come on conn for d. It returns
// nil once d has passed, else what ended the wait.
func (b *Backend) routeFor(conn *pgx.Conn, d time.Duration) error {
	ctx, cancel := context.WithTimeout(b.life, d)
	defer cancel()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() != nil && b.life.Err() == nil {
				return nil
			}
			return err
		}
		b.route(n.Payload)
	}
}

// listenCheck is how often the listening connection is pinged. Only a
// connection in use is known to be alive: one that died without a word (a
// NAT or a firewall forgot it, the server's host went away) would wait for
// notifications for good, while consumers trust it and poll rarely.
const listenCheck = 15 * time.Second

// listen routes notifications until the backend closes. When the
// connection breaks, or does not answer a ping, it connects again, with
// backoff; consumers are woken both when it breaks (so that they poll, at
// Options.PollInterval) and when it is back (notifications sent meanwhile
// are lost), and the dispatcher catches up on the replies and events
// stored meanwhile.
func (b *Backend) listen(conn *pgx.Conn) {
	defer func() { closeConn(conn) }()
	// When conn was last known to work (dialed, or it answered a ping):
	// notifications sent before then arrived, later ones may be lost.
	alive := time.Now()
	for {
		err := b.routeFor(conn, b.opts.listenCheck)
		if err == nil { // a while has passed: is it alive?
			pinged := time.Now()
			ctx, cancel := context.WithTimeout(b.life, b.opts.Timeout)
			if err = conn.Ping(ctx); err != nil {
				err = fmt.Errorf("no answer to a ping: %w", err)
			}
			cancel()
			if err == nil {
				alive = pinged
			}
		}
		if b.life.Err() != nil {
			return
		}
		if err == nil {
			continue
		}
		broke := time.Now()
		b.listenUp.Store(false)
		b.reg.wakeAll()
		b.opts.Logger.Warn("rsvppg: the listening connection broke; consumers poll until it is back",
			"err", err, "poll_interval", b.opts.PollInterval)
		closeConn(conn)
		if conn = b.redial(); conn == nil {
			return
		}
		b.reg.wakeAll()
		b.opts.Logger.Info("rsvppg: listening again", "down_for", time.Since(broke))
		b.toDispatcher(catchUpNote(alive.Add(-catchUpMargin)))
		alive = time.Now()
	}
}

// catchUpMargin is how long before the listening connection was last
// known to work the catch-up starts: for notifications on their way then,
// and for a difference between this host's clock and the server's.
const catchUpMargin = 5 * time.Second

// catchUpNote asks the dispatcher to catch up from since. Its kind, 'c',
// is never sent by the database.
func catchUpNote(since time.Time) string { return "c:" + strconv.FormatInt(since.UnixMicro(), 10) }

// redial connects the listening connection again, waiting longer after
// each failure (up to 10s); nil when the backend closed meanwhile.
func (b *Backend) redial() *pgx.Conn {
	wait := 100 * time.Millisecond
	for {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-b.life.Done():
			t.Stop()
			return nil
		}
		ctx, cancel := context.WithTimeout(b.life, b.opts.Timeout)
		conn, err := b.dialListener(ctx)
		cancel()
		if err == nil {
			return conn
		}
		if b.life.Err() != nil {
			return nil
		}
		wait = min(2*wait, 10*time.Second)
		b.opts.Logger.Warn("rsvppg: listening again failed", "err", err, "retry_in", wait)
	}
}

func closeConn(conn *pgx.Conn) {
	if conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// route acts on one notification payload.
func (b *Backend) route(payload string) {
	kind, rest, _ := strings.Cut(payload, ":")
	var wanted bool
	switch kind {
	case "q":
		b.reg.wakeQueue(rest)
	case "r":
		corr, inbox, _ := strings.Cut(rest, ".")
		wanted = b.reg.wantsReply(corr, inbox)
	case "e":
		wanted = b.reg.wantsEvents()
	}
	if wanted {
		b.toDispatcher(payload)
	}
}

func (b *Backend) toDispatcher(note string) {
	select {
	case b.notes <- note:
	case <-b.life.Done():
	}
}

// dispatch reads the replies and events that notifications announced and
// hands them to the subscriptions, from this one goroutine.
func (b *Backend) dispatch() {
	for {
		var notes []string
		select {
		case p := <-b.notes:
			notes = append(notes, p)
		case <-b.life.Done():
			return
		}
	fill:
		for len(notes) < 256 {
			select {
			case p := <-b.notes:
				notes = append(notes, p)
			default:
				break fill
			}
		}
		b.deliver(notes)
	}
}

// deliver reads what notes announce and hands it out.
func (b *Backend) deliver(notes []string) {
	var corrs []string
	var seqs []int64
	ctx, cancel := b.opCtx()
	defer cancel()
	for _, p := range notes {
		kind, rest, _ := strings.Cut(p, ":")
		switch kind {
		case "c":
			if us, err := strconv.ParseInt(rest, 10, 64); err == nil {
				b.catchUp(ctx, time.UnixMicro(us))
			}
		case "r":
			corr, _, _ := strings.Cut(rest, ".")
			corrs = append(corrs, corr)
		case "e":
			if seq, err := strconv.ParseInt(rest, 10, 64); err == nil {
				seqs = append(seqs, seq)
			}
		}
	}
	if len(corrs) > 0 {
		var replies []storedReply
		err := b.retryOnce(ctx, b.fast, func() (err error) {
			replies, err = b.getReplies(ctx, corrs)
			return err
		})
		if err != nil {
			b.opts.Logger.Warn("rsvppg: reading notified replies failed; waiters look them up later", "err", err)
		}
		for _, r := range replies {
			b.reg.deliverReply(r.inbox, r.reply)
		}
	}
	if len(seqs) > 0 {
		var evs []*backend.Event
		err := b.retryOnce(ctx, b.fast, func() (err error) {
			evs, err = b.eventsBySeq(ctx, seqs)
			return err
		})
		if err != nil {
			b.opts.Logger.Warn("rsvppg: reading notified events failed", "err", err)
		}
		for _, ev := range evs {
			b.reg.deliverEvent(ev)
		}
	}
}

// catchUpPage is how many events one query of a catch-up reads.
const catchUpPage = 10000

// catchUp hands the subscriptions the replies and events stored since.
// Some of them may have been handed out before: subscribers see them twice.
// The events are read a page at a time, until a page is not full: the
// margin before the break alone may hold more than a page, and the events
// whose notifications were lost come after it.
func (b *Backend) catchUp(ctx context.Context, since time.Time) {
	inboxes, watches, events := b.reg.keys()
	if len(inboxes)+len(watches) > 0 {
		var replies []storedReply
		err := b.retryOnce(ctx, b.fast, func() error {
			rows, err := b.fast.Query(ctx, b.sql.repliesSince, since, inboxes, watches)
			if err == nil {
				replies, err = scanReplies(rows)
			}
			return err
		})
		if err != nil {
			b.opts.Logger.Warn("rsvppg: catching up on replies failed; waiters look them up later", "err", err)
		}
		for _, r := range replies {
			b.reg.deliverReply(r.inbox, r.reply)
		}
	}
	for after := uint64(0); events; {
		var evs []*backend.Event
		err := b.retryOnce(ctx, b.fast, func() error {
			rows, err := b.fast.Query(ctx, b.sql.eventsSince, since, catchUpPage, int64(after))
			if err == nil {
				evs, err = scanEvents(rows)
			}
			return err
		})
		if err != nil {
			b.opts.Logger.Warn("rsvppg: catching up on events failed", "err", err)
		}
		for _, ev := range evs {
			b.reg.deliverEvent(ev)
			after = ev.Seq
		}
		events = len(evs) == catchUpPage
	}
}

// registry keeps the backend's consumers and subscriptions by what wakes
// them.
type registry struct {
	mu        sync.Mutex
	consumers map[string]map[*consumer]struct{}            // by queue
	inboxes   map[string]map[*sub[*backend.Reply]]struct{} // by inbox
	watches   map[string]map[*sub[*backend.Reply]]struct{} // by correlation id
	events    map[*sub[*backend.Event]]struct{}
}

func (r *registry) init() {
	r.consumers = make(map[string]map[*consumer]struct{})
	r.inboxes = make(map[string]map[*sub[*backend.Reply]]struct{})
	r.watches = make(map[string]map[*sub[*backend.Reply]]struct{})
	r.events = make(map[*sub[*backend.Event]]struct{})
}

// add and remove keep sets by key, under the registry's lock.
func add[K comparable, V comparable](m map[K]map[V]struct{}, k K, v V) {
	if m[k] == nil {
		m[k] = make(map[V]struct{})
	}
	m[k][v] = struct{}{}
}

func remove[K comparable, V comparable](m map[K]map[V]struct{}, k K, v V) {
	delete(m[k], v)
	if len(m[k]) == 0 {
		delete(m, k)
	}
}

func (r *registry) addConsumer(c *consumer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	add(r.consumers, c.queue, c)
}

func (r *registry) removeConsumer(c *consumer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	remove(r.consumers, c.queue, c)
}

func (r *registry) wakeQueue(queue string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.consumers[queue] {
		signal(c.wake)
	}
}

func (r *registry) wakeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, cs := range r.consumers {
		for c := range cs {
			signal(c.wake)
		}
	}
}

func (r *registry) wantsReply(corr, inbox string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.inboxes[inbox]) > 0 || len(r.watches[corr]) > 0
}

// keys returns the inboxes and correlation ids subscribed to, and whether
// anyone subscribed to events.
func (r *registry) keys() (inboxes, watches []string, events bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.inboxes {
		inboxes = append(inboxes, k)
	}
	for k := range r.watches {
		watches = append(watches, k)
	}
	return inboxes, watches, len(r.events) > 0
}

func (r *registry) wantsEvents() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events) > 0
}

func (r *registry) deliverReply(inbox string, rep *backend.Reply) {
	r.mu.Lock()
	var subs []*sub[*backend.Reply]
	for s := range r.inboxes[inbox] {
		subs = append(subs, s)
	}
	for s := range r.watches[rep.CorrelationID] {
		subs = append(subs, s)
	}
	r.mu.Unlock()
	for _, s := range subs {
		s.call(rep)
	}
}

func (r *registry) deliverEvent(ev *backend.Event) {
	r.mu.Lock()
	subs := make([]*sub[*backend.Event], 0, len(r.events))
	for s := range r.events {
		subs = append(subs, s)
	}
	r.mu.Unlock()
	for _, s := range subs {
		s.call(ev)
	}
}

// sub is a subscription: fn is called from the dispatcher, until Close.
type sub[T any] struct {
	fn     func(T)
	closed atomic.Bool
	remove func() // takes the subscription out of the registry
	once   sync.Once
}

func (s *sub[T]) call(v T) {
	if !s.closed.Load() {
		s.fn(v)
	}
}

// Close implements backend.Subscription. No call of fn starts after it
// returns (one under way may still run, when Close is called elsewhere).
func (s *sub[T]) Close() error {
	s.closed.Store(true)
	s.once.Do(s.remove)
	return nil
}

// subscribeReplies registers fn under key in m (inboxes or watches).
func (b *Backend) subscribeReplies(m map[string]map[*sub[*backend.Reply]]struct{}, key string, fn func(*backend.Reply)) (backend.Subscription, error) {
	if b.life.Err() != nil {
		return nil, backend.ErrClosed
	}
	s := &sub[*backend.Reply]{fn: fn}
	s.remove = func() {
		b.reg.mu.Lock()
		defer b.reg.mu.Unlock()
		remove(m, key, s)
	}
	b.reg.mu.Lock()
	defer b.reg.mu.Unlock()
	add(m, key, s)
	return s, nil
}
