package backend

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// MaxNameLen is the longest queue name or id the seam carries, in bytes.
const MaxNameLen = 128

// ValidateName reports whether s can be used as a queue name, message id or
// correlation id: 1 to MaxNameLen bytes of ASCII letters, digits, '-', '_'
// and ':'. Every engine can carry these in a subject, key or column. kind
// names the value in the error ("queue", "id", ...).
func ValidateName(kind, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty", kind)
	}
	if len(s) > MaxNameLen {
		return fmt.Errorf("%s %.20q... is %d bytes, longer than %d", kind, s, len(s), MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == ':') {
			return fmt.Errorf("%s %q has character %q at byte %d; allowed are letters, digits, '-', '_' and ':'", kind, s, c, i)
		}
	}
	return nil
}

// ValidateChannel reports whether s can name a notification channel: a
// name as for ValidateName, other than "_" (which engines may use for "no
// channel").
func ValidateChannel(s string) error {
	if s == "_" {
		return fmt.Errorf("channel %q is reserved", s)
	}
	return ValidateName("channel", s)
}

// ReservedHeader reports whether a header name belongs to the wire format
// (the "Rsvp-" and "Nats-" prefixes, Content-Type, and the trace context's
// traceparent and tracestate), in any letter case, rather than to the
// application.
func ReservedHeader(k string) bool {
	return len(k) >= 5 && (strings.EqualFold(k[:5], "rsvp-") || strings.EqualFold(k[:5], "nats-")) ||
		strings.EqualFold(k, "Content-Type") || strings.EqualFold(k, "traceparent") || strings.EqualFold(k, "tracestate")
}

// MaxSessionKeyLen is the longest session key the seam carries, in bytes.
const MaxSessionKeyLen = 256

// ValidateSessionKey reports whether s can be a session key
// (Message.SessionKey, Message.ReplySession): 1 to MaxSessionKeyLen bytes
// of UTF-8 text without control characters. Engines that cannot carry
// every such character encode the key.
func ValidateSessionKey(kind, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty", kind)
	}
	if len(s) > MaxSessionKeyLen {
		return fmt.Errorf("%s %.20q... is %d bytes, longer than %d", kind, s, len(s), MaxSessionKeyLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s %.40q is not valid UTF-8", kind, s)
	}
	for i, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%s %.40q has control character %U at byte %d", kind, s, r, i)
		}
	}
	return nil
}

// CheckSession reports what is wrong with m's session fields: a bad
// SessionKey or ReplySession, or a session request that is scheduled.
func CheckSession(m *Message) error {
	var errs []error
	if m.SessionKey != "" {
		errs = append(errs, ValidateSessionKey("session key", m.SessionKey))
		if time.Until(m.NotBefore) > 0 {
			errs = append(errs, fmt.Errorf("a request of session %.40q cannot be scheduled (NotBefore): it would hold up its session", m.SessionKey))
		}
	}
	if m.ReplySession != "" {
		errs = append(errs, ValidateSessionKey("reply session", m.ReplySession))
	}
	return errors.Join(errs...)
}
