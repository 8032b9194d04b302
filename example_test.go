package rsvp_test

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// An engine for the examples: embedded, in memory. Real programs pass a
// directory (rsvpnats.Embedded("./rsvp-data", rsvpnats.Options{})) or use
// rsvpnats.Connect for an external NATS server.
func exampleEngine() (*rsvpnats.Backend, *rsvp.Client) {
	be, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		panic(err)
	}
	c, err := rsvp.New(context.Background(), be, rsvp.Config{})
	if err != nil {
		panic(err)
	}
	return be, c
}

func ExampleClient_Request() {
	be, c := exampleEngine()
	defer be.Close()
	defer c.Close(context.Background())

	// A responder: upper-cases what it gets.
	c.Handle("upper", rsvp.HandlerFunc(func(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: bytes.ToUpper(req.Body)}, nil
	}), rsvp.HandleOptions{Concurrency: 4})

	// The requester waits for the reply; the deadline travels with the request.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := c.Request(ctx, "upper", &rsvp.Message{Body: []byte("hello")})
	if err != nil {
		panic(err)
	}
	fmt.Println(string(reply.Body))
	// Output: HELLO
}

func ExampleClient_Handle() {
	be, c := exampleEngine()
	defer be.Close()
	defer c.Close(context.Background())

	// Errors are retried with backoff; Permanent errors fail at once, and
	// the requester gets a *RemoteError with the code.
	c.Handle("thumbnail", rsvp.HandlerFunc(func(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
		if len(req.Body) == 0 {
			return nil, rsvp.Permanent(&rsvp.RemoteError{Code: "empty_image", Message: "no image data"})
		}
		return &rsvp.Reply{Body: []byte(fmt.Sprintf("thumbnail of %d bytes", len(req.Body))), ContentType: "text/plain"}, nil
	}), rsvp.HandleOptions{Concurrency: 8, MaxAttempts: 3})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := c.Request(ctx, "thumbnail", &rsvp.Message{Body: make([]byte, 2048)})
	fmt.Println(string(reply.Body), err)
	_, err = c.Request(ctx, "thumbnail", &rsvp.Message{})
	fmt.Println(err)
	// Output:
	// thumbnail of 2048 bytes <nil>
	// rsvp: remote error empty_image: no image data
}

func ExampleClient_Await() {
	be, c := exampleEngine()
	defer be.Close()
	defer c.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Send stores the request durably and returns at once.
	ticket, err := c.Send(ctx, "report", &rsvp.Message{Body: []byte("Q3")})
	if err != nil {
		panic(err)
	}

	// Later — in this process or any other on the same engine, even after
	// a restart — a responder answers, and Await gets the reply by id.
	c.Handle("report", rsvp.HandlerFunc(func(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: []byte("report for " + string(req.Body))}, nil
	}), rsvp.HandleOptions{})
	reply, err := c.Await(ctx, ticket.CorrelationID)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(reply.Body))
	// Output: report for Q3
}

func ExampleCall() {
	be, c := exampleEngine()
	defer be.Close()
	defer c.Close(context.Background())

	type Sum struct{ A, B int }
	rsvp.HandleTyped(c, "add", func(ctx context.Context, s Sum) (int, error) {
		return s.A + s.B, nil
	}, rsvp.HandleOptions{})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := rsvp.Call[Sum, int](ctx, c, "add", Sum{A: 2, B: 3})
	fmt.Println(n, err)
	// Output: 5 <nil>
}

type greetV1 struct{ Name string }

func (greetV1) RSVPType() string { return "greet.v1" }

type greetV2 struct{ First, Last string }

func (greetV2) RSVPType() string { return "greet.v2" }

// A Mux serves two versions of a request type during a rollout: v1
// requests are upgraded to v2 and handled by the v2 handler.
func ExampleMux() {
	be, c := exampleEngine()
	defer be.Close()
	defer c.Close(context.Background())

	mux := rsvp.NewMux()
	mux.Handle("greet.v2", rsvp.Typed(rsvp.JSON, func(ctx context.Context, g greetV2) (string, error) {
		return "hello " + g.First + " " + g.Last, nil
	}))
	mux.Upgrade("greet.v1", "greet.v2", func(ctx context.Context, m *rsvp.Message) (*rsvp.Message, error) {
		var old greetV1
		if err := rsvp.JSON.Unmarshal(m.Body, &old); err != nil {
			return nil, err
		}
		body, err := rsvp.JSON.Marshal(greetV2{First: old.Name})
		cp := *m
		cp.Body = body
		return &cp, err
	})
	c.Handle("greet", mux, rsvp.HandleOptions{})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	newer, _ := rsvp.Call[greetV2, string](ctx, c, "greet", greetV2{First: "Ada", Last: "Lovelace"})
	older, _ := rsvp.Call[greetV1, string](ctx, c, "greet", greetV1{Name: "Grace"})
	fmt.Println(newer)
	fmt.Println(older)
	// Output:
	// hello Ada Lovelace
	// hello Grace
}
