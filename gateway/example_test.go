package gateway_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/gateway"
)

// A gateway on an embedded engine with one responder: a caller submits
// over HTTP and, with "Prefer: wait", gets the result in the same call.
func ExampleNew() {
	ctx := context.Background()
	be, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true}) // real programs pass a directory
	if err != nil {
		panic(err)
	}
	defer be.Close()
	client, err := rsvp.New(ctx, be, rsvp.Config{})
	if err != nil {
		panic(err)
	}
	defer client.Close(ctx)
	client.Handle("upper", rsvp.HandlerFunc(func(ctx context.Context, req *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{ContentType: "text/plain", Body: []byte(strings.ToUpper(string(req.Body)))}, nil
	}), rsvp.HandleOptions{})

	gw, err := gateway.New(ctx, client, gateway.Config{})
	if err != nil {
		panic(err)
	}
	defer gw.Close(ctx)
	srv := httptest.NewServer(gw) // or http.ListenAndServe("127.0.0.1:8080", gw)
	defer srv.Close()

	req, _ := http.NewRequest("POST", srv.URL+"/v1/queues/upper/requests", strings.NewReader("hello"))
	req.Header.Set("Prefer", "wait=10")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(body))
	// Output: 200 HELLO
}
