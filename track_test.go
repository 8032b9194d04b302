package rsvp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// events returns the stored events q selects.
func events(t *testing.T, c *testClient, q backend.EventQuery) []*backend.Event {
	t.Helper()
	evs, err := c.be.Events(ctxWithin(t, 5*time.Second), q)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func eventsOf(t *testing.T, c *testClient, corr string) []*backend.Event {
	t.Helper()
	return events(t, c, backend.EventQuery{CorrelationID: corr})
}

// eventTypes lists the types of evs, for failure messages and comparisons.
func eventTypes(evs []*backend.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Type
	}
	return out
}

// eventData decodes an event's JSON details.
func eventData(t *testing.T, ev *backend.Event) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(ev.Data, &m); err != nil {
		t.Fatalf("%s event data %q: %v", ev.Type, ev.Data, err)
	}
	return m
}

// waitForFinalEvent waits until corr's event log ends with a final event
// (the responder records it after storing the reply, so after Request
// returns) and returns the log.
func waitForFinalEvent(t *testing.T, c *testClient, corr string) []*backend.Event {
	t.Helper()
	var evs []*backend.Event
	waitFor(t, func() bool {
		evs = eventsOf(t, c, corr)
		if len(evs) == 0 {
			return false
		}
		switch backend.Status(evs[len(evs)-1].Type) {
		case backend.StatusSucceeded, backend.StatusFailed, backend.StatusExpired, backend.StatusCancelled:
			return true
		}
		return false
	})
	return evs
}

// stop stops r, which waits for its running handle calls, including the
// events and acknowledgements they record after the reply is stored.
func stop(t *testing.T, r *rsvp.Responder) {
	t.Helper()
	if err := r.Stop(ctxWithin(t, 10*time.Second)); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// receive returns the next value of ch, failing the test after 10s.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("no %s within 10s", what)
		panic("unreachable")
	}
}

func checkAttempt(t *testing.T, ev *backend.Event, typ string, attempt int) map[string]any {
	t.Helper()
	if ev.Type != typ {
		t.Fatalf("event %d is %q, want %q", ev.Seq, ev.Type, typ)
	}
	d := eventData(t, ev)
	if d["attempt"] != float64(attempt) {
		t.Fatalf("%s event data %s, want attempt %d", typ, ev.Data, attempt)
	}
	return d
}

func TestTrackedSuccessEvents(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	type step struct {
		Done int `json:"done"`
		Of   int `json:"of"`
	}
	progressErr := make(chan error, 1)
	handle(t, c, "tracked", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		progressErr <- rsvp.Progress(ctx, step{Done: 3, Of: 10})
		return &rsvp.Reply{Body: []byte("ok")}, nil
	})
	msg := &rsvp.Message{CorrelationID: "job-1", Track: true, Channel: "user-42"}
	if r, err := c.Request(ctxWithin(t, 10*time.Second), "tracked", msg); err != nil || string(r.Body) != "ok" {
		t.Fatalf("reply %v, %v", r, err)
	}
	if err := receive(t, progressErr, "progress result"); err != nil {
		t.Fatalf("Progress in a tracked handler: %v", err)
	}
	evs := waitForFinalEvent(t, c, "job-1")
	if got, want := eventTypes(evs), []string{backend.EventRunning, backend.EventProgress, string(backend.StatusSucceeded)}; !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	checkAttempt(t, evs[0], backend.EventRunning, 1)
	if string(evs[1].Data) != `{"done":3,"of":10}` {
		t.Fatalf("progress data %s, want the JSON of the value", evs[1].Data)
	}
	for i, ev := range evs {
		if ev.CorrelationID != "job-1" || ev.Channel != "user-42" || ev.At.IsZero() {
			t.Errorf("event %d (%s): correlation id %q, channel %q, at %v", i, ev.Type, ev.CorrelationID, ev.Channel, ev.At)
		}
		if i > 0 && ev.Seq <= evs[i-1].Seq {
			t.Errorf("event %d (%s) has seq %d after %d", i, ev.Type, ev.Seq, evs[i-1].Seq)
		}
	}
	// The channel lists the same events.
	byChannel := events(t, c, backend.EventQuery{Channel: "user-42"})
	if len(byChannel) != len(evs) {
		t.Fatalf("channel lists %v, correlation id %v", eventTypes(byChannel), eventTypes(evs))
	}
	for i := range evs {
		a, b := evs[i], byChannel[i]
		if a.Type != b.Type || a.CorrelationID != b.CorrelationID || string(a.Data) != string(b.Data) || (i > 0 && b.Seq <= byChannel[i-1].Seq) {
			t.Errorf("event %d: by correlation id %+v, by channel %+v", i, a, b)
		}
	}
}

