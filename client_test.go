package rsvp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// Not parallel: it measures the heap, which other tests would disturb.
func TestAbandonedWaitsLeaveNothing(t *testing.T) {
	c := setup(t, rsvp.Config{})
	// 100,000 waits whose contexts end before any reply, in 100 concurrent
	// streams, each given 2ms. They await ids that were never sent, so the
	// engine stores nothing and any growth is the client's.
	const n, streams = 100_000, 100
	heapBefore := heapInUse()
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n / streams {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Millisecond)
				_, err := c.Await(ctx, rsvp.NewID())
				cancel()
				if !errors.Is(err, context.DeadlineExceeded) {
					errs <- fmt.Errorf("stream %d call %d: %v, want context.DeadlineExceeded", s, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if w := rsvp.WaiterCount(c.Client); w != 0 {
		t.Fatalf("%d waiters left after %d abandoned waits", w, n)
	}
	if grown := heapInUse() - heapBefore; grown > 16<<20 {
		t.Fatalf("heap grew by %d MiB over %d abandoned waits", grown>>20, n)
	}
}

func TestWaiterRemovedWhenContextEnds(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	const n = 500
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{}, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tk, err := c.Send(context.Background(), "unserved", &rsvp.Message{})
			if err != nil {
				t.Error(err)
				started <- struct{}{}
				return
			}
			started <- struct{}{}
			if _, err := c.Await(ctx, tk.CorrelationID); !errors.Is(err, context.Canceled) {
				t.Errorf("await: %v", err)
			}
		}()
	}
	for range n {
		receive(t, started, "send")
	}
	cancel()
	wg.Wait()
	if w := rsvp.WaiterCount(c.Client); w != 0 {
		t.Fatalf("%d waiters left", w)
	}
}

func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

func TestLateReplyIsKeptForAwait(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	tk, err := c.Send(ctxWithin(t, 5*time.Second), "later", &rsvp.Message{Body: []byte("mine")})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Await(short, tk.CorrelationID); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("await before any responder: %v", err)
	}
	// Another waiter, for another id, is waiting when the reply arrives.
	other, err := c.Send(ctxWithin(t, 5*time.Second), "never", &rsvp.Message{})
	if err != nil {
		t.Fatal(err)
	}
	otherCtx, cancelOther := context.WithCancel(context.Background())
	otherDone := make(chan error, 1)
	go func() {
		_, err := c.Await(otherCtx, other.CorrelationID)
		otherDone <- err
	}()
	handle(t, c, "later", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: append([]byte("re: "), m.Body...)}, nil
	})
	r, err := c.Await(ctxWithin(t, 10*time.Second), tk.CorrelationID)
	if err != nil || string(r.Body) != "re: mine" {
		t.Fatalf("await after the reply: %v, %v", r, err)
	}
	cancelOther()
	if err := <-otherDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("the other waiter got %v; it must not receive a reply that is not its own", err)
	}
}

func TestAwaitAfterRequesterRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := ctxWithin(t, 20*time.Second)
	open := func() (*rsvpnats.Backend, *rsvp.Client) {
		be, err := rsvpnats.Embedded(dir, rsvpnats.Options{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := rsvp.New(ctx, be, rsvp.Config{})
		if err != nil {
			t.Fatal(err)
		}
		return be, c
	}
	// The requester sends and stops before any responder ran.
	be, requester := open()
	tk, err := requester.Send(ctx, "resize", &rsvp.Message{Body: []byte("cat.png")})
	if err != nil {
		t.Fatal(err)
	}
	if err := requester.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}
	// Another process: the responder, and the restarted requester.
	be, c := open()
	defer be.Close()
	defer c.Close(ctx)
	if _, err := c.Handle("resize", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: bytes.ToUpper(m.Body)}, nil
	}), rsvp.HandleOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := c.Await(ctx, tk.CorrelationID)
	if err != nil || string(r.Body) != "CAT.PNG" {
		t.Fatalf("await after restart: %v, %v", r, err)
	}
	// And once more, from the stored reply.
	if r, err := c.Await(ctx, tk.CorrelationID); err != nil || string(r.Body) != "CAT.PNG" {
		t.Fatalf("second await: %v, %v", r, err)
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{MaxBodySize: 1024})
	received := make(chan string, 10)
	handle(t, c, "good", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		received <- string(m.Body)
		return nil, nil
	})
	ctx := ctxWithin(t, 10*time.Second)
	if _, err := c.Request(ctx, "good", &rsvp.Message{Body: []byte("before")}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, queue string
		msg         *rsvp.Message
		want        error
		mention     string
	}{
		{"empty queue", "", &rsvp.Message{}, rsvp.ErrInvalid, "queue is empty"},
		{"dot in queue", "a.b", &rsvp.Message{}, rsvp.ErrInvalid, `queue "a.b"`},
		{"wildcard queue", "q>", &rsvp.Message{}, rsvp.ErrInvalid, "character"},
		{"long queue", strings.Repeat("q", 200), &rsvp.Message{}, rsvp.ErrInvalid, "longer than 128"},
		{"bad id", "good", &rsvp.Message{ID: "a b"}, rsvp.ErrInvalid, `id "a b"`},
		{"reserved header", "good", &rsvp.Message{Headers: map[string]string{"Rsvp-Status": "x"}}, rsvp.ErrInvalid, "reserved"},
		{"trace header", "good", &rsvp.Message{Headers: map[string]string{"TraceParent": "00-x"}}, rsvp.ErrInvalid,
			`header "TraceParent" is reserved: rsvp sets the trace context from the context's span`},
		{"trace context", "good", &rsvp.Message{TraceParent: "00-x\r\nRsvp-Id: y"}, rsvp.ErrInvalid, "TraceParent or TraceState has a line break"},
		{"body too large", "good", &rsvp.Message{Body: make([]byte, 1025)}, rsvp.ErrTooLarge, "1025 bytes, limit 1024"},
		{"nil message", "good", nil, rsvp.ErrInvalid, "nil message"},
	} {
		_, err := c.Send(ctx, tc.queue, tc.msg)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: got %v, want %v mentioning %q", tc.name, err, tc.want, tc.mention)
		}
		if _, err := c.Request(ctx, tc.queue, tc.msg); !errors.Is(err, tc.want) {
			t.Errorf("%s: Request got %v", tc.name, err)
		}
	}
	if _, err := c.Await(ctx, "no such id"); !errors.Is(err, rsvp.ErrInvalid) {
		t.Errorf("await of an illegal id: %v", err)
	}
	if _, err := c.Handle("bad.queue", rsvp.HandlerFunc(nil), rsvp.HandleOptions{}); !errors.Is(err, rsvp.ErrInvalid) {
		t.Errorf("handle on an illegal queue: %v", err)
	}
	if _, err := c.Handle("good", rsvp.HandlerFunc(nil), rsvp.HandleOptions{Concurrency: -1}); !errors.Is(err, rsvp.ErrInvalid) {
		t.Errorf("negative concurrency: %v", err)
	}
	// Nothing accepted before was lost, and the queue still works.
	if _, err := c.Request(ctx, "good", &rsvp.Message{Body: []byte("after")}); err != nil {
		t.Fatal(err)
	}
	if a, b := <-received, <-received; a != "before" || b != "after" || len(received) != 0 {
		t.Fatalf("handled %q, %q and %d more", a, b, len(received))
	}
}

func TestConfigValidated(t *testing.T) {
	t.Parallel()
	be, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	for _, cfg := range []rsvp.Config{{Inbox: "has.dot"}, {MaxBodySize: -1}} {
		if _, err := rsvp.New(context.Background(), be, cfg); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
}

func TestReplyTooLargeFails(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{MaxBodySize: 100})
	handle(t, c, "big", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: make([]byte, 101)}, nil
	})
	_, err := c.Request(ctxWithin(t, 10*time.Second), "big", &rsvp.Message{})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Message, "reply body is 101 bytes") {
		t.Fatalf("got %v", err)
	}
}

