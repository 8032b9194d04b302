package rsvp

// WaiterCount exposes the size of the waiter map to tests.
func WaiterCount(c *Client) int { return c.waiters.len() }
