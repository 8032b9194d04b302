package tcpproxy_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rsvp-go/rsvp/internal/tcpproxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echo serves connections that send back what they get, until the test
// ends.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

func dial(t *testing.T, p *tcpproxy.Proxy) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes b and reads back as much, within d.
func roundTrip(c net.Conn, b []byte, d time.Duration) ([]byte, error) {
	if _, err := c.Write(b); err != nil {
		return nil, err
	}
	_ = c.SetReadDeadline(time.Now().Add(d))
	got := make([]byte, len(b))
	_, err := io.ReadFull(c, got)
	return got, err
}

func TestFreezeHoldsAndThawPasses(t *testing.T) {
	p := tcpproxy.Start(t, echo(t), nil)
	c := dial(t, p)
	if got, err := roundTrip(c, []byte("one"), 5*time.Second); err != nil || string(got) != "one" {
		t.Fatalf("before freezing: %q, %v", got, err)
	}
	p.Freeze()
	if got, err := roundTrip(c, []byte("two"), 200*time.Millisecond); err == nil {
		t.Fatalf("frozen, yet %q came back", got)
	}
	p.Thaw()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 3)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "two" {
		t.Fatalf("after thawing, what was held: %q, %v", got, err)
	}
}

func TestWatcherCuts(t *testing.T) {
	p := tcpproxy.Start(t, echo(t), func() tcpproxy.Watcher {
		return func(toServer bool, b []byte) bool { return !toServer && bytes.Contains(b, []byte("cut")) }
	})
	c := dial(t, p)
	if got, err := roundTrip(c, []byte("keep"), 5*time.Second); err != nil || string(got) != "keep" {
		t.Fatalf("before the cut: %q, %v", got, err)
	}
	if got, err := roundTrip(c, []byte("cut"), 5*time.Second); err == nil || !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("the answer with the marker: %q, %v; want the connection closed", got, err)
	}
}
