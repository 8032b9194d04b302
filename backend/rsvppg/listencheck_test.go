package rsvppg_test

import (
	"bytes"
	"context"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
	"github.com/rsvp-go/rsvp/internal/tcpproxy"
)

// TestSilentListenerIsNoticed: a listening connection that goes silent
// without breaking (a NAT or a firewall forgot it: nothing arrives, and
// nothing says so) is found out by a ping and listened again, and what was
// stored meanwhile is caught up: a reply watched for arrives.
func TestSilentListenerIsNoticed(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(serverURL(t))
	if err != nil {
		t.Fatal(err)
	}
	// Once silenced, the listening connections made so far pass nothing on.
	var silenced atomic.Bool
	release := make(chan struct{})
	p := tcpproxy.Start(t, u.Host, func() tcpproxy.Watcher {
		old := !silenced.Load() // made before the silence
		var listening atomic.Bool
		return func(toServer bool, b []byte) bool {
			if toServer && bytes.Contains(b, []byte("LISTEN ")) {
				listening.Store(true)
			}
			if old && listening.Load() && silenced.Load() {
				<-release
			}
			return false
		}
	})
	t.Cleanup(func() { close(release) })
	schema := freshSchema(t, serverURL(t))
	direct := u.String()
	u.Host = p.Addr()
	b := open(t, u.String(), rsvppg.WithListenCheck(rsvppg.Options{Schema: schema, Timeout: 2 * time.Second}, 300*time.Millisecond))
	other := open(t, direct, rsvppg.Options{Schema: schema})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	id := uniq("c")
	got := make(chan *backend.Reply, 1)
	sub, err := b.WatchReply(ctx, id, func(r *backend.Reply) {
		select {
		case got <- r:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	silenced.Store(true)
	if err := other.PutReply(ctx, "rsvp.reply."+id+".elsewhere", &backend.Reply{CorrelationID: id, Status: backend.StatusSucceeded, Body: []byte("ok")}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if string(r.Body) != "ok" {
			t.Fatalf("got %q", r.Body)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the reply stored while the listening connection was silent did not arrive within 15s")
	}
}
