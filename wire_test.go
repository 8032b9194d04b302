package rsvp_test

// These tests check docs/wire.md: one side of each exchange is written with
// plain nats.go / jetstream calls only, following the document, and the
// other side is rsvp.

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// wireCtx bounds a wire test.
func wireCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wireTime formats a time as docs/wire.md requires.
func wireTime(tm time.Time) string { return tm.UTC().Format(time.RFC3339Nano) }

// wireParseTime parses a wire time header, failing the test if it is not
// RFC 3339 in UTC.
func wireParseTime(t *testing.T, h nats.Header, key string) time.Time {
	t.Helper()
	v := h.Get(key)
	tm, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		t.Fatalf("header %s = %q: %v", key, v, err)
	}
	if !strings.HasSuffix(v, "Z") {
		t.Fatalf("header %s = %q is not in UTC", key, v)
	}
	return tm
}

// wireJS is the raw side's JetStream context.
func wireJS(t *testing.T, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// wireSubscribe subscribes to subject and makes sure the server has the
// interest before returning, as a requester must before publishing.
func wireSubscribe(t *testing.T, nc *nats.Conn, subject string) *nats.Subscription {
	t.Helper()
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return sub
}

// wireRequest builds a request the way docs/wire.md describes it.
func wireRequest(queue, id, inbox string, deadline time.Time, body string) *nats.Msg {
	m := nats.NewMsg("rsvp.req." + queue)
	m.Header.Set("Nats-Msg-Id", id)
	m.Header.Set("Rsvp-Id", id)
	m.Header.Set("Rsvp-Correlation-Id", id)
	m.Header.Set("Rsvp-Reply-To", "rsvp.reply."+id+"."+inbox)
	m.Header.Set("Rsvp-Type", "wire.test.v1")
	m.Header.Set("Content-Type", "text/plain")
	m.Header.Set("Rsvp-Created-At", wireTime(time.Now()))
	if !deadline.IsZero() {
		m.Header.Set("Rsvp-Deadline", wireTime(deadline))
	}
	m.Header.Set("X-Trace", "trace-"+id)
	m.Header.Set("traceparent", wireForeignTrace) // a foreign sender's bare W3C header
	m.Data = []byte(body)
	return m
}

const wireForeignTrace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// wireReply builds a reply the way docs/wire.md describes it.
func wireReply(replyTo, correlationID, status, body string) *nats.Msg {
	m := nats.NewMsg(replyTo)
	m.Header.Set("Rsvp-Correlation-Id", correlationID)
	m.Header.Set("Rsvp-Status", status)
	m.Header.Set("Rsvp-Created-At", wireTime(time.Now()))
	m.Header.Set("Content-Type", "text/plain")
	m.Data = []byte(body)
	return m
}

// TestWireRawRequester: a requester that only speaks NATS gets replies from
// an rsvp responder, through the notify subject and the direct get.
func TestWireRawRequester(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := wireCtx(t)
	const queue = "wire-echo"
	got := make(chan *rsvp.Message, 4)
	_, err := c.Handle(queue, rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		got <- m
		if string(m.Body) == "fail" {
			return nil, rsvp.Permanent(&rsvp.RemoteError{Code: "no_good", Message: "line one\nline two"})
		}
		return &rsvp.Reply{Body: append([]byte("re: "), m.Body...), ContentType: "text/plain",
			Headers: map[string]string{"X-Answer": "42"}}, nil
	}), rsvp.HandleOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// From here on, only the raw connection.
	nc := c.be.Conn()
	js := wireJS(t, nc)
	const inbox = "rawinbox1"
	sub := wireSubscribe(t, nc, "rsvp.notify.*."+inbox) // subscribe first

	const id = "raw-req-1"
	deadline := time.Now().Add(time.Minute)
	req := wireRequest(queue, id, inbox, deadline, "hello")
	ack, err := js.PublishMsg(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if ack.Stream != "RSVP_REQUESTS" || ack.Duplicate {
		t.Fatalf("publish ack %+v", ack)
	}

	reply, err := sub.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := "rsvp.notify." + id + "." + inbox; reply.Subject != want {
		t.Errorf("notified on %q, want %q", reply.Subject, want)
	}
	h := reply.Header
	if h.Get("Rsvp-Correlation-Id") != id || h.Get("Rsvp-Status") != "succeeded" || h.Get("Content-Type") != "text/plain" ||
		h.Get("X-Answer") != "42" || h.Get("Rsvp-Error-Code") != "" || string(reply.Data) != "re: hello" {
		t.Errorf("reply %v %q", h, reply.Data)
	}
	wireParseTime(t, h, "Rsvp-Created-At")

	// What the responder saw is what the headers said.
	m := <-got
	if m.ID != id || m.CorrelationID != id || m.Queue != queue || m.Type != "wire.test.v1" || m.ContentType != "text/plain" ||
		m.Headers["X-Trace"] != "trace-"+id || len(m.Headers) != 1 || m.TraceParent != wireForeignTrace ||
		m.Attempt != 1 || !m.Deadline.Equal(deadline.Truncate(0)) ||
		m.ReplyTo != "rsvp.reply."+id+"."+inbox || string(m.Body) != "hello" {
		t.Errorf("handler got %+v", m)
	}

	// The stored reply, by direct get of the last message on rsvp.reply.<id>.*.
	replies, err := js.Stream(ctx, "RSVP_REPLIES")
	if err != nil {
		t.Fatal(err)
	}
	stored, err := replies.GetLastMsgForSubject(ctx, "rsvp.reply."+id+".*")
	if err != nil {
		t.Fatal(err)
	}
	if stored.Subject != "rsvp.reply."+id+"."+inbox || stored.Header.Get("Rsvp-Status") != "succeeded" ||
		stored.Header.Get("Rsvp-Correlation-Id") != id || string(stored.Data) != "re: hello" {
		t.Errorf("stored reply %s %v %q", stored.Subject, stored.Header, stored.Data)
	}
	// The same, as a plain request to the direct get API.
	direct, err := nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET.RSVP_REPLIES", []byte(`{"last_by_subj":"rsvp.reply.`+id+`.*"}`))
	if err != nil {
		t.Fatal(err)
	}
	if direct.Header.Get("Nats-Subject") != "rsvp.reply."+id+"."+inbox || string(direct.Data) != "re: hello" {
		t.Errorf("direct get %v %q", direct.Header, direct.Data)
	}
	// No reply yet: status 404 and no body.
	missing, err := nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET.RSVP_REPLIES", []byte(`{"last_by_subj":"rsvp.reply.nobody.*"}`))
	if err != nil {
		t.Fatal(err)
	}
	if missing.Header.Get("Status") != "404" || len(missing.Data) != 0 {
		t.Errorf("direct get of a missing reply %v %q", missing.Header, missing.Data)
	}

	// Sending the same id again within the dedupe window stores nothing.
	ack, err = js.PublishMsg(ctx, wireRequest(queue, id, inbox, deadline, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	if !ack.Duplicate {
		t.Errorf("second publish of %s not flagged duplicate: %+v", id, ack)
	}

	// A request whose deadline has passed is not run: expired reply, dead
	// letter with reason expired.
	const expiredID = "raw-req-expired"
	if _, err := js.PublishMsg(ctx, wireRequest(queue, expiredID, inbox, time.Now().Add(-time.Second), "late")); err != nil {
		t.Fatal(err)
	}
	reply, err = sub.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h := reply.Header; h.Get("Rsvp-Correlation-Id") != expiredID || h.Get("Rsvp-Status") != "expired" ||
		h.Get("Rsvp-Error-Code") != "expired" || h.Get("Rsvp-Error-Message") == "" {
		t.Errorf("expired reply %v %q", h, reply.Data)
	}
	wireCheckDeadLetter(ctx, t, js, queue, expiredID, "expired", "late")

	// A permanent failure: failed reply with the handler's code, line breaks
	// folded, and a dead letter.
	const failID = "raw-req-fail"
	if _, err := js.PublishMsg(ctx, wireRequest(queue, failID, inbox, deadline, "fail")); err != nil {
		t.Fatal(err)
	}
	reply, err = sub.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h := reply.Header; h.Get("Rsvp-Correlation-Id") != failID || h.Get("Rsvp-Status") != "failed" ||
		h.Get("Rsvp-Error-Code") != "no_good" || !strings.Contains(h.Get("Rsvp-Error-Message"), "line one line two") {
		t.Errorf("failure reply %v %q", h, reply.Data)
	}
	wireCheckDeadLetter(ctx, t, js, queue, failID, "no_good", "fail")
	if m := <-got; m.ID != failID {
		t.Errorf("handler got %s, want %s", m.ID, failID)
	}
	select {
	case m := <-got:
		t.Errorf("handler ran for %s more than expected", m.ID)
	default:
	}
}

// wireCheckDeadLetter reads the last dead letter of queue and checks it
// against docs/wire.md. The responder stores it before the failure reply.
func wireCheckDeadLetter(ctx context.Context, t *testing.T, js jetstream.JetStream, queue, id, reason, body string) {
	t.Helper()
	dlq, err := js.Stream(ctx, "RSVP_DLQ")
	if err != nil {
		t.Fatal(err)
	}
	dl, err := dlq.GetLastMsgForSubject(ctx, "rsvp.dlq."+queue)
	if err != nil {
		t.Fatal(err)
	}
	h := dl.Header
	if h.Get("Rsvp-Id") != id || h.Get("Nats-Msg-Id") != id+":1" || h.Get("Rsvp-Queue") != queue || h.Get("Rsvp-Attempt") != "1" ||
		h.Get("Rsvp-Dead-Reason") != reason || h.Get("Rsvp-Dead-Error") == "" || h.Get("X-Trace") != "trace-"+id ||
		h.Get("Rsvp-Reply-To") == "" || string(dl.Data) != body {
		t.Errorf("dead letter %s %v %q", dl.Subject, h, dl.Data)
	}
	wireParseTime(t, h, "Rsvp-Dead-At")
}

// wireConsumer binds the raw responder to the durable consumer of queue,
// creating it with the configuration of docs/wire.md.
func wireConsumer(ctx context.Context, t *testing.T, js jetstream.JetStream, queue string, lease time.Duration) jetstream.Consumer {
	t.Helper()
	cons, err := js.CreateOrUpdateConsumer(ctx, "RSVP_REQUESTS", jetstream.ConsumerConfig{
		Durable:       "rsvp_" + queue,
		FilterSubject: "rsvp.req." + queue,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       lease,
		MaxDeliver:    -1,
		MaxAckPending: 100_000,
	})
	if err != nil {
		t.Fatal(err)
	}
	return cons
}

// wireNext fetches one delivery.
func wireNext(ctx context.Context, t *testing.T, cons jetstream.Consumer) jetstream.Msg {
	t.Helper()
	wait := 10 * time.Second
	if d, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(d))
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(wait))
	if err != nil {
		t.Fatal(err)
	}
	var got jetstream.Msg
	for m := range batch.Messages() {
		got = m
	}
	if err := batch.Error(); err != nil {
		t.Fatal(err)
	}
	if got == nil {
		t.Fatal("no request delivered")
	}
	return got
}

// wireAttempt is the delivery count of a delivery: its attempt number.
func wireAttempt(t *testing.T, m jetstream.Msg) int {
	t.Helper()
	md, err := m.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	return int(md.NumDelivered)
}

type wireResult struct {
	r   *rsvp.Reply
	err error
}

// wireRequestAsync runs Client.Request in the background.
func wireRequestAsync(ctx context.Context, c *testClient, queue string, m *rsvp.Message) <-chan wireResult {
	out := make(chan wireResult, 1)
	go func() {
		r, err := c.Request(ctx, queue, m)
		out <- wireResult{r, err}
	}()
	return out
}

// TestWireRawResponder: an rsvp requester gets its reply from a responder
// that only speaks NATS.
func TestWireRawResponder(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{Inbox: "rsvpside"})
	ctx := wireCtx(t)
	const queue = "wire-raw"
	js := wireJS(t, c.be.Conn())
	cons := wireConsumer(ctx, t, js, queue, 30*time.Second)

	reqCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	deadline, _ := reqCtx.Deadline()
	res := wireRequestAsync(reqCtx, c, queue, &rsvp.Message{
		Body: []byte("ping"), ContentType: "text/plain", Type: "wire.ping.v1",
		Headers: map[string]string{"X-Trace": "t1"},
	})

	m := wireNext(ctx, t, cons)
	h := m.Headers()
	id := h.Get("Rsvp-Id")
	if id == "" || h.Get("Nats-Msg-Id") != id || h.Get("Rsvp-Correlation-Id") != id || m.Subject() != "rsvp.req."+queue ||
		h.Get("Rsvp-Reply-To") != "rsvp.reply."+id+".rsvpside" || h.Get("Rsvp-Type") != "wire.ping.v1" ||
		h.Get("Content-Type") != "text/plain" || h.Get("X-Trace") != "t1" || string(m.Data()) != "ping" {
		t.Fatalf("request %s %v %q", m.Subject(), h, m.Data())
	}
	wireParseTime(t, h, "Rsvp-Created-At")
	if got := wireParseTime(t, h, "Rsvp-Deadline"); !got.Equal(deadline) {
		t.Errorf("Rsvp-Deadline %s, want the context deadline %s", got, deadline)
	}
	if a := wireAttempt(t, m); a != 1 {
		t.Errorf("attempt %d, want 1", a)
	}
	// Still working: extend the lease.
	if err := m.InProgress(); err != nil {
		t.Fatal(err)
	}

	reply := wireReply(h.Get("Rsvp-Reply-To"), h.Get("Rsvp-Correlation-Id"), "succeeded", "pong")
	reply.Header.Set("X-Answer", "yes")
	if _, err := js.PublishMsg(ctx, reply); err != nil {
		t.Fatal(err)
	}
	if err := m.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}

	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	if string(r.r.Body) != "pong" || r.r.CorrelationID != id || r.r.Status != "succeeded" || r.r.ContentType != "text/plain" ||
		r.r.Headers["X-Answer"] != "yes" || len(r.r.Headers) != 1 || r.r.CreatedAt.IsZero() {
		t.Errorf("reply %+v", r.r)
	}
}

