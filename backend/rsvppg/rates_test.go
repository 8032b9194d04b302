package rsvppg_test

import (
	"context"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

// TestQueueCounts: the rates count the rows of the last minute only, a
// request enqueued in a transaction that rolls back is not counted, and
// the clean-up deletes counts older than 10 minutes.
func TestQueueCounts(t *testing.T) {
	t.Parallel()
	url := serverURL(t)
	schema := freshSchema(t, url)
	b := open(t, url, rsvppg.Options{Schema: schema, CleanupInterval: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q := uniq("q")
	table := schema + ".queue_counts"
	exec(t, url, "INSERT INTO "+table+" (queue, at, n_in, n_out) VALUES ($1, now() - interval '11 minutes', 100, 100)", q)
	exec(t, url, "INSERT INTO "+table+" (queue, at, n_in, n_out) VALUES ($1, now() - interval '2 minutes', 10, 10)", q)
	exec(t, url, "INSERT INTO "+table+" (queue, at, n_in, n_out) VALUES ($1, now() - interval '30 seconds', 1, 2)", q)

	tx, err := b.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.EnqueueTx(ctx, tx, newMsg(q)); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	qs, err := b.Queues(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != 1 || qs[0].Queue != q || qs[0].In != 1 || qs[0].Out != 2 {
		t.Fatalf("queues: %+v, want %s with in 1 and out 2", qs, q)
	}

	conn := connect(t, url)
	for {
		var left int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left == 2 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d rows of queue counts left, want the 2 of the last 10 minutes", left)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, with a deadline
	}
}
