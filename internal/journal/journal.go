package journal

import (
	"errors"
	"log/slog"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

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
	// Drained returns the tick of the last drain of the windows (or of
	// Resume): records keep it, since an untimed sample stamped before it
	// went to the bucket open after it.
	Drained() int64
}

// Seeder keeps samples as their contexts' previous samples, without
// aggregating them (flush.Aggregator.Seed): the seeds of forwarded
// batches (aggd.v1.ForwardRequest.seeds).
type Seeder interface {
	Seed(b *window.Batch, handedOver bool)
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
	// Seeder, if set, keeps the seeds of replayed forwarded batches
	// (flush.Aggregator.Seed); without it they are not replayed.
	Seeder Seeder
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
	calls               Calls
	dec                 *codec.Decoder // replay's; replay runs alone
	batch               window.Batch
	// series are replay's series references, by stream; submit's are
	// those of one Submit record.
	series map[uint64]*codec.Series
	submit codec.Series
	frame  []byte // replay's unpacked frame
	// restored is set by Replay when the log held an earlier run's
	// records or checkpoint.
	restored bool
}

// New returns a journal of cfg.
func New(cfg Config) (*Journal, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	j := &Journal{cfg: cfg, eventHold: int64(cfg.EventHold), spanHold: int64(cfg.SpanHold),
		lateWindow: int64(cfg.LateWindow), dec: codec.NewDecoder(cfg.Limits)}
	j.dec.Histograms = true // OTLP histogram points and peers' are logged whole
	return j, nil
}

// Rotate ends the log's current generation once every batch Take is
// ingesting has been recorded, calls drain, which drains the windows,
// before Take lets any batch in again, and returns the generation's id:
// every record of generations up to it was in the windows the drain
// took, and none after it (flush.WAL).
func (j *Journal) Rotate(drain func()) (uint64, error) { return j.cfg.Log.Rotate(drain) }

// Record notes that the flush of tick, drained after Rotate returned gen,
// has its payloads safely queued: the records it carried go, except those
// whose buckets are still kept for late samples. final says it was the
// final flush, which drained everything (flush.WAL).
func (j *Journal) Record(gen uint64, tick int64, final bool) error {
	return j.cfg.Log.Record(gen, tick, final)
}

// Entry is one batch as the edge hands it to Take: the record it builds
// and the decoded items the record's due tick and series definitions come
// from. The edge keeps it with its call state: Take reuses its buffer.
type Entry struct {
	// Record is the batch's record; Take fills its Defs from Series.
	Record Record
	// Converted says the items came in another protocol (OTLP): Take
	// records the accepted samples and spans as the aggd.v1 Submit they
	// amount to, with nothing refused, and nothing when none was
	// accepted. Record's Kind, Refused, Stream and Frame are then unused.
	Converted bool
	// Series, if set, are the call's series references: the definitions
	// the frame's references need that the record's generation lacks.
	Series *codec.Series
	// Batch (nil: none) and Spans are the decoded items, with their
	// results once ingested.
	Batch       *window.Batch
	Spans       []spans.Span
	SpanResults []window.Reason
	// Seeded is the latest timestamp of the seeds of the forwarded batch
	// kept, 0 when none: the record, which holds them, is then kept until
	// SeedDue.
	Seeded int64
	// LocalSeeds (empty: none) are the samples kept as their contexts'
	// previous samples for this replica, the contexts' next owner, as the
	// seeds field of a ForwardRequest (service.Outgoing.LocalSeeds), and
	// LocalSeedsAt their latest timestamp. Take logs them in a record of
	// their own, kept until SeedDue, which replay takes as a peer's
	// forward of seeds only.
	LocalSeeds   []byte
	LocalSeedsAt int64

	buf []byte // the encoded record
}

// Take ingests a batch and records it before it returns, so that the ack
// that follows means the batch is on disk. ingest takes the batch in,
// fills e.Record.Refused, and reports whether anything is left to record
// (false when every item was refused or went to another replica).
// Ingesting and appending are one step for the flusher: its Rotate falls
// between batches. Take returns once the record is as durable as the
// log's fsync policy makes it, or why it was not written. On a nil
// Journal it only ingests.
func (j *Journal) Take(e *Entry, ingest func() bool) error {
	if j == nil {
		ingest()
		return nil
	}
	l := j.cfg.Log
	// A batch with spans may wait for other replicas while inside (the
	// trace's owner forwards their stats): not a leaf.
	ticket := l.Enter(len(e.Spans) == 0)
	var idx uint64
	var err error
	if ingest() {
		idx, err = j.append(e)
	}
	l.Leave(ticket)
	if err == nil && idx != 0 {
		err = l.Wait(idx)
	}
	return err
}

