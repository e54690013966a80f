package flush

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/aggd/aggd/internal/window"
)

// Exporter sends one flush upstream. Export must not keep f, or anything f
// points to, after it returns: the buckets are reused.
type Exporter interface {
	Export(ctx context.Context, f *window.Flush) error
}

// ExporterFunc adapts a function to Exporter.
type ExporterFunc func(ctx context.Context, f *window.Flush) error

// Export calls fn.
func (fn ExporterFunc) Export(ctx context.Context, f *window.Flush) error { return fn(ctx, f) }

// TenantLister lists the tenants; those active since the last flush get
// an aggd.up check.
type TenantLister interface {
	List() []*window.Tenant
}

// Observer is told about every flush.
type Observer interface {
	ObserveFlush(seconds float64, contexts int, err error)
}

// Config configures a Flusher.
type Config struct {
	// Interval is the tick period; ticks fall on multiples of it since the
	// Unix epoch.
	Interval time.Duration
	// Timeout bounds one Export; zero means Interval. With a WAL it does
	// not: a flush waits for room in the send queue for as long as it
	// takes (ingest is pushed back meanwhile), until Shutdown's deadline,
	// so that no payload the log would have to replay is dropped.
	Timeout time.Duration
	// Hostname is the host of the aggd.up checks.
	Hostname string
	// Observer, if set, is told about every flush.
	Observer Observer
	// Tracer, if set, traces every flush (span aggd.flush).
	Tracer trace.Tracer
	// WAL, if set, is told what every flush carried.
	WAL WAL
	// Spread bounds how long a flush spends encoding its aggregates: a
	// flush of n aggregates is paced over the least of n ×
	// PacePerAggregate and Spread, so that its encoding does not take a
	// core in one burst. Zero means a quarter of Interval (and at most
	// half of Timeout without a WAL); negative turns pacing off. The
	// final flush is not paced, and Shutdown ends the pacing of a flush
	// under way.
	Spread time.Duration
}

// Validate reports a setting out of range.
func (c Config) Validate() error {
	if c.Interval <= 0 || c.Timeout < 0 {
		return errors.New("flush: interval must be positive and timeout not negative")
	}
	return nil
}

// Flusher drains an Aggregator on aligned ticks and exports what is due.
// Start and Shutdown may be called once each.
type Flusher struct {
	agg     *Aggregator
	exp     Exporter
	tenants TenantLister
	cfg     Config
	log     *slog.Logger

	stop     chan struct{}
	done     chan struct{}
	started  bool
	stopOnce sync.Once

	mu sync.Mutex // serialises flushes; guards f and walHeld
	f  window.Flush

	walHeld bool // a flush failed: the log keeps everything from then on
	// undelivered counts the aggregates, events and checks of failed
	// flushes: acked data that is not on its way upstream.
	undelivered int

	// abort ends the exports of tick flushes once Shutdown's deadline has
	// passed.
	aborted context.Context
	abort   context.CancelFunc

	// seen is each tenant's items, accepted and refused, at the last
	// flush: a tenant whose count moved since was active and gets aggd.up.
	seen map[*window.Tenant]uint64
}

// WAL is a write-ahead log of ingested batches that learns which of them
// flushes have carried (journal.Journal).
type WAL interface {
	// Rotate returns the last generation of records whose batches are in
	// the windows, and calls drain, which drains them, before any other
	// batch is taken in: a batch either was in the windows drain took and
	// its record in a generation up to the one returned, or neither.
	Rotate(drain func()) (uint64, error)
	// Record notes that the flush of tick, drained after Rotate returned
	// gen, was exported; final says it was the final flush, which drained
	// everything.
	Record(gen uint64, tick int64, final bool) error
}

// NewFlusher returns a flusher of agg into exp, or why cfg is not valid.
func NewFlusher(agg *Aggregator, exp Exporter, tenants TenantLister, cfg Config, log *slog.Logger) (*Flusher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = cfg.Interval
	}
	if cfg.Spread == 0 {
		cfg.Spread = cfg.Interval / 4
		if cfg.WAL == nil {
			cfg.Spread = min(cfg.Spread, cfg.Timeout/2)
		}
	}
	if cfg.Tracer == nil {
		cfg.Tracer = noop.NewTracerProvider().Tracer("aggd")
	}
	fl := &Flusher{agg: agg, exp: exp, tenants: tenants, cfg: cfg, log: log, stop: make(chan struct{}), done: make(chan struct{}),
		seen: map[*window.Tenant]uint64{}}
	fl.aborted, fl.abort = context.WithCancel(context.Background())
	return fl, nil
}

// Start starts the ticker goroutine. It exits when Shutdown is called.
func (fl *Flusher) Start(context.Context) error {
	fl.started = true
	go fl.run()
	return nil
}

// NextTick returns the first multiple of interval since the Unix epoch
// strictly after now.
func NextTick(now time.Time, interval time.Duration) time.Time {
	iv := int64(interval)
	return time.Unix(0, (now.UnixNano()/iv+1)*iv)
}

func (fl *Flusher) run() {
	defer close(fl.done)
	for {
		tick := NextTick(time.Now(), fl.cfg.Interval)
		t := time.NewTimer(time.Until(tick))
		select {
		case <-fl.stop:
			t.Stop()
			return
		case <-t.C:
		}
		fl.Flush(tick, false)
	}
}

