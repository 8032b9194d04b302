package rsvpnats

import "testing"

func TestAtLeast(t *testing.T) {
	for _, tc := range []struct {
		version string
		want    bool
	}{
		{"2.9.25", false},
		{"2.10.0", true},
		{"2.11.17", true},
		{"2.12.0-RC.1", true},
		{"3.0.0", true},
		{"1.99.0", false},
		{"", true},        // unknown: the engine's own errors tell
		{"nightly", true}, // as above
		{"2.x.1", true},   // as above
	} {
		if got := atLeast(tc.version, 2, 10); got != tc.want {
			t.Errorf("atLeast(%q, 2, 10) = %v, want %v", tc.version, got, tc.want)
		}
	}
}
