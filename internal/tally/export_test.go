package tally

import "time"

// SetKeepFor sets keepFor for a test and returns a function that restores it.
func SetKeepFor(d time.Duration) (restore func()) {
	old := keepFor
	keepFor = d
	return func() { keepFor = old }
}
