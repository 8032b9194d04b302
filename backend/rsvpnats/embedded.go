package rsvpnats

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Files kept in an embedded engine's directory.
const (
	lockFile   = "rsvp.lock"   // held (flock) by the process that runs the engine
	engineFile = "engine.json" // where that process serves it; mode 0600
)

// HasEngine reports whether dir holds an embedded engine: one ran there
// (its lock file or its JetStream store is there). For tools that read an
// engine and must not make one.
func HasEngine(dir string) bool {
	for _, name := range []string{lockFile, "jetstream"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return true
		}
	}
	return false
}

// engineInfo is the content of engineFile.
type engineInfo struct {
	URL   string `json:"url"`
	Token string `json:"token"`
	PID   int    `json:"pid"`
}

// Embedded opens the engine kept in dir, running a nats-server with
// JetStream inside this process. With opts.Memory, dir may be empty and
// nothing is written to disk.
//
// One process at a time runs the engine of a directory; it holds a lock
// there. If another process holds it and serves the engine (it was opened
// with Listen), Embedded connects to that process instead. Otherwise it
// fails, naming the directory.
func Embedded(dir string, opts Options) (*Backend, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("rsvpnats: %w", err)
	}
	if opts.Memory {
		tmp, err := os.MkdirTemp("", "rsvp-mem-*")
		if err != nil {
			return nil, fmt.Errorf("rsvpnats: %w", err)
		}
		b, err := startEmbedded(tmp, opts)
		if err != nil {
			os.RemoveAll(tmp)
			return nil, err
		}
		stop := b.onClose
		b.onClose = func() error { return errors.Join(stop(), os.RemoveAll(tmp)) }
		return b, nil
	}
	if dir == "" {
		return nil, errors.New("rsvpnats: embedded engine needs a directory (or Options.Memory)")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("rsvpnats: engine directory %q: %w", dir, err)
	}
	// The owner may be starting (its address not written yet) or stopping
	// (the lock about to be free): try both until the timeout.
	deadline := time.Now().Add(opts.Timeout)
	var lock *os.File
	for {
		var err error
		if lock, err = tryLock(dir); err != nil || lock != nil {
			if err != nil {
				return nil, err
			}
			break
		}
		b, err := connectShared(dir, opts)
		if err == nil || time.Now().After(deadline) {
			if err != nil {
				return nil, fmt.Errorf("rsvpnats: engine directory %q is locked by another process that does not serve it (open it there with Listen, or use another directory): %w", dir, err)
			}
			return b, nil
		}
		time.Sleep(50 * time.Millisecond) // polling another process's lock and file
	}
	unlock := func() error { return lock.Close() } // closing releases the flock
	// A file left by an owner that died is stale now that we hold the lock.
	_ = os.Remove(filepath.Join(dir, engineFile))
	b, err := startEmbedded(dir, opts)
	if err != nil {
		unlock()
		return nil, err
	}
	stop := b.onClose
	b.onClose = func() error {
		err := stop()
		_ = os.Remove(filepath.Join(dir, engineFile))
		return errors.Join(err, unlock())
	}
	return b, nil
}

// startEmbedded runs the server on dir and opens a backend on it.
func startEmbedded(dir string, opts Options) (*Backend, error) {
	token, err := randomToken()
	if err != nil {
		return nil, err
	}
	sopts := &server.Options{
		ServerName:    "rsvp-embedded",
		JetStream:     true,
		StoreDir:      dir,
		SyncInterval:  opts.SyncInterval, // SyncAlways is done by group commit: see groupSync
		MaxPayload:    8 << 20,
		DontListen:    !opts.Listen,
		Host:          "127.0.0.1",
		Port:          server.RANDOM_PORT,
		Authorization: token,
		NoSigs:        true,
		NoLog:         true,
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: embedded server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(opts.Timeout) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("rsvpnats: embedded server in %q did not start within %s (is the directory writable?)", dir, opts.Timeout)
	}
	shutdown := func() error {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil
	}
	done := make(chan struct{})
	nc, err := nats.Connect("", nats.InProcessServer(ns), nats.Token(token), nats.Name("rsvp-embedded"), closedHandler(done))
	if err != nil {
		shutdown()
		return nil, fmt.Errorf("rsvpnats: connect to embedded server: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	defer cancel()
	b, err := open(ctx, nc, opts, opts.Memory, syncDirFor(dir, opts))
	if err != nil {
		nc.Close()
		shutdown()
		return nil, err
	}
	b.onClose = shutdown
	b.done = done
	if opts.Listen {
		info := engineInfo{URL: ns.ClientURL(), Token: token, PID: os.Getpid()}
		if err := writePrivate(filepath.Join(dir, engineFile), info); err != nil {
			b.Close()
			return nil, err
		}
	}
	return b, nil
}

// tryLock takes the engine lock of dir: the locked file, or nil if another
// process holds it.
func tryLock(dir string) (*os.File, error) {
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("rsvpnats: engine directory %q is not writable: %w", dir, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("rsvpnats: lock engine directory %q: %w", dir, err)
	}
	return lock, nil
}

// connectShared connects to the engine that another process runs on dir,
// at the address it wrote there.
func connectShared(dir string, opts Options) (*Backend, error) {
	info, err := readEngineInfo(filepath.Join(dir, engineFile))
	if err != nil {
		return nil, err
	}
	// The engine lives as long as its owner: give up reconnecting after a
	// few seconds without it, and say so through Done.
	done := make(chan struct{})
	nc, err := nats.Connect(info.URL, nats.Token(info.Token), nats.Name("rsvp"),
		nats.ReconnectWait(250*time.Millisecond), nats.MaxReconnects(12), closedHandler(done))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	defer cancel()
	// fsync works from any process: group commit runs here too.
	b, err := open(ctx, nc, opts, false, syncDirFor(dir, opts))
	if err != nil {
		nc.Close()
		return nil, err
	}
	b.done = done
	return b, nil
}

func readEngineInfo(path string) (engineInfo, error) {
	var info engineInfo
	data, err := os.ReadFile(path)
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(data, &info); err != nil {
		return info, fmt.Errorf("%s: %w", path, err)
	}
	return info, nil
}

// writePrivate writes v as JSON to path, readable by the owner only, in one
// rename so that readers never see half a file.
func writePrivate(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("rsvpnats: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rsvpnats: write %s: %w", path, err)
	}
	return nil
}

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("rsvpnats: token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// syncDirFor returns the store directory to fsync by group commit, or ""
// when writes are not synced one by one.
func syncDirFor(dir string, opts Options) string {
	if opts.Sync != SyncAlways || opts.Memory {
		return ""
	}
	return dir
}
