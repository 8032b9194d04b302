package rsvp

import "context"

// WaiterCount exposes the size of the waiter map to tests.
func WaiterCount(c *Client) int { return c.waiters.len() }

// Waiters is the waiter map, for its micro-benchmark.
type Waiters = waiters

func NewWaiters() *Waiters { return &waiters{m: make(map[string][]chan *Reply)} }

func (w *Waiters) Add(id string) chan *Reply        { return w.add(id) }
func (w *Waiters) Remove(id string, ch chan *Reply) { w.remove(id, ch) }
func (w *Waiters) Deliver(r *Reply)                 { w.deliver(r) }

// DiscardExporter is a span exporter that drops everything, for the
// telemetry benchmarks.
type DiscardExporter = dropSpans

// WithBeforeExtend returns o with f run before each renewal of a handler's
// lease (HandleOptions.beforeExtend).
func WithBeforeExtend(o HandleOptions, f func(ctx context.Context)) HandleOptions {
	o.beforeExtend = f
	return o
}
