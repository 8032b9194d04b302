package gateway

import (
	"context"
	"sync"

	"github.com/rsvp-go/rsvp/backend"
)

// hub fans the engine's live events out to the gateway's waiters. A waiter
// is only told that something may have changed: it then reads the stored
// events after its cursor, so a lost notification delays an event but
// cannot lose or reorder it.
type hub struct {
	sub backend.Subscription

	mu     sync.Mutex
	byID   map[string]map[*watch]struct{}
	byChan map[string]map[*watch]struct{}
}

// watch is one waiter's signal: C receives (buffer 1) after an event of its
// request or channel was appended.
type watch struct {
	C      chan struct{}
	id, ch string
}

func newHub(ctx context.Context, b backend.Backend) (*hub, error) {
	h := &hub{byID: make(map[string]map[*watch]struct{}), byChan: make(map[string]map[*watch]struct{})}
	sub, err := b.SubscribeEvents(ctx, h.deliver)
	if err != nil {
		return nil, err
	}
	h.sub = sub
	return h, nil
}

func (h *hub) close() error { return h.sub.Close() }

// watchID signals on events of request id; watchChannel on those of a
// channel. Call stop when done.
func (h *hub) watchID(id string) *watch {
	return h.add(h.byID, &watch{C: make(chan struct{}, 1), id: id})
}
func (h *hub) watchChannel(ch string) *watch {
	return h.add(h.byChan, &watch{C: make(chan struct{}, 1), ch: ch})
}

func (h *hub) add(m map[string]map[*watch]struct{}, w *watch) *watch {
	key := w.id + w.ch
	h.mu.Lock()
	defer h.mu.Unlock()
	if m[key] == nil {
		m[key] = make(map[*watch]struct{})
	}
	m[key][w] = struct{}{}
	return w
}

func (h *hub) stop(w *watch) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m, key := h.byID, w.id
	if w.ch != "" {
		m, key = h.byChan, w.ch
	}
	delete(m[key], w)
	if len(m[key]) == 0 {
		delete(m, key)
	}
}

func (h *hub) deliver(ev *backend.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for w := range h.byID[ev.CorrelationID] {
		signal(w.C)
	}
	if ev.Channel != "" {
		for w := range h.byChan[ev.Channel] {
			signal(w.C)
		}
	}
}

// waiters returns how many watches are open (for tests and metrics).
func (h *hub) waiters() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.byID {
		n += len(m)
	}
	for _, m := range h.byChan {
		n += len(m)
	}
	return n
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