type thumbReq struct {
	URL   string `json:"url"`
	Width int    `json:"width"`
}

type thumbResp struct {
	ThumbURL string `json:"thumb_url"`
}

func TestTyped(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	var calls int
	var mu sync.Mutex
	if _, err := rsvp.HandleTyped(c.Client, "thumb", func(ctx context.Context, req thumbReq) (thumbResp, error) {
		mu.Lock()
		calls++
		mu.Unlock()
		return thumbResp{ThumbURL: fmt.Sprintf("%s?w=%d", req.URL, req.Width)}, nil
	}, rsvp.HandleOptions{}); err != nil {
		t.Fatal(err)
	}
	ctx := ctxWithin(t, 10*time.Second)
	resp, err := rsvp.Call[thumbReq, thumbResp](ctx, c.Client, "thumb", thumbReq{URL: "https://img/cat.png", Width: 64})
	if err != nil || resp.ThumbURL != "https://img/cat.png?w=64" {
		t.Fatalf("call: %+v, %v", resp, err)
	}
	// A body that does not decode fails at once with bad_payload.
	_, err = c.Request(ctx, "thumb", &rsvp.Message{Body: []byte("{not json")})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || re.Code != rsvp.CodeBadPayload {
		t.Fatalf("got %v, want bad_payload", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Fatalf("typed handler ran %d times, want 1", calls)
	}
	if dls := deadLetters(t, c, "thumb"); len(dls) != 1 || dls[0].Reason != rsvp.CodeBadPayload || dls[0].Message.Attempt != 1 {
		t.Fatalf("dead letters %+v", dls)
	}
}

func TestNewID(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	prev := ""
	for range 1000 {
		id := rsvp.NewID()
		if len(id) != 36 || id[14] != '7' || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		if id[:13] < prev[:min(13, len(prev))] {
			t.Fatalf("ids not time-ordered: %s after %s", id, prev)
		}
		seen[id], prev = true, id
	}
}

// A Request with the id of a request another client sent (a requester
// repeating its Request after a restart, with a new inbox) is deduplicated:
// the stored request's reply goes to the first client's inbox. The second
// one still gets it when it is stored, not at its next recheck.
func TestRequestWithAnotherClientsID(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, e *topicEngine) {
		ctx := context.Background()
		first := e.client()
		id := rsvp.NewID()
		lb := &lookedFor{Backend: e.b, id: id, looked: make(chan struct{})}
		second, err := rsvp.New(ctx, lb, rsvp.Config{RecheckInterval: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { closeWithin(t, "close second client", second.Close) })
		// The handler answers once the second client looked for the reply
		// and found none: it is waiting then.
		serve(t, first, "dup", func(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
			select {
			case <-lb.looked:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return &rsvp.Reply{Body: []byte("done")}, nil
		})
		if _, err := first.Send(ctx, "dup", &rsvp.Message{ID: id}); err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		got := make(chan error, 1)
		go func() {
			r, err := second.Request(rctx, "dup", &rsvp.Message{ID: id})
			if err == nil && string(r.Body) != "done" {
				err = fmt.Errorf("reply %q, want done", r.Body)
			}
			got <- err
		}()
		receive(t, lb.looked, "look-up of the reply by the second client")
		stored := make(chan struct{})
		go func() {
			defer close(stored)
			wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
			defer wcancel()
			if _, err := first.Await(wctx, id); err != nil {
				t.Errorf("await: %v", err)
			}
		}()
		receive(t, stored, "stored reply")
		timer := time.NewTimer(5 * time.Second)
		defer timer.Stop()
		select {
		case err := <-got:
			if err != nil {
				t.Fatalf("second client's Request: %v", err)
			}
		case <-timer.C:
			cancel()
			t.Fatalf("second client's Request had no reply 5s after it was stored (RecheckInterval 1m); after cancelling: %v", <-got)
		}
	})
}
