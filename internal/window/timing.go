package window

// Timing is bucket time, named once: which bucket a sample falls in, which
// timestamps are taken, and when a window is due. Every window aggd keeps
// (the buckets of samples, the windows of aggregation rules) is due at the
// first flush tick at or after its end plus grace. All times are Unix
// nanoseconds. The zero Timing is not usable; get one from Config.Timing.
type Timing struct {
	interval, rollup, grace int64
	maxLate, maxFuture      int64
	lateWindow              int64
}

// Timing returns the time rules of c, which must be valid.
func (c Config) Timing() Timing {
	return Timing{
		interval:   int64(c.Interval),
		rollup:     int64(c.rollup()),
		grace:      int64(c.Grace),
		maxLate:    int64(c.MaxLateness),
		maxFuture:  int64(c.MaxFuture),
		lateWindow: int64(c.LateWindow),
	}
}

// Start rounds ts down to a multiple of width, also for negative ts: the
// start of the window of that width holding ts.
func Start(ts, width int64) int64 {
	m := ts % width
	if m < 0 {
		m += width
	}
	return ts - m
}

// Due returns the tick that drains the window [start, start+width): its
// end plus grace.
func (t Timing) Due(start, width int64) int64 { return start + width + t.grace }

// KeptUntil returns the last tick at which a flushed window [start,
// start+width) is kept for late items: its due tick plus the late window.
// A late item for it is merged while the watermark (the last drain's tick)
// is at most KeptUntil, and refused after.
func (t Timing) KeptUntil(start, width int64) int64 { return t.Due(start, width) + t.lateWindow }

// WindowDue returns the tick that drains the window of width holding ts.
func (t Timing) WindowDue(ts, width int64) int64 { return t.Due(Start(ts, width), width) }

// Bucket returns the bucket a sample at ts arriving at now falls in: of
// the interval's width at now when ts is zero (no timestamp), of the
// rollup's width at ts otherwise.
func (t Timing) Bucket(ts, now int64) (start, width int64) {
	if ts == 0 {
		return Start(now, t.interval), t.interval
	}
	return Start(ts, t.rollup), t.rollup
}

// BucketDue returns the tick that drains the bucket a sample at ts (zero:
// no timestamp) arriving at now falls in.
func (t Timing) BucketDue(ts, now int64) int64 { return t.Due(t.Bucket(ts, now)) }

// Admit reports whether a timestamp ts of a sample arriving at now is
// within the lateness and future bounds: Accepted, ReasonTooOld or
// ReasonTooNew.
func (t Timing) Admit(ts, now int64) Reason {
	switch {
	case ts < now-t.maxLate:
		return ReasonTooOld
	case ts > now+t.maxFuture:
		return ReasonTooNew
	}
	return Accepted
}
