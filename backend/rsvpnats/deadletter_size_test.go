package rsvpnats_test

import (
	"strings"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

// TestDeadLetterOfLargeRequest: a request as large as Enqueue takes can
// be dead-lettered whatever the length of its last error (the error is
// shortened to fit); otherwise it came back for ever.
func TestDeadLetterOfLargeRequest(t *testing.T) {
	t.Parallel()
	b, ctx := statsSetup(t)
	limit := int(b.Conn().MaxPayload())
	var m *backend.Message
	for size := limit; ; size -= 64 { // the largest body Enqueue takes
		m = &backend.Message{ID: "big", CorrelationID: "big", Queue: "big", Body: make([]byte, size), CreatedAt: time.Now()}
		if err := b.Enqueue(ctx, m); err == nil {
			break
		}
	}
	m.Attempt = 1
	long := strings.Repeat("é", 2000) // 4,000 bytes, cut on a character
	if err := b.DeadLetter(ctx, &backend.DeadLetter{Message: m, Reason: "failed", LastError: long, At: time.Now()}); err != nil {
		t.Fatalf("dead-lettering a request Enqueue took: %v", err)
	}
	dls, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: "big"})
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters: %d, %v; want 1", len(dls), err)
	}
	if got := dls[0].LastError; got == "" || !strings.HasPrefix(long, got) || len(dls[0].Message.Body) != len(m.Body) {
		t.Fatalf("dead letter: error %d bytes (a prefix: %v), body %d bytes; want a prefix of the error and the whole body",
			len(got), strings.HasPrefix(long, got), len(dls[0].Message.Body))
	}
}
