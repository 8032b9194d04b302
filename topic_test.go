package rsvp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
	"github.com/rsvp-go/rsvp/internal/pgtest"
)

// topicEngine is an engine that tests can restart: a backend on a store
// that outlives it (a directory, a PostgreSQL schema), and clients on it.
type topicEngine struct {
	t       *testing.T
	open    func() (backend.Backend, error)
	b       backend.Backend
	clients []*rsvp.Client
}

// forEachEngine runs fn on the embedded NATS engine and, when
// RSVP_TEST_POSTGRES_URL is set, on PostgreSQL.
func forEachEngine(t *testing.T, fn func(t *testing.T, e *topicEngine)) {
	t.Run("nats", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		fn(t, newTopicEngine(t, func() (backend.Backend, error) { return rsvpnats.Embedded(dir, rsvpnats.Options{}) }))
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		url := os.Getenv("RSVP_TEST_POSTGRES_URL")
		if url == "" {
			t.Skip("RSVP_TEST_POSTGRES_URL is not set")
		}
		schema := pgtest.Schema(t, url, "rsvp_topic_test_")
		fn(t, newTopicEngine(t, func() (backend.Backend, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return rsvppg.Open(ctx, url, rsvppg.Options{Schema: schema})
		}))
	})
}

func newTopicEngine(t *testing.T, open func() (backend.Backend, error)) *topicEngine {
	t.Helper()
	e := &topicEngine{t: t, open: open}
	e.start()
	t.Cleanup(e.stop)
	return e
}

func (e *topicEngine) start() {
	e.t.Helper()
	b, err := e.open()
	if err != nil {
		e.t.Fatal(err)
	}
	e.b = b
}

// stop closes the clients, then the backend.
func (e *topicEngine) stop() {
	for _, c := range e.clients {
		if err := c.Close(context.Background()); err != nil {
			e.t.Errorf("close client: %v", err)
		}
	}
	e.clients = nil
	if err := e.b.Close(); err != nil {
		e.t.Errorf("close backend: %v", err)
	}
}

// restart closes the clients and the backend and opens the backend again.
func (e *topicEngine) restart() {
	e.t.Helper()
	e.stop()
	e.start()
}