func TestTrackedRetryEvents(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	handle(t, c, "trackflaky", rsvp.HandleOptions{Backoff: fastRetry}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if m.Attempt == 1 {
			return nil, errors.New("flaky disk")
		}
		return nil, nil
	})
	msg := &rsvp.Message{CorrelationID: "job-2", Track: true, Channel: "ops"}
	if _, err := c.Request(ctxWithin(t, 10*time.Second), "trackflaky", msg); err != nil {
		t.Fatal(err)
	}
	evs := waitForFinalEvent(t, c, "job-2")
	want := []string{backend.EventRunning, backend.EventRetrying, backend.EventRunning, string(backend.StatusSucceeded)}
	if got := eventTypes(evs); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	checkAttempt(t, evs[0], backend.EventRunning, 1)
	retry := checkAttempt(t, evs[1], backend.EventRetrying, 1)
	if retry["error"] != "flaky disk" {
		t.Errorf("retrying event data %s, want the error text", evs[1].Data)
	}
	s, _ := retry["retry_at"].(string)
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || at.Before(evs[0].At) || at.After(evs[1].At.Add(time.Second)) {
		t.Errorf("retry_at %q (%v): want a time just after the failure at %v", s, err, evs[1].At)
	}
	checkAttempt(t, evs[2], backend.EventRunning, 2)
	for i, ev := range evs {
		if ev.Channel != "ops" {
			t.Errorf("event %d (%s) has channel %q", i, ev.Type, ev.Channel)
		}
	}
}

func TestTrackOffRecordsNoEvents(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	r := handle(t, c, "plain", rsvp.HandleOptions{Backoff: fastRetry}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if m.Attempt == 1 {
			return nil, errors.New("once")
		}
		return nil, nil
	})
	// A channel without Track does not track either.
	msg := &rsvp.Message{CorrelationID: "job-3", Channel: "quiet"}
	if _, err := c.Request(ctxWithin(t, 10*time.Second), "plain", msg); err != nil {
		t.Fatal(err)
	}
	stop(t, r)
	// Only its failed attempt, the history a dead letter would show
	// (Client.Attempts): no running, no final succeeded.
	if evs := eventsOf(t, c, "job-3"); len(evs) != 1 || evs[0].Type != backend.EventRetrying {
		t.Fatalf("untracked request recorded %v, want [retrying]", eventTypes(evs))
	}
	if evs := events(t, c, backend.EventQuery{Channel: "quiet"}); len(evs) != 0 {
		t.Fatalf("untracked request's channel lists %v", eventTypes(evs))
	}
}

// TestCancelBeforeStart: a request cancelled before it started never runs,
// and its log has one cancelled event, also when its correlation id is its
// own (not its id): Cancel knows only the correlation id, the responder
// that settles it the id as well.
func TestCancelBeforeStart(t *testing.T) {
	t.Parallel()
	for _, own := range []bool{false, true} {
		t.Run(fmt.Sprint("own correlation id ", own), func(t *testing.T) {
			t.Parallel()
			cancelBeforeStart(t, own)
		})
	}
}

