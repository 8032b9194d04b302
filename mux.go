package rsvp

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// CodeUnsupportedType: the request's Type has no handler in the Mux.
const CodeUnsupportedType = "unsupported_type"

// maxUpgrades bounds a chain of upgrades, so that a cycle cannot loop.
const maxUpgrades = 16

// Mux is a Handler that routes each request by its Type (schema name and
// version, such as "thumbnail.request.v2") to the handler registered for
// it. During a rollout, Upgrade maps an older Type to a newer one, so one
// responder serves old and new requesters. A request whose Type has no
// handler, even after upgrades, fails permanently with code
// unsupported_type, naming the types that are handled.
//
// A Mux is safe for concurrent use: Handle and Upgrade may be called while
// it serves requests (a request already being routed may not see them).
type Mux struct {
	mu       sync.RWMutex
	handlers map[string]Handler
	upgrades map[string]upgrade
}

type upgrade struct {
	to string
	fn func(context.Context, *Message) (*Message, error)
}

// NewMux returns an empty Mux.
func NewMux() *Mux {
	return &Mux{handlers: make(map[string]Handler), upgrades: make(map[string]upgrade)}
}

// Handle registers h for requests of typ. The empty typ catches requests
// that carry no Type.
func (m *Mux) Handle(typ string, h Handler) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.handlers[typ] = h
}

// Upgrade makes requests of type from go to the handler of type to, after
// fn turns them into requests of type to (fn may return the message with
// just Type changed). Upgrades chain: v1 → v2 → v3.
func (m *Mux) Upgrade(from, to string, fn func(ctx context.Context, req *Message) (*Message, error)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.upgrades[from] = upgrade{to: to, fn: fn}
}

// ServeRequest implements Handler. Upgrades and the handler run without
// the Mux's lock held, so that registering does not wait for them.
func (m *Mux) ServeRequest(ctx context.Context, req *Message) (*Reply, error) {
	for n := 0; ; n++ {
		h, handled, up, upgraded := m.route(req.Type)
		if handled {
			return h.ServeRequest(ctx, req)
		}
		if !upgraded || n == maxUpgrades {
			break
		}
		next, err := up.fn(ctx, req)
		if err == nil && next == nil {
			err = errors.New("the upgrade function returned no message")
		}
		if err != nil {
			return nil, Permanent(&RemoteError{Code: CodeBadPayload, Message: fmt.Sprintf("upgrade %s to %s: %v", req.Type, up.to, err)})
		}
		cp := *next
		cp.Type = up.to
		req = &cp
	}
	return nil, Permanent(&RemoteError{Code: CodeUnsupportedType,
		Message: fmt.Sprintf("no handler for type %q; handled: %s", req.Type, strings.Join(m.types(), ", "))})
}

// route returns the handler of typ if it has one, else its upgrade if it
// has one.
func (m *Mux) route(typ string) (h Handler, handled bool, up upgrade, upgraded bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if h, handled = m.handlers[typ]; handled {
		return h, true, upgrade{}, false
	}
	up, upgraded = m.upgrades[typ]
	return nil, false, up, upgraded
}

// types lists the handled types, sorted, for error messages.
func (m *Mux) types() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]string, 0, len(m.handlers))
	for t := range m.handlers {
		if t == "" {
			t = `"" (no type)`
		}
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}
