package rsvp

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/rsvp-go/rsvp/backend"
)

// Limits of topic and subscription names, in bytes. A subscription's queue,
// SubscriptionQueue(topic, subscription), is at most backend.MaxNameLen.
const (
	MaxTopicLen        = 64
	MaxSubscriptionLen = 63
)

// ErrNoSubscriptions: Publish or RequestAll found no subscription of the
// topic; nothing was stored.
var ErrNoSubscriptions = errors.New("rsvp: topic has no subscriptions")

// The registry of a topic's subscriptions: events in the channel
// topicChannelPrefix+topic (see docs/wire.md, "Topics").
const (
	topicChannelPrefix = "rsvp-topic-"
	evSubscribed       = "subscribed"
	evUnsubscribed     = "unsubscribed"
	// refreshAfter is the age at which a reader records a subscription
	// again, so that it outlives the backend's event retention (24 hours by
	// default) as long as the topic is used.
	refreshAfter = time.Hour
	// registryPage is how many registry events are read per call.
	registryPage = 1000
)

// SubscriptionQueue returns the queue that holds the messages of
// subscription of topic: "<topic>:<subscription>". Serve it with
// Client.Handle or Client.Consume like any queue; responders of one
// subscription compete for its messages.
func SubscriptionQueue(topic, subscription string) string { return topic + ":" + subscription }

// validateTopicName reports whether s can name a topic or subscription
// (kind): 1 to max bytes of ASCII letters, digits, '-' and '_'.
func validateTopicName(kind, s string, max int) error {
	if s == "" {
		return fmt.Errorf("%s is empty", kind)
	}
	if len(s) > max {
		return fmt.Errorf("%s %.20q... is %d bytes, longer than %d", kind, s, len(s), max)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 0x80:
			return fmt.Errorf("%s %q has a non-ASCII byte 0x%x at byte %d; allowed are letters, digits, '-' and '_'", kind, s, c, i)
		case !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'):
			return fmt.Errorf("%s %q has character %q at byte %d; allowed are letters, digits, '-' and '_'", kind, s, c, i)
		}
	}
	return nil
}

// Subscribe registers the durable subscription named subscription of
// topic: from now on, every message published to topic is also stored on
// the queue SubscriptionQueue(topic, subscription), whether or not a
// responder is serving it. Subscribing again is a no-op. Topic names are
// at most MaxTopicLen bytes, subscription names MaxSubscriptionLen, of
// ASCII letters, digits, '-' and '_'.
//
// The registration is kept in the engine's event log, which expires after
// the backend's retention (24 hours by default); Publish, RequestAll,
// Subscriptions and Subscribe record a registration again when it is an
// hour old. A topic neither published to nor subscribed to for a whole
// retention period loses its subscriptions: call Subscribe where the
// subscription's responders start, as one declares a queue.
func (c *Client) Subscribe(ctx context.Context, topic, subscription string) error {
	if err := c.checkTopic(topic, subscription); err != nil {
		return err
	}
	reg, err := c.registry(ctx, topic)
	if err != nil {
		return err
	}
	if st := reg.subs[subscription]; st != nil && st.active && time.Since(st.at) < refreshAfter {
		return nil
	}
	return c.appendTopicEvent(ctx, topic, evSubscribed, topicEvent{Subscription: subscription}, "")
}

// Unsubscribe removes the subscription of topic: messages published from
// now on are not stored for it. Messages already on its queue stay there
// for its responders. Unsubscribing a subscription that does not exist is
// a no-op. A Publish that runs concurrently may still store a copy for it.
func (c *Client) Unsubscribe(ctx context.Context, topic, subscription string) error {
	if err := c.checkTopic(topic, subscription); err != nil {
		return err
	}
	reg, err := c.registry(ctx, topic)
	if err != nil {
		return err
	}
	if st := reg.subs[subscription]; st == nil || !st.active {
		return nil
	}
	return c.appendTopicEvent(ctx, topic, evUnsubscribed, topicEvent{Subscription: subscription}, "")
}

// Subscriptions returns the names of topic's subscriptions, sorted.
func (c *Client) Subscriptions(ctx context.Context, topic string) ([]string, error) {
	if err := c.checkTopic(topic); err != nil {
		return nil, err
	}
	reg, err := c.registry(ctx, topic)
	if err != nil {
		return nil, err
	}
	return reg.active(), nil
}

