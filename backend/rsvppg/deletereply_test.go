package rsvppg_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

// TestDeleteReplyAfterAnothersDelete: two replays read the same failure
// reply; the second's DeleteReply waits for the first's delete. Once that
// commits, no reply is stored, and the second is told so (nil), not that
// another reply took its place (ErrReplyExists), which would make its
// Replay stop without sending (and lose the request if the first replay's
// send failed).
func TestDeleteReplyAfterAnothersDelete(t *testing.T) {
	t.Parallel()
	url := serverURL(t)
	schema := freshSchema(t, url)
	b := open(t, url, rsvppg.Options{Schema: schema})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const id = "deleted-meanwhile"
	if err := b.PutReply(ctx, b.ReplyAddress("inbox", id), &backend.Reply{CorrelationID: id, Status: backend.StatusFailed,
		ErrorCode: "failed", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	read, err := b.GetReply(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	first, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Rollback(context.Background())
	if _, err := first.Exec(ctx, "DELETE FROM "+pgx.Identifier{schema, "replies"}.Sanitize()+" WHERE correlation_id = $1", id); err != nil {
		t.Fatal(err)
	}
	// A connection of its own watches for the wait: inside first's
	// transaction, pg_stat_activity would stay as it was first read.
	watch, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close(context.Background())
	second := make(chan error, 1)
	go func() { second <- b.DeleteReply(ctx, read) }()
	// The second delete waits on the first's row lock.
	for {
		var waiting bool
		err := watch.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE $1)`, "%DELETE FROM %"+schema+"%replies%").Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		select {
		case err := <-second:
			t.Fatalf("the second DeleteReply did not wait for the first delete: %v", err)
		case <-ctx.Done():
			t.Fatal("the second DeleteReply never waited for the first delete")
		case <-time.After(10 * time.Millisecond): // polling a condition, with a deadline
		}
	}
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatalf("second DeleteReply after the first's: %v, want nil (no reply is stored)", err)
	}
	if _, err := b.GetReply(ctx, id); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("GetReply: %v, want ErrNotFound", err)
	}
}
