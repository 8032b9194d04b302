package cli

import (
	"strings"
	"testing"
)

func TestTailBuffer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		writes []string
		want   string
	}{
		{"empty", nil, ""},
		{"short", []string{"one\n", "two\n"}, "one\ntwo"},
		{"exactly full", []string{"0123456789"}, "0123456789"},
		{"cut at a line", []string{"first line\n", "second\nthird\n"}, "... third"},
		{"cut in one big write", []string{"aaaa\nbbbbbbbbbbbbbbbb\ncc\n"}, "... cc"},
		{"cut without a line break", []string{strings.Repeat("x", 25)}, "... xxxxxxxxxx"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := &tailBuffer{max: 10}
			for _, w := range tc.writes {
				if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			if got := b.String(); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			if len(b.buf) > b.max {
				t.Fatalf("kept %d bytes, max %d", len(b.buf), b.max)
			}
		})
	}
}

func TestCappedBuffer(t *testing.T) {
	t.Parallel()
	b := &cappedBuffer{max: 5}
	for _, w := range []string{"abc", "def", "ghi"} {
		if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", w, n, err)
		}
	}
	if got := b.buf.String(); got != "abcde" || !b.overflow {
		t.Fatalf("kept %q, overflow %v; want abcde, true", got, b.overflow)
	}
}

func TestHeaderFlag(t *testing.T) {
	t.Parallel()
	var h headerFlag
	for _, s := range []string{"X-Trace=abc", "X-Empty=", "X-Eq=a=b"} {
		if err := h.Set(s); err != nil {
			t.Fatalf("Set(%q): %v", s, err)
		}
	}
	if got, want := h.String(), "X-Empty=,X-Eq=a=b,X-Trace=abc"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	for _, s := range []string{"novalue", "=v", "a b=c", "a:b=c", "k=line\nbreak"} {
		if err := h.Set(s); err == nil {
			t.Errorf("Set(%q) succeeded, want an error", s)
		}
	}
}