// checkTopic validates a topic name and, if given, a subscription name.
func (c *Client) checkTopic(topic string, subscription ...string) error {
	if c.isClosed() {
		return ErrClosed
	}
	errs := []error{validateTopicName("topic", topic, MaxTopicLen)}
	for _, s := range subscription {
		errs = append(errs, validateTopicName("subscription", s, MaxSubscriptionLen))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// Publication identifies a message published to a topic: one request per
// subscription the topic had at the time, each on the subscription's
// queue. Its fields are plain data: keep it to Gather from another process.
type Publication struct {
	Topic         string
	ID            string // Message.ID, or a new one
	CorrelationID string // Message.CorrelationID, or ID
	Copies        []Copy // one per subscription, sorted by Subscription
}

// Copy is the request a publication stored for one subscription. Its ID
// and CorrelationID are derived from the publication's: "<id>:<subscription>"
// (see docs/wire.md, "Topics").
type Copy struct {
	Subscription string
	Ticket       // Queue is SubscriptionQueue(topic, Subscription); Await CorrelationID
}

// Publish stores msg once for every subscription topic has now (see
// Subscribe), each copy on its subscription's queue with its own ID and
// CorrelationID, derived from msg's. It returns without waiting for
// replies: as with Send, each copy's reply (a handler's return value) is
// stored for Await (Copy.CorrelationID) or Gather. msg is not modified; its
// ReplyTo must be empty.
//
// With no subscriptions, Publish stores nothing and returns an error
// matching ErrNoSubscriptions.
//
// Publishing a message whose ID was published within the dedupe window
// stores no new copy for the subscriptions it had then. If Publish fails
// part-way, some copies may be stored: publish again with the same ID
// (the returned Publication's, which is set if any copy may have been
// stored) to complete it.
func (c *Client) Publish(ctx context.Context, topic string, msg *Message) (Publication, error) {
	pub, msgs, err := c.preparePublication(ctx, topic, msg)
	if err != nil {
		return Publication{}, err
	}
	ctx, span := c.startPublishSpan(ctx, "rsvp.publish ", pub)
	defer span.End()
	err = c.sendCopies(ctx, pub, msgs)
	spanError(span, err)
	return pub, err
}

// spanError records err, if any, on span and marks it failed.
func spanError(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "not stored")
	}
}

func (c *Client) startPublishSpan(ctx context.Context, name string, pub Publication) (context.Context, trace.Span) {
	return c.tel.tracer.Start(ctx, name+pub.Topic, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "rsvp"), attribute.String("messaging.destination.name", pub.Topic),
			attribute.String("messaging.message.id", pub.ID), attribute.String("rsvp.correlation_id", pub.CorrelationID),
			attribute.Int("rsvp.copies", len(pub.Copies))))
}

func (c *Client) sendCopies(ctx context.Context, pub Publication, msgs []*Message) error {
	errs := make([]error, len(msgs))
	stored := make([]bool, len(msgs))
	var wg sync.WaitGroup
	for i, m := range msgs { // at once, so that the engine stores them in one write
		wg.Go(func() {
			_, errs[i] = c.send(ctx, m, true)
			stored[i] = errs[i] == nil
			if stored[i] && !m.Deadline.IsZero() && m.ReplyTo != "" {
				errs[i] = c.scheduleExpiry(ctx, expiryOf(m)) // as Send does
			}
		})
	}
	wg.Wait()
	err := errors.Join(errs...)
	if err == nil {
		return nil
	}
	// Count the copies stored, not those without an error: a copy whose
	// expiry task failed is stored all the same.
	n := 0
	for _, ok := range stored {
		if ok {
			n++
		}
	}
	if n == 0 {
		return err
	}
	return fmt.Errorf("rsvp: publish %s to %s: %d of %d copies stored: %w", pub.ID, pub.Topic, n, len(msgs), err)
}

