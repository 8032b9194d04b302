package cli

import (
	"io"
	"net/http"
	neturl "net/url"
	"syscall"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/internal/tcpproxy"
)

// TestServeExitsOnSIGTERMWhenDatabaseHangs: /readyz fails when the
// PostgreSQL database stops answering, and a SIGTERM still ends rsvp serve
// within --shutdown-timeout and the flush of its telemetry (5s), not when
// the driver gives up on the connections (pgx waits 15s for a cancel
// request to the database before it closes a connection).
func TestServeExitsOnSIGTERMWhenDatabaseHangs(t *testing.T) {
	_, _, engine := postgresEngine(t, "hang")
	t.Parallel()
	u, err := neturl.Parse(engine)
	if err != nil {
		t.Fatal(err)
	}
	proxy := tcpproxy.Start(t, u.Host, nil)
	u.Host = proxy.Addr()
	p := startServeProc(t, "--engine", u.String(), "--shutdown-timeout", "1s")

	ready := func() int {
		t.Helper()
		resp, err := http.Get(p.url + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := ready(); code != http.StatusOK {
		t.Fatalf("/readyz with the database up: %d, want 200", code)
	}
	proxy.Freeze()
	if code := ready(); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with the database hanging: %d, want 503", code)
	}
	start := time.Now()
	p.signal(t, syscall.SIGTERM)
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Fatalf("rsvp serve: %v, want exit 0; its log:\n%s", err, p.log)
	}
	// 1s to drain, 5s to flush the telemetry, and some slack.
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("rsvp serve took %s to exit after SIGTERM with --shutdown-timeout 1s; its log:\n%s", took.Round(time.Millisecond), p.log)
	}
}