func cancelBeforeStart(t *testing.T, ownCorrelationID bool) {
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 10*time.Second)
	msg := &rsvp.Message{Track: true, Channel: "c4", Body: []byte("doomed")}
	if ownCorrelationID {
		msg.CorrelationID = "order-17"
	}
	tk, err := c.Send(ctx, "later", msg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Cancel(ctx, tk.CorrelationID)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != backend.StatusCancelled || r.ErrorCode != rsvp.CodeCancelled || r.CorrelationID != tk.CorrelationID {
		t.Fatalf("Cancel returned %+v, want the cancelled reply", r)
	}
	// Cancelling again changes nothing: the first reply stands.
	if again, err := c.Cancel(ctx, tk.CorrelationID); err != nil || again.Status != backend.StatusCancelled {
		t.Fatalf("second Cancel: %+v, %v", again, err)
	}

	var doomed, marker atomic.Int32
	handle(t, c, "later", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if string(m.Body) == "doomed" {
			doomed.Add(1)
		} else {
			marker.Add(1)
		}
		return nil, nil
	})
	// The queue is FIFO with one worker: once a later request is answered,
	// the cancelled one has been settled.
	if _, err := c.Request(ctx, "later", &rsvp.Message{Track: true, Body: []byte("marker")}); err != nil {
		t.Fatal(err)
	}
	if n, m := doomed.Load(), marker.Load(); n != 0 || m != 1 {
		t.Fatalf("handler ran %d times for the cancelled request and %d for the marker; want 0 and 1", n, m)
	}
	got, err := c.Await(ctx, tk.CorrelationID)
	if !errors.Is(err, rsvp.ErrCancelled) || got == nil || got.Status != backend.StatusCancelled {
		t.Fatalf("Await: %+v, %v; want the cancelled reply and ErrCancelled", got, err)
	}
	evs := eventsOf(t, c, tk.CorrelationID)
	if types := eventTypes(evs); !slices.Equal(types, []string{string(backend.StatusCancelled)}) {
		t.Fatalf("events %v, want exactly one cancelled event", types)
	}
	if d := eventData(t, evs[0]); d["code"] != rsvp.CodeCancelled {
		t.Errorf("cancelled event data %s", evs[0].Data)
	}
	if dls := deadLetters(t, c, "later"); len(dls) != 0 {
		t.Fatalf("a cancelled request was dead-lettered: %+v", dls[0])
	}
}

func TestCancelWhileRunning(t *testing.T) {
	t.Parallel()
	// With attempts left, the handler's error would be retried; on the last
	// attempt it would fail and be dead-lettered. Neither may happen.
	for _, maxAttempts := range []int{5, 1} {
		t.Run(fmt.Sprintf("MaxAttempts=%d", maxAttempts), func(t *testing.T) {
			t.Parallel()
			testCancelWhileRunning(t, rsvp.HandleOptions{MaxAttempts: maxAttempts, Backoff: fastRetry})
		})
	}
}

func testCancelWhileRunning(t *testing.T, opts rsvp.HandleOptions) {
	c := setup(t, rsvp.Config{RecheckInterval: 100 * time.Millisecond})
	// Another client, with its own inbox, cancels: the requester learns of
	// it by its recheck.
	other, err := rsvp.New(context.Background(), c.be, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := other.Close(context.Background()); err != nil {
			t.Errorf("close second client: %v", err)
		}
	})

	var calls atomic.Int32
	started := make(chan string, 1)
	causes := make(chan error, 1)
	r := handle(t, c, "busy", opts, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		calls.Add(1)
		started <- m.CorrelationID
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return nil, fmt.Errorf("gave up: %w", ctx.Err())
	})
	type result struct {
		r   *rsvp.Reply
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := c.Request(ctxWithin(t, 10*time.Second), "busy", &rsvp.Message{Track: true, Channel: "c5"})
		done <- result{r, err}
	}()
	corr := receive(t, started, "handler start")

	cancelled, err := other.Cancel(ctxWithin(t, 5*time.Second), corr)
	if err != nil || cancelled.Status != backend.StatusCancelled {
		t.Fatalf("Cancel: %+v, %v", cancelled, err)
	}
	if cause := receive(t, causes, "handler cancellation"); cause != rsvp.ErrCancelled {
		t.Fatalf("handler's context.Cause is %v, want ErrCancelled", cause)
	}
	res := receive(t, done, "Request result")
	if !errors.Is(res.err, rsvp.ErrCancelled) || res.r == nil || res.r.Status != backend.StatusCancelled {
		t.Fatalf("Request: %+v, %v; want the cancelled reply and ErrCancelled", res.r, res.err)
	}

	// Once the responder has settled the request, the handler's failure
	// has lost to the cancellation: no retry, no dead letter, and one final
	// event, the last.
	stop(t, r)
	evs := eventsOf(t, c, corr)
	types := eventTypes(evs)
	if len(evs) < 2 || types[0] != backend.EventRunning || types[len(types)-1] != string(backend.StatusCancelled) {
		t.Fatalf("events %v, want running first and cancelled last", types)
	}
	if n := slices.Index(types, string(backend.StatusCancelled)); n != len(types)-1 {
		t.Fatalf("events %v: more than one cancelled event, or events after it", types)
	}
	if slices.Contains(types, string(backend.StatusFailed)) || slices.Contains(types, backend.EventRetrying) {
		t.Fatalf("events %v: the cancelled handler's error was treated as a failure", types)
	}
	if final := evs[len(evs)-1]; final.Channel != "c5" {
		t.Errorf("cancelled event channel %q, want the request's", final.Channel)
	}
	if dls := deadLetters(t, c, "busy"); len(dls) != 0 {
		t.Fatalf("a cancelled request was dead-lettered: %+v", dls[0])
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
	if got, err := c.Await(ctxWithin(t, 5*time.Second), corr); !errors.Is(err, rsvp.ErrCancelled) || got.Status != backend.StatusCancelled {
		t.Fatalf("Await: %+v, %v", got, err)
	}
}

