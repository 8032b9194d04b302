package rsvpnats

import (
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

func TestRequestRoundTripsThroughHeaders(t *testing.T) {
	in := &backend.Message{ID: "a", CorrelationID: "c", ReplyTo: "rsvp.reply.c.in", Queue: "q", Type: "t.v1",
		ContentType: "text/plain", Headers: map[string]string{"Tenant": "acme"}, Body: []byte("b"),
		CreatedAt: time.Unix(1, 2).UTC(), Deadline: time.Unix(3, 4).UTC()}
	m := encodeRequest(in)
	out, err := decodeRequest(m.Subject, m.Header, m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if out.ID != in.ID || out.CorrelationID != in.CorrelationID || out.ReplyTo != in.ReplyTo || out.Queue != in.Queue ||
		out.Type != in.Type || out.ContentType != in.ContentType || out.Headers["Tenant"] != "acme" || len(out.Headers) != 1 ||
		!out.CreatedAt.Equal(in.CreatedAt) || !out.Deadline.Equal(in.Deadline) || string(out.Body) != "b" {
		t.Fatalf("got %+v, want %+v", out, in)
	}
}

func BenchmarkEncodeDecodeRequest(b *testing.B) {
	in := &backend.Message{ID: "01a20a11-7c45-78a9-a4a7-0ce316df935c", CorrelationID: "01a20a11-7c45-78a9-a4a7-0ce316df935c",
		ReplyTo: "rsvp.reply.01a20a11-7c45-78a9-a4a7-0ce316df935c.inbox", Queue: "thumbnail", ContentType: "application/json",
		Headers: map[string]string{"Tenant": "acme"}, Body: make([]byte, 1024), CreatedAt: time.Now(), Deadline: time.Now()}
	b.ReportAllocs()
	for b.Loop() {
		m := encodeRequest(in)
		if _, err := decodeRequest(m.Subject, m.Header, m.Data); err != nil {
			b.Fatal(err)
		}
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":           "nats://127.0.0.1:4222",
		"nats://u:secret@h:4222":          "nats://***@h:4222",
		"nats://tok@h1:1,nats://a:b@h2:2": "nats://***@h1:1,nats://***@h2:2",
		"tls://user:p%40ss@host/path":     "tls://***@host/path",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}
