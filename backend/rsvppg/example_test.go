package rsvppg_test

import (
	"context"
	"log"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

// A request enqueued in the same transaction as the order it is about:
// both are stored, or neither.
func ExampleBackend_EnqueueTx() {
	ctx := context.Background()
	be, err := rsvppg.Open(ctx, "postgres://app@127.0.0.1:5432/shop", rsvppg.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer be.Close()
	err = pgx.BeginFunc(ctx, be.Pool(), func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO orders (id, total) VALUES ($1, $2)", "o-42", 1999); err != nil {
			return err
		}
		return be.EnqueueTx(ctx, tx, &backend.Message{ID: "invoice-o-42", Queue: "invoice", Body: []byte(`{"order":"o-42"}`)})
	})
	if err != nil {
		log.Fatal(err)
	}
}

// A client's request sent in the order's transaction: the requester awaits
// its reply after the commit.
func ExampleSendTx() {
	ctx := context.Background()
	be, err := rsvppg.Open(ctx, "postgres://app@127.0.0.1:5432/shop", rsvppg.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer be.Close()
	c, err := rsvp.New(ctx, be, rsvp.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(ctx)
	var ticket rsvp.Ticket
	err = pgx.BeginFunc(ctx, be.Pool(), func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO orders (id, total) VALUES ($1, $2)", "o-43", 2499); err != nil {
			return err
		}
		ticket, err = rsvppg.SendTx(ctx, c, tx, "invoice", &rsvp.Message{Body: []byte(`{"order":"o-43"}`)})
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	reply, err := c.Await(ctx, ticket.CorrelationID)
	log.Println(string(reply.Body), err)
}

// A responder whose database write, reply and acknowledgement commit
// together: a crash before the commit leaves no trace, and the request is
// handled again.
func ExampleHandleTx() {
	ctx := context.Background()
	be, err := rsvppg.Open(ctx, "postgres://app@127.0.0.1:5432/shop", rsvppg.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer be.Close()
	c, err := rsvp.New(ctx, be, rsvp.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(ctx)
	r, err := rsvppg.HandleTx(c, "invoice", func(ctx context.Context, tx pgx.Tx, m *rsvp.Message) (*rsvp.Reply, error) {
		if _, err := tx.Exec(ctx, "UPDATE orders SET invoiced = true WHERE id = $1", "o-43"); err != nil {
			return nil, err // rolled back, retried with backoff
		}
		return &rsvp.Reply{Body: []byte("invoiced")}, nil
	}, rsvp.HandleOptions{Concurrency: 4})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Stop(ctx)
}