// preparePublication returns the publication of msg to topic and its
// copies, ready to send.
func (c *Client) preparePublication(ctx context.Context, topic string, msg *Message) (Publication, []*Message, error) {
	if err := c.checkTopic(topic); err != nil {
		return Publication{}, nil, err
	}
	if msg == nil {
		return Publication{}, nil, fmt.Errorf("%w: nil message", ErrInvalid)
	}
	if msg.ReplyTo != "" {
		return Publication{}, nil, fmt.Errorf("%w: Message.ReplyTo must be empty for a topic: each copy gets its own", ErrInvalid)
	}
	pub := Publication{Topic: topic, ID: cmp.Or(msg.ID, NewID())}
	pub.CorrelationID = cmp.Or(msg.CorrelationID, pub.ID)
	err := backend.ValidateName("id", pub.ID)
	if err == nil && pub.CorrelationID != pub.ID {
		err = backend.ValidateName("correlation id", pub.CorrelationID)
	}
	if err != nil {
		return Publication{}, nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	reg, err := c.registry(ctx, topic)
	if err != nil {
		return Publication{}, nil, err
	}
	subs := reg.active()
	if len(subs) == 0 {
		return Publication{}, nil, fmt.Errorf("%w: %s", ErrNoSubscriptions, topic)
	}
	created := cmp.Or(msg.CreatedAt, time.Now())
	msgs := make([]*Message, len(subs))
	for i, sub := range subs {
		m := *msg
		m.ID, m.CorrelationID, m.CreatedAt = copyID(pub.ID, sub), copyID(pub.CorrelationID, sub), created
		pm, err := c.prepare(SubscriptionQueue(topic, sub), &m)
		if err != nil {
			return Publication{}, nil, err
		}
		msgs[i] = pm
		pub.Copies = append(pub.Copies, Copy{Subscription: sub, Ticket: Ticket{ID: pm.ID, CorrelationID: pm.CorrelationID, Queue: pm.Queue}})
	}
	return pub, msgs, nil
}

// copyID derives the id of a subscription's copy from a publication's id:
// "<id>:<subscription>", or, if that is too long, the first 16 bytes of
// the SHA-256 of id in hex in place of id. Subscription names have no ':',
// so different pairs give different ids.
func copyID(id, subscription string) string {
	if s := id + ":" + subscription; len(s) <= backend.MaxNameLen {
		return s
	}
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:16]) + ":" + subscription
}

// GatherOptions configures RequestAll and Gather. The zero value works.
type GatherOptions struct {
	// Want ends the gathering as soon as this many copies have replies.
	// Default 0: wait until every copy has one (or ctx ends).
	Want int
}

// GatherReason says what ended a gathering.
type GatherReason string

// What ended a gathering.
const (
	// GatherEnough: GatherOptions.Want copies have replies.
	GatherEnough GatherReason = "enough"
	// GatherAll: every copy (every subscription the topic had when the
	// message was published) has a reply. It wins over GatherEnough when
	// both hold.
	GatherAll GatherReason = "all"
	// GatherDeadline: ctx ended (its deadline passed, or it was cancelled)
	// first.
	GatherDeadline GatherReason = "deadline"
)

// Gathered is the outcome of RequestAll or Gather.
type Gathered struct {
	Publication Publication
	Reason      GatherReason
	// Results has one entry per copy, in the order of Publication.Copies.
	Results []GatherResult
}

// GatherResult is what one subscription answered, so far.
type GatherResult struct {
	Copy
	// Reply is the copy's stored reply, or nil if none had arrived when the
	// gathering ended: Await Copy.CorrelationID for it.
	Reply *Reply
	// Err is nil for a succeeded reply (or none yet) and a *RemoteError for
	// a failed, expired or cancelled one, as Await would return.
	Err error
}

// Replied returns the number of copies that have replies.
func (g *Gathered) Replied() int {
	n := 0
	for _, r := range g.Results {
		if r.Reply != nil {
			n++
		}
	}
	return n
}

// Pending returns the copies that had no reply when the gathering ended.
func (g *Gathered) Pending() []Copy {
	var out []Copy
	for _, r := range g.Results {
		if r.Reply == nil {
			out = append(out, r.Copy)
		}
	}
	return out
}

