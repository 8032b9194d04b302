package rsvpnats

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// newTestStream lays out a stream directory as the server does: msgs/1.blk.
func newTestStream(t testing.TB) (dir string, blk *os.File) {
	dir = t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "msgs"), 0o700); err != nil {
		t.Fatal(err)
	}
	blk, err := os.OpenFile(filepath.Join(dir, "msgs", "1.blk"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { blk.Close() })
	return dir, blk
}

func TestGroupSyncFollowsNewBlocks(t *testing.T) {
	dir, blk := newTestStream(t)
	g, err := newGroupSync(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer g.close()
	g.begin()
	if _, err := blk.Write([]byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := g.wait(); err != nil || g.last != 1 {
		t.Fatalf("wait: %v, last block %d", err, g.last)
	}
	// The server rolls to block 2 and removes the emptied block 1.
	if err := os.WriteFile(filepath.Join(dir, "msgs", "2.blk"), []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	g.begin()
	if err := g.wait(); err != nil || g.last != 2 {
		t.Fatalf("after a new block: %v, last block %d", err, g.last)
	}
	if err := os.Remove(filepath.Join(dir, "msgs", "2.blk")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "msgs", "3.blk"), []byte("three"), 0o600); err != nil {
		t.Fatal(err)
	}
	g.begin()
	if err := g.wait(); err != nil || g.last != 3 {
		t.Fatalf("after the last block went away: %v, last block %d", err, g.last)
	}
}

// BenchmarkGroupSync measures group commit: writers append 1 KiB to one
// block file and wait until it is on disk, sharing fsyncs.
func BenchmarkGroupSync(b *testing.B) {
	for _, writers := range []int{2, 16, 64} { // RunParallel runs at least GOMAXPROCS

		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			dir, blk := newTestStream(b)
			g, err := newGroupSync(dir)
			if err != nil {
				b.Fatal(err)
			}
			defer g.close()
			rec := make([]byte, 1024)
			var mu sync.Mutex
			b.SetParallelism(max(1, writers/runtime.GOMAXPROCS(0)))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					g.begin()
					mu.Lock()
					_, err := blk.Write(rec)
					mu.Unlock()
					if err != nil {
						b.Error(err)
						g.end()
						return
					}
					if err := g.wait(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
