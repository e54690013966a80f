package journal

import (
	"fmt"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/window"
)

// Replay takes every record of the log back into the windows, before
// serving, and logs what it skipped and took. A record it cannot read, or
// of a tenant no longer configured, is skipped and logged; only a failure
// to read the log is an error.
func (j *Journal) Replay() error {
	log := j.cfg.Logger
	start := time.Now()
	defer func() { j.series = nil }() // the streams replayed are gone
	records, skipped := 0, 0
	// A final flush (a clean stop) drained open buckets too: replay then
	// restores every sample as flushed (its tick is math.MaxInt64), and
	// the buckets due after the stop's tick stay kept, ahead of it.
	if t := j.cfg.Log.Checkpoint().Flushed(); t != 0 {
		j.cfg.Ingest.Resume(t)
	}
	damage, err := j.cfg.Log.Replay(func(rec []byte, flushed bool, tick int64) (int64, error) {
		due, err := j.ReplayRecord(rec, flushed, tick)
		if err != nil {
			skipped++
			log.Error("write-ahead log record skipped", "err", err)
			return 0, nil
		}
		records++
		return due, nil
	})
	if err != nil {
		return err
	}
	for _, d := range damage {
		log.Error("write-ahead log records skipped", "err", d, "records", d.Records)
	}
	if records+skipped+len(damage) > 0 {
		log.Info("write-ahead log replayed", "records", records, "skipped", skipped, "took", time.Since(start))
	}
	j.restored = records > 0 || j.cfg.Log.Checkpoint().Flushed() != 0
	return nil
}

// Restored reports whether Replay found what an earlier run of this log
// took: a record, or a flush's checkpoint.
func (j *Journal) Restored() bool { return j.restored }

// ReplayRecord takes one record back into the windows. flushed says that
// a flush drained the windows after the record's batch was in them, and
// tick is the last such flush: what it carried (buckets and rule windows
// due by tick, events, checks, spans decided by then) is not taken again;
// events it carried still go to rule windows due after tick.
// It returns the record's due time. Replay calls it; it must not run
// concurrently with itself.
func (j *Journal) ReplayRecord(rec []byte, flushed bool, tick int64) (int64, error) {
	r, err := ParseRecord(rec)
	if err != nil {
		return 0, err
	}
	if r.Packed {
		if j.frame, err = UnpackFrame(j.frame[:0], &r); err != nil {
			return 0, err
		}
		r.Frame = j.frame
	}
	tn, err := j.cfg.Tenants.Get(r.Tenant)
	if err != nil {
		return 0, fmt.Errorf("journal: write-ahead log record skipped: %w", err)
	}
	seedDue, err := j.replaySeeds(&r, tn)
	if err != nil {
		return 0, err
	}
	d, b := j.dec, &j.batch
	d.Reset(b)
	d.ForTenant(tn)
	b.Tenant, b.Now, b.Drained = tn, r.Now, r.Drained
	d.Series = j.seriesOf(r.Stream)
	if err := d.DecodeDefinitions(r.Defs, tn); err != nil {
		return 0, fmt.Errorf("journal: write-ahead log record: %w", err)
	}
	if r.Kind == Stream {
		_, err = d.DecodeStream(r.Frame, b)
	} else {
		err = d.DecodeSubmit(r.Frame, b)
	}
	if err != nil {
		return 0, fmt.Errorf("journal: write-ahead log record: %w", err)
	}
	j.rememberCall(&r)
	j.dropRefused(r.Refused)
	due := max(j.BatchDue(b, d.Spans, d.SpanResults), seedDue)
	next := j.cfg.Due(0, b.Now)
	sample := true
	if flushed {
		b.Cutoff = tick
		b.Checks = b.Checks[:0]
		// Events a flush sent are not sent again; rule windows it did
		// not drain take them.
		b.EventsFlushed = j.eventHold == 0 || next+j.eventHold <= tick
		sample = next+j.spanHold > tick
	}
	j.cfg.Ingest.Ingest(b)
	if len(d.Spans) > 0 && j.cfg.Spans != nil {
		j.cfg.Spans.ReplaySpans(tn, b.Now, d.Spans, d.SpanResults, b.Cutoff, sample)
	}
	return due, nil
}

// replaySeeds keeps the seeds of r, the record of a forwarded batch,
// again, as the batch's owner kept them when it came, before its items
// (service.Server's seed): a seed later than its context's last sample
// is its previous sample again; the samples of later records replayed
// after it are later still. It returns the tick until which the seeds
// kept need the record (SeedDue), 0 when it has none.
func (j *Journal) replaySeeds(r *Record, tn *window.Tenant) (int64, error) {
	if j.cfg.Seeder == nil || r.Kind != Submit {
		return 0, nil
	}
	seeds, handedOver := codec.ForwardSeeds(r.Frame)
	if seeds == nil {
		return 0, nil
	}
	d, b := j.dec, &j.batch
	d.Reset(b)
	d.ForTenant(tn)
	b.Tenant, b.Now = tn, r.Now
	d.Series = j.seriesOf(0) // peers send full names
	if err := d.DecodeSeeds(seeds, b); err != nil {
		return 0, fmt.Errorf("journal: write-ahead log record's seeds: %w", err)
	}
	j.cfg.Seeder.Seed(b, handedOver)
	latest := LatestSeed(b)
	if latest == 0 {
		return 0, nil
	}
	return j.SeedDue(latest, r.Now), nil
}

