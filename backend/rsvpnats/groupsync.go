package rsvpnats

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

// groupSync makes writes that the embedded server has acknowledged durable
// on disk, for SyncAlways.
//
// The server writes every message to its stream's current block file before
// it acknowledges it, so an acknowledged message is in the page cache: safe
// from a process kill, not from a power cut. Calling the server's own
// SyncAlways fsyncs each message alone, which caps a stream at one message
// per fsync. Instead, a writer calls wait after the acknowledgement; one
// goroutine fsyncs the block files for every writer waiting at that moment
// (group commit), and writers arriving meanwhile wait for the next round, which
// starts after their write. The more writers, the more each fsync carries.
//
// A round first waits (at most maxLinger) until no publish to the stream is
// outstanding: those writers join it instead of the next one. This matters
// because the server's next write to the page being synced waits for the
// sync, so syncing eagerly would leave each round one or two messages.
type groupSync struct {
	dir     string        // the stream's directory
	pending atomic.Int64  // publishes begun and not yet waiting
	settled chan struct{} // poked when pending drops
	kick    chan struct{}
	done    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	waiting []chan error

	last int // highest block index synced; only the run goroutine uses it
}

func newGroupSync(streamDir string) (*groupSync, error) {
	g := &groupSync{dir: streamDir, kick: make(chan struct{}, 1), settled: make(chan struct{}, 1), done: make(chan struct{})}
	// Make the stream itself (created without fsync) durable once.
	for _, p := range []string{filepath.Join(streamDir, "meta.inf"), filepath.Join(streamDir, "meta.sum"),
		filepath.Join(streamDir, "msgs"), streamDir, filepath.Dir(streamDir)} {
		if err := fsyncPath(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	g.wg.Add(1)
	go g.run()
	return g, nil
}

// maxLinger bounds how long a round waits for outstanding publishes.
const maxLinger = time.Millisecond

// begin announces a publish; its caller then calls wait, or end if the
// publish failed.
func (g *groupSync) begin() { g.pending.Add(1) }

func (g *groupSync) end() {
	g.pending.Add(-1)
	select {
	case g.settled <- struct{}{}:
	default:
	}
}

// wait ends a publish and returns once everything the server acknowledged
// before the call is on disk.
func (g *groupSync) wait() error {
	ch := make(chan error, 1)
	g.mu.Lock()
	g.waiting = append(g.waiting, ch)
	g.mu.Unlock()
	g.end()
	select {
	case g.kick <- struct{}{}:
	default: // a round is already due
	}
	select {
	case err := <-ch:
		return err
	case <-g.done:
		return backend.ErrClosed
	}
}

func (g *groupSync) close() {
	close(g.done)
	g.wg.Wait()
}

func (g *groupSync) run() {
	defer g.wg.Done()
	for {
		select {
		case <-g.kick:
		case <-g.done:
			return
		}
		g.linger()
		g.mu.Lock()
		ws := g.waiting
		g.waiting = nil
		g.mu.Unlock()
		if len(ws) == 0 {
			continue
		}
		err := g.syncBlocks()
		for _, w := range ws {
			w <- err
		}
	}
}

// linger waits until no publish is outstanding, for maxLinger at most.
func (g *groupSync) linger() {
	if g.pending.Load() <= 0 {
		return
	}
	t := time.NewTimer(maxLinger)
	defer t.Stop()
	for g.pending.Load() > 0 {
		select {
		case <-g.settled:
		case <-t.C:
			return
		case <-g.done:
			return
		}
	}
}

// syncBlocks fsyncs the block files written since the last round: the last
// one synced and any created after it, with the directory that names them.
func (g *groupSync) syncBlocks() error {
	msgs := filepath.Join(g.dir, "msgs")
	err := fsyncPath(filepath.Join(msgs, strconv.Itoa(g.last)+".blk"))
	if g.last == 0 || errors.Is(err, os.ErrNotExist) {
		// First round, or the block was emptied and removed: sync every block
		// from the last one on.
		return g.syncFrom(msgs, g.last)
	}
	if err != nil {
		return err
	}
	// A new block since the last round; or, rarely, a new block that filled
	// up and was emptied again, with writes in the one after it.
	for _, n := range []int{g.last + 1, g.last + 2} {
		if _, err := os.Stat(filepath.Join(msgs, strconv.Itoa(n)+".blk")); err == nil {
			return g.syncFrom(msgs, g.last+1)
		}
	}
	return nil
}

// syncFrom fsyncs the blocks numbered from on, and the directory.
func (g *groupSync) syncFrom(msgs string, from int) error {
	entries, err := os.ReadDir(msgs)
	if err != nil {
		return fmt.Errorf("rsvpnats: sync: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".blk")
		n, err := strconv.Atoi(name)
		if !ok || err != nil || n < from {
			continue
		}
		if err := fsyncPath(filepath.Join(msgs, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		g.last = max(g.last, n)
	}
	return fsyncPath(msgs)
}

func fsyncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("rsvpnats: fsync %s: %w", p, err)
	}
	return nil
}
