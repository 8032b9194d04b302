package rsvppg

// Beat runs one heartbeat for the consumer id of queue, as the backend's
// heartbeat goroutine does every heartbeatInterval for its open consumers.
func Beat(b *Backend, queue, id string) { b.beat([]string{queue}, []string{id}) }