// client returns a new client on the engine, closed at the next restart or
// when the test ends.
func (e *topicEngine) client() *rsvp.Client {
	e.t.Helper()
	c, err := rsvp.New(context.Background(), e.b, rsvp.Config{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.clients = append(e.clients, c)
	return c
}

func subscribeAll(t *testing.T, ctx context.Context, c *rsvp.Client, topic string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if err := c.Subscribe(ctx, topic, s); err != nil {
			t.Fatalf("subscribe %s to %s: %v", s, topic, err)
		}
	}
}

func serve(t *testing.T, c *rsvp.Client, queue string, h rsvp.HandlerFunc) {
	t.Helper()
	if _, err := c.Handle(queue, h, rsvp.HandleOptions{}); err != nil {
		t.Fatal(err)
	}
}

func subscriptionsOf(t *testing.T, ctx context.Context, c *rsvp.Client, topic string) []string {
	t.Helper()
	subs, err := c.Subscriptions(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	return subs
}

// replyWith answers with "<prefix>:<body>".
func replyWith(prefix string) rsvp.HandlerFunc {
	return func(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: []byte(prefix + ":" + string(req.Body))}, nil
	}
}

func TestTopicNames(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 10*time.Second)
	long := strings.Repeat("t", rsvp.MaxTopicLen+1)
	tests := []struct {
		name string
		call func() error
		want string
	}{
		{"empty topic", func() error { return c.Subscribe(ctx, "", "s") },
			"rsvp: invalid argument: topic is empty"},
		{"empty subscription", func() error { return c.Subscribe(ctx, "t", "") },
			"rsvp: invalid argument: subscription is empty"},
		{"both empty", func() error { return c.Unsubscribe(ctx, "", "") },
			"rsvp: invalid argument: topic is empty\nsubscription is empty"},
		{"long topic", func() error { return c.Subscribe(ctx, long, "s") },
			`rsvp: invalid argument: topic "tttttttttttttttttttt"... is 65 bytes, longer than 64`},
		{"long subscription", func() error { return c.Subscribe(ctx, "t", strings.Repeat("s", rsvp.MaxSubscriptionLen+1)) },
			`rsvp: invalid argument: subscription "ssssssssssssssssssss"... is 64 bytes, longer than 63`},
		{"dot in topic", func() error { _, err := c.Publish(ctx, "a.b", &rsvp.Message{}); return err },
			`rsvp: invalid argument: topic "a.b" has character '.' at byte 1; allowed are letters, digits, '-' and '_'`},
		{"colon in subscription", func() error { return c.Subscribe(ctx, "t", "x:y") },
			`rsvp: invalid argument: subscription "x:y" has character ':' at byte 1; allowed are letters, digits, '-' and '_'`},
		{"non-ASCII topic", func() error { _, err := c.Subscriptions(ctx, "caf\u00e9"); return err },
			`rsvp: invalid argument: topic "café" has a non-ASCII byte 0xc3 at byte 3; allowed are letters, digits, '-' and '_'`},
		{"space in topic", func() error {
			_, err := c.RequestAll(ctx, "a b", &rsvp.Message{}, rsvp.GatherOptions{})
			return err
		}, `rsvp: invalid argument: topic "a b" has character ' ' at byte 1; allowed are letters, digits, '-' and '_'`},
		{"nil message", func() error { _, err := c.Publish(ctx, "t", nil); return err },
			"rsvp: invalid argument: nil message"},
		{"reply address", func() error { _, err := c.Publish(ctx, "t", &rsvp.Message{ReplyTo: "x"}); return err },
			"rsvp: invalid argument: Message.ReplyTo must be empty for a topic: each copy gets its own"},
		{"bad id", func() error { _, err := c.Publish(ctx, "t", &rsvp.Message{ID: "a/b"}); return err },
			`rsvp: invalid argument: id "a/b" has character '/' at byte 1; allowed are letters, digits, '-', '_' and ':'`},
		{"negative want", func() error {
			_, err := c.RequestAll(ctx, "t", &rsvp.Message{}, rsvp.GatherOptions{Want: -1})
			return err
		}, "rsvp: invalid argument: GatherOptions.Want is -1, must not be negative"},
		{"gather nothing", func() error {
			_, err := c.Gather(ctx, rsvp.Publication{}, rsvp.GatherOptions{})
			return err
		}, "rsvp: invalid argument: the publication has no copies"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if !errors.Is(err, rsvp.ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
			if err.Error() != tt.want {
				t.Errorf("got error\n%s\nwant\n%s", err, tt.want)
			}
		})
	}
}

func TestSubscriptionQueue(t *testing.T) {
	t.Parallel()
	if got := rsvp.SubscriptionQueue("orders", "billing"); got != "orders:billing" {
		t.Errorf("got %q", got)
	}
	q := rsvp.SubscriptionQueue(strings.Repeat("t", rsvp.MaxTopicLen), strings.Repeat("s", rsvp.MaxSubscriptionLen))
	if err := backend.ValidateName("queue", q); err != nil {
		t.Errorf("longest names: %v", err)
	}
}

func TestTopicSubscriptionSurvivesRestart(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx := ctxWithin(t, 60*time.Second)
		c := e.client()
		subscribeAll(t, ctx, c, "orders", "billing", "billing", "audit", "shipping")
		if err := c.Unsubscribe(ctx, "orders", "shipping"); err != nil {
			t.Fatal(err)
		}
		if err := c.Unsubscribe(ctx, "orders", "never"); err != nil {
			t.Fatalf("unsubscribe an unknown subscription: %v", err)
		}
		if got := subscriptionsOf(t, ctx, c, "orders"); !slices.Equal(got, []string{"audit", "billing"}) {
			t.Fatalf("subscriptions: %v", got)
		}
		// Subscribing again recorded nothing: 3 subscribes, 1 unsubscribe.
		evs, err := e.b.Events(ctx, backend.EventQuery{Channel: "rsvp-topic-orders"})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 4 {
			t.Errorf("registry has %d events, want 4", len(evs))
		}

		e.restart()
		c = e.client()
		if got := subscriptionsOf(t, ctx, c, "orders"); !slices.Equal(got, []string{"audit", "billing"}) {
			t.Fatalf("subscriptions after restart: %v", got)
		}
		// A message published before any responder runs waits on the queue.
		pub, err := c.Publish(ctx, "orders", &rsvp.Message{Body: []byte("o1")})
		if err != nil {
			t.Fatal(err)
		}
		e.restart()
		c = e.client()
		serve(t, c, rsvp.SubscriptionQueue("orders", "billing"), replyWith("billing"))
		serve(t, c, rsvp.SubscriptionQueue("orders", "audit"), replyWith("audit"))
		g, err := c.Gather(ctx, pub, rsvp.GatherOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if g.Reason != rsvp.GatherAll {
			t.Fatalf("reason %s", g.Reason)
		}
		for _, r := range g.Results {
			if want := r.Subscription + ":o1"; string(r.Reply.Body) != want || r.Err != nil {
				t.Errorf("%s: got %q, %v; want %q", r.Subscription, r.Reply.Body, r.Err, want)
			}
		}
	})
}