func TestCancelAfterSuccess(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	r := handle(t, c, "quick", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{Body: []byte("done")}, nil
	})
	ctx := ctxWithin(t, 10*time.Second)
	msg := &rsvp.Message{CorrelationID: "job-6", Track: true}
	if got, err := c.Request(ctx, "quick", msg); err != nil || string(got.Body) != "done" {
		t.Fatalf("reply %v, %v", got, err)
	}
	stop(t, r)
	got, err := c.Cancel(ctx, "job-6")
	if err != nil || got.Status != backend.StatusSucceeded || string(got.Body) != "done" {
		t.Fatalf("Cancel after success: %+v, %v; want the succeeded reply", got, err)
	}
	if got, err := c.Await(ctx, "job-6"); err != nil || got.Status != backend.StatusSucceeded || string(got.Body) != "done" {
		t.Fatalf("Await after a late Cancel: %+v, %v", got, err)
	}
	evs := eventsOf(t, c, "job-6")
	if types := eventTypes(evs); !slices.Equal(types, []string{backend.EventRunning, string(backend.StatusSucceeded)}) {
		t.Fatalf("events %v, want running, succeeded", types)
	}
}

func TestProgressOutsideTrackedHandler(t *testing.T) {
	t.Parallel()
	// Outside a handler it does nothing, whatever the value.
	if err := rsvp.Progress(context.Background(), 50); err != nil {
		t.Errorf("Progress outside a handler: %v", err)
	}
	if err := rsvp.Progress(context.Background(), make(chan int)); err != nil {
		t.Errorf("Progress of an unencodable value outside a handler: %v", err)
	}

	c := setup(t, rsvp.Config{})
	errs := make(chan error, 1)
	r := handle(t, c, "progress", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if m.Track {
			errs <- rsvp.Progress(ctx, make(chan int))
		} else {
			errs <- rsvp.Progress(ctx, 50)
		}
		return nil, nil
	})
	ctx := ctxWithin(t, 10*time.Second)

	// An untracked request: nil, and nothing recorded.
	if _, err := c.Request(ctx, "progress", &rsvp.Message{CorrelationID: "job-7a", Channel: "c7"}); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, errs, "untracked Progress result"); err != nil {
		t.Errorf("Progress for an untracked request: %v", err)
	}

	// A tracked request, but a value JSON cannot encode: an error, and no
	// progress event.
	if _, err := c.Request(ctx, "progress", &rsvp.Message{CorrelationID: "job-7b", Track: true}); err != nil {
		t.Fatal(err)
	}
	var unsupported *json.UnsupportedTypeError
	if err := receive(t, errs, "tracked Progress result"); !errors.As(err, &unsupported) {
		t.Errorf("Progress(chan): %v, want a JSON encoding error", err)
	}

	stop(t, r)
	if evs := eventsOf(t, c, "job-7a"); len(evs) != 0 {
		t.Errorf("untracked request recorded %v", eventTypes(evs))
	}
	if evs := events(t, c, backend.EventQuery{Channel: "c7"}); len(evs) != 0 {
		t.Errorf("untracked request's channel lists %v", eventTypes(evs))
	}
	if types := eventTypes(eventsOf(t, c, "job-7b")); !slices.Equal(types, []string{backend.EventRunning, string(backend.StatusSucceeded)}) {
		t.Errorf("events %v, want running, succeeded (no progress)", types)
	}
}

