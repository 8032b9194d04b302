package rsvp_test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// TestReplayAfterFix fails a request for good, fixes the handler, replays
// the dead letter and gets the new request's reply.
func TestReplayAfterFix(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 20*time.Second)
	const q = "dlqreplay"
	fixed, runs := fixLater(t, c, q)
	_, err := c.Request(ctx, q, &rsvp.Message{Body: []byte("x"), Type: "t.v1", Headers: map[string]string{"k": "v"}})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || re.Code != rsvp.CodeFailed {
		t.Fatalf("first request: %v", err)
	}
	dls, err := c.DeadLetters(ctx, rsvp.DeadLetterQuery{Queue: q})
	if err != nil || len(dls) != 1 || dls[0].Key == "" || dls[0].Reason != rsvp.CodeFailed {
		t.Fatalf("dead letters %v, %v", dls, err)
	}
	old := dls[0].Message

	fixed.Store(true)
	ticket, err := c.Replay(ctx, q, dls[0].Key)
	if err != nil {
		t.Fatal(err)
	}
	if ticket.CorrelationID != old.CorrelationID || ticket.ID == old.ID || ticket.Queue != q {
		t.Fatalf("replay ticket %+v, want the correlation id %s and a new id", ticket, old.CorrelationID)
	}
	// The original correlation id gets the replay's outcome.
	r, err := c.Await(ctx, old.CorrelationID)
	if err != nil || string(r.Body) != "fixed:x" {
		t.Fatalf("replayed reply %v, %v", r, err)
	}
	if dls := deadLetters(t, c, q); len(dls) != 0 {
		t.Fatalf("%d dead letters left after replay", len(dls))
	}
	// Its history goes on: the failure, the replay.
	evs, err := c.Backend().Events(ctx, backend.EventQuery{CorrelationID: old.CorrelationID})
	var types []string
	for _, ev := range evs {
		types = append(types, ev.Type)
	}
	if err != nil || len(types) != 2 || types[0] != "failed" || types[1] != backend.EventReplayed {
		t.Fatalf("events %v, %v; want failed, replayed", types, err)
	}
	if _, err := c.Replay(ctx, q, dls[0].Key); !errors.Is(err, rsvp.ErrNoDeadLetter) {
		t.Fatalf("replay again: %v, want ErrNoDeadLetter", err)
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2", n)
	}
}

// fixLater handles q with a handler that fails for good until fixed is
// set, and then answers "fixed:" and the request's body, on a first attempt
// only; runs counts its runs.
func fixLater(t *testing.T, c *testClient, q string) (fixed *atomic.Bool, runs *atomic.Int32) {
	fixed, runs = new(atomic.Bool), new(atomic.Int32)
	handle(t, c, q, rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		runs.Add(1)
		if !fixed.Load() {
			return nil, rsvp.Permanent(errors.New("broken"))
		}
		if m.Attempt != 1 {
			return nil, rsvp.Permanent(errors.New("attempt count not started again"))
		}
		return &rsvp.Reply{Body: append([]byte("fixed:"), m.Body...)}, nil
	})
	return fixed, runs
}

// TestConcurrentReplays: of two replays of one dead letter, the one that
// read the failure reply before the other's run replied does not take that
// new reply back (which would leave the request with no reply, its new
// run deduplicated): it finds the dead letter replayed.
func TestConcurrentReplays(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 20*time.Second)
	const q = "dlq-concurrent"
	fixed, runs := fixLater(t, c, q)
	failed, err := c.Request(ctx, q, &rsvp.Message{})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || failed == nil {
		t.Fatalf("first request: %v, %v", failed, err)
	}
	id := failed.CorrelationID
	// The second replayer reads the dead letter and the failure now, and
	// acts on them after the first replay is done.
	dls := deadLetters(t, c, q)
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dls))
	}
	failure, err := c.be.GetReply(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	late, err := rsvp.New(ctx, staleRead{Backend: c.be, dls: dls, reply: failure}, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeWithin(t, "close the late replayer", late.Close) })

	fixed.Store(true)
	first, err := c.Replay(ctx, q, dls[0].Key)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := c.Await(ctx, id); err != nil || string(r.Body) != "fixed:" {
		t.Fatalf("reply of the first replay: %v, %v", r, err)
	}
	second, err := late.Replay(ctx, q, dls[0].Key)
	if err != nil || second != first {
		t.Fatalf("late replay: %+v, %v; want the first replay's ticket %+v", second, err, first)
	}
	if r, err := c.be.GetReply(ctx, id); err != nil || string(r.Body) != "fixed:" {
		t.Fatalf("reply after the late replay: %+v, %v; want the first replay's", r, err)
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2 (the failure, one replay)", n)
	}
	if dls := deadLetters(t, c, q); len(dls) != 0 {
		t.Fatalf("%d dead letters left", len(dls))
	}
}