func TestPublishEachSubscriptionGetsEachMessageOnce(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx := ctxWithin(t, 60*time.Second)
		pubc := e.client()
		subscribeAll(t, ctx, pubc, "events", "fanned", "single")
		var mu sync.Mutex
		seen := map[string]int{} // "<subscription>:<body>" → handled
		by := map[string]int{}   // "fanned" responder → handled
		count := func(sub, who string) rsvp.HandlerFunc {
			return func(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
				mu.Lock()
				seen[sub+":"+string(req.Body)]++
				by[who]++
				mu.Unlock()
				return nil, nil
			}
		}
		// Three competing responders of one subscription, in three clients.
		for i := range 3 {
			serve(t, e.client(), rsvp.SubscriptionQueue("events", "fanned"), count("fanned", fmt.Sprint("r", i)))
		}
		serve(t, e.client(), rsvp.SubscriptionQueue("events", "single"), count("single", "single"))

		const n = 30
		var pubs []rsvp.Publication
		for i := range n {
			pub, err := pubc.Publish(ctx, "events", &rsvp.Message{ID: fmt.Sprint("ev-", i), Body: []byte(fmt.Sprint(i))})
			if err != nil {
				t.Fatal(err)
			}
			pubs = append(pubs, pub)
		}
		// Publishing the same id again stores nothing new: same copies.
		again, err := pubc.Publish(ctx, "events", &rsvp.Message{ID: "ev-0", Body: []byte("0")})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(again) != fmt.Sprint(pubs[0]) {
			t.Errorf("republished: %+v, first: %+v", again, pubs[0])
		}
		// A fence behind it: "single" handles its queue in order, so once
		// the fence is answered a duplicate would have been handled.
		fence, err := pubc.Publish(ctx, "events", &rsvp.Message{ID: "fence", Body: []byte("fence")})
		if err != nil {
			t.Fatal(err)
		}
		for _, pub := range append(pubs, fence) {
			if len(pub.Copies) != 2 || pub.Copies[0].Queue != "events:fanned" || pub.Copies[1].Queue != "events:single" {
				t.Fatalf("copies: %+v", pub.Copies)
			}
			for _, cp := range pub.Copies {
				if want := pub.ID + ":" + cp.Subscription; cp.ID != want || cp.CorrelationID != want {
					t.Errorf("copy ids %s, %s; want %s", cp.ID, cp.CorrelationID, want)
				}
				if _, err := pubc.Await(ctx, cp.CorrelationID); err != nil {
					t.Fatal(err)
				}
			}
		}
		mu.Lock()
		defer mu.Unlock()
		for _, sub := range []string{"fanned", "single"} {
			for i := range n {
				if k := fmt.Sprintf("%s:%d", sub, i); seen[k] != 1 {
					t.Errorf("%s handled %d times", k, seen[k])
				}
			}
		}
		if len(seen) != 2*(n+1) {
			t.Errorf("handled %d distinct copies, want %d", len(seen), 2*(n+1))
		}
		t.Logf("fanned handled by %v", by)
	})
}

