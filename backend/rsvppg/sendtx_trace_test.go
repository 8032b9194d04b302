package rsvppg_test

import (
	"context"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

// TestSendTxTraced: SendTx sends as Send does: in a span of its own
// (rsvp.send <queue>), a child of the caller's, whose trace context the
// stored request carries to its handler.
func TestSendTxTraced(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())
	c, err := rsvp.New(s.ctx, s.b, rsvp.Config{TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	q := uniq("q")

	ctx, parent := tp.Tracer("test").Start(s.ctx, "business")
	tx, err := s.b.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rsvppg.SendTx(ctx, c, tx, q, &rsvp.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	parent.End()

	var send sdktrace.ReadOnlySpan
	for _, sp := range spans.Ended() {
		if sp.Name() == "rsvp.send "+q {
			send = sp
		}
	}
	if send == nil || send.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Fatalf("no span rsvp.send %s child of the caller's span; ended: %d spans", q, len(spans.Ended()))
	}
	cons, err := s.b.Consume(s.ctx, q, backend.ConsumeParams{Lease: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	nctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	d, err := cons.Next(nctx)
	if err != nil {
		t.Fatal(err)
	}
	want := "00-" + send.SpanContext().TraceID().String() + "-" + send.SpanContext().SpanID().String() + "-01"
	if got := d.Message().TraceParent; got != want {
		t.Fatalf("stored traceparent %q, want the send span's %q", got, want)
	}
}
