package rsvp

import "context"

// WaiterCount exposes the number of waiting calls (rsvp.waiters) to tests.
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

// WaitingCalls counts the calls registered in the waiter map (an id's
// several waiters each), to tests.
func WaitingCalls(c *Client) int {
	c.waiters.mu.Lock()
	defer c.waiters.mu.Unlock()
	n := 0
	for _, chs := range c.waiters.m {
		n += len(chs)
	}
	return n
}