// TestWireRawResponderFailure: a raw responder that retries once (nak with
// delay), then dead-letters the request and replies with a failure; the rsvp
// requester gets a *rsvp.RemoteError with its code.
func TestWireRawResponderFailure(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := wireCtx(t)
	const queue = "wire-raw-fail"
	js := wireJS(t, c.be.Conn())
	cons := wireConsumer(ctx, t, js, queue, 30*time.Second)

	res := wireRequestAsync(ctx, c, queue, &rsvp.Message{ID: "order-17", Body: []byte("widget")})

	first := wireNext(ctx, t, cons)
	if a := wireAttempt(t, first); a != 1 {
		t.Fatalf("attempt %d, want 1", a)
	}
	if err := first.NakWithDelay(50 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	m := wireNext(ctx, t, cons)
	attempt := wireAttempt(t, m)
	if attempt != 2 || m.Headers().Get("Rsvp-Id") != "order-17" {
		t.Fatalf("redelivery: attempt %d, headers %v", attempt, m.Headers())
	}

	// Final failure: dead letter first, then the failure reply, then ack.
	h := m.Headers()
	dl := nats.NewMsg("rsvp.dlq." + queue)
	for k, vs := range h {
		dl.Header[k] = vs
	}
	dl.Header.Set("Nats-Msg-Id", h.Get("Rsvp-Id")+":"+strconv.Itoa(attempt))
	dl.Header.Set("Rsvp-Queue", queue)
	dl.Header.Set("Rsvp-Attempt", strconv.Itoa(attempt))
	dl.Header.Set("Rsvp-Dead-Reason", "out_of_stock")
	dl.Header.Set("Rsvp-Dead-Error", "no widgets left")
	dl.Header.Set("Rsvp-Dead-At", wireTime(time.Now()))
	dl.Data = m.Data()
	if _, err := js.PublishMsg(ctx, dl); err != nil {
		t.Fatal(err)
	}
	reply := wireReply(h.Get("Rsvp-Reply-To"), h.Get("Rsvp-Correlation-Id"), "failed", "")
	reply.Header.Del("Content-Type")
	reply.Header.Set("Rsvp-Error-Code", "out_of_stock")
	reply.Header.Set("Rsvp-Error-Message", "no widgets left")
	if _, err := js.PublishMsg(ctx, reply); err != nil {
		t.Fatal(err)
	}
	if err := m.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}

	r := <-res
	var re *rsvp.RemoteError
	if !errors.As(r.err, &re) || re.Code != "out_of_stock" || re.Message != "no widgets left" {
		t.Fatalf("Request error %v, want a RemoteError out_of_stock", r.err)
	}
	if r.r == nil || r.r.Status != "failed" || r.r.CorrelationID != "order-17" {
		t.Errorf("failure reply %+v", r.r)
	}

	// rsvp reads the raw dead letter.
	dls, err := c.be.DeadLetters(ctx, backend.DeadLetterQuery{Queue: queue, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 || dls[0].Message.ID != "order-17" || dls[0].Message.Attempt != 2 || dls[0].Reason != "out_of_stock" ||
		dls[0].LastError != "no widgets left" || dls[0].At.IsZero() || string(dls[0].Message.Body) != "widget" {
		t.Errorf("dead letters %+v", dls)
	}
}

// TestWireSecondReplyRejected: only the first reply on a reply subject is
// stored; a second publish fails with the per-subject limit, is not
// republished, and an rsvp responder that meets it acks the request.
func TestWireSecondReplyRejected(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := wireCtx(t)
	nc := c.be.Conn()
	js := wireJS(t, nc)
	const id, inbox = "answer-once", "rawinbox2"
	replyTo := "rsvp.reply." + id + "." + inbox
	notes := wireSubscribe(t, nc, "rsvp.notify.>")

	if _, err := js.PublishMsg(ctx, wireReply(replyTo, id, "succeeded", "first")); err != nil {
		t.Fatal(err)
	}
	_, err := js.PublishMsg(ctx, wireReply(replyTo, id, "failed", "second"))
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != 10077 || !strings.Contains(apiErr.Description, "maximum messages per subject") {
		t.Fatalf("second reply: got %v, want the per-subject limit error", err)
	}
	// A marker reply on another subject: notifications come in store order,
	// so if the rejected reply had been republished it would come before.
	if _, err := js.PublishMsg(ctx, wireReply("rsvp.reply.marker."+inbox, "marker", "succeeded", "")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"rsvp.notify." + id + "." + inbox, "rsvp.notify.marker." + inbox} {
		n, err := notes.NextMsgWithContext(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n.Subject != want {
			t.Fatalf("notification on %s (%q), want %s", n.Subject, n.Data, want)
		}
	}

	replies, err := js.Stream(ctx, "RSVP_REPLIES")
	if err != nil {
		t.Fatal(err)
	}
	stored, err := replies.GetLastMsgForSubject(ctx, "rsvp.reply."+id+".*")
	if err != nil {
		t.Fatal(err)
	}
	if string(stored.Data) != "first" {
		t.Errorf("stored reply %q, want the first", stored.Data)
	}
	r, err := c.Await(ctx, id)
	if err != nil || string(r.Body) != "first" {
		t.Errorf("Await: %v %+v", err, r)
	}

	// An rsvp responder whose request is already answered acks it and keeps
	// the stored reply.
	const queue = "wire-late"
	ran := make(chan struct{}, 1)
	_, err = c.Handle(queue, rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		ran <- struct{}{}
		return &rsvp.Reply{Body: []byte("late")}, nil
	}), rsvp.HandleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctx, wireRequest(queue, id, inbox, time.Time{}, "again")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ran:
	case <-ctx.Done():
		t.Fatal("handler never ran")
	}
	requests, err := js.Stream(ctx, "RSVP_REQUESTS")
	if err != nil {
		t.Fatal(err)
	}
	// The ack removes the request from the work queue.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := requests.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 0 {
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("request never acked: %d still queued", info.State.Msgs)
		}
	}
	stored, err = replies.GetLastMsgForSubject(ctx, "rsvp.reply."+id+".*")
	if err != nil {
		t.Fatal(err)
	}
	if string(stored.Data) != "first" {
		t.Errorf("stored reply %q after the late answer, want the first", stored.Data)
	}
}