func TestRequestAllEndsWhenAllAnswered(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx := ctxWithin(t, 60*time.Second)
		c := e.client()
		subscribeAll(t, ctx, c, "quote", "a", "b", "c")
		serve(t, c, rsvp.SubscriptionQueue("quote", "a"), replyWith("a"))
		serve(t, c, rsvp.SubscriptionQueue("quote", "b"), replyWith("b"))
		serve(t, c, rsvp.SubscriptionQueue("quote", "c"), func(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
			return nil, rsvp.Permanent(&rsvp.RemoteError{Code: "no_stock", Message: "sold out"})
		})
		g, err := c.RequestAll(ctx, "quote", &rsvp.Message{Body: []byte("x")}, rsvp.GatherOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if g.Reason != rsvp.GatherAll || g.Replied() != 3 || len(g.Pending()) != 0 {
			t.Fatalf("reason %s, %d replies, pending %v", g.Reason, g.Replied(), g.Pending())
		}
		for _, r := range g.Results[:2] {
			if want := r.Subscription + ":x"; string(r.Reply.Body) != want || r.Err != nil {
				t.Errorf("%s: got %q, %v; want %q", r.Subscription, r.Reply.Body, r.Err, want)
			}
		}
		var re *rsvp.RemoteError
		if r := g.Results[2]; r.Subscription != "c" || !errors.As(r.Err, &re) || re.Code != "no_stock" || r.Reply.Status != backend.StatusFailed {
			t.Errorf("c: %+v", r)
		}
		// With Want at the number of subscriptions, all answered wins.
		g, err = c.RequestAll(ctx, "quote", &rsvp.Message{Body: []byte("y")}, rsvp.GatherOptions{Want: 3})
		if err != nil || g.Reason != rsvp.GatherAll {
			t.Errorf("Want 3: %v, %+v", err, g)
		}
	})
}

// slowTopic subscribes fast1, fast2 and slow to topic; slow answers once
// release is closed.
func slowTopic(t *testing.T, ctx context.Context, c *rsvp.Client, topic string) (release func()) {
	t.Helper()
	subscribeAll(t, ctx, c, topic, "fast1", "fast2", "slow")
	serve(t, c, rsvp.SubscriptionQueue(topic, "fast1"), replyWith("fast1"))
	serve(t, c, rsvp.SubscriptionQueue(topic, "fast2"), replyWith("fast2"))
	ch := make(chan struct{})
	serve(t, c, rsvp.SubscriptionQueue(topic, "slow"), func(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
		select {
		case <-ch:
			return replyWith("slow")(ctx, req)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release) // before the clients close
	return release
}

func TestRequestAllEndsWithEnough(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx := ctxWithin(t, 60*time.Second)
		c := e.client()
		release := slowTopic(t, ctx, c, "poll")
		g, err := c.RequestAll(ctx, "poll", &rsvp.Message{Body: []byte("q")}, rsvp.GatherOptions{Want: 2})
		if err != nil {
			t.Fatal(err)
		}
		if g.Reason != rsvp.GatherEnough || g.Replied() != 2 {
			t.Fatalf("reason %s, %d replies", g.Reason, g.Replied())
		}
		pending := g.Pending()
		if len(pending) != 1 || pending[0].Subscription != "slow" {
			t.Fatalf("pending %+v", pending)
		}
		release()
		r, err := c.Await(ctx, pending[0].CorrelationID)
		if err != nil || string(r.Body) != "slow:q" {
			t.Fatalf("late reply: %v, %v", r, err)
		}
		if rsvp.WaiterCount(c) != 0 {
			t.Errorf("%d waiters left", rsvp.WaiterCount(c))
		}
	})
}

