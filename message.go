package rsvp

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

// Message is a request. Only Body is required; Send fills ID (a new
// time-ordered 128-bit id), CorrelationID (= ID), Queue, ReplyTo and
// CreatedAt. Headers must not use the "Rsvp-" or "Nats-" prefixes, which the
// wire format reserves. NotBefore schedules a request: it is stored at once
// and delivered from that time on (a time already past means at once; more
// than Config.MaxDelay ahead is refused, and so is any time ahead on an
// engine that cannot schedule, NATS before 2.12, with an error wrapping
// errors.ErrUnsupported).
type Message = backend.Message

// Reply is the final outcome of a request, as a responder stored it.
// Request and Await return a succeeded reply with a nil error, and a failed
// or expired one with a *RemoteError.
type Reply = backend.Reply

// Ticket identifies a sent request.
type Ticket struct {
	ID            string
	CorrelationID string // pass to Await
	Queue         string
}

// NewID returns a new message id: a UUID version 7 (time-ordered, 74 random
// bits) in its canonical text form.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[6:]) // never fails, per crypto/rand
	ms := uint64(time.Now().UnixMilli())
	binary.BigEndian.PutUint16(b[0:2], uint16(ms>>32))
	binary.BigEndian.PutUint32(b[2:6], uint32(ms))
	b[6] = b[6]&0x0f | 0x70 // version 7
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}
