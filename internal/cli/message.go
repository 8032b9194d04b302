package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// messageFlags are the flags of the commands that send a request.
type messageFlags struct {
	data        string
	file        string
	contentType string
	typ         string
	id          string
	deadline    time.Duration
	headers     headerFlag
	session     string
	replySess   string
}

func (f *messageFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.data, "data", "", "request `body` (else --file, else stdin)")
	fs.StringVar(&f.file, "file", "", "read the request body from `path` (- for stdin)")
	fs.StringVar(&f.contentType, "content-type", "", "MIME `type` of the body, e.g. application/json")
	fs.StringVar(&f.typ, "type", "", "message type: schema `name` and version, e.g. thumbnail.request.v1")
	fs.StringVar(&f.id, "id", "", "request `id` (default: a new UUIDv7); sending the same id again within 2m stores nothing new")
	fs.DurationVar(&f.deadline, "deadline", 0, "the request expires unless done within this `duration` (default: never)")
	fs.Var(&f.headers, "header", "application header `K=V`; repeatable")
	fs.StringVar(&f.session, "session", "", "session `key`: the requests of one session are handled one at a time, in the order sent")
	fs.StringVar(&f.replySess, "reply-session", "", "list the reply under this reply session `key`, in order (read with the library's Client.SessionReplies)")
}

// message builds the request from the flags, reading its body. Call it
// after parsing fs.
func (f *messageFlags) message(fs *flag.FlagSet, stdin io.Reader) (*rsvp.Message, error) {
	if isSet(fs, "data") && isSet(fs, "file") {
		return nil, usagef("give the body with --data or --file, not both")
	}
	if f.id != "" {
		if err := backend.ValidateName("id", f.id); err != nil {
			return nil, &usageError{err}
		}
	}
	if f.deadline < 0 {
		return nil, usagef("--deadline %s is negative", f.deadline)
	}
	if isSet(fs, "session") {
		if err := backend.ValidateSessionKey("--session", f.session); err != nil {
			return nil, &usageError{err}
		}
	}
	if isSet(fs, "reply-session") {
		if err := backend.ValidateSessionKey("--reply-session", f.replySess); err != nil {
			return nil, &usageError{err}
		}
	}
	body, err := f.body(fs, stdin)
	if err != nil {
		return nil, err
	}
	m := &rsvp.Message{ID: f.id, Type: f.typ, ContentType: f.contentType, Headers: f.headers.m, Body: body,
		SessionKey: f.session, ReplySession: f.replySess}
	if f.deadline > 0 {
		m.Deadline = time.Now().Add(f.deadline)
	}
	return m, nil
}

func (f *messageFlags) body(fs *flag.FlagSet, stdin io.Reader) ([]byte, error) {
	switch {
	case isSet(fs, "data"):
		return []byte(f.data), nil
	case f.file == "-":
		return readBody(stdin, "stdin")
	case f.file != "":
		file, err := os.Open(f.file)
		if err != nil {
			return nil, fmt.Errorf("read request body: %w", err)
		}
		defer file.Close()
		return readBody(file, f.file)
	case isTerminal(stdin):
		return nil, nil // nobody is going to type a body: send an empty one
	default:
		return readBody(stdin, "stdin")
	}
}

// readBody reads all of r, up to maxBody bytes.
func readBody(r io.Reader, name string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("read request body from %s: %w", name, err)
	}
	if len(b) > maxBody {
		return nil, fmt.Errorf("request body from %s is larger than the limit of %d bytes", name, maxBody)
	}
	return b, nil
}

// isTerminal reports whether r is a terminal (or another character
// device).
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// headerFlag collects repeated --header K=V flags.
type headerFlag struct{ m map[string]string }

// String implements flag.Value.
func (h *headerFlag) String() string {
	if h == nil || len(h.m) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(h.m)) {
		parts = append(parts, k+"="+h.m[k])
	}
	return strings.Join(parts, ",")
}

// Set implements flag.Value.
func (h *headerFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return errors.New("want KEY=VALUE")
	}
	if strings.ContainsAny(k, " \t\r\n:") {
		return fmt.Errorf("header name %q has a space, a colon or a line break", k)
	}
	if strings.ContainsAny(v, "\r\n") {
		return fmt.Errorf("header %s has a line break in its value", k)
	}
	if h.m == nil {
		h.m = make(map[string]string)
	}
	h.m[k] = v
	return nil
}
