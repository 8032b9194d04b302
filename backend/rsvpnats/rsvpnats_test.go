package rsvpnats_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/backendtest"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/internal/natstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The conformance suites run one after another (their cases run in
// parallel): all of them at once on two cores starve the engines' timers.
func TestConformanceEmbeddedMemory(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backendtest.Opener {
		return func(t *testing.T) backend.Backend {
			b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}, backendtest.Features{Sessions: true, Schedules: true})
}

func TestConformanceEmbeddedDisk(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backendtest.Opener {
		dir := t.TempDir()
		return func(t *testing.T) backend.Backend {
			// Listen: a second handle on dir connects to the first.
			b, err := rsvpnats.Embedded(dir, rsvpnats.Options{Listen: true})
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}, backendtest.Features{Durable: true, Shared: true, Sessions: true, Schedules: true})
}

func TestConformanceExternal(t *testing.T) {
	url := natstest.Start(t)
	backendtest.Run(t, func(t *testing.T) backendtest.Opener {
		return func(t *testing.T) backend.Backend {
			b, err := rsvpnats.Connect(context.Background(), url, rsvpnats.Options{})
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}, backendtest.Features{Durable: true, Shared: true, Sessions: true, Schedules: true})
}

// TestConformanceNATS211: on NATS 2.11, the newest release without message
// schedules, everything but scheduled requests works, and those are
// refused (ScheduleUnsupported).
func TestConformanceNATS211(t *testing.T) {
	url := natstest.StartVersion(t, natstest.NATS211)
	backendtest.Run(t, func(t *testing.T) backendtest.Opener {
		return func(t *testing.T) backend.Backend {
			b, err := rsvpnats.Connect(context.Background(), url, rsvpnats.Options{})
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}, backendtest.Features{Durable: true, Shared: true, Sessions: true})
}

func TestEmbeddedDirectoryNotWritable(t *testing.T) {
	t.Parallel()
	if os.Geteuid() == 0 {
		// root writes anywhere: use a path under a regular file instead.
		file := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := rsvpnats.Embedded(filepath.Join(file, "data"), rsvpnats.Options{})
		if err == nil || !strings.Contains(err.Error(), "engine directory") {
			t.Fatalf("got %v, want an error naming the engine directory", err)
		}
		return
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	_, err := rsvpnats.Embedded(filepath.Join(dir, "data"), rsvpnats.Options{})
	if err == nil || !strings.Contains(err.Error(), "engine directory") {
		t.Fatalf("got %v, want an error naming the engine directory", err)
	}
}

func TestEmbeddedLockedWithoutListen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first, err := rsvpnats.Embedded(dir, rsvpnats.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := &backend.Message{ID: "kept-1", CorrelationID: "kept-1", Queue: "q", Body: []byte("x")}
	if err := first.Enqueue(ctx, m); err != nil {
		t.Fatal(err)
	}
	_, err = rsvpnats.Embedded(dir, rsvpnats.Options{Timeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("got %v, want an error saying the directory is locked", err)
	}
	// The owner is unharmed: its request is still there.
	c, err := first.Consume(ctx, "q", backend.ConsumeParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Next(ctx)
	if err != nil || d.Message().ID != "kept-1" {
		t.Fatalf("owner lost its request: %v", err)
	}
}

func TestEmbeddedSharedTokenIsPrivate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b, err := rsvpnats.Embedded(dir, rsvpnats.Options{Listen: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	fi, err := os.Stat(filepath.Join(dir, "engine.json"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("engine.json has mode %v, want 0600", fi.Mode().Perm())
	}
	data, err := os.ReadFile(filepath.Join(dir, "engine.json"))
	if err != nil {
		t.Fatal(err)
	}
	// Without the token the engine refuses a connection.
	url := strings.Split(strings.Split(string(data), `"url":"`)[1], `"`)[0]
	if nc, err := nats.Connect(url, nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Fatal("connected to the shared engine without its token")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "engine.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("engine.json left behind after Close: %v", err)
	}
}

func TestConnectUnreachable(t *testing.T) {
	t.Parallel()
	url := fmt.Sprintf("nats://127.0.0.1:%d", natstest.FreePort(t))
	_, err := rsvpnats.Connect(context.Background(), url, rsvpnats.Options{NATSOptions: []nats.Option{nats.Timeout(time.Second)}})
	if err == nil || !strings.Contains(err.Error(), url) {
		t.Fatalf("got %v, want an error naming %s", err, url)
	}
}

func TestOptionsValidated(t *testing.T) {
	t.Parallel()
	for _, o := range []rsvpnats.Options{{ReplyRetention: -time.Second}, {Sync: 7}} {
		if _, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true, ReplyRetention: o.ReplyRetention, Sync: o.Sync}); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
}

func TestSyncIntervalMode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b, err := rsvpnats.Embedded(dir, rsvpnats.Options{Sync: rsvpnats.SyncInterval, SyncInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.PutReply(ctx, b.ReplyAddress("in", "r1"), &backend.Reply{CorrelationID: "r1", Status: backend.StatusSucceeded, Body: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b, err = rsvpnats.Embedded(dir, rsvpnats.Options{Sync: rsvpnats.SyncInterval})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if r, err := b.GetReply(ctx, "r1"); err != nil || string(r.Body) != "v" {
		t.Fatalf("reply after a clean close in interval mode: %v, %v", r, err)
	}
}

func TestConsumerDeletedIsMadeAgain(t *testing.T) {
	t.Parallel()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := b.Consume(ctx, "remade", backend.ConsumeParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A first request shows the consumer is pulling.
	if err := b.Enqueue(ctx, &backend.Message{ID: "before-delete", CorrelationID: "before-delete", Queue: "remade"}); err != nil {
		t.Fatal(err)
	}
	if d, err := c.Next(ctx); err != nil {
		t.Fatal(err)
	} else {
		_ = d.Ack(ctx)
	}
	// An operator deletes the JetStream consumer under a running responder.
	js, err := jetstream.New(b.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteConsumer(ctx, "RSVP_REQUESTS", "rsvp_remade"); err != nil {
		t.Fatal(err)
	}
	if err := b.Enqueue(ctx, &backend.Message{ID: "after-delete", CorrelationID: "after-delete", Queue: "remade"}); err != nil {
		t.Fatal(err)
	}
	// The deletion is noticed at once when the server reports it to a waiting
	// pull, else by the missing heartbeats; the request must come through.
	// (The first request may come again: its ack can lose the race with the
	// deletion.)
	for {
		d, err := c.Next(ctx)
		if err != nil {
			t.Fatalf("after the consumer was deleted: %v", err)
		}
		_ = d.Ack(ctx)
		if d.Message().ID == "after-delete" {
			return
		}
	}
}

func TestSharedEngineLossIsReported(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	owner, err := rsvpnats.Embedded(dir, rsvpnats.Options{Listen: true})
	if err != nil {
		t.Fatal(err)
	}
	guest, err := rsvpnats.Embedded(dir, rsvpnats.Options{})
	if err != nil {
		owner.Close()
		t.Fatal(err)
	}
	defer guest.Close()
	select {
	case <-guest.Done():
		t.Fatal("Done closed while the engine runs")
	default:
	}
	if err := owner.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-guest.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the guest was not told that the engine is gone")
	}
	select {
	case <-owner.Done():
	default:
		t.Fatal("Done of a closed backend is open")
	}
}

// TestConnectWithoutJetStream: a server that does not run JetStream is
// named as such, not as "no responders available for request".
func TestConnectWithoutJetStream(t *testing.T) {
	t.Parallel()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not come up")
	}
	b, err := rsvpnats.Connect(context.Background(), ns.ClientURL(), rsvpnats.Options{})
	if err == nil {
		b.Close()
		t.Fatal("Connect to a server without JetStream succeeded")
	}
	if !errors.Is(err, jetstream.ErrJetStreamNotEnabled) || !strings.Contains(err.Error(), "JetStream") {
		t.Fatalf("got %q, want an error saying JetStream is not enabled (jetstream.ErrJetStreamNotEnabled)", err)
	}
}

// TestNextEndsWhenEngineLost: a worker waiting in Next on an engine that
// is gone for good (Done closed) is told so (ErrClosed), instead of
// pulling on a closed connection, every second, for ever.
func TestNextEndsWhenEngineLost(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	owner, err := rsvpnats.Embedded(dir, rsvpnats.Options{Listen: true})
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	guest, err := rsvpnats.Embedded(dir, rsvpnats.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := guest.Consume(ctx, "lost", backend.ConsumeParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan error, 1)
	go func() {
		_, err := c.Next(ctx)
		got <- err
	}()
	if err := owner.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-guest.Done():
	case <-ctx.Done():
		t.Fatal("the guest was not told that the engine is gone")
	}
	// Within a second after Done (a consumer retries a failed pull after
	// one), as Next on a closed consumer.
	wait := time.NewTimer(5 * time.Second)
	defer wait.Stop()
	select {
	case err := <-got:
		if !errors.Is(err, backend.ErrClosed) {
			t.Fatalf("Next on a lost engine: %v, want ErrClosed", err)
		}
	case <-wait.C:
		t.Fatal("Next still waits 5s after the engine was lost (Done closed)")
	}
	// And a Next called after that.
	if _, err := c.Next(ctx); !errors.Is(err, backend.ErrClosed) {
		t.Fatalf("Next after the engine was lost: %v, want ErrClosed", err)
	}
}