// TestWireTraceContext: requests and replies carry the W3C trace context as
// Rsvp-Traceparent (never a bare traceparent, which makes the NATS server
// parse every message's headers), in both directions.
func TestWireTraceContext(t *testing.T) {
	t.Parallel()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	c := setup(t, rsvp.Config{Inbox: "tracer", TracerProvider: tp})
	ctx := wireCtx(t)
	const queue = "wire-trace"
	js := wireJS(t, c.be.Conn())
	cons := wireConsumer(ctx, t, js, queue, 30*time.Second)
	res := wireRequestAsync(ctx, c, queue, &rsvp.Message{Body: []byte("ping")})

	m := wireNext(ctx, t, cons)
	h := m.Headers()
	tp1 := h.Get("Rsvp-Traceparent")
	if !regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-01$`).MatchString(tp1) || len(h.Values("traceparent")) != 0 {
		t.Fatalf("request trace headers: Rsvp-Traceparent %q, traceparent %q", tp1, h.Values("traceparent"))
	}
	// The raw responder answers from a trace of its own (a batch job's, say).
	const responderSpan = "00f067aa0ba902b7"
	reply := wireReply(h.Get("Rsvp-Reply-To"), h.Get("Rsvp-Correlation-Id"), "succeeded", "pong")
	reply.Header.Set("Rsvp-Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-"+responderSpan+"-01")
	if _, err := js.PublishMsg(ctx, reply); err != nil {
		t.Fatal(err)
	}
	_ = m.DoubleAck(ctx)
	if r := <-res; r.err != nil || r.r.TraceParent != reply.Header.Get("Rsvp-Traceparent") || len(r.r.Headers) != 0 {
		t.Fatalf("reply %+v, %v; want its trace context in Reply.TraceParent, not among the headers", r.r, r.err)
	}
	ended := spans.Ended()
	if len(ended) != 1 || ended[0].SpanContext().TraceID().String() != tp1[3:35] {
		t.Fatalf("spans %v, want the request's span in the trace of %s", ended, tp1)
	}
	links := ended[0].Links()
	if len(links) != 1 || links[0].SpanContext.SpanID().String() != responderSpan {
		t.Fatalf("request span links %+v, want the responder's span %s in its other trace", links, responderSpan)
	}
}