// Flush drains what is due at tick (everything when final is set),
// exports it and releases it. Ticks normally call it; Shutdown calls it
// with final.
func (fl *Flusher) Flush(tick time.Time, final bool) { fl.flush(context.Background(), tick, final) }

// flush is Flush within ctx: its export ends at ctx's deadline if that
// comes before the export timeout.
func (fl *Flusher) flush(ctx context.Context, tick time.Time, final bool) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	start := time.Now()
	ctx, span := fl.cfg.Tracer.Start(ctx, "aggd.flush",
		trace.WithAttributes(attribute.Int64("aggd.tick", tick.Unix()), attribute.Bool("aggd.final", final)))
	defer span.End()
	f := &fl.f
	f.Time = tick.UnixNano()
	var gen uint64
	drain := func() { fl.agg.drain(f.Time, final, f) }
	if fl.cfg.WAL != nil {
		var err error
		if gen, err = fl.cfg.WAL.Rotate(drain); err != nil {
			fl.log.Error("write-ahead log rotation", "err", err)
		}
	} else {
		drain()
	}
	fl.agg.fillZeros(f) // batches come in meanwhile
	f.SortExact()       // and meanwhile too
	for _, tn := range fl.tenants.List() {
		tn.EventsInWindow.Store(0) // a new window of events_per_window
		if n := items(tn); n != fl.seen[tn] {
			fl.seen[tn] = n
			f.Checks = append(f.Checks, window.ServiceCheck{Tenant: tn, Name: "aggd.up", Status: window.StatusOK, Host: fl.cfg.Hostname, Timestamp: f.Time})
		}
	}
	var cancel context.CancelFunc
	if fl.cfg.WAL != nil {
		// Wait for the queue rather than drop: only Shutdown's deadline
		// ends the wait.
		ctx, cancel = context.WithCancel(ctx)
		stop := context.AfterFunc(fl.aborted, cancel)
		defer stop()
	} else {
		ctx, cancel = context.WithTimeout(ctx, fl.cfg.Timeout)
	}
	points := 0
	for _, b := range f.Buckets {
		points += b.Len()
	}
	if p := newPacer(ctx, fl.stop, points+len(f.Extra), fl.cfg.Spread); p != nil && !final {
		f.Pace = p.pace
	}
	err := fl.exp.Export(ctx, f)
	cancel()
	f.Pace = nil
	if err != nil {
		fl.undelivered += points + len(f.Events) + len(f.Checks)
	}
	span.SetAttributes(attribute.Int("aggd.contexts", points), attribute.Int("aggd.events", len(f.Events)), attribute.Int("aggd.checks", len(f.Checks)))
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	if o := fl.cfg.Observer; o != nil {
		o.ObserveFlush(time.Since(start).Seconds(), points, err)
	}
	if err != nil {
		fl.log.Error("flush export failed", "tick", tick, "contexts", points, "err", err)
	} else {
		fl.log.Debug("flushed", "tick", tick, "buckets", len(f.Buckets), "contexts", points,
			"events", len(f.Events), "checks", len(f.Checks), "duration", time.Since(start))
	}
	fl.record(gen, f.Time, final, err)
	f.Release()
	f.Events, f.Checks = nil, nil
}

// items returns the items tn sent so far, accepted and refused.
func items(tn *window.Tenant) uint64 {
	n := tn.Accepted.Load()
	for r := range tn.Rejected {
		n += tn.Rejected[r].Load()
	}
	return n
}

// record tells the log what an exported flush carried. After a failed
// export the log keeps every record, so that a restart replays what the
// failure lost.
func (fl *Flusher) record(gen uint64, tick int64, final bool, err error) {
	if fl.cfg.WAL == nil || fl.walHeld {
		return
	}
	if err != nil {
		fl.walHeld = true
		fl.log.Error("a flush failed: the write-ahead log keeps every record from now on; restart aggd to replay what was lost", "tick", time.Unix(0, tick))
		return
	}
	if err := fl.cfg.WAL.Record(gen, tick, final); err != nil {
		fl.walHeld = true
		fl.log.Error("write-ahead log checkpoint failed: it keeps every record from now on", "err", err)
	}
}

// Shutdown stops the ticker and flushes everything held, open buckets
// included, within ctx's deadline: a flush waiting for room in the send
// queue goes on waiting until then. It returns an error naming how much
// acked data some flush failed to hand on (after a failure the write-ahead
// log keeps its batches for the next start on the same directory). It is
// idempotent; later calls flush again (usually nothing).
func (fl *Flusher) Shutdown(ctx context.Context) error {
	fl.stopOnce.Do(func() { close(fl.stop) })
	stop := context.AfterFunc(ctx, fl.abort)
	defer stop()
	if fl.started {
		<-fl.done // a tick's flush waiting for the queue ends at ctx's deadline
	}
	fl.flush(ctx, time.Now(), true)
	fl.mu.Lock()
	defer fl.mu.Unlock()
	switch {
	case fl.undelivered == 0:
		return nil
	case fl.cfg.WAL != nil:
		return fmt.Errorf("flush: %d aggregates, events and checks acked were not handed to the send queue; the write-ahead log keeps their batches: start aggd again on the same --wal-dir to send them", fl.undelivered)
	default:
		return fmt.Errorf("flush: %d aggregates, events and checks acked were not handed to the send queue and are lost", fl.undelivered)
	}
}
