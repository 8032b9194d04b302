package rsvp_test

import (
	"context"
	"fmt"
	"time"

	"github.com/rsvp-go/rsvp"
)

func ExampleClient_Publish() {
	be, c := exampleEngine()
	defer be.Close()
	defer c.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Two durable subscriptions of the topic "orders"; each is a queue of
	// its own, served by any number of competing responders.
	for _, sub := range []string{"billing", "shipping"} {
		if err := c.Subscribe(ctx, "orders", sub); err != nil {
			panic(err)
		}
		c.Handle(rsvp.SubscriptionQueue("orders", sub), rsvp.HandlerFunc(func(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
			return &rsvp.Reply{Body: []byte(sub + " done with " + string(req.Body))}, nil
		}), rsvp.HandleOptions{Concurrency: 4})
	}

	// One copy per subscription, with ids derived from the message's.
	pub, err := c.Publish(ctx, "orders", &rsvp.Message{ID: "order-42", Body: []byte("order 42")})
	if err != nil {
		panic(err)
	}
	for _, cp := range pub.Copies {
		reply, err := c.Await(ctx, cp.CorrelationID)
		if err != nil {
			panic(err)
		}
		fmt.Printf("%s on %s: %s\n", cp.CorrelationID, cp.Queue, reply.Body)
	}

	// A topic without subscriptions stores nothing.
	_, err = c.Publish(ctx, "audit", &rsvp.Message{Body: []byte("order 42")})
	fmt.Println(err)
	// Output:
	// order-42:billing on orders:billing: billing done with order 42
	// order-42:shipping on orders:shipping: shipping done with order 42
	// rsvp: topic has no subscriptions: audit
}

func ExampleClient_RequestAll() {
	be, c := exampleEngine()
	defer be.Close()
	defer c.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Three suppliers quote a price; one of them has none.
	quotes := map[string]string{"acme": "12.50", "globex": "11.90", "initech": ""}
	for supplier, price := range quotes {
		if err := c.Subscribe(ctx, "quotes", supplier); err != nil {
			panic(err)
		}
		c.Handle(rsvp.SubscriptionQueue("quotes", supplier), rsvp.HandlerFunc(func(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
			if price == "" {
				return nil, rsvp.Permanent(&rsvp.RemoteError{Code: "no_stock", Message: "none left"})
			}
			return &rsvp.Reply{Body: []byte(price)}, nil
		}), rsvp.HandleOptions{})
	}

	// Gather until every supplier answered, or ctx's deadline; with
	// GatherOptions.Want, until that many did. A supplier's failure is a
	// result too.
	g, err := c.RequestAll(ctx, "quotes", &rsvp.Message{Body: []byte("10 widgets")}, rsvp.GatherOptions{})
	if err != nil {
		panic(err)
	}
	fmt.Println("ended by:", g.Reason)
	for _, r := range g.Results {
		if r.Err != nil {
			fmt.Printf("%s: %v\n", r.Subscription, r.Err)
			continue
		}
		fmt.Printf("%s: %s\n", r.Subscription, r.Reply.Body)
	}
	// Output:
	// ended by: all
	// acme: 12.50
	// globex: 11.90
	// initech: rsvp: remote error no_stock: none left
}
