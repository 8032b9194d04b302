package gateway_test

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/gateway"
)

// TestReplayedRequestRunsAgain: a request that failed for good and is
// replayed from its dead letter shows as queued again under its id, then
// gets the replay's result; the submission's timeout, past by then, does
// not expire the replay.
func TestReplayedRequestRunsAgain(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	var fixed atomic.Bool
	release := make(chan struct{})
	e.respond("fragile", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if !fixed.Load() {
			return nil, rsvp.Permanent(errors.New("broken"))
		}
		<-release
		return echo(ctx, m)
	})
	submitted := time.Now()
	resp, data := e.do("POST", "/v1/queues/fragile/requests?timeout=1s", nil, "again")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit: %d %s", resp.StatusCode, data)
	}
	id := decode(t, data)["id"].(string)
	e.waitState(id, "failed")
	dls, err := e.Client.DeadLetters(t.Context(), rsvp.DeadLetterQuery{Queue: "fragile"})
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters %v, %v", dls, err)
	}
	fixed.Store(true)
	tk, err := e.Client.Replay(t.Context(), "fragile", dls[0].Key)
	if err != nil || tk.CorrelationID != id {
		t.Fatalf("replay: %+v, %v; want the request's id %s", tk, err, id)
	}
	e.waitState(id, "running")
	eventually(t, 10*time.Second, "the submission's timeout passes while the replay runs", func() bool {
		_, data := e.do("GET", "/v1/requests/"+id+"?redirect=false", nil, "")
		if st := decode(t, data); st["state"] != "running" {
			t.Fatalf("the replay is %v past the submission's timeout: %s", st["state"], data)
		}
		return time.Since(submitted) > 1500*time.Millisecond
	})
	close(release)
	st := e.waitState(id, "succeeded")
	if st["error"] != nil {
		t.Fatalf("status after the replay still has the old error: %v", st)
	}
	resp, data = e.do("GET", "/v1/requests/"+id+"/result", nil, "")
	if resp.StatusCode != http.StatusOK || string(data) != "echo:again" {
		t.Fatalf("result after replay: %d %s", resp.StatusCode, data)
	}
}

// TestReplayedRequestStream: the event stream of a request replayed from
// its dead letter goes on past the first run's failed event, through a
// replayed event, to the replay's outcome; a client that saw the failed
// event and reconnects gets the replay's events, not 204.
func TestReplayedRequestStream(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	var fixed atomic.Bool
	e.respond("fragile", rsvp.HandleOptions{}, func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		if !fixed.Load() {
			return nil, rsvp.Permanent(errors.New("broken"))
		}
		return echo(ctx, m)
	})
	id := streamSubmit(e, "fragile", nil, "again")
	e.waitState(id, "failed")
	first := openSSE(e, "/v1/requests/"+id+"/events", nil)
	var failed uint64
	for ev := first.must(); ; ev = first.must() {
		if ev.Type == "failed" {
			failed = ev.ID
			break
		}
	}
	first.ended()
	first.close()

	dls, err := e.Client.DeadLetters(t.Context(), rsvp.DeadLetterQuery{Queue: "fragile"})
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters %v, %v", dls, err)
	}
	fixed.Store(true)
	if _, err := e.Client.Replay(t.Context(), "fragile", dls[0].Key); err != nil {
		t.Fatal(err)
	}
	e.waitState(id, "succeeded")
	resumed := openSSE(e, "/v1/requests/"+id+"/events", map[string]string{"Last-Event-ID": strconv.FormatUint(failed, 10)})
	var evs []sseEvent
	for {
		ev, err := resumed.next()
		if err != nil {
			break // the stream ended
		}
		evs = append(evs, ev)
	}
	resumed.close()
	types := sseTypes(evs)
	if !slices.Equal(types, []string{"replayed", "running", "succeeded"}) {
		t.Fatalf("resumed after the failed event: %v, want replayed running succeeded", types)
	}
	if evs[2].Data["result"] != base64.StdEncoding.EncodeToString([]byte("echo:again")) { // no content type: bytes
		t.Fatalf("the replay's succeeded event: %v", evs[2].Data)
	}
	// From the start: both runs, and the end.
	all := openSSE(e, "/v1/requests/"+id+"/events", nil)
	evs = evs[:0]
	for {
		ev, err := all.next()
		if err != nil {
			break
		}
		evs = append(evs, ev)
	}
	all.close()
	if types := sseTypes(evs); !slices.Equal(types, []string{"queued", "running", "failed", "replayed", "running", "succeeded"}) {
		t.Fatalf("from the start: %v", types)
	}
}

// TestResumedAfterReplayedFinalMissing: a client resumes the event
// stream of a replayed request from the replayed event (the last one it
// saw). The replay's responder stored its reply but died before the final
// event. After finalGrace the gateway appends the final event, under the
// replay's key (the first run's is taken), and ends the stream.
func TestResumedAfterReplayedFinalMissing(t *testing.T) {
	e := newEnv(t, gateway.Config{})
	ctx := t.Context()
	r, err := e.Client.Handle("fragile", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return nil, rsvp.Permanent(errors.New("broken"))
	}), rsvp.HandleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id := streamSubmit(e, "fragile", nil, "again")
	e.waitState(id, "failed")
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	dls, err := e.Client.DeadLetters(ctx, rsvp.DeadLetterQuery{Queue: "fragile"})
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters %v, %v", dls, err)
	}
	if _, err := e.Client.Replay(ctx, "fragile", dls[0].Key); err != nil {
		t.Fatal(err)
	}
	// The replay's worker: takes it (running), stores its reply, and dies
	// before the final event.
	cons, err := e.Client.Consume(ctx, "fragile", rsvp.HandleOptions{Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cons.Close() })
	nctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	l, err := cons.Next(nctx)
	if err != nil {
		t.Fatal(err)
	}
	m := l.Message()
	b := e.Client.Backend()
	if err := b.PutReply(ctx, m.ReplyTo, &backend.Reply{CorrelationID: id, Status: backend.StatusSucceeded,
		ContentType: "text/plain", Body: []byte("late"), CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	evs, err := b.Events(ctx, backend.EventQuery{CorrelationID: id})
	if err != nil {
		t.Fatal(err)
	}
	var replayed uint64
	for _, ev := range evs {
		if ev.Type == backend.EventReplayed {
			replayed = ev.Seq
		}
	}
	if replayed == 0 {
		t.Fatalf("no replayed event in %d events", len(evs))
	}
	s := openSSE(e, "/v1/requests/"+id+"/events", map[string]string{"Last-Event-ID": strconv.FormatUint(replayed, 10)})
	type got struct {
		ev  sseEvent
		err error
	}
	ch := make(chan got, 16)
	go func() {
		for {
			ev, err := s.next()
			ch <- got{ev, err}
			if err != nil {
				return
			}
		}
	}()
	var types []string
	deadline := time.After(10 * time.Second) // finalGrace is 2s
	for {
		select {
		case g := <-ch:
			if g.err != nil {
				t.Logf("stream ended after %v", types)
				if len(types) == 0 || types[len(types)-1] != "succeeded" {
					t.Fatalf("stream ended without the final event: %v", types)
				}
				return
			}
			types = append(types, g.ev.Type)
		case <-deadline:
			t.Fatalf("resumed after the replayed event (seq %d): got %v and then nothing for 10s; want running, succeeded and the end", replayed, types)
		}
	}
}