// TestCancelOnAbandon: a Request whose ctx ends first cancels its request;
// the running handler sees ErrCancelled.
func TestCancelOnAbandon(t *testing.T) {
	// Warnings (a watch or a cancellation that failed) explain a failure.
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	tc := setup(t, rsvp.Config{CancelOnAbandon: true, Logger: log})
	started, cause := make(chan struct{}), make(chan error, 1)
	handle(t, tc, "abandon", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		close(started)
		<-ctx.Done()
		cause <- context.Cause(ctx)
		return nil, ctx.Err()
	})
	ctx, cancel := context.WithCancel(ctxWithin(t, 20*time.Second))
	go func() {
		select {
		case <-started:
		case <-ctx.Done(): // never started: Request fails with the deadline
		}
		cancel()
	}()
	msg := &rsvp.Message{ID: rsvp.NewID(), Track: true, Body: []byte("x")}
	if _, err := tc.Request(ctx, "abandon", msg); !errors.Is(err, context.Canceled) {
		t.Fatalf("Request: %v, want context.Canceled", err)
	}
	select {
	case err := <-cause:
		if !errors.Is(err, rsvp.ErrCancelled) {
			t.Fatalf("handler saw %v, want ErrCancelled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler was not cancelled")
	}
	if _, err := tc.Await(ctxWithin(t, 5*time.Second), msg.ID); !errors.Is(err, rsvp.ErrCancelled) {
		t.Fatalf("Await: %v, want ErrCancelled", err)
	}
}

// noWatch is the engine with WatchReply failing, as when the engine does
// not confirm a subscription in time.
type noWatch struct{ backend.Backend }

func (noWatch) WatchReply(context.Context, string, func(*backend.Reply)) (backend.Subscription, error) {
	return nil, errors.New("watch refused by the test")
}

// TestCancelWithoutWatch: a responder that cannot watch a tracked request's
// reply still stops its handler when the request is cancelled: it looks
// for the cancellation instead.
func TestCancelWithoutWatch(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx := ctxWithin(t, 20*time.Second)
	responder, err := rsvp.New(ctx, noWatch{c.be}, rsvp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeWithin(t, "close responder", responder.Close) })
	started, cause := make(chan struct{}), make(chan error, 1)
	if _, err := responder.Handle("nowatch", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		close(started)
		<-ctx.Done()
		cause <- context.Cause(ctx)
		return nil, ctx.Err()
	}), rsvp.HandleOptions{}); err != nil {
		t.Fatal(err)
	}
	tk, err := c.Send(ctx, "nowatch", &rsvp.Message{Track: true, Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	receive(t, started, "handler start")
	if _, err := c.Cancel(ctx, tk.CorrelationID); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, cause, "handler cancellation"); got != rsvp.ErrCancelled {
		t.Fatalf("handler's context.Cause is %v, want ErrCancelled", got)
	}
}

// ackLost is the engine with Enqueue's acknowledgement lost to the
// caller's ctx: the request is stored, and the call ends with the ctx.
type ackLost struct {
	backend.Backend
	giveUp context.CancelFunc
}

func (a ackLost) Enqueue(ctx context.Context, m *backend.Message) error {
	if err := a.Backend.Enqueue(context.WithoutCancel(ctx), m); err != nil {
		return err
	}
	a.giveUp() // before the acknowledgement arrives
	<-ctx.Done()
	return fmt.Errorf("waiting for the acknowledgement: %w", ctx.Err())
}

// TestCancelOnAbandonDuringSend: a Request whose ctx ends while its
// request is being stored cancels it too: it may be stored all the same.
func TestCancelOnAbandonDuringSend(t *testing.T) {
	t.Parallel()
	c := setup(t, rsvp.Config{})
	ctx, giveUp := context.WithCancel(ctxWithin(t, 10*time.Second))
	requester, err := rsvp.New(ctx, ackLost{c.be, giveUp}, rsvp.Config{CancelOnAbandon: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeWithin(t, "close requester", requester.Close) })
	msg := &rsvp.Message{ID: rsvp.NewID(), Track: true, Body: []byte("x")}
	if _, err := requester.Request(ctx, "abandon-send", msg); !errors.Is(err, context.Canceled) {
		t.Fatalf("Request: %v, want context.Canceled", err)
	}
	r, err := c.be.GetReply(ctxWithin(t, 5*time.Second), msg.ID)
	if err != nil || r.Status != backend.StatusCancelled {
		t.Fatalf("stored reply %+v, %v; want the request cancelled", r, err)
	}
}
