package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// TestDLQ runs 'rsvp dlq' against an engine directory holding dead
// letters, one command after another as an operator would.
func TestDLQ(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	engine := "embedded:" + dir
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()

	b, err := rsvpnats.Embedded(dir, rsvpnats.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var ids []string
	for i, reason := range []string{"failed", "expired", "failed"} {
		id := "req-" + string(rune('a'+i))
		ids = append(ids, id)
		m := &backend.Message{ID: id, CorrelationID: id, Queue: "thumbs", ReplyTo: b.ReplyAddress("someone", id),
			Body: []byte("body " + id), Headers: map[string]string{"k": "v"}, Attempt: 3, CreatedAt: now}
		at := now
		if i == 0 {
			at = now.Add(-2 * time.Hour)
		}
		if err := b.DeadLetter(ctx, &backend.DeadLetter{Message: m, Reason: reason, LastError: "boom " + id, At: at}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	r := run(t, nil, "dlq", "ls", "thumbs", "--engine", engine)
	r.want(t, 0)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "KEY AT REASON ATTEMPT ID ERROR" ||
		!strings.Contains(lines[2], "expired") || !strings.Contains(lines[2], "req-b") || !strings.Contains(lines[2], "boom req-b") {
		t.Fatalf("dlq ls:\n%s", r.stdout)
	}
	var keys []string
	for _, l := range lines[1:] {
		keys = append(keys, strings.Fields(l)[0])
	}

	list := func(args ...string) []deadLetterEntryJSON {
		t.Helper()
		r := run(t, nil, append([]string{"dlq", "ls", "thumbs", "--engine", engine, "--output", "json"}, args...)...)
		r.want(t, 0)
		var out []deadLetterEntryJSON
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, r.stdout)
		}
		return out
	}
	if got := list("--reason", "failed"); len(got) != 2 || got[0].ID != "req-a" || got[1].ID != "req-c" || got[1].Key != keys[2] {
		t.Fatalf("--reason failed: %+v", got)
	}
	if got := list("--since", "1h"); len(got) != 2 || got[0].ID != "req-b" {
		t.Fatalf("--since 1h: %+v", got)
	}
	if got := list("--until", now.Add(-time.Hour).UTC().Format(time.RFC3339)); len(got) != 1 || got[0].ID != "req-a" {
		t.Fatalf("--until: %+v", got)
	}

	r = run(t, nil, "dlq", "show", "thumbs", keys[1], "--engine", engine)
	r.want(t, 0)
	for _, s := range []string{"req-b", "expired", "boom req-b", "body req-b", "k: v"} {
		if !strings.Contains(r.stdout, s) {
			t.Fatalf("show lacks %q:\n%s", s, r.stdout)
		}
	}
	run(t, nil, "dlq", "show", "thumbs", "999", "--engine", engine).want(t, 1, "no dead letter 999 on queue thumbs")

	r = run(t, nil, "dlq", "replay", "thumbs", keys[0], "--engine", engine)
	r.want(t, 0)
	if r.stdout != "req-a\n" {
		t.Fatalf("replay printed %q, want the request's own correlation id", r.stdout)
	}
	run(t, nil, "dlq", "replay", "thumbs", keys[0], "--engine", engine).want(t, 1, "no dead letter "+keys[0]+" on queue thumbs")

	r = run(t, nil, "dlq", "purge", "thumbs", "--all", "--reason", "expired", "--engine", engine)
	r.want(t, 0)
	if r.stdout != "purged 1 dead letters\n" {
		t.Fatalf("purge --all: %q", r.stdout)
	}
	run(t, nil, "dlq", "purge", "thumbs", keys[2], "--engine", engine).want(t, 0)
	run(t, nil, "dlq", "purge", "thumbs", keys[2], "--engine", engine).want(t, 1, "no dead letter "+keys[2]+" on queue thumbs")
	if got := list(); len(got) != 0 {
		t.Fatalf("left after purge: %+v", got)
	}

	// The replayed request waits on its queue, under its own correlation id.
	b, err = rsvpnats.Embedded(dir, rsvpnats.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c, err := b.Consume(ctx, "thumbs", backend.ConsumeParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m := d.Message(); m.CorrelationID != "req-a" || m.ID == "req-a" || string(m.Body) != "body req-a" || m.Attempt != 1 {
		t.Fatalf("replayed message %+v, want correlation id req-a and a new id", m)
	}
}

func TestDLQUsage(t *testing.T) {
	t.Parallel()
	engine := "embedded:" + t.TempDir()
	for _, args := range [][]string{
		{"dlq"},
		{"dlq", "frob", "q"},
		{"dlq", "ls"},
		{"dlq", "ls", "q", "--since", "yesterday"},
		{"dlq", "ls", "q", "--output", "yaml"},
		{"dlq", "ls", "q", "--all"},
		{"dlq", "show", "q"},
		{"dlq", "show", "q", "1", "--reason", "failed"},
		{"dlq", "replay", "q"},
		{"dlq", "replay", "q", "1", "--all"},
		{"dlq", "replay", "q", "1", "--reason", "failed"},
		{"dlq", "purge", "q", "1", "2"},
		{"dlq", "purge", "q", "--all", "--output", "json"},
	} {
		r := run(t, nil, append(args, "--engine", engine)...)
		if r.code != 2 || !strings.Contains(r.stderr, "rsvp help dlq") {
			t.Errorf("%v: exit %d, stderr %q; want 2 and usage", args, r.code, r.stderr)
		}
	}
	r := run(t, nil, "help", "dlq")
	r.want(t, 0)
	if !strings.Contains(r.stdout, "rsvp dlq replay QUEUE KEY|--all") {
		t.Fatalf("help dlq:\n%s", r.stdout)
	}
}

// TestDLQShowAttempts fails a request three times on an engine directory,
// then shows its dead letter with every attempt's error, in order.
func TestDLQShowAttempts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	engine := "embedded:" + dir
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()

	b, err := rsvpnats.Embedded(dir, rsvpnats.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := rsvp.New(ctx, b, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Handle("flaky", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if m.Attempt == 3 {
			return nil, &rsvp.RemoteError{Code: "teapot", Message: fmt.Sprintf("boom %d", m.Attempt)}
		}
		return nil, fmt.Errorf("boom %d", m.Attempt)
	}), rsvp.HandleOptions{MaxAttempts: 3, Backoff: func(int) time.Duration { return 10 * time.Millisecond }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Request(ctx, "flaky", &rsvp.Message{ID: "req-f", Body: []byte("x")}); err == nil {
		t.Fatal("request succeeded")
	}
	// The final attempt is recorded just after the failure reply.
	for {
		as, err := c.Attempts(ctx, "req-f")
		if err != nil {
			t.Fatal(err)
		}
		if len(as) == 3 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("attempts: %+v", as)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	r := run(t, nil, "dlq", "ls", "flaky", "--engine", engine, "--output", "json")
	r.want(t, 0)
	var ls []deadLetterEntryJSON
	if err := json.Unmarshal([]byte(r.stdout), &ls); err != nil || len(ls) != 1 {
		t.Fatalf("dlq ls: %v\n%s", err, r.stdout)
	}
	if ls[0].Attempts != nil {
		t.Errorf("dlq ls lists attempts: %+v", ls[0].Attempts)
	}
	key := ls[0].Key

	r = run(t, nil, "dlq", "show", "flaky", key, "--engine", engine)
	r.want(t, 0)
	var history []string
	for l := range strings.Lines(r.stdout) {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "HISTORY" {
			history = append(history, strings.Join(f[1:], " "))
		}
	}
	wantHistory := []string{"attempt 1 * failed boom 1", "attempt 2 * failed boom 2", "attempt 3 * teapot boom 3 (final)"}
	if len(history) != len(wantHistory) {
		t.Fatalf("show history %q, want %q:\n%s", history, wantHistory, r.stdout)
	}
	for i, h := range history {
		f := strings.Fields(h)
		f[2] = "*" // the time
		if got := strings.Join(f, " "); got != wantHistory[i] {
			t.Errorf("history line %d: %q, want %q", i, got, wantHistory[i])
		}
	}

	r = run(t, nil, "dlq", "show", "flaky", key, "--engine", engine, "--output", "json")
	r.want(t, 0)
	var v deadLetterEntryJSON
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if len(v.Attempts) != 3 {
		t.Fatalf("show --output json attempts: %+v", v.Attempts)
	}
	for i, a := range v.Attempts {
		wantCode := "failed"
		if i == 2 {
			wantCode = "teapot"
		}
		if a.Attempt != i+1 || a.Error != fmt.Sprintf("boom %d", i+1) || a.Code != wantCode || a.Final != (i == 2) || a.At.IsZero() ||
			i > 0 && a.At.Before(v.Attempts[i-1].At) {
			t.Errorf("attempt %d: %+v", i, a)
		}
	}
	// 'rsvp requests get' shows the same attempts of the untracked request.
	r = run(t, nil, "requests", "get", "req-f", "--engine", engine, "--output", "json")
	r.want(t, 0)
	var req requestJSON
	if err := json.Unmarshal([]byte(r.stdout), &req); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if req.Tracked || len(req.Attempts) != 3 {
		t.Fatalf("requests get: tracked %v, attempts %+v", req.Tracked, req.Attempts)
	}
	for i, a := range req.Attempts {
		want := "retried"
		if i == 2 {
			want = "failed"
		}
		if a.Attempt != i+1 || a.Outcome != want || !strings.Contains(a.Error, fmt.Sprintf("boom %d", i+1)) || a.EndedAt.IsZero() {
			t.Errorf("requests get attempt %d: %+v", i, a)
		}
	}
}
