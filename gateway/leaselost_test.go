package gateway_test

import (
	"context"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
	"github.com/rsvp-go/rsvp/gateway"
	"github.com/rsvp-go/rsvp/internal/pgtest"
)

// newPGEnv starts a gateway on PostgreSQL, in a fresh schema dropped when t
// ends, and returns it with the server's URL and the schema. It skips t
// when RSVP_TEST_POSTGRES_URL is not set (see README, Tests), and fails it
// when that server does not answer.
func newPGEnv(t *testing.T) (e *env, url, schema string) {
	t.Helper()
	url = os.Getenv("RSVP_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("set RSVP_TEST_POSTGRES_URL (see README, Tests) to run the PostgreSQL tests")
	}
	schema = pgtest.Schema(t, url, "rsvp_gw_test_") // dropped after the gateway and the engine closed
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	be, err := rsvppg.Open(ctx, url, rsvppg.Options{Schema: schema})
	if err != nil {
		t.Fatalf("RSVP_TEST_POSTGRES_URL: %v", err)
	}
	return newEnvWith(t, be, gateway.Config{}, nil), url, schema
}

// lostLease is a gateway on PostgreSQL (see newPGEnv) with a request of
// queue "lost" leased over HTTP for 10 minutes whose engine lease is lost:
// the engine gave the request to another worker, which holds it now
// (attempt 2). It returns the request's id, the HTTP lease and the other
// worker's lease.
//
// On PostgreSQL a lease is lost once its request was leased again. This
// ends the engine's lease at once, as 30s without renewal would
// (not_before = lease_until = now(), in the requests table as rsvppg's
// package doc describes it), and has a second consumer of the queue take
// the request. (On NATS a lease is lost by time only, at ~95% of the
// consumer's 30s AckWait, which the gateway's renewal prevents.)
func lostLease(t *testing.T) (e *env, ctx context.Context, id string, l gateway.Lease, taken *rsvp.Lease) {
	t.Helper()
	e, url, schema := newPGEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	other, err := e.Client.Consume(ctx, "lost", rsvp.HandleOptions{}) // another worker of the queue
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Close() })

	id = e.workerSubmit("lost", nil, "x")
	l = e.workerLease("lost", "lease=10m", nil)
	if l.ID != id || l.Attempt != 1 {
		t.Fatalf("lease %+v, want attempt 1 of %s", l, id)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tag, err := conn.Exec(ctx, "UPDATE "+pgx.Identifier{schema, "requests"}.Sanitize()+
		" SET not_before = now(), lease_until = now() WHERE id = $1 AND attempt = 1", id)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("ending the engine's lease of %s: %v, %d rows", id, err, tag.RowsAffected())
	}
	nctx, ncancel := context.WithTimeout(ctx, 10*time.Second)
	defer ncancel()
	taken, err = other.Next(nctx)
	if err != nil || taken.Message().ID != id || taken.Message().Attempt != 2 {
		t.Fatalf("the other worker: %v, %v; want attempt 2 of %s", taken, err, id)
	}
	return e, ctx, id, l, taken
}

// An HTTP lease whose engine lease was lost answers as a lease that ran
// out: 404 unknown-lease, not 503 engine-unavailable (the engine is fine,
// and no retry can help: the request is another worker's now), and the
// gateway forgets it.
func TestWorkerEngineLeaseLost(t *testing.T) {
	t.Parallel()
	e, ctx, id, l, taken := lostLease(t)
	data := e.workerSettle(l.Lease, "extend", nil, "", http.StatusNotFound)
	if p := decode(t, data); p["type"] != "https://rsvp.dev/problems/unknown-lease" {
		t.Fatalf("extend of a lost lease: %s", data)
	}
	// Forgotten: nothing more goes through it.
	e.workerSettle(l.Lease, "extend", nil, "", http.StatusNotFound)
	e.workerSettle(l.Lease, "reply", nil, "late", http.StatusNotFound)
	e.workerSettle(l.Lease, "fail", nil, `{"error":"late"}`, http.StatusNotFound)
	e.workerSettle(l.Lease, "progress", nil, "1", http.StatusNotFound)
	// The request is the other worker's: running its attempt 2 (the lost
	// attempt's late end does not show), then answered by it.
	if st := e.workerStatus(id); st["state"] != gateway.StateRunning || st["attempts"] != float64(2) {
		t.Fatalf("status while the other worker has it: %v", st)
	}
	if err := taken.Reply(ctx, &rsvp.Reply{Body: []byte("other")}); err != nil {
		t.Fatal(err)
	}
	if resp, data := e.do("GET", "/v1/requests/"+id+"/result", nil, ""); resp.StatusCode != http.StatusOK || string(data) != "other" {
		t.Fatalf("result: %d %s", resp.StatusCode, data)
	}
}

// A worker that replies before it learns that its engine lease was lost
// gets 204: its reply is stored (first wins; only the engine's Ack fails),
// a reply given, not a failure to retry. The other worker's reply then
// does not replace it.
func TestWorkerReplyAfterEngineLeaseLost(t *testing.T) {
	t.Parallel()
	e, ctx, id, l, taken := lostLease(t)
	e.workerSettle(l.Lease, "reply", nil, "first", http.StatusNoContent)
	e.workerSettle(l.Lease, "reply", nil, "again", http.StatusConflict)
	if err := taken.Reply(ctx, &rsvp.Reply{Body: []byte("second")}); err != nil {
		t.Fatal(err)
	}
	if resp, data := e.do("GET", "/v1/requests/"+id+"/result", nil, ""); resp.StatusCode != http.StatusOK || string(data) != "first" {
		t.Fatalf("result: %d %s, want the stored reply", resp.StatusCode, data)
	}
	if st := e.workerStatus(id); st["state"] != gateway.StateSucceeded || st["attempts"] != float64(2) {
		t.Fatalf("status: %v", st)
	}
}
