package journal

import (
	"errors"
	"log/slog"
	"time"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/wal"
	"github.com/aggd/aggd/internal/window"
)

// DueFunc returns a tick by which every window a sample at ts (zero: no
// timestamp) arriving at now falls in is drained (flush.Aggregator.Due).
type DueFunc func(ts, now int64) int64

// Tenants finds the tenant of a record (service.Tenants).
type Tenants interface {
	Get(id string) (*window.Tenant, error)
}

// Ingester takes replayed samples, events and checks (flush.Aggregator).
// A batch it is given carries its Cutoff. Resume, called before replay
// when the log holds a checkpoint, says that an earlier process flushed
// every bucket due at or before tick.
type Ingester interface {
	Ingest(b *window.Batch)
	Resume(tick int64)
}

// SpanReplayer takes replayed spans (spans.Processor): their stats, except
// in windows the flush at cutoff (zero: none) carried, and the spans to
// tail sampling only when sample is set.
type SpanReplayer interface {
	ReplaySpans(t *window.Tenant, now int64, sp []spans.Span, results []window.Reason, cutoff int64, sample bool)
}

// Config configures a Journal.
type Config struct {
	// Log keeps the records.
	Log *wal.Log
	// Due computes when samples are flushed.
	Due DueFunc
	// EventHold and SpanHold bound how long past their bucket events
	// (group sampling) and spans (tail sampling) are held before they are
	// flushed.
	EventHold, SpanHold time.Duration
	// LateWindow is how long a flushed bucket is kept for late samples
	// (window.Config.LateWindow): a batch with samples is kept as much
	// longer, so that replay restores the buckets still kept.
	LateWindow time.Duration
	// Replay: the tenants, the limits the edge decodes with, and where
	// replayed items go. Spans may be nil: spans are then not replayed.
	Tenants Tenants
	Limits  codec.Limits
	Ingest  Ingester
	Spans   SpanReplayer
	// Logger logs what replay skipped and did.
	Logger *slog.Logger
}

// Validate reports a missing or out-of-range setting.
func (c Config) Validate() error {
	switch {
	case c.Log == nil || c.Due == nil || c.Tenants == nil || c.Ingest == nil || c.Logger == nil:
		return errors.New("journal: Log, Due, Tenants, Ingest and Logger are required")
	case c.EventHold < 0 || c.SpanHold < 0 || c.LateWindow < 0:
		return errors.New("journal: holds and the late window must not be negative")
	}
	return c.Limits.Validate()
}

// Journal records ingested batches in a write-ahead log before they are
// acknowledged, with the tick by which flushes carry them, and replays
// them at start. It is safe for concurrent use.
type Journal struct {
	cfg                 Config
	eventHold, spanHold int64
	lateWindow          int64
	dec                 *codec.Decoder // replay's; replay runs alone
	batch               window.Batch
	// series are replay's series references, by stream; submit's are
	// those of one Submit record.
	series map[uint64]*codec.Series
	submit codec.Series
}

// New returns a journal of cfg.
func New(cfg Config) (*Journal, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Journal{cfg: cfg, eventHold: int64(cfg.EventHold), spanHold: int64(cfg.SpanHold),
		lateWindow: int64(cfg.LateWindow), dec: codec.NewDecoder(cfg.Limits)}, nil
}

// Enter and Leave bracket ingesting a batch and appending its record, so
// that a flush's rotation falls between batches.
func (j *Journal) Enter() { j.cfg.Log.Enter() }

// Leave ends what Enter began.
func (j *Journal) Leave() { j.cfg.Log.Leave() }

// Generation returns the write-ahead log generation the records appended
// between Enter and Leave go to. A record's series definitions must be in
// its own generation: generations are removed whole, oldest first.
func (j *Journal) Generation() uint64 { return j.cfg.Log.Generation() }

// Append writes rec, which waits for flush ticks up to due, and returns
// its index for Wait.
func (j *Journal) Append(rec []byte, due int64) (uint64, error) { return j.cfg.Log.Append(rec, due) }

// Wait returns once record idx is durable.
func (j *Journal) Wait(idx uint64) error { return j.cfg.Log.Wait(idx) }

// BatchDue returns the tick by which everything the decoded batch b and
// its spans brought has been flushed.
// An event with a timestamp waits for the rule windows holding it too.
func (j *Journal) BatchDue(b *window.Batch, sps []spans.Span, spResults []window.Reason) int64 {
	due := j.Due(b.Now, b.Samples, b.Results, sps, spResults, len(b.Checks) > 0, len(b.Events) > 0)
	for i := range b.Events {
		if ts := b.Events[i].Timestamp; ts != 0 {
			due = max(due, j.cfg.Due(ts, b.Now))
		}
	}
	return due
}

// Due returns the tick by which the accepted samples and spans, and any
// checks and events, arriving at now have been flushed, and the buckets
// of the samples are no longer kept for late samples: the first
// checkpoint after that may remove the record, and replay restores the
// buckets still kept until then.
func (j *Journal) Due(now int64, smp []window.Sample, results []window.Reason, sps []spans.Span, spResults []window.Reason, checks, events bool) int64 {
	due, untimed := int64(0), false
	for i := range smp {
		if results[i] != window.Accepted {
			continue
		}
		if ts := smp[i].Timestamp; ts != 0 {
			due = max(due, j.cfg.Due(ts, now))
		} else {
			untimed = true
		}
	}
	next := j.cfg.Due(0, now)
	if untimed {
		due = max(due, next)
	}
	if due != 0 {
		// A bucket is kept while its due tick plus the late window is at
		// or after the watermark (window.Shard.Drain): one past that.
		due += j.lateWindow + 1
	}
	if checks {
		due = max(due, next)
	}
	if events {
		due = max(due, next+j.eventHold)
	}
	for i := range sps {
		if spResults[i] == window.Accepted {
			due = max(due, j.cfg.Due(sps[i].End(), now), next+j.spanHold)
		}
	}
	return due
}

// Holds returns how long, past their buckets, events may wait in group
// sampling and spans in tail sampling before they are flushed: the
// policy's quiet times and two intervals more. Traces or event groups that
// stay busy for longer extend their hold past this.
func Holds(p *spans.Policy, interval time.Duration) (eventHold, spanHold time.Duration) {
	spanHold = spans.DefaultDataTTL
	if p != nil {
		if len(p.Logging) > 0 {
			eventHold = p.LoggingTTL + 2*interval
		}
		spanHold = max(p.DataTTL, spanHold)
	}
	return eventHold, spanHold + 2*interval
}
