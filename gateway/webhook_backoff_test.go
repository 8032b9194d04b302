package gateway

import (
	"testing"
	"time"
)

// TestWebhookBackoff: a webhook job that comes back later comes back after
// 1s while a waiting permit is free (it will wait in its handler, seeing
// its result at once); when every permit is taken, after 1s doubling by
// attempt up to 30s, so that pending jobs that cannot wait do not poll the
// engine every second.
func TestWebhookBackoff(t *testing.T) {
	g := &Gateway{waits: make(chan struct{}, 3)}
	for _, a := range []int{1, 6, 1 << 20} {
		if d := g.webhookBackoff(a); d != time.Second {
			t.Errorf("permits free: attempt %d comes back after %s, want 1s", a, d)
		}
	}
	for g.tryWait() {
	}
	if len(g.waits) != 3 {
		t.Fatalf("%d permits taken, want 3", len(g.waits))
	}
	for a, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second,
		5: 16 * time.Second, 6: 30 * time.Second, 64: 30 * time.Second, 1 << 30: 30 * time.Second} {
		if d := g.webhookBackoff(a); d != want {
			t.Errorf("permits taken: attempt %d comes back after %s, want %s", a, d, want)
		}
	}
	g.endWait()
	if d := g.webhookBackoff(64); d != time.Second {
		t.Errorf("a permit free again: attempt 64 comes back after %s, want 1s", d)
	}
}
