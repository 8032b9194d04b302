package rsvpnats_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/internal/natstest"
)

// Releases of nats-server older than the one the project depends on, the
// newest of their lines that the module proxy serves: rsvp refuses 2.9.
const nats29 = "2.9.25"

// TestConnectRefusesServerBefore210: Connect to a server older than 2.10
// fails, naming the version found and the version needed, and creates
// nothing there. (A 2.9 server took requests that no responder could ever
// consume: its consumers cannot have several filter subjects.)
func TestConnectRefusesServerBefore210(t *testing.T) {
	t.Parallel()
	url := natstest.StartVersion(t, nats29)
	b, err := rsvpnats.Connect(context.Background(), url, rsvpnats.Options{})
	if err == nil {
		b.Close()
		t.Fatalf("Connect to NATS %s succeeded, want it refused", nats29)
	}
	if !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), nats29) || !strings.Contains(err.Error(), "2.10 or newer") {
		t.Fatalf("got %q, want an error (errors.ErrUnsupported) naming %s and 2.10 or newer", err, nats29)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		t.Errorf("stream %s created on a refused server", name)
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
}
