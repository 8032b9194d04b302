package gateway_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/gateway"
)

// deafEngine loses every notification of an appended event: its event
// subscriptions deliver nothing, as when the engine's notifications are
// dropped (a core NATS message is lost when nobody listens at that moment;
// a PostgreSQL notification when its connection is cut). The events and
// replies are stored all the same. It counts the reads of each reply and
// remembers the id last enqueued on each queue.
type deafEngine struct {
	backend.Backend

	mu       sync.Mutex
	reads    map[string]int
	enqueued map[string]string // by queue
}

func (b *deafEngine) SubscribeEvents(ctx context.Context, fn func(*backend.Event)) (backend.Subscription, error) {
	return b.Backend.SubscribeEvents(ctx, func(*backend.Event) {})
}

func (b *deafEngine) GetReply(ctx context.Context, id string) (*backend.Reply, error) {
	r, err := b.Backend.GetReply(ctx, id)
	b.mu.Lock()
	b.reads[id]++
	b.mu.Unlock()
	return r, err
}

func (b *deafEngine) Enqueue(ctx context.Context, msg *backend.Message) error {
	err := b.Backend.Enqueue(ctx, msg)
	b.mu.Lock()
	b.enqueued[msg.Queue] = msg.ID
	b.mu.Unlock()
	return err
}

// replyReads returns how often the reply of id was read.
func (b *deafEngine) replyReads(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.reads[id]
}

func (b *deafEngine) lastEnqueued(queue string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.enqueued[queue]
}

// TestLongPollSurvivesLostNotification: a long-poll (GET of a status with
// wait, a submission with "Prefer: wait") whose change notification is
// lost still sees the change within a few seconds, by reading the
// request again on its own, not at the end of its wait (60s here).
func TestLongPollSurvivesLostNotification(t *testing.T) {
	t.Parallel()
	b, err := rsvpnats.Embedded("", rsvpnats.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	eng := &deafEngine{Backend: b, reads: map[string]int{}, enqueued: map[string]string{}}
	e := newEnvWith(t, eng, gateway.Config{MaxWait: time.Minute}, nil)
	// The long-polls must end well before their wait of 60s.
	const within = 20 * time.Second

	t.Run("status", func(t *testing.T) {
		t.Parallel()
		id := e.submit("later", nil, "x")
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", e.URL+"/v1/requests/"+id+"?wait=60s&redirect=false", nil)
		done := callInBackground(req)
		// The status read once for the answer, once by the long-poll
		// after it watches: it waits now.
		eventually(t, 10*time.Second, "the long-poll reads the request", func() bool { return eng.replyReads(id) >= 2 })
		e.respond("later", rsvp.HandleOptions{}, echo)
		a := <-done
		if a.err != nil || a.status != http.StatusOK || strings.Contains(a.body, `"state":"queued"`) {
			t.Fatalf("long-poll of a request that went on, its notification lost: %d %s %v after %s; want its new status within %s",
				a.status, a.body, a.err, a.took.Round(time.Millisecond), within)
		}
	})

	t.Run("prefer wait", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "POST", e.URL+"/v1/queues/soon/requests", strings.NewReader("y"))
		req.Header.Set("Prefer", "wait=60")
		done := callInBackground(req)
		var id string
		eventually(t, 10*time.Second, "the submission is queued and waits for its reply", func() bool {
			id = eng.lastEnqueued("soon")
			return id != "" && eng.replyReads(id) >= 1
		})
		e.respond("soon", rsvp.HandleOptions{}, echo)
		a := <-done
		if a.err != nil || a.status != http.StatusOK {
			t.Fatalf("Prefer: wait on a request answered, its notification lost: %d %v after %s; want its result (200) within %s",
				a.status, a.err, a.took.Round(time.Millisecond), within)
		}
	})
}

// answer is what callInBackground got, and how long it took.
type answer struct {
	status int
	body   string
	err    error
	took   time.Duration
}

// callInBackground sends req from a goroutine and delivers its answer,
// with the whole body read, on the channel it returns.
func callInBackground(req *http.Request) <-chan answer {
	done := make(chan answer, 1)
	go func() {
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- answer{err: err, took: time.Since(start)}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		done <- answer{status: resp.StatusCode, body: string(body), err: err, took: time.Since(start)}
	}()
	return done
}
