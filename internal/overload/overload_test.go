package overload

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestLevels(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var used atomic.Uint64
		g := New(1000, 100*time.Millisecond, func() uint64 { return used.Load() })
		g.Start(context.Background())
		defer g.Shutdown(context.Background())
		for _, tc := range []struct {
			used uint64
			want Level
		}{{100, OK}, {799, OK}, {800, Soft}, {949, Soft}, {950, Hard}, {2000, Hard}, {10, OK}} {
			used.Store(tc.used)
			time.Sleep(100 * time.Millisecond)
			synctest.Wait()
			if got := g.Level(); got != tc.want || g.Used() != tc.used {
				t.Errorf("used %d: level %v, want %v", tc.used, got, tc.want)
			}
		}
	})
}

func TestReadRuntime(t *testing.T) {
	if n := ReadRuntime(); n < 1<<20 {
		t.Fatalf("runtime memory %d bytes", n)
	}
}

func TestPushback(t *testing.T) {
	var used atomic.Uint64
	g := New(1000, time.Hour, func() uint64 { return used.Load() })
	g.Sample()
	full := false
	for _, tc := range []struct {
		name string
		p    Pushback
		used uint64
		full bool
		want Level
	}{
		{"no guard, queue has room", Pushback{Full: func() bool { return full }}, 0, false, OK},
		{"no guard, queue full", Pushback{Full: func() bool { return full }}, 0, true, Hard},
		{"memory soft, queue has room", Pushback{Memory: g, Full: func() bool { return full }}, 850, false, Soft},
		{"memory soft, queue full", Pushback{Memory: g, Full: func() bool { return full }}, 850, true, Hard},
		{"memory ok, queue has room", Pushback{Memory: g, Full: func() bool { return full }}, 10, false, OK},
	} {
		used.Store(tc.used)
		g.Sample()
		full = tc.full
		if got := tc.p.Level(); got != tc.want {
			t.Errorf("%s: Level = %v, want %v", tc.name, got, tc.want)
		}
	}
}
