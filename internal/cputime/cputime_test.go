package cputime

import (
	"os"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	for _, tt := range []struct {
		name, line string
		want       time.Duration
		wantErr    bool
	}{
		{"plain", "42 (aggd) S 1 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 9 0", 2810 * time.Millisecond, false},
		{"name with spaces and parentheses", "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 5 5 0 0", 100 * time.Millisecond, false},
		{"cut short", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 5", 0, true},
		{"no name", "7 x R", 0, true},
		{"not a number", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 5 z 0 0", 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.line))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("got %v, %v; want %v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// TestOfSelf checks Of on this process against getrusage: the two count
// the same time, /proc to a tick.
func TestOfSelf(t *testing.T) {
	deadline := Process() + 50*time.Millisecond
	for Process() < deadline { // spend some CPU
	}
	before := Process()
	got, err := Of(os.Getpid())
	after := Process()
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	if got < before-20*time.Millisecond || got > after+20*time.Millisecond {
		t.Fatalf("Of(self) = %v, getrusage says %v to %v", got, before, after)
	}
}
