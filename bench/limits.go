package bench

// The limits: what the layers under rsvp can do with none of rsvp's work,
// each driven by Run like any workload, so that a Result of rsvp can be read
// beside the ceilings it runs under. Every limit function starts what it
// measures (a server, a file, an engine) in this process and stops it
// before it returns.

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
)

// LimitMessageSize is the size of every message and record the limits
// send or write: 1 KiB.
const LimitMessageSize = 1024

// limitPayload returns a LimitMessageSize message that starts with id and a
// newline; the rest is padding.
func limitPayload(id string) []byte {
	p := make([]byte, max(LimitMessageSize, len(id)+1))
	copy(p, id)
	p[len(id)] = '\n'
	return p
}

// payloadID returns the id a payload of limitPayload starts with.
func payloadID(p []byte) string {
	if i := bytes.IndexByte(p, '\n'); i >= 0 {
		return string(p[:i])
	}
	return ""
}

// named returns cfg with its Workload and Engine labels defaulted.
func named(cfg Config, workload, engine string) Config {
	cfg.Workload = cmp.Or(cfg.Workload, workload)
	cfg.Engine = cmp.Or(cfg.Engine, engine)
	return cfg
}

// inFlight is the most operations cfg has in flight at once, as Run will
// use it.
func inFlight(cfg Config) int {
	return cfg.withDefaults().Concurrency
}

// limitWorkers is how many server-side workers a limit runs for cfg, as
// rsvp's round trip runs responders: max(concurrency, 8), and 64 for an open
// loop that leaves its concurrency to the default.
func limitWorkers(cfg Config) int {
	c := cfg.Concurrency
	if c == 0 && cfg.Rate > 0 {
		c = 64
	}
	return max(c, 8)
}

// token returns a random name part: 12 hex digits.
func token() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // never fails, per crypto/rand
	return hex.EncodeToString(b)
}

// tempDir makes a new directory under parent ("": the system's temporary
// directory; made if missing) and returns it with the function that removes it.
func tempDir(parent, pattern string) (string, func() error, error) {
	if parent != "" {
		if err := os.MkdirAll(parent, 0o700); err != nil {
			return "", nil, fmt.Errorf("bench: directory: %w", err)
		}
	}
	dir, err := os.MkdirTemp(parent, pattern)
	if err != nil {
		return "", nil, fmt.Errorf("bench: temporary directory: %w", err)
	}
	return dir, func() error { return os.RemoveAll(dir) }, nil
}

// errCommitterClosed: the committer stopped before the caller's round.
var errCommitterClosed = errors.New("bench: group commit stopped")

// committer is group commit: callers that wrote something call wait, and
// one goroutine runs rounds of sync, each for every caller waiting when it
// starts. A caller arriving during a round waits for the next one, which
// starts after its write; so the more callers, the more each sync carries.
type committer struct {
	sync    func() error
	mu      sync.Mutex
	waiting []chan error
	kick    chan struct{} // a round is due
	done    chan struct{}
	wg      sync.WaitGroup
	rounds  int // only the round goroutine touches it until close
}

// newCommitter starts the round goroutine; close stops it.
func newCommitter(sync func() error) *committer {
	c := &committer{sync: sync, kick: make(chan struct{}, 1), done: make(chan struct{})}
	c.wg.Add(1)
	go c.run()
	return c
}

// wait returns once a round that started after the call has ended, with
// that round's error.
func (c *committer) wait(ctx context.Context) error {
	ch := make(chan error, 1)
	c.mu.Lock()
	c.waiting = append(c.waiting, ch)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default: // a round is due already, and will take ch
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return errCommitterClosed
	}
}

func (c *committer) run() {
	defer c.wg.Done()
	for {
		select {
		case <-c.kick:
		case <-c.done:
			return
		}
		c.mu.Lock()
		batch := c.waiting
		c.waiting = nil
		c.mu.Unlock()
		if len(batch) == 0 {
			continue // taken by the round before
		}
		err := c.sync()
		c.rounds++
		for _, ch := range batch {
			ch <- err // buffered 1, sent to once
		}
	}
}

// close stops the rounds; callers still waiting get errCommitterClosed. It
// returns how many rounds ran.
func (c *committer) close() int {
	close(c.done)
	c.wg.Wait()
	return c.rounds
}