func TestRequestAllEndsAtDeadline(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx := ctxWithin(t, 60*time.Second)
		c := e.client()
		release := slowTopic(t, ctx, c, "survey")
		// The deadline is what this test is about: the fast replies have it
		// all to arrive, and the slow one cannot.
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		g, err := c.RequestAll(gctx, "survey", &rsvp.Message{ID: "s1", Body: []byte("q")}, rsvp.GatherOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if g.Reason != rsvp.GatherDeadline || g.Replied() != 2 {
			t.Fatalf("reason %s, %d replies", g.Reason, g.Replied())
		}
		pending := g.Pending()
		if len(pending) != 1 || pending[0].Subscription != "slow" || pending[0].CorrelationID != "s1:slow" {
			t.Fatalf("pending %+v", pending)
		}
		release()
		// The late reply is kept: Await it from another client, and gather
		// the whole publication again there.
		other := e.client()
		r, err := other.Await(ctx, "s1:slow")
		if err != nil || string(r.Body) != "slow:q" {
			t.Fatalf("late reply: %v, %v", r, err)
		}
		g, err = other.Gather(ctx, g.Publication, rsvp.GatherOptions{})
		if err != nil || g.Reason != rsvp.GatherAll {
			t.Fatalf("gather: %v, %+v", err, g)
		}
		for _, r := range g.Results {
			if want := r.Subscription + ":q"; string(r.Reply.Body) != want {
				t.Errorf("%s: %q", r.Subscription, r.Reply.Body)
			}
		}
		if rsvp.WaiterCount(c) != 0 || rsvp.WaiterCount(other) != 0 {
			t.Errorf("waiters left: %d, %d", rsvp.WaiterCount(c), rsvp.WaiterCount(other))
		}
	})
}

func TestPublishNoSubscriptions(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx := ctxWithin(t, 60*time.Second)
		c := e.client()
		check := func() {
			t.Helper()
			pub, err := c.Publish(ctx, "nobody", &rsvp.Message{Body: []byte("x")})
			if !errors.Is(err, rsvp.ErrNoSubscriptions) || err.Error() != "rsvp: topic has no subscriptions: nobody" || pub.ID != "" {
				t.Errorf("publish: %+v, %v", pub, err)
			}
			g, err := c.RequestAll(ctx, "nobody", &rsvp.Message{Body: []byte("x")}, rsvp.GatherOptions{})
			if !errors.Is(err, rsvp.ErrNoSubscriptions) || g != nil {
				t.Errorf("request all: %+v, %v", g, err)
			}
		}
		check()
		subscribeAll(t, ctx, c, "nobody", "gone")
		if err := c.Unsubscribe(ctx, "nobody", "gone"); err != nil {
			t.Fatal(err)
		}
		check()
	})
}

// TestTopicRegistryRefresh writes registry events as docs/wire.md
// describes them, as an old registration and a refresher racing with
// Unsubscribe would have left them.
func TestTopicRegistryRefresh(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx := ctxWithin(t, 60*time.Second)
		c := e.client()
		const ch = "rsvp-topic-old"
		appendEvent := func(typ string, at time.Time, data map[string]any) {
			t.Helper()
			body, _ := json.Marshal(data)
			if err := e.b.AppendEvent(ctx, &backend.Event{CorrelationID: ch, Channel: ch, Type: typ, At: at, Data: body}); err != nil {
				t.Fatal(err)
			}
		}
		registry := func() []*backend.Event {
			t.Helper()
			evs, err := e.b.Events(ctx, backend.EventQuery{Channel: ch})
			if err != nil {
				t.Fatal(err)
			}
			return evs
		}
		appendEvent("subscribed", time.Now().Add(-2*time.Hour), map[string]any{"subscription": "s"})
		first := registry()[0].Seq
		if got := subscriptionsOf(t, ctx, c, "old"); !slices.Equal(got, []string{"s"}) {
			t.Fatalf("subscriptions: %v", got)
		}
		// The old registration was recorded again.
		evs := registry()
		if len(evs) != 2 || evs[1].Type != "subscribed" || string(evs[1].Data) != fmt.Sprintf(`{"subscription":"s","refresh":%d}`, first) {
			t.Fatalf("registry: %+v", evs)
		}
		subscriptionsOf(t, ctx, c, "old")
		if evs := registry(); len(evs) != 2 {
			t.Fatalf("a fresh registration was refreshed: %d events", len(evs))
		}
		// Unsubscribed, then a refresh by a reader that had not seen it.
		if err := c.Unsubscribe(ctx, "old", "s"); err != nil {
			t.Fatal(err)
		}
		appendEvent("subscribed", time.Now(), map[string]any{"subscription": "s", "refresh": evs[1].Seq})
		if got := subscriptionsOf(t, ctx, c, "old"); len(got) != 0 {
			t.Fatalf("a stale refresh resurrected %v", got)
		}
		// Subscribing afresh works.
		subscribeAll(t, ctx, c, "old", "s")
		if got := subscriptionsOf(t, ctx, c, "old"); !slices.Equal(got, []string{"s"}) {
			t.Fatalf("subscriptions: %v", got)
		}
	})
}