// staleRead is an engine as a replayer saw it a moment ago: dls are its
// dead letters and reply the stored reply. Writes go to the engine.
type staleRead struct {
	*rsvpnats.Backend
	dls   []*backend.DeadLetter
	reply *backend.Reply
}

func (s staleRead) DeadLetters(context.Context, backend.DeadLetterQuery) ([]*backend.DeadLetter, error) {
	return s.dls, nil
}

func (s staleRead) GetReply(context.Context, string) (*backend.Reply, error) { return s.reply, nil }

// TestReplayRightAfterFailure: a replay made between a responder's storing
// the failure reply and its recording the final event still comes after
// that final event in the request's history; the responder's late event
// is not recorded twice.
func TestReplayRightAfterFailure(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 10*time.Second)
	const q = "dlqrace"
	// Where the responder is: dead letter and failure reply stored, final event not yet.
	m := storeDeadLetter(t, c, q)
	id := m.ID
	if err := c.be.PutReply(ctx, m.ReplyTo, &backend.Reply{CorrelationID: id, Status: backend.StatusFailed,
		ErrorCode: rsvp.CodeFailed, ErrorMessage: "boom"}); err != nil {
		t.Fatal(err)
	}
	dls := deadLetters(t, c, q)
	if _, err := c.Replay(ctx, q, dls[0].Key); err != nil {
		t.Fatal(err)
	}
	// The responder's own final event, late.
	late := &backend.Event{CorrelationID: id, Type: string(backend.StatusFailed), At: time.Now(),
		Data: []byte(`{"attempt":2,"code":"failed","message":"boom"}`), DedupeKey: id + ":final"}
	if err := c.be.AppendEvent(ctx, late); err != nil {
		t.Fatal(err)
	}
	evs := eventsOf(t, c, id)
	var types []string
	for _, ev := range evs {
		types = append(types, ev.Type)
	}
	if len(types) != 2 || types[0] != "failed" || types[1] != backend.EventReplayed {
		t.Fatalf("events %v; want failed, replayed", types)
	}
	as, err := c.Attempts(ctx, id)
	if err != nil || len(as) != 1 || as[0].Attempt != 2 || as[0].Code != rsvp.CodeFailed || as[0].Error != "boom" || !as[0].Final {
		t.Fatalf("attempts %+v, %v; want the dead-lettered attempt 2", as, err)
	}
}

