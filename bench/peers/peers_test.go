package peers

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/bench"
)

// TestPeers runs every peer briefly and wants every request answered once.
// A peer whose server is unreachable fails the test, unless
// RSVP_PEERS_SKIP_UNREACHABLE=1, when it is skipped.
func TestPeers(t *testing.T) {
	for _, p := range All() {
		t.Run(p.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := p.Reachable(ctx, Options{}); err != nil {
				if os.Getenv("RSVP_PEERS_SKIP_UNREACHABLE") == "1" {
					t.Skip(err)
				}
				t.Fatalf("%v (set RSVP_PEERS_SKIP_UNREACHABLE=1 to skip)", err)
			}
			res, err := p.Run(ctx, Options{}, bench.Config{Concurrency: 4, Duration: 300 * time.Millisecond, Timeout: 20 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Log(res.String())
			if !res.OK() {
				t.Fatalf("not every request got exactly one reply:\n%s", res)
			}
			if res.Workload != "roundtrip" || res.Engine == "" || res.Concurrency != 4 {
				t.Errorf("labels: workload %q, engine %q, concurrency %d", res.Workload, res.Engine, res.Concurrency)
			}
		})
	}
}

func TestPayload(t *testing.T) {
	for _, tc := range []struct {
		id   string
		size int
		len  int
	}{{"b1-1", 1024, 1024}, {"b123456789-12", 4, 14}, {"", 0, 1}} {
		b := payload(tc.id, tc.size)
		if len(b) != tc.len {
			t.Errorf("payload(%q, %d) is %d bytes, want %d", tc.id, tc.size, len(b), tc.len)
		}
		if got := payloadID(b); got != tc.id {
			t.Errorf("payloadID(payload(%q)) = %q", tc.id, got)
		}
	}
}

func TestLookup(t *testing.T) {
	for _, name := range Names() {
		if p, ok := Lookup(name); !ok || p.Name != name {
			t.Errorf("Lookup(%q) = %v, %v", name, p.Name, ok)
		}
	}
	if _, ok := Lookup("nope"); ok {
		t.Error("Lookup(nope) found a peer")
	}
}