// LatestSeed returns the latest timestamp of the seeds b kept (b.Now for
// a seed without one: the Seeder keeps it at b.Now), 0 when it kept none.
func LatestSeed(b *window.Batch) int64 {
	latest := int64(0)
	for i, res := range b.Results {
		if res != window.Accepted {
			continue
		}
		ts := b.Samples[i].Timestamp
		if ts == 0 {
			ts = b.Now
		}
		latest = max(latest, ts)
	}
	return latest
}

// Calls remembers the calls peers forwarded (cluster.Calls).
type Calls interface {
	// Applied remembers call id, applied at the sender's arrival time at
	// (Unix nanoseconds), and answered with ack.
	Applied(id codec.CallID, ack *aggdv1.Ack, at int64)
}

// RememberCalls makes Replay tell c of the forwarded calls the log holds,
// so that one sent again after a restart is not applied twice. Call it
// before Replay.
func (j *Journal) RememberCalls(c Calls) { j.calls = c }

// rememberCall tells j.calls of r, the record of a forwarded call (a
// ForwardRequest with a name), with the ack it got: the items refused
// then are refused again as owner_unavailable, since the record does not
// keep why.
func (j *Journal) rememberCall(r *Record) {
	if j.calls == nil || r.Kind != Submit {
		return
	}
	fw, err := codec.ParseForward(r.Frame)
	if err != nil || fw.Call == (codec.CallID{}) {
		return // a client's Submit
	}
	d := j.dec
	ack := &aggdv1.Ack{Rejected: uint32(len(r.Refused))}
	ack.Accepted = uint32(max(d.NSamples+d.NEvents+d.NChecks+d.NSpans-len(r.Refused), 0))
	for _, it := range r.Refused {
		ack.Rejections = append(ack.Rejections, &aggdv1.Rejection{Kind: it.Kind, Index: uint32(it.Index),
			Reason: window.ReasonOwnerUnavailable.String(), Detail: "refused by its owner before the owner restarted; send it again"})
	}
	j.calls.Applied(fw.Call, ack, r.Now)
}

// seriesOf returns the series references of stream id as the records
// replayed so far declared them; for id 0 (a Submit, or a record before
// references) an empty table.
func (j *Journal) seriesOf(id uint64) *codec.Series {
	if id == 0 {
		j.submit.Reset()
		return &j.submit
	}
	if j.series == nil {
		j.series = make(map[uint64]*codec.Series)
	}
	t := j.series[id]
	if t == nil {
		t = new(codec.Series)
		j.series[id] = t
	}
	return t
}

// dropRefused takes the items refused when the batch came in out of the
// decoded batch: they stay refused, since rates and windows may judge
// differently now.
func (j *Journal) dropRefused(refused []Item) {
	if len(refused) == 0 {
		return
	}
	d, b := j.dec, &j.batch
	gone := map[aggdv1.ItemKind][]bool{
		aggdv1.ItemKind_ITEM_KIND_SAMPLE: make([]bool, len(b.Samples)),
		aggdv1.ItemKind_ITEM_KIND_SPAN:   make([]bool, len(d.Spans)),
		aggdv1.ItemKind_ITEM_KIND_EVENT:  make([]bool, d.NEvents),
	}
	for _, it := range refused {
		if g := gone[it.Kind]; it.Index < uint64(len(g)) {
			g[it.Index] = true
		}
	}
	g := gone[aggdv1.ItemKind_ITEM_KIND_SAMPLE]
	b.Samples = compact(b.Samples, g, identity)
	b.Results = compact(b.Results, g, identity)
	g = gone[aggdv1.ItemKind_ITEM_KIND_SPAN]
	d.Spans = compact(d.Spans, g, identity)
	d.SpanResults = compact(d.SpanResults, g, identity)
	// Events refused at decoding are not in b.Events: EventIndex maps each
	// kept one to its index in the batch.
	b.Events = compact(b.Events, gone[aggdv1.ItemKind_ITEM_KIND_EVENT], func(i int) int { return d.EventIndex[i] })
}

func identity(i int) int { return i }

// compact keeps the elements of s whose batch index, index(i), is not
// gone.
func compact[T any](s []T, gone []bool, index func(int) int) []T {
	kept := s[:0]
	for i := range s {
		if !gone[index(i)] {
			kept = append(kept, s[i])
		}
	}
	clear(s[len(kept):])
	return kept
}
