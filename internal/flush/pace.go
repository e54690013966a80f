package flush

import (
	"context"
	"runtime"
	"time"
)

// PacePerAggregate is the least time a paced flush gives each aggregate:
// encoding goes at most at 500,000 aggregates a second. Encoding one takes
// about half a microsecond of a core, so a large flush uses about a
// quarter of one core instead of a whole core in a burst that the
// goroutines acking batches queue behind.
const PacePerAggregate = 2 * time.Microsecond

// pacer spreads the encoding of one flush of total aggregates over a
// length of time, the least of total × PacePerAggregate and the spread:
// the n-th aggregate of an iteration is not encoded before start +
// length × n / total. An encoder slower than that is never held back, so
// pacing adds nothing to a flush that cannot keep the pace.
type pacer struct {
	ctx    context.Context // sleeping ends early when it is done
	stop   <-chan struct{} // or when this is closed (Shutdown began)
	start  time.Time
	length time.Duration
	total  int
}

// newPacer returns a pacer of total aggregates starting now, or nil when
// spread is not positive. It stops waiting once ctx is done or stop is
// closed.
func newPacer(ctx context.Context, stop <-chan struct{}, total int, spread time.Duration) *pacer {
	if spread <= 0 || total <= 0 {
		return nil
	}
	return &pacer{ctx: ctx, stop: stop, start: time.Now(), length: min(spread, time.Duration(total)*PacePerAggregate), total: total}
}

// pace is window.Flush.Pace: it waits until the time the aggregate after
// the yielded-th is due, or yields the processor when that has passed.
// Iterations of several upstreams may call it at once.
func (p *pacer) pace(yielded int) {
	due := p.start.Add(time.Duration(float64(p.length) * float64(min(yielded, p.total)) / float64(p.total)))
	wait := time.Until(due)
	if wait <= 0 || p.ctx.Err() != nil {
		runtime.Gosched()
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-p.ctx.Done():
	case <-p.stop:
	}
}
