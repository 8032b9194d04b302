package rsvppg_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
	"github.com/rsvp-go/rsvp/internal/tcpproxy"
)

// TestConsumerCloseWithHungDatabase: closing a consumer while the database
// does not answer takes a short while, not Options.Timeout: recording that
// it closed is best effort (other processes count it as live for up to 30
// seconds more).
func TestConsumerCloseWithHungDatabase(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(serverURL(t))
	if err != nil {
		t.Fatal(err)
	}
	p := tcpproxy.Start(t, u.Host, nil)
	schema := freshSchema(t, u.String())
	u.Host = p.Addr()
	b := open(t, u.String(), rsvppg.Options{Schema: schema, Timeout: 20 * time.Second})
	t.Cleanup(p.Thaw) // before the backend closes
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := b.Consume(ctx, "hung", backend.ConsumeParams{})
	if err != nil {
		t.Fatal(err)
	}
	p.Freeze()
	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("closing a consumer with the database hung took %s; want a few seconds at most", took)
	}
}