// RequestAll publishes msg to topic as Publish does and gathers the
// replies of its subscriptions: until opts.Want have replied
// (GatherEnough), every subscription the topic had at send time has
// replied (GatherAll), or ctx ends (GatherDeadline), whichever comes first.
// Gathered.Reason says which.
//
// A subscription's failure (a *RemoteError in its GatherResult.Err) is a
// result like any other, not an error of RequestAll, and neither is ctx
// ending once the copies are stored. Unlike Request, ctx's deadline bounds
// the gathering only: it does not travel with the copies, so that replies
// that come later are kept for Await (per copy) or Gather; set
// Message.Deadline to bound the work. RequestAll returns
// ErrNoSubscriptions if the topic has none.
//
// If storing the copies fails, some of them may be stored all the same
// (they run, and their replies are kept): RequestAll then returns the
// error together with a Gathered that has only its Publication set (no
// Reason, no Results). Call RequestAll again with Message.ID (and
// CorrelationID, if it was set) set to the Publication's to complete it,
// from this or any other client: copies stored already are not stored
// again (within the dedupe window), and their replies count, wherever they
// are addressed. Other errors come with a nil Gathered.
func (c *Client) RequestAll(ctx context.Context, topic string, msg *Message, opts GatherOptions) (*Gathered, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	pub, msgs, err := c.preparePublication(ctx, topic, msg)
	if err != nil {
		return nil, err
	}
	ctx, span := c.startPublishSpan(ctx, "rsvp.request_all ", pub)
	defer span.End()
	g := c.newGathering(pub)
	defer g.close()
	// A caller-chosen id may have been published before (dedupe), by
	// another client: the copies stored then are answered to its inbox.
	again := msg.ID != "" || msg.CorrelationID != ""
	if again {
		unwatch, err := g.watch(ctx)
		if err != nil {
			return nil, fmt.Errorf("rsvp: request all %s: %w", pub.ID, err)
		}
		defer unwatch()
	}
	if err := c.sendCopies(ctx, pub, msgs); err != nil {
		spanError(span, err)
		return &Gathered{Publication: pub}, err // to complete and gather what was stored
	}
	out, err := g.wait(ctx, opts, again) // look for replies stored already
	if out != nil {
		span.SetAttributes(attribute.String("rsvp.gather_reason", string(out.Reason)), attribute.Int("rsvp.replies", out.Replied()))
	}
	return out, err
}

// Gather gathers the replies to the copies of pub, published by this or
// any other client on the same engine, as RequestAll does: until
// opts.Want copies have replies, all have, or ctx ends. Replies stored
// before the call count. As Await does, it makes the client run expiry
// tasks, so that copies sent with a Deadline expire even when the client
// that published them is gone.
func (c *Client) Gather(ctx context.Context, pub Publication, opts GatherOptions) (*Gathered, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if len(pub.Copies) == 0 {
		return nil, fmt.Errorf("%w: the publication has no copies", ErrInvalid)
	}
	for _, cp := range pub.Copies {
		if err := backend.ValidateName("correlation id", cp.CorrelationID); err != nil {
			return nil, fmt.Errorf("%w: copy for %q: %w", ErrInvalid, cp.Subscription, err)
		}
	}
	// The copies may need their expiry tasks run, and the client that
	// published them (or any other) may be gone: as Await does.
	c.startExpirer()
	g := c.newGathering(pub)
	defer g.close()
	unwatch, err := g.watch(ctx)
	if err != nil {
		return nil, fmt.Errorf("rsvp: gather %s: %w", pub.ID, err)
	}
	defer unwatch()
	return g.wait(ctx, opts, true)
}

func (o GatherOptions) validate() error {
	if o.Want < 0 {
		return fmt.Errorf("%w: GatherOptions.Want is %d, must not be negative", ErrInvalid, o.Want)
	}
	return nil
}

// gathering waits for the replies to a publication's copies: one waiter
// per copy, registered before the copies are sent.
type gathering struct {
	c   *Client
	out *Gathered
	chs []chan *Reply
}

func (c *Client) newGathering(pub Publication) *gathering {
	g := &gathering{c: c, out: &Gathered{Publication: pub, Results: make([]GatherResult, len(pub.Copies))}}
	for i, cp := range pub.Copies {
		g.out.Results[i].Copy = cp
		g.chs = append(g.chs, c.waiters.add(cp.CorrelationID))
	}
	return g
}