// TestGatherWantCountsStoredReplies: Gather with Want, of a publication
// whose copies all have replies stored, ends with all of them: replies
// stored before the call count, GatherAll wins over GatherEnough when both
// hold, and no copy that has a reply is pending.
func TestGatherWantCountsStoredReplies(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx := ctxWithin(t, 60*time.Second)
		c := e.client()
		topic := "answered-" + rsvp.NewID()[24:]
		subscribeAll(t, ctx, c, topic, "a", "b", "c")
		pub, err := c.Publish(ctx, topic, &rsvp.Message{Body: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		for _, cp := range pub.Copies {
			serve(t, c, cp.Queue, replyWith(cp.Subscription))
			if _, err := c.Await(ctx, cp.CorrelationID); err != nil {
				t.Fatal(err)
			}
		}
		g, err := e.client().Gather(ctx, pub, rsvp.GatherOptions{Want: 1})
		if err != nil {
			t.Fatal(err)
		}
		if g.Reason != rsvp.GatherAll || g.Replied() != 3 {
			t.Fatalf("Gather with Want 1 of a publication whose 3 copies have replies: reason %s, %d replies, pending %v; want all, 3",
				g.Reason, g.Replied(), g.Pending())
		}
	})
}

// with Send and that Deadline does, so that Gather and Await end.
func TestPublishDeadlineExpiresCopies(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 30*time.Second)
	topic := "exp-" + rsvp.NewID()[24:]
	subscribeAll(t, ctx, c.Client, topic, "served", "idle")
	serve(t, c.Client, rsvp.SubscriptionQueue(topic, "served"), replyWith("ok"))
	deadline := time.Now().Add(time.Second)

	// Send with that deadline, to a queue nobody serves: expired at the deadline.
	tk, err := c.Send(ctx, "nobody-"+rsvp.NewID()[24:], &rsvp.Message{Body: []byte("x"), Deadline: deadline})
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Await(actx, tk.CorrelationID); !errors.Is(err, rsvp.ErrExpired) {
		t.Fatalf("Send: Await got %v, want ErrExpired", err)
	}

	deadline = time.Now().Add(time.Second)
	pub, err := c.Publish(ctx, topic, &rsvp.Message{Body: []byte("x"), Deadline: deadline})
	if err != nil {
		t.Fatal(err)
	}
	gctx, gcancel := context.WithTimeout(ctx, 10*time.Second)
	defer gcancel()
	g, err := c.Gather(gctx, pub, rsvp.GatherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if g.Reason != rsvp.GatherAll {
		t.Fatalf("Publish: gather ended %s %s after the copies' deadline, pending %v; want every copy answered (the idle one expired)",
			g.Reason, time.Since(deadline).Round(time.Second), g.Pending())
	}
	if r := g.Results[0]; r.Subscription != "idle" || !errors.Is(r.Err, rsvp.ErrExpired) {
		t.Fatalf("idle copy: %+v, want expired", r)
	}
}

// refuseQueue is the engine refusing to store requests on one queue.
type refuseQueue struct {
	backend.Backend
	queue string
}

func (r refuseQueue) Enqueue(ctx context.Context, m *backend.Message) error {
	if m.Queue == r.queue {
		return errors.New("stream unavailable")
	}
	return r.Backend.Enqueue(ctx, m)
}

