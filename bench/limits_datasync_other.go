//go:build !linux

package bench

import "os"

// datasync flushes f to the disk. Without fdatasync(2) it is a full fsync.
func datasync(f *os.File) error { return f.Sync() }
