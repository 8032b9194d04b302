package rsvp

import (
	"errors"
	"fmt"

	"github.com/rsvp-go/rsvp/backend"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrExpired: the request's deadline passed before a responder finished
	// it. The request was dead-lettered with reason "expired".
	ErrExpired = errors.New("rsvp: request expired")
	// ErrTooLarge: the body is over Config.MaxBodySize or the engine's limit.
	ErrTooLarge = errors.New("rsvp: message too large")
	// ErrInvalid: a queue name, id or message field is not acceptable.
	ErrInvalid = errors.New("rsvp: invalid argument")
	// ErrCancelled: the request was cancelled before it finished. A handler
	// whose request is cancelled sees it as context.Cause of its ctx.
	ErrCancelled = errors.New("rsvp: request cancelled")
	// ErrNoResponders: Config.RequireResponder is set and no responder of
	// the queue was active within it; the request was not sent.
	ErrNoResponders = errors.New("rsvp: no responders")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("rsvp: client closed")
	// ErrLeaseLost: the lease of a request being worked on ran out, so that
	// the request may be with another worker now; this worker's outcome is
	// not recorded. A handler sees it as context.Cause of its ctx, and
	// Lease.Extend returns it (match both with errors.Is). It is
	// backend.ErrLeaseLost, which every engine's lease-lost error wraps.
	ErrLeaseLost = backend.ErrLeaseLost
)

// Error codes carried by failure replies (RemoteError.Code) and used as
// dead-letter reasons.
const (
	CodeFailed            = "failed"             // the handler returned an error on its last attempt
	CodeExpired           = "expired"            // the deadline passed before the request was done
	CodeBadPayload        = "bad_payload"        // the body did not decode
	CodeAttemptsExhausted = "attempts_exhausted" // leases ran out (the worker died) on every attempt
	CodeBadRequest        = "bad_request"        // the request could not be read (no id, bad headers)
	CodeBadReplyTo        = "bad_reply_to"       // no reply can be stored at the request's ReplyTo
	CodeCancelled         = "cancelled"          // the request was cancelled
)

// RemoteError is the failure a responder replied with. A handler may return
// one (or wrap one) to choose the code the requester sees (an empty Code is
// CodeFailed).
type RemoteError struct {
	Code    string
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("rsvp: remote error %s: %s", e.Code, e.Message)
}

// Is makes errors.Is(err, ErrExpired) true for an expired request, and
// errors.Is(err, ErrCancelled) for a cancelled one.
func (e *RemoteError) Is(target error) bool {
	return target == ErrExpired && e.Code == CodeExpired || target == ErrCancelled && e.Code == CodeCancelled
}

// Permanent marks err as not worth retrying: the request fails at once,
// goes to the dead-letter store, and the requester gets the failure.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return "permanent: " + e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// replyError turns a stored reply into the error Request and Await return.
func replyError(r *backend.Reply) error {
	if r.Status == backend.StatusSucceeded {
		return nil
	}
	code := r.ErrorCode
	if code == "" {
		code = string(r.Status)
	}
	return &RemoteError{Code: code, Message: r.ErrorMessage}
}