// TestRequestAllFailsPartWay: when some copies of a RequestAll could not be
// stored, the error comes with the publication, whose stored copies run
// all the same; RequestAll again with its ID completes it (the stored
// copies are not stored twice) and gathers every reply.
func TestRequestAllFailsPartWay(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 30*time.Second)
	topic := "partway-" + rsvp.NewID()[24:]
	subscribeAll(t, ctx, c.Client, topic, "down", "up")
	var mu sync.Mutex
	runs := map[string]int{}
	for _, sub := range []string{"down", "up"} {
		serve(t, c.Client, rsvp.SubscriptionQueue(topic, sub), func(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
			mu.Lock()
			runs[sub]++
			mu.Unlock()
			return replyWith(sub)(ctx, req)
		})
	}
	requester, err := rsvp.New(ctx, refuseQueue{c.be, rsvp.SubscriptionQueue(topic, "down")}, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeWithin(t, "close the requester", requester.Close) })

	g, err := requester.RequestAll(ctx, topic, &rsvp.Message{Body: []byte("x")}, rsvp.GatherOptions{})
	if err == nil || !strings.Contains(err.Error(), "1 of 2 copies stored") {
		t.Fatalf("RequestAll with a copy refused: %v, want the error of a part-way publication", err)
	}
	if g == nil || g.Publication.ID == "" || len(g.Publication.Copies) != 2 || g.Reason != "" || g.Results != nil {
		t.Fatalf("RequestAll with a copy refused returned %+v; want the publication only", g)
	}
	pub := g.Publication
	if r, err := c.Await(ctx, pub.Copies[1].CorrelationID); err != nil || string(r.Body) != "up:x" {
		t.Fatalf("the stored copy: %v, %v", r, err)
	}

	g, err = c.RequestAll(ctx, topic, &rsvp.Message{ID: pub.ID, Body: []byte("x")}, rsvp.GatherOptions{})
	if err != nil || g.Reason != rsvp.GatherAll || !slices.Equal(copyIDs(g.Publication), copyIDs(pub)) {
		t.Fatalf("RequestAll again: %+v, %v", g, err)
	}
	for _, r := range g.Results {
		if want := r.Subscription + ":x"; r.Reply == nil || string(r.Reply.Body) != want {
			t.Errorf("%s: %+v, want %q", r.Subscription, r.Reply, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if runs["down"] != 1 || runs["up"] != 1 {
		t.Fatalf("handler runs %v, want one per subscription", runs)
	}
}

// refuseExpiry is the engine refusing to store the expiry tasks of the
// requests whose correlation ids have the suffix.
type refuseExpiry struct {
	backend.Backend
	suffix string
}

func (r refuseExpiry) Enqueue(ctx context.Context, m *backend.Message) error {
	var t struct {
		CorrelationID string `json:"correlation_id"`
	}
	if m.Queue == rsvp.ExpiryQueue && json.Unmarshal(m.Body, &t) == nil && strings.HasSuffix(t.CorrelationID, r.suffix) {
		return errors.New("stream unavailable")
	}
	return r.Backend.Enqueue(ctx, m)
}

// TestPublishPartWayCountsStoredCopies: a Publish whose copies were all
// stored, but the expiry task of one of them not, says so: its error
// counts the copies stored, not the copies that failed in any way.
func TestPublishPartWayCountsStoredCopies(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 30*time.Second)
	topic := "expfail-" + rsvp.NewID()[24:]
	subscribeAll(t, ctx, c.Client, topic, "a", "b")
	publisher, err := rsvp.New(ctx, refuseExpiry{c.be, ":b"}, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeWithin(t, "close the publisher", publisher.Close) })
	pub, err := publisher.Publish(ctx, topic, &rsvp.Message{Body: []byte("x"), Deadline: time.Now().Add(time.Hour)})
	if err == nil {
		t.Fatal("Publish succeeded with an expiry task refused")
	}
	if want := "2 of 2 copies stored"; !strings.Contains(err.Error(), want) {
		t.Fatalf("Publish with both copies stored and an expiry task refused: %v; want it to say %q", err, want)
	}
	for _, cp := range pub.Copies { // stored indeed
		serve(t, c.Client, cp.Queue, replyWith(cp.Subscription))
		if r, err := c.Await(ctx, cp.CorrelationID); err != nil || string(r.Body) != cp.Subscription+":x" {
			t.Fatalf("copy for %s: %v, %v", cp.Subscription, r, err)
		}
	}
}

func copyIDs(pub rsvp.Publication) []string {
	var ids []string
	for _, cp := range pub.Copies {
		ids = append(ids, cp.ID)
	}
	return ids
}

// lookedFor is an engine that closes looked once GetReply found no reply
// for id.
type lookedFor struct {
	backend.Backend
	id     string
	once   sync.Once
	looked chan struct{}
}

