package rsvp_test

import (
	"context"
	"fmt"
	"time"

	"github.com/rsvp-go/rsvp"
)

func ExampleClient_SessionReplies() {
	be, c := exampleEngine()
	defer be.Close()
	defer c.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Eight workers, but the steps of one order run one at a time, in the
	// order sent.
	c.Handle("orders", rsvp.HandlerFunc(func(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: []byte(req.SessionKey + ": " + string(req.Body) + " done")}, nil
	}), rsvp.HandleOptions{Concurrency: 8})

	for _, step := range []string{"reserve", "charge", "ship"} {
		msg := &rsvp.Message{SessionKey: "order 42", ReplySession: "order 42", Body: []byte(step)}
		if _, err := c.Send(ctx, "orders", msg); err != nil {
			panic(err)
		}
	}

	// The replies of the session, in order, from any process.
	var after uint64
	for n := 0; n < 3; {
		replies, err := c.SessionReplies(ctx, "order 42", after)
		if err != nil {
			panic(err)
		}
		for _, r := range replies {
			fmt.Println(string(r.Reply.Body))
			after = r.Seq
			n++
		}
	}
	// Output:
	// order 42: reserve done
	// order 42: charge done
	// order 42: ship done
}