// append encodes e's record and appends it; 0 and no error when there is
// nothing to record. Call it between the log's Enter and Leave: the
// generation does not change before Leave, and the definitions a record
// lacks must be in its own generation, since generations are removed
// whole, oldest first.
func (j *Journal) append(e *Entry) (uint64, error) {
	idx, err := j.appendBatch(e)
	if err != nil || len(e.LocalSeeds) == 0 {
		return idx, err
	}
	// Append has written the batch's record: its buffer is free.
	now := e.Record.Now
	e.buf = AppendSubmitFrame(e.buf[:0], e.Record.Tenant, now, j.cfg.Ingest.Drained(), e.LocalSeeds)
	seedIdx, err := j.cfg.Log.Append(e.buf, j.SeedDue(e.LocalSeedsAt, now))
	return max(idx, seedIdx), err
}

// appendBatch appends the record of e's batch; 0 and no error when there
// is nothing to record.
func (j *Journal) appendBatch(e *Entry) (uint64, error) {
	// No drain runs between Enter and Leave.
	now, drained := e.Record.Now, j.cfg.Ingest.Drained()
	e.Record.Drained = drained
	var smp []window.Sample
	var results []window.Reason
	if e.Batch != nil {
		smp, results = e.Batch.Samples, e.Batch.Results
	}
	if e.Converted {
		var batch []byte
		for i := range smp {
			if results[i] == window.Accepted {
				batch, _ = codec.AppendBatchSample(batch, nil, &smp[i])
			}
		}
		var span []byte // one span's encoding, reused
		for i := range e.Spans {
			if e.SpanResults[i] == window.Accepted {
				span = codec.AppendSpan(span[:0], &e.Spans[i])
				batch = protowire.AppendTag(batch, 4, protowire.BytesType)
				batch = protowire.AppendBytes(batch, span)
			}
		}
		if len(batch) == 0 {
			return 0, nil
		}
		rec := AppendSubmit(make([]byte, 0, len(batch)+len(e.Record.Tenant)+32), e.Record.Tenant, now, drained, batch)
		return j.cfg.Log.Append(rec, j.Due(max(now, drained), smp, results, e.Spans, e.SpanResults, false, false))
	}
	if e.Series != nil {
		e.Record.Defs = e.Series.LogDefinitions(j.cfg.Log.Generation(), smp)
	}
	var dense bool
	e.buf, dense = appendRecord(e.buf[:0], e.Record, e.Series)
	// An untimed sample stamped before the last drain went to a bucket
	// open after it: its due tick is no earlier than that bucket's.
	due := j.Due(max(now, drained), smp, results, e.Spans, e.SpanResults, false, false)
	if e.Batch != nil {
		due = max(due, j.BatchDue(e.Batch, e.Spans, e.SpanResults))
	}
	if e.Seeded != 0 {
		due = max(due, j.SeedDue(e.Seeded, now))
	}
	add := j.cfg.Log.Append
	if dense {
		add = j.cfg.Log.AppendDense // packed samples: s2 would not shrink them
	}
	idx, err := add(e.buf, due)
	if err != nil && e.Series != nil {
		e.Series.Unlog() // not recorded: the definitions are not in the log
	}
	if cap(e.buf) > 4<<20 {
		e.buf = nil // do not pin one huge record
	}
	return idx, err
}

// BatchDue returns the tick by which everything the decoded batch b and
// its spans brought has been flushed, and the buckets and rule windows
// they went to are no longer kept for late items.
// An event with a timestamp waits for the rule windows holding it too.
func (j *Journal) BatchDue(b *window.Batch, sps []spans.Span, spResults []window.Reason) int64 {
	due := j.Due(b.Now, b.Samples, b.Results, sps, spResults, len(b.Checks) > 0, len(b.Events) > 0)
	for i := range b.Events {
		if ts := b.Events[i].Timestamp; ts != 0 {
			due = max(due, j.cfg.Due(ts, b.Now)+j.lateWindow+1)
		}
	}
	return due
}

// SeedDue returns the tick until which the record of seeds kept at now,
// the latest of them at ts, is kept: the seeds' buckets and the bucket
// open at now have been flushed and are no longer kept for late samples.
// A seed stands for a sample of its context that a single aggd would
// hold in its log as long as its bucket is kept; its new owner keeps it
// at least through the bucket open when it arrived, in which the
// context's next sample falls when it reports every interval, and whose
// own record keeps that sample as the next one's previous sample.
func (j *Journal) SeedDue(ts, now int64) int64 {
	return max(j.cfg.Due(ts, now), j.cfg.Due(0, now)) + j.lateWindow + 1
}

// Due returns the tick by which the accepted samples and spans, and any
// checks and events, arriving at now have been flushed, and the buckets
// and rule windows they went to (spans' stats, events' rules) are no
// longer kept for late items: the first checkpoint after that may remove
// the record, and replay restores the buckets and windows still kept
// until then.
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
	// Events feed rule windows, and spans their stats buckets and rule
	// windows: those are kept for late items as long as buckets are.
	if events {
		due = max(due, next+j.eventHold, next+j.lateWindow+1)
	}
	for i := range sps {
		if spResults[i] == window.Accepted {
			due = max(due, j.cfg.Due(sps[i].End(), now)+j.lateWindow+1, next+j.spanHold)
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
