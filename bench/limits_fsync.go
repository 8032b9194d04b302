package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// LimitFsync measures a durable append with nothing shared: each operation
// appends a LimitMessageSize record to one file and fdatasyncs it itself.
// At concurrency 1 (what `rsvp bench limits` runs) that is the latency of one
// fdatasync on the disk of dir. The file is in a new directory under dir
// ("": the system's temporary directory), removed afterwards. Default
// labels: limit:fsync on disk:DIR.
func LimitFsync(ctx context.Context, cfg Config, dir string) (Result, error) {
	return withRecordFile(dir, func(f *os.File, label string) (Result, error) {
		return Run(ctx, named(cfg, "limit:fsync", label), func(ctx context.Context, id string) (string, error) {
			if err := appendRecord(f, id); err != nil {
				return "", err
			}
			if err := datasync(f); err != nil {
				return "", fmt.Errorf("fdatasync: %w", err)
			}
			return id, nil
		})
	})
}

// LimitGroupCommit measures group commit: cfg.Concurrency writers append
// LimitMessageSize records to one file, and each then waits for the next
// fdatasync that starts after its append; one goroutine issues the
// fdatasync rounds, so concurrent writers share them. Run it at 1, 8, 64
// and 512 writers for the curve. The file is as for LimitFsync. Default
// labels: limit:group-commit on disk:DIR.
func LimitGroupCommit(ctx context.Context, cfg Config, dir string) (Result, error) {
	return withRecordFile(dir, func(f *os.File, label string) (Result, error) {
		c := newCommitter(func() error { return datasync(f) })
		defer c.close()
		return Run(ctx, named(cfg, "limit:group-commit", label), func(ctx context.Context, id string) (string, error) {
			if err := appendRecord(f, id); err != nil {
				return "", err
			}
			if err := c.wait(ctx); err != nil {
				return "", fmt.Errorf("fdatasync: %w", err)
			}
			return id, nil
		})
	})
}

// withRecordFile runs fn on a new append-only file in a new directory under
// dir, and removes them afterwards. label names the disk: disk:DIR.
func withRecordFile(dir string, fn func(f *os.File, label string) (Result, error)) (res Result, err error) {
	tmp, remove, err := tempDir(dir, "rsvp-limit-fsync-*")
	if err != nil {
		return Result{}, err
	}
	defer func() {
		if rerr := remove(); rerr != nil && err == nil {
			err = fmt.Errorf("bench: remove %s: %w", tmp, rerr)
		}
	}()
	f, err := os.OpenFile(filepath.Join(tmp, "records"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return Result{}, fmt.Errorf("bench: record file: %w", err)
	}
	// The file's directory entry is made durable once, as a log's would be.
	if err := errors.Join(datasync(f), syncDir(tmp)); err != nil {
		f.Close()
		return Result{}, err
	}
	res, err = fn(f, "disk:"+cmp.Or(dir, os.TempDir()))
	if cerr := f.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("bench: record file: %w", cerr)
	}
	return res, err
}

// appendRecord appends a LimitMessageSize record for id to f (opened with
// O_APPEND: concurrent appends do not overlap).
func appendRecord(f *os.File, id string) error {
	if _, err := f.Write(limitPayload(id)); err != nil {
		return fmt.Errorf("append: %w", err)
	}
	return nil
}

// syncDir fsyncs the directory dir, making the entries in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("bench: sync %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("bench: sync %s: %w", dir, err)
	}
	return nil
}