func (l *lookedFor) GetReply(ctx context.Context, id string) (*backend.Reply, error) {
	r, err := l.Backend.GetReply(ctx, id)
	if id == l.id && errors.Is(err, backend.ErrNotFound) {
		l.once.Do(func() { close(l.looked) })
	}
	return r, err
}

// TestRequestAllAgainFromAnotherClient: a RequestAll that completes a
// part-way publication from another client than the first (a restarted
// process) gathers the replies of the copies the first stored, which are
// addressed to the first client's inbox, when they come: not only at its
// next recheck (an hour here).
func TestRequestAllAgainFromAnotherClient(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx := ctxWithin(t, 60*time.Second)
		c := e.client()
		topic := "again-" + rsvp.NewID()[24:]
		subscribeAll(t, ctx, c, topic, "down", "up")
		serve(t, c, rsvp.SubscriptionQueue(topic, "down"), replyWith("down"))
		release := make(chan struct{})
		var once sync.Once
		releaseUp := func() { once.Do(func() { close(release) }) }
		t.Cleanup(releaseUp) // before the clients close
		serve(t, c, rsvp.SubscriptionQueue(topic, "up"), func(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
			select {
			case <-release:
				return replyWith("up")(ctx, req)
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		})
		newClient := func(b backend.Backend) *rsvp.Client {
			t.Helper()
			cl, err := rsvp.New(ctx, b, rsvp.Config{RecheckInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { closeWithin(t, "close a requester", cl.Close) })
			return cl
		}

		first := newClient(refuseQueue{e.b, rsvp.SubscriptionQueue(topic, "down")})
		g, err := first.RequestAll(ctx, topic, &rsvp.Message{Body: []byte("x")}, rsvp.GatherOptions{})
		if err == nil || g == nil {
			t.Fatalf("RequestAll with a copy refused: %+v, %v; want the publication and an error", g, err)
		}
		pub := g.Publication
		// The copy for "up" is stored, addressed to first's inbox; its
		// handler answers once the second RequestAll has looked for it.
		spy := &lookedFor{Backend: e.b, id: pub.Copies[1].CorrelationID, looked: make(chan struct{})}
		go func() {
			select {
			case <-spy.looked:
				releaseUp()
			case <-release:
			}
		}()
		second := newClient(spy)
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		g, err = second.RequestAll(gctx, topic, &rsvp.Message{ID: pub.ID, Body: []byte("x")}, rsvp.GatherOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if g.Reason != rsvp.GatherAll {
			t.Fatalf("RequestAll again from another client ended %s with pending %v; want all answered", g.Reason, g.Pending())
		}
		for _, r := range g.Results {
			if want := r.Subscription + ":x"; r.Reply == nil || string(r.Reply.Body) != want {
				t.Errorf("%s: %+v, want %q", r.Subscription, r.Reply, want)
			}
		}
		if rsvp.WaiterCount(second) != 0 {
			t.Errorf("%d waiters left", rsvp.WaiterCount(second))
		}
	})
}

// TestGatherAfterRestartExpiresCopies: a publication whose copies have a
// Deadline, gathered by a client of a restarted requester, ends with every
// copy answered once the deadline passes, the unserved one as expired: as
// Await does, Gather runs the expiry tasks that its copies may need, which
// no other client on the engine may be running.
func TestGatherAfterRestartExpiresCopies(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx := ctxWithin(t, 60*time.Second)
		c := e.client()
		topic := "restart-exp-" + rsvp.NewID()[24:]
		subscribeAll(t, ctx, c, topic, "idle")
		deadline := time.Now().Add(time.Second)
		pub, err := c.Publish(ctx, topic, &rsvp.Message{Body: []byte("x"), Deadline: deadline})
		if err != nil {
			t.Fatal(err)
		}
		e.restart() // the requester's process ends before the deadline
		c = e.client()
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		g, err := c.Gather(gctx, pub, rsvp.GatherOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if g.Reason != rsvp.GatherAll {
			t.Fatalf("gather after a restart ended %s %s after the copies' deadline, pending %v; want every copy answered (expired)",
				g.Reason, time.Since(deadline).Round(time.Second), g.Pending())
		}
		if r := g.Results[0]; !errors.Is(r.Err, rsvp.ErrExpired) {
			t.Fatalf("idle copy: %+v, want expired", r)
		}
	})
}
