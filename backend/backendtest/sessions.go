package backendtest

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

func hasSessions(f Features) bool { return f.Sessions }

// sessionMsgs enqueues n requests for each key, interleaved across keys
// (key0 #0, key1 #0, ..., key0 #1, ...), and returns their ids by key in
// the order stored.
func sessionMsgs(t *testing.T, b backend.Backend, q string, keys []string, n int) map[string][]string {
	t.Helper()
	ids := map[string][]string{}
	for i := range n {
		for _, k := range keys {
			m := newMsg(b, q)
			m.SessionKey = k
			m.Headers = map[string]string{"X-Index": fmt.Sprint(i)}
			mustEnqueue(t, b, m)
			ids[k] = append(ids[k], m.ID)
		}
	}
	return ids
}

// drain takes every delivery that comes within quiet of the previous one.
func drain(t *testing.T, c backend.Consumer, quiet time.Duration) []backend.Delivery {
	t.Helper()
	var ds []backend.Delivery
	for {
		d, err := c.Next(ctxFor(t, quiet))
		if err != nil {
			return ds
		}
		ds = append(ds, d)
	}
}

func idsOf(ds []backend.Delivery) map[string]bool {
	m := map[string]bool{}
	for _, d := range ds {
		m[d.Message().ID] = true
	}
	return m
}

