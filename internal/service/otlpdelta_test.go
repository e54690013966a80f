package service

import (
	"testing"
	"time"
)

// TestDeltaTrackerForgetsStaleStreams: once the streams fill up, those
// without a point for StaleCumulative make room; fresh ones do not.
func TestDeltaTrackerForgetsStaleStreams(t *testing.T) {
	tr := newDeltaTracker(0, deltaShards) // room for one stream per shard
	a := []byte("a")
	var b []byte // a key of a's shard
	for i := 0; b == nil; i++ {
		if k := []byte{'b', byte(i), byte(i >> 8)}; idOf(k)[0]%deltaShards == idOf(a)[0]%deltaShards {
			b = k
		}
	}
	hour, minute := uint64(time.Hour), uint64(time.Minute)
	steps := []struct {
		key  []byte
		ts   uint64
		full bool
	}{
		{a, 10 * hour, false},          // takes the shard
		{b, 10*hour + minute, true},    // a is fresh: no room
		{b, 12 * hour, false},          // a is stale: forgotten
		{a, 12*hour + minute, true},    // b is fresh: no room
		{b, 12*hour + 2*minute, false}, // a tracked stream always goes on
	}
	for i, s := range steps {
		if res := tr.sum(idOf(s.key), 1, s.ts, 1).res; (res == deltaFull) != s.full {
			t.Errorf("step %d: full %v, want %v", i, res == deltaFull, s.full)
		}
	}
}
