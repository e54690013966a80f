package window

import (
	"testing"
	"time"
)

func TestTiming(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Rollup = 60 * time.Second
	tm := cfg.Timing()
	const s = int64(time.Second)
	now := 1_000_005 * s
	for _, c := range []struct {
		name              string
		ts                int64
		start, width, due int64
		admit             Reason
	}{
		{"no timestamp: the interval's bucket at now", 0, 1_000_000 * s, 10 * s, 1_000_012 * s, Accepted},
		{"timestamped: the rollup's bucket", 999_990 * s, 999_960 * s, 60 * s, 1_000_022 * s, Accepted},
		{"negative timestamp rounds down", -1, -60 * s, 60 * s, 2 * s, ReasonTooOld},
		{"just within max lateness", now - int64(time.Hour), 996_360 * s, 60 * s, 996_422 * s, Accepted},
		{"past max lateness", now - int64(time.Hour) - 1, 996_360 * s, 60 * s, 996_422 * s, ReasonTooOld},
		{"past max future", now + int64(10*time.Minute) + 1, 1_000_560 * s, 60 * s, 1_000_622 * s, ReasonTooNew},
	} {
		start, width := tm.Bucket(c.ts, now)
		if start != c.start || width != c.width {
			t.Errorf("%s: Bucket = %d, %d; want %d, %d", c.name, start, width, c.start, c.width)
		}
		if due := tm.BucketDue(c.ts, now); due != c.due {
			t.Errorf("%s: BucketDue = %d, want %d", c.name, due, c.due)
		}
		if c.ts != 0 {
			if r := tm.Admit(c.ts, now); r != c.admit {
				t.Errorf("%s: Admit = %v, want %v", c.name, r, c.admit)
			}
		}
	}
	if got, want := tm.WindowDue(25*s, 20*s), 42*s; got != want {
		t.Errorf("WindowDue = %d, want %d", got, want)
	}
}