// TestReplayRecordsNoSecondFinalEvent: a replay records the final event
// only when the history lacks it, also when other events follow it (a
// webhook's) or its copy has no dedupe key (a foreign responder's), and not
// after the request was replayed already.
func TestReplayRecordsNoSecondFinalEvent(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 10*time.Second)
	const q = "dlqonce"
	m := storeDeadLetter(t, c, q)
	id := m.ID
	for _, typ := range []string{string(backend.StatusFailed), backend.EventWebhook} {
		if err := c.be.AppendEvent(ctx, &backend.Event{CorrelationID: id, Type: typ, At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Replay(ctx, q, deadLetters(t, c, q)[0].Key); err != nil {
		t.Fatal(err)
	}
	// The request dead-lettered once more (a copy: the same one would be a
	// duplicate), as if deleting the first had failed.
	again := *m
	again.Attempt = 3
	if err := c.be.DeadLetter(ctx, &backend.DeadLetter{Message: &again, Reason: rsvp.CodeFailed, LastError: "boom", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Replay(ctx, q, deadLetters(t, c, q)[0].Key); err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, ev := range eventsOf(t, c, id) {
		types = append(types, ev.Type)
	}
	if want := []string{"failed", backend.EventWebhook, backend.EventReplayed, backend.EventReplayed}; !slices.Equal(types, want) {
		t.Fatalf("events %v; want %v", types, want)
	}
}

// storeDeadLetter stores a dead letter of queue, attempt 2 failed with
// "boom", with no reply or event, and returns its request.
func storeDeadLetter(t *testing.T, c *testClient, queue string) *rsvp.Message {
	t.Helper()
	id := rsvp.NewID()
	m := &rsvp.Message{ID: id, CorrelationID: id, Queue: queue, ReplyTo: c.be.ReplyAddress("elsewhere", id), Body: []byte("x"),
		Attempt: 2, CreatedAt: time.Now()}
	dl := &backend.DeadLetter{Message: m, Reason: rsvp.CodeFailed, LastError: "boom", At: time.Now()}
	if err := c.be.DeadLetter(ctxWithin(t, 5*time.Second), dl); err != nil {
		t.Fatal(err)
	}
	return m
}

// deadLetter stores a dead letter of queue with reason, as a responder
// would.
func deadLetter(t *testing.T, c *testClient, queue, reason string, body string) {
	t.Helper()
	id := rsvp.NewID()
	m := &rsvp.Message{ID: id, CorrelationID: id, Queue: queue, ReplyTo: c.be.ReplyAddress("elsewhere", id), Body: []byte(body), Attempt: 3, CreatedAt: time.Now()}
	if err := c.be.DeadLetter(ctxWithin(t, 5*time.Second), &backend.DeadLetter{Message: m, Reason: reason, LastError: "boom", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

func TestReplayAllAndPurge(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 20*time.Second)
	const q = "dlqall"
	for _, reason := range []string{"failed", "expired", "failed", "expired", "failed"} {
		deadLetter(t, c, q, reason, reason)
	}
	ran := make(chan string, 10)
	handle(t, c, q, rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		ran <- string(m.Body)
		return &rsvp.Reply{}, nil
	})
	n, err := c.ReplayAll(ctx, rsvp.DeadLetterQuery{Queue: q, Reason: "expired"})
	if err != nil || n != 2 {
		t.Fatalf("ReplayAll: %d, %v; want 2", n, err)
	}
	for range 2 {
		select {
		case body := <-ran:
			if body != "expired" {
				t.Fatalf("replayed %q", body)
			}
		case <-ctx.Done():
			t.Fatal("replayed requests did not run")
		}
	}
	if err := c.PurgeOne(ctx, q, "424242"); !errors.Is(err, rsvp.ErrNoDeadLetter) {
		t.Fatalf("purge of an unknown key: %v", err)
	}
	dls := deadLetters(t, c, q)
	if len(dls) != 3 {
		t.Fatalf("%d dead letters left, want 3", len(dls))
	}
	if err := c.PurgeOne(ctx, q, dls[0].Key); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Purge(ctx, rsvp.DeadLetterQuery{Queue: q}); err != nil || n != 2 {
		t.Fatalf("Purge: %d, %v; want 2", n, err)
	}
	if n, err := c.Purge(ctx, rsvp.DeadLetterQuery{Queue: q}); err != nil || n != 0 {
		t.Fatalf("Purge again: %d, %v; want 0", n, err)
	}
	if _, err := c.DeadLetters(ctx, rsvp.DeadLetterQuery{Queue: "bad queue!"}); !errors.Is(err, rsvp.ErrInvalid) {
		t.Fatalf("bad queue name: %v", err)
	}
	select {
	case body := <-ran:
		t.Fatalf("purged request %q ran", body)
	default:
	}
}

// TestReplayOfSucceededRequest: a dead letter whose request has succeeded
// since (a replay that went through before its dead letter was deleted)
// is only deleted: nothing is sent again, the success stands.
func TestReplayOfSucceededRequest(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 10*time.Second)
	const q = "dlqdone"
	deadLetter(t, c, q, "failed", "x")
	dl := deadLetters(t, c, q)[0]
	ok := &rsvp.Reply{CorrelationID: dl.Message.CorrelationID, Status: backend.StatusSucceeded, Body: []byte("done")}
	if err := c.be.PutReply(ctx, dl.Message.ReplyTo, ok); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Replay(ctx, q, dl.Key); err != nil {
		t.Fatal(err)
	}
	if dls := deadLetters(t, c, q); len(dls) != 0 {
		t.Fatalf("dead letters left: %d", len(dls))
	}
	if r, err := c.Await(ctx, dl.Message.CorrelationID); err != nil || string(r.Body) != "done" {
		t.Fatalf("Await: %+v, %v; want the success", r, err)
	}
	nothingQueued(t, c, q) // the replay sent nothing again
}

// TestReplayNotExpiredByOriginalDeadline: the expiry task of the original
// request (sent with a deadline) does not expire its replay, which has no
// deadline; and a reader of the reply session sees the replay's outcome
// after the original failure.
func TestReplayNotExpiredByOriginalDeadline(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 30*time.Second)
	const q = "replaydeadline"
	var fixed atomic.Bool
	release := make(chan struct{})
	handle(t, c, q, rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if !fixed.Load() {
			return nil, rsvp.Permanent(errors.New("broken"))
		}
		<-release // still running when the original deadline passes
		return &rsvp.Reply{Body: []byte("ok")}, nil
	})
	deadline := time.Now().Add(time.Second)
	tk, err := c.Send(ctx, q, &rsvp.Message{Body: []byte("x"), Deadline: deadline, ReplySession: "rs1"})
	if err != nil {
		t.Fatal(err)
	}
	failed, err := c.SessionReplies(ctx, "rs1", 0)
	if err != nil || len(failed) != 1 || failed[0].Reply.Status != backend.StatusFailed {
		t.Fatalf("first outcome listed: %+v, %v", failed, err)
	}
	dls := deadLetters(t, c, q)
	fixed.Store(true)
	if _, err := c.Replay(ctx, q, dls[0].Key); err != nil {
		t.Fatal(err)
	}
	// Past the original deadline, its expiry task has run; the replay goes on.
	waitFor(t, func() bool { return time.Now().After(deadline.Add(500 * time.Millisecond)) })
	close(release)
	if r, err := c.Await(ctx, tk.CorrelationID); err != nil || string(r.Body) != "ok" {
		t.Fatalf("replay outcome: %+v, %v; want ok", r, err)
	}
	more, err := c.SessionReplies(ctx, "rs1", failed[0].Seq)
	if err != nil || len(more) != 1 || string(more[0].Reply.Body) != "ok" {
		t.Fatalf("replay outcome in the reply session: %+v, %v", more, err)
	}
}

// TestCancelOfReplayedRequest: cancelling a replayed request that no
// responder took yet ends its event log (and its channel's) with a
// cancelled event after the replayed one. The replay's final event is its
// own (the replay has an id of its own), not a duplicate of the first
// run's, and a responder that comes later records no second one.
func TestCancelOfReplayedRequest(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 20*time.Second)
	const q = "dlq-cancel"
	var runs atomic.Int32
	broken := handle(t, c, q, rsvp.HandleOptions{}, func(context.Context, *rsvp.Message) (*rsvp.Reply, error) {
		runs.Add(1)
		return nil, rsvp.Permanent(errors.New("broken"))
	})
	failed, err := c.Request(ctx, q, &rsvp.Message{Track: true, Channel: "dlq-cancel-ch"})
	var re *rsvp.RemoteError
	if !errors.As(err, &re) || failed == nil {
		t.Fatalf("first request: %v, %v", failed, err)
	}
	id := failed.CorrelationID
	waitForFinalEvent(t, c, id)
	stop(t, broken)

	if _, err := c.Replay(ctx, q, deadLetters(t, c, q)[0].Key); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Cancel(ctx, id); err != nil || r.Status != backend.StatusCancelled {
		t.Fatalf("Cancel: %+v, %v; want the cancelled reply", r, err)
	}
	want := []string{backend.EventRunning, string(backend.StatusFailed), backend.EventReplayed, string(backend.StatusCancelled)}
	if types := eventTypes(eventsOf(t, c, id)); !slices.Equal(types, want) {
		t.Fatalf("events %v; want %v", types, want)
	}
	if types := eventTypes(events(t, c, backend.EventQuery{Channel: "dlq-cancel-ch"})); !slices.Equal(types, want) {
		t.Fatalf("channel events %v; want %v", types, want)
	}

	// A responder that takes the replay now does not run it, and records
	// no second final event.
	handle(t, c, q, rsvp.HandleOptions{}, func(context.Context, *rsvp.Message) (*rsvp.Reply, error) {
		runs.Add(1)
		return nil, nil
	})
	if _, err := c.Request(ctx, q, &rsvp.Message{Body: []byte("marker")}); err != nil {
		t.Fatal(err)
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2 (the first run, the marker)", n)
	}
	if types := eventTypes(eventsOf(t, c, id)); !slices.Equal(types, want) {
		t.Fatalf("events after the responder came %v; want %v", types, want)
	}
}

// TestReplayFailsAgain: a replay that fails for good again is dead-lettered
// again, and its failure is the request's outcome.
func TestReplayFailsAgain(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 20*time.Second)
	const q = "dlqfailsagain"
	_, runs := fixLater(t, c, q)
	if _, err := c.Request(ctx, q, &rsvp.Message{Body: []byte("x")}); err == nil {
		t.Fatal("first request succeeded")
	}
	dls := deadLetters(t, c, q)
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dls))
	}
	if _, err := c.Replay(ctx, q, dls[0].Key); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		now := deadLetters(t, c, q)
		if runs.Load() == 2 && len(now) == 1 && now[0].Key != dls[0].Key {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replay that failed again: %d runs, dead letters %v; want 2 runs, 1 new dead letter", runs.Load(), now)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
	}
	var re *rsvp.RemoteError
	if _, err := c.Await(ctx, dls[0].Message.CorrelationID); !errors.As(err, &re) || re.Code != rsvp.CodeFailed {
		t.Fatalf("Await after the replay failed: %v", err)
	}
}