// watch watches for the replies to the copies, which may be addressed to
// another client's inbox, until unwatch is called.
func (g *gathering) watch(ctx context.Context) (unwatch func(), err error) {
	var subs []backend.Subscription
	unwatch = func() {
		for _, sub := range subs {
			_ = sub.Close()
		}
	}
	for _, cp := range g.out.Publication.Copies {
		sub, err := g.c.b.WatchReply(ctx, cp.CorrelationID, g.c.waiters.deliver)
		if err != nil {
			unwatch()
			return nil, err
		}
		subs = append(subs, sub)
	}
	return unwatch, nil
}

// close removes the waiters: replies that come later stay stored for Await.
func (g *gathering) close() {
	for i, ch := range g.chs {
		g.c.waiters.remove(g.out.Results[i].CorrelationID, ch)
	}
}

// set records r as the reply of copy i, once.
func (g *gathering) set(i int, r *Reply) {
	res := &g.out.Results[i]
	if res.Reply == nil {
		res.Reply, res.Err = r, replyError(r)
	}
}

func (g *gathering) over(want int) bool {
	switch n := g.out.Replied(); {
	case n == len(g.out.Results):
		g.out.Reason = GatherAll
	case want > 0 && n >= want:
		g.out.Reason = GatherEnough
	default:
		return false
	}
	return true
}

// wait gathers replies until the gathering is over or ctx ends. With
// lookNow it first looks up the replies stored already.
func (g *gathering) wait(ctx context.Context, opts GatherOptions, lookNow bool) (*Gathered, error) {
	c := g.c
	type arrival struct {
		i int
		r *Reply
	}
	arrivals := make(chan arrival, len(g.chs))
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(done)
	for i, ch := range g.chs {
		wg.Go(func() {
			select {
			case r := <-ch:
				arrivals <- arrival{i, r}
			case <-done:
			}
		})
	}
	recheck := time.NewTimer(c.cfg.RecheckInterval)
	defer recheck.Stop()
	for rechecks := 0; ; rechecks++ {
		if lookNow {
			// Every pending copy is looked up before the gathering may end
			// at Want: stopping at the Want-th reply found would leave
			// copies whose replies are stored pending, and end with
			// GatherEnough where GatherAll holds.
			for i := range g.out.Results {
				res := &g.out.Results[i]
				if res.Reply != nil {
					continue
				}
				r, err := c.b.GetReply(ctx, res.CorrelationID)
				switch {
				case err == nil:
					g.set(i, r)
				case errors.Is(err, backend.ErrNotFound):
				case ctx.Err() != nil:
					g.out.Reason = GatherDeadline
					return g.out, nil
				case rechecks == 0:
					return nil, fmt.Errorf("rsvp: gather %s: %w", g.out.Publication.ID, err)
				default:
					c.cfg.Logger.WarnContext(ctx, "rsvp: looking up a reply failed; still gathering",
						"topic", g.out.Publication.Topic, "correlation_id", res.CorrelationID, "err", err)
				}
			}
			if g.over(opts.Want) {
				return g.out, nil
			}
		}
		select {
		case a := <-arrivals:
			g.set(a.i, a.r)
			if g.over(opts.Want) {
				return g.out, nil
			}
			lookNow = false
			continue
		case <-ctx.Done():
			g.out.Reason = GatherDeadline
			return g.out, nil
		case <-recheck.C:
			recheck.Reset(c.cfg.RecheckInterval)
			lookNow = true
		}
	}
}

// topicEvent is the body of a registry event.
type topicEvent struct {
	Subscription string `json:"subscription"`
	// Refresh, in a subscribed event, marks it as the re-recording of the
	// registration whose latest event had this position in the channel.
	Refresh uint64 `json:"refresh,omitempty"`
}

func (c *Client) appendTopicEvent(ctx context.Context, topic, typ string, te topicEvent, dedupe string) error {
	data, err := json.Marshal(te)
	if err != nil {
		return fmt.Errorf("rsvp: %s %s of %s: %w", typ, te.Subscription, topic, err)
	}
	ch := topicChannelPrefix + topic
	ev := &backend.Event{CorrelationID: ch, Channel: ch, Type: typ, At: time.Now(), Data: data, DedupeKey: dedupe}
	if err := c.b.AppendEvent(ctx, ev); err != nil {
		return fmt.Errorf("rsvp: record %s %s of topic %s: %w", typ, te.Subscription, topic, err)
	}
	return nil
}