var sessionCases = []testCase{
	{name: "SessionKeyCarried", needs: hasSessions, run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		m := newMsg(b, q)
		m.SessionKey = "order #42/ü.*>" // characters no subject or identifier takes as they are
		m.ReplySession = "client 7.replies"
		mustEnqueue(t, b, m)
		long := newMsg(b, q)
		long.SessionKey = strings.Repeat("é", backend.MaxSessionKeyLen/2) // the longest key
		mustEnqueue(t, b, long)
		c := consume(t, b, q, backend.ConsumeParams{})
		for _, want := range []*backend.Message{m, long} {
			d := next(t, c, 10*time.Second)
			sameMessage(t, d.Message(), want)
			if err := d.Ack(ctxFor(t, 5*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
	}},
	{name: "SessionBadInput", needs: hasSessions, run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		for _, tc := range []struct {
			name string
			edit func(*backend.Message)
			want string
		}{
			{"too long", func(m *backend.Message) { m.SessionKey = strings.Repeat("k", backend.MaxSessionKeyLen+1) }, "longer than"},
			{"control character", func(m *backend.Message) { m.SessionKey = "a\nb" }, "control character"},
			{"bad reply session", func(m *backend.Message) { m.ReplySession = "\x00" }, "control character"},
			{"scheduled", func(m *backend.Message) { m.SessionKey = "k"; m.NotBefore = time.Now().Add(time.Hour) }, "cannot be scheduled"},
		} {
			m := newMsg(b, q)
			tc.edit(m)
			err := b.Enqueue(ctxFor(t, 5*time.Second), m)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: enqueue error %v, want one saying %q", tc.name, err, tc.want)
			}
		}
		c := consume(t, b, q, backend.ConsumeParams{})
		nothingWithin(t, c, 300*time.Millisecond) // nothing refused was stored
	}},
	{name: "SessionOneAtATimeInOrder", needs: hasSessions, run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		keys := []string{"a", "b", "c"}
		ids := sessionMsgs(t, b, q, keys, 4)
		plain := newMsg(b, q)
		mustEnqueue(t, b, plain)
		c := consume(t, b, q, backend.ConsumeParams{Lease: 30 * time.Second})

		// Only the first of each session is delivered, and the request without
		// a key is not held up by them.
		first := drain(t, c, 500*time.Millisecond)
		got := idsOf(first)
		want := map[string]bool{ids["a"][0]: true, ids["b"][0]: true, ids["c"][0]: true, plain.ID: true}
		if len(got) != len(want) {
			t.Fatalf("delivered %v while the first of each session was leased, want only %v", got, want)
		}
		for id := range want {
			if !got[id] {
				t.Fatalf("%s not delivered; got %v", id, got)
			}
		}
		// Settling a session's request lets its next one through, and only it.
		held := map[string]backend.Delivery{}
		for _, d := range first {
			if k := d.Message().SessionKey; k != "" {
				held[k] = d
			} else {
				_ = d.Ack(ctxFor(t, 5*time.Second))
			}
		}
		for i := 1; i < 4; i++ {
			for _, k := range keys {
				if err := held[k].Ack(ctxFor(t, 5*time.Second)); err != nil {
					t.Fatal(err)
				}
				d := next(t, c, 10*time.Second)
				if d.Message().ID != ids[k][i] {
					t.Fatalf("after acking %s #%d got %s (session %q), want %s", k, i-1, d.Message().ID, d.Message().SessionKey, ids[k][i])
				}
				held[k] = d
			}
		}
		nothingWithin(t, c, 300*time.Millisecond)
	}},
	{name: "SessionNackHoldsOnlyItsKey", needs: hasSessions, run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		ids := sessionMsgs(t, b, q, []string{"slow", "fast"}, 3)
		c := consume(t, b, q, backend.ConsumeParams{Lease: 30 * time.Second})
		ctx := ctxFor(t, 30*time.Second)
		byID := map[string]backend.Delivery{}
		for _, d := range drain(t, c, 500*time.Millisecond) {
			byID[d.Message().ID] = d
		}
		if len(byID) != 2 || byID[ids["slow"][0]] == nil || byID[ids["fast"][0]] == nil {
			t.Fatalf("first deliveries %v, want the first of each session", idsOf(slices.Collect(maps.Values(byID))))
		}
		// The first of "slow" fails and waits to be retried: "slow" waits with
		// it, "fast" goes on to the end.
		nackedAt := time.Now()
		if err := byID[ids["slow"][0]].Nack(ctx, 1500*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		d := byID[ids["fast"][0]]
		for i := 1; i < 3; i++ {
			_ = d.Ack(ctx)
			d = next(t, c, 10*time.Second)
			if d.Message().ID != ids["fast"][i] {
				t.Fatalf("got %s (session %q), want fast #%d %s; the retry of slow #0 must come first for its own session only",
					d.Message().ID, d.Message().SessionKey, i, ids["fast"][i])
			}
		}
		_ = d.Ack(ctx)
		d = next(t, c, 10*time.Second)
		if d.Message().ID != ids["slow"][0] || d.Message().Attempt != 2 {
			t.Fatalf("got %s attempt %d, want the retry of slow #0 (attempt 2)", d.Message().ID, d.Message().Attempt)
		}
		if since := time.Since(nackedAt); since < 1400*time.Millisecond {
			t.Fatalf("retry came %s after the nack, before its delay", since)
		}
		// Dead-lettering the retried request lets the session go on.
		if err := b.DeadLetter(ctx, &backend.DeadLetter{Message: d.Message(), Reason: "failed", LastError: "boom", At: time.Now()}); err != nil {
			t.Fatal(err)
		}
		_ = d.Ack(ctx)
		d = next(t, c, 10*time.Second)
		if d.Message().ID != ids["slow"][1] {
			t.Fatalf("after the dead letter got %s, want slow #1", d.Message().ID)
		}
		_ = d.Ack(ctx)
	}},
	{name: "SessionLeaseExpiryRedeliversInOrder", needs: hasSessions, run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		q := uniq("q")
		ids := sessionMsgs(t, b, q, []string{"k"}, 2)
		c := consume(t, b, q, backend.ConsumeParams{Lease: time.Second})
		d := next(t, c, 10*time.Second)
		if d.Message().ID != ids["k"][0] {
			t.Fatalf("got %s, want #0", d.Message().ID)
		}
		// Not settled: after its lease, #0 comes again, still before #1.
		d = next(t, c, 10*time.Second)
		if d.Message().ID != ids["k"][0] || d.Message().Attempt != 2 {
			t.Fatalf("got %s attempt %d, want #0 again (attempt 2)", d.Message().ID, d.Message().Attempt)
		}
		_ = d.Ack(ctxFor(t, 5*time.Second))
		if d = next(t, c, 10*time.Second); d.Message().ID != ids["k"][1] {
			t.Fatalf("got %s, want #1", d.Message().ID)
		}
		_ = d.Ack(ctxFor(t, 5*time.Second))
	}},
	{name: "SessionCompetingWorkers", needs: hasSessions, run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		b2 := b
		if f.Shared {
			b2 = opened(t, open)
		}
		q := uniq("q")
		keys := make([]string, 20)
		for i := range keys {
			keys[i] = fmt.Sprintf("key %d", i)
		}
		const per = 15
		ids := sessionMsgs(t, b, q, keys, per)
		plain := map[string]bool{}
		for range 20 {
			m := newMsg(b, q)
			mustEnqueue(t, b, m)
			plain[m.ID] = true
		}
		total := len(keys)*per + len(plain)

		var mu sync.Mutex
		var order = map[string][]string{}
		running := map[string]int{}
		var failures []string
		done, busy, maxBusy := 0, 0, 0
		ctx := ctxFor(t, 60*time.Second)
		var wg sync.WaitGroup
		for _, bk := range []backend.Backend{b, b2} {
			c := consume(t, bk, q, backend.ConsumeParams{Lease: 30 * time.Second})
			for range 4 {
				wg.Go(func() {
					for {
						mu.Lock()
						finished := done == total
						mu.Unlock()
						if finished || ctx.Err() != nil {
							return
						}
						dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
						d, err := c.Next(dctx)
						cancel()
						if err != nil {
							continue
						}
						m := d.Message()
						mu.Lock()
						if m.SessionKey != "" {
							running[m.SessionKey]++
							if running[m.SessionKey] > 1 {
								failures = append(failures, fmt.Sprintf("two requests of session %q at once", m.SessionKey))
							}
							order[m.SessionKey] = append(order[m.SessionKey], m.ID)
						}
						busy++
						maxBusy = max(maxBusy, busy)
						mu.Unlock()
						time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond) // the handler's work
						mu.Lock()
						busy--
						if m.SessionKey != "" {
							running[m.SessionKey]--
						}
						done++
						mu.Unlock()
						if err := d.Ack(ctx); err != nil {
							t.Errorf("ack: %v", err)
						}
					}
				})
			}
		}
		wg.Wait()
		if len(failures) > 0 {
			t.Fatalf("%d violations, first: %s", len(failures), failures[0])
		}
		if done != total {
			t.Fatalf("handled %d of %d", done, total)
		}
		for _, k := range keys {
			if fmt.Sprint(order[k]) != fmt.Sprint(ids[k]) {
				t.Fatalf("session %q handled in order %v, stored %v", k, order[k], ids[k])
			}
		}
		if maxBusy < 2 {
			t.Fatalf("at most %d requests were handled at once: sessions did not run in parallel", maxBusy)
		}
	}},
}