// registry is the fold of a topic's registry channel.
type registry struct {
	topic string
	last  uint64 // position of the last event folded
	subs  map[string]*subState
}

type subState struct {
	active bool
	seq    uint64    // position of the event that set this state
	at     time.Time // its time
}

// cachedRegistry is a client's fold of one topic's registry, brought up
// to date (incrementally) on each use.
type cachedRegistry struct {
	mu  sync.Mutex
	reg *registry
}

// registry reads topic's registry and records again the registrations
// that are getting old (see Subscribe). It returns a copy the caller owns.
func (c *Client) registry(ctx context.Context, topic string) (*registry, error) {
	v, _ := c.topics.LoadOrStore(topic, &cachedRegistry{reg: &registry{topic: topic, subs: map[string]*subState{}}})
	cr := v.(*cachedRegistry)
	cr.mu.Lock()
	defer cr.mu.Unlock()
	reg, err := c.refreshRegistry(ctx, topic, cr.reg)
	if err != nil {
		return nil, err
	}
	return &registry{topic: reg.topic, last: reg.last, subs: maps.Clone(reg.subs)}, nil
}

func (c *Client) refreshRegistry(ctx context.Context, topic string, reg *registry) (*registry, error) {
	if err := reg.update(ctx, c.b); err != nil {
		return nil, err
	}
	var refreshed []string
	for _, sub := range reg.active() {
		st := reg.subs[sub]
		if time.Since(st.at) < refreshAfter {
			continue
		}
		// Concurrent refreshers of the same registration store one event.
		dedupe := topicChannelPrefix + topic + ":" + sub + ":refresh:" + strconv.FormatUint(st.seq, 10)
		if err := c.appendTopicEvent(ctx, topic, evSubscribed, topicEvent{Subscription: sub, Refresh: st.seq}, dedupe); err != nil {
			return nil, err
		}
		refreshed = append(refreshed, sub)
	}
	if len(refreshed) == 0 {
		return reg, nil
	}
	if err := reg.update(ctx, c.b); err != nil {
		return nil, err
	}
	for _, sub := range refreshed {
		if !reg.subs[sub].active {
			// Unsubscribed while we refreshed: the fold ignores our refresh,
			// but it would not once the unsubscribe expires before it.
			// Record the unsubscribe again, after the refresh.
			if err := c.appendTopicEvent(ctx, topic, evUnsubscribed, topicEvent{Subscription: sub}, ""); err != nil {
				return nil, err
			}
		}
	}
	return reg, nil
}

// update folds the registry events stored after reg.last.
func (reg *registry) update(ctx context.Context, b backend.Backend) error {
	for {
		evs, err := b.Events(ctx, backend.EventQuery{Channel: topicChannelPrefix + reg.topic, After: reg.last, Limit: registryPage})
		if err != nil {
			return fmt.Errorf("rsvp: read the subscriptions of topic %s: %w", reg.topic, err)
		}
		for _, ev := range evs {
			reg.apply(ev)
		}
		if len(evs) > 0 {
			reg.last = evs[len(evs)-1].Seq
		}
		if len(evs) < registryPage {
			return nil
		}
	}
}

// apply folds one event: the latest event of a subscription sets its
// state, except a refresh of a registration that was unsubscribed since.
func (reg *registry) apply(ev *backend.Event) {
	var te topicEvent
	if json.Unmarshal(ev.Data, &te) != nil || validateTopicName("subscription", te.Subscription, MaxSubscriptionLen) != nil {
		return // not ours
	}
	st := reg.subs[te.Subscription]
	switch ev.Type {
	case evSubscribed:
		if te.Refresh != 0 && st != nil && !st.active && st.seq > te.Refresh {
			return
		}
		reg.subs[te.Subscription] = &subState{active: true, seq: ev.Seq, at: ev.At}
	case evUnsubscribed:
		reg.subs[te.Subscription] = &subState{active: false, seq: ev.Seq, at: ev.At}
	}
}

// active returns the names of the active subscriptions, sorted.
func (reg *registry) active() []string {
	var out []string
	for sub, st := range reg.subs {
		if st.active {
			out = append(out, sub)
		}
	}
	slices.Sort(out)
	return out
}
