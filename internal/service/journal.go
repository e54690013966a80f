package service

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// Journal is the write-ahead log that batches are recorded in before they
// are acknowledged (wal.Log).
type Journal interface {
	// Enter and Leave bracket ingesting a batch and appending its record.
	Enter()
	Leave()
	// Append writes a record whose contents wait for flush ticks up to
	// due, and returns its index.
	Append(rec []byte, due int64) (uint64, error)
	// Wait returns once record idx is durable.
	Wait(idx uint64) error
}

// DueFunc returns a tick by which every window a sample at ts (zero: no
// timestamp) arriving at now falls in is drained.
type DueFunc func(ts, now int64) int64

// journal is the server's write-ahead logging.
type journal struct {
	log Journal
	due DueFunc
	// eventHold and spanHold bound how long events (group sampling) and
	// spans (tail sampling) are held before they are flushed.
	eventHold, spanHold int64
}

// SetJournal makes s record every batch it takes in j before acking it.
// due computes when samples are flushed; eventHold and spanHold bound how
// long events and spans are held past that. Call it before serving.
func (s *Server) SetJournal(j Journal, due DueFunc, eventHold, spanHold time.Duration) {
	s.journal = &journal{log: j, due: due, eventHold: int64(eventHold), spanHold: int64(spanHold)}
}

// Record kinds: which request message the frame is.
const (
	recordStream byte = 1
	recordSubmit byte = 2
	recordV1     byte = 1
)

var errJournal = status.Error(codes.Unavailable, "aggd could not write the batch to its write-ahead log, so it is not acknowledged; send it again")

// ingestLogged ingests the decoded batch and, with a journal, records it
// before returning: the ack that follows means the batch is on disk.
func (s *Server) ingestLogged(st *callState, kind byte) error {
	j := s.journal
	if j == nil {
		s.ingest(st)
		return nil
	}
	j.log.Enter()
	s.ingest(st)
	var idx uint64
	var err error
	if st.ack.Accepted > 0 {
		st.rec = encodeRecord(st.rec[:0], st, kind)
		idx, err = j.log.Append(st.rec, j.recordDue(st))
		if cap(st.rec) > 4<<20 {
			st.rec = nil
		}
	}
	j.log.Leave()
	return s.journaled(idx, err)
}

// journaled waits for record idx, appended with err, to be durable, and
// turns a failure into the status the caller returns.
func (s *Server) journaled(idx uint64, err error) error {
	if err == nil && idx != 0 {
		err = s.journal.log.Wait(idx)
	}
	if err != nil {
		s.log.Error("write-ahead log", "err", err)
		return errJournal
	}
	return nil
}

// ingestConverted is ingestLogged for items that came in another protocol
// (OTLP): ingest takes them in, then the accepted ones are recorded as the
// aggd.v1 Submit they amount to, so that replay takes them like any other
// batch. Cumulative-to-delta state is not logged: after a restart, the
// first point of each cumulative stream starts it again.
func (s *Server) ingestConverted(tn *window.Tenant, now int64, smp []window.Sample, results []window.Reason, sps []spans.Span, spResults []window.Reason, ingest func()) error {
	j := s.journal
	if j == nil {
		ingest()
		return nil
	}
	j.log.Enter()
	ingest()
	var batch []byte
	for i := range smp {
		if results[i] == window.Accepted && smp[i].Hist != nil {
			batch = appendHistSamples(batch, &smp[i])
		} else if results[i] == window.Accepted {
			batch = protowire.AppendTag(batch, 1, protowire.BytesType)
			batch = protowire.AppendBytes(batch, codec.AppendSample(nil, &smp[i]))
		}
	}
	for i := range sps {
		if spResults[i] == window.Accepted {
			batch = protowire.AppendTag(batch, 4, protowire.BytesType)
			batch = protowire.AppendBytes(batch, codec.AppendSpan(nil, &sps[i]))
		}
	}
	var idx uint64
	var err error
	if len(batch) > 0 {
		rec := append(make([]byte, 0, len(batch)+len(tn.ID)+24), recordV1, recordSubmit)
		rec = protowire.AppendString(rec, tn.ID)
		rec = protowire.AppendVarint(rec, uint64(now))
		rec = protowire.AppendVarint(rec, 0) // nothing refused
		rec = protowire.AppendTag(rec, 1, protowire.BytesType)
		rec = protowire.AppendBytes(rec, batch)
		idx, err = j.log.Append(rec, j.itemsDue(now, smp, results, sps, spResults, false, false))
	}
	j.log.Leave()
	return s.journaled(idx, err)
}

// encodeRecord appends the record of the batch in st: the frame as it
// came, with what replaying it needs and cannot tell from the frame, the
// tenant, the arrival time, and the items refused after decoding.
func encodeRecord(b []byte, st *callState, kind byte) []byte {
	b = append(b, recordV1, kind)
	b = protowire.AppendString(b, st.batch.Tenant.ID)
	b = protowire.AppendVarint(b, uint64(st.batch.Now))
	b = protowire.AppendVarint(b, uint64(len(st.ack.Rejections)))
	for _, r := range st.ack.Rejections {
		b = protowire.AppendVarint(b, uint64(r.Kind))
		b = protowire.AppendVarint(b, uint64(r.Index))
	}
	return append(b, st.frame.Buf...)
}

// recordDue returns the tick by which everything the batch in st brought
// has been flushed.
func (j *journal) recordDue(st *callState) int64 {
	b := &st.batch
	return j.itemsDue(b.Now, b.Samples, b.Results, st.dec.Spans, st.dec.SpanResults, len(b.Checks) > 0, len(b.Events) > 0)
}

// itemsDue returns the tick by which the accepted samples and spans, and
// any checks and events, arriving at now have been flushed.
func (j *journal) itemsDue(now int64, smp []window.Sample, results []window.Reason, sps []spans.Span, spResults []window.Reason, checks, events bool) int64 {
	due, untimed := int64(0), false
	for i := range smp {
		if results[i] != window.Accepted {
			continue
		}
		if ts := smp[i].Timestamp; ts != 0 {
			due = max(due, j.due(ts, now))
		} else {
			untimed = true
		}
	}
	next := j.due(0, now)
	if untimed || checks {
		due = max(due, next)
	}
	if events {
		due = max(due, next+j.eventHold)
	}
	for i := range sps {
		if spResults[i] == window.Accepted {
			due = max(due, j.due(sps[i].End(), now), next+j.spanHold)
		}
	}
	return due
}

// cutoffSetter is the aggregator's replay cutoff (flush.Aggregator).
type cutoffSetter interface {
	SetReplayCutoff(tick int64)
}

// spanReplayer takes replayed spans: their stats always, the spans to
// tail sampling only when sample is set (spans.Processor).
type spanReplayer interface {
	ReplaySpans(t *window.Tenant, now int64, sp []spans.Span, results []window.Reason, sample bool)
}

// Replay takes one record of the write-ahead log back into the windows,
// before serving. flushed says that a flush drained the windows after the
// record's batch was in them, and tick is the last such flush: what it
// carried (buckets due by tick, events, checks, spans decided by then) is
// not taken again. Replay returns the record's due time. A record of a
// tenant no longer configured is skipped and reported.
func (s *Server) Replay(rec []byte, flushed bool, tick int64) (int64, error) {
	j := s.journal
	if j == nil {
		return 0, errors.New("service: replay without a journal")
	}
	if len(rec) < 2 || rec[0] != recordV1 || (rec[1] != recordStream && rec[1] != recordSubmit) {
		return 0, errors.New("service: write-ahead log record of an unknown version or kind")
	}
	kind, p := rec[1], rec[2:]
	id, n := protowire.ConsumeString(p)
	if n < 0 {
		return 0, codec.MalformedError{What: "write-ahead log record"}
	}
	p = p[n:]
	now, n := protowire.ConsumeVarint(p)
	if n < 0 {
		return 0, codec.MalformedError{What: "write-ahead log record"}
	}
	p = p[n:]
	nrej, n := protowire.ConsumeVarint(p)
	if n < 0 || nrej > uint64(len(p)) {
		return 0, codec.MalformedError{What: "write-ahead log record"}
	}
	p = p[n:]
	type item struct{ kind, index uint64 }
	refused := make([]item, 0, nrej)
	for range nrej {
		k, n1 := protowire.ConsumeVarint(p)
		if n1 < 0 {
			return 0, codec.MalformedError{What: "write-ahead log record"}
		}
		i, n2 := protowire.ConsumeVarint(p[n1:])
		if n2 < 0 {
			return 0, codec.MalformedError{What: "write-ahead log record"}
		}
		p = p[n1+n2:]
		refused = append(refused, item{k, i})
	}
	tn, err := s.tenants.Get(id)
	if err != nil {
		return 0, fmt.Errorf("service: write-ahead log record skipped: %w", err)
	}
	st := s.getState()
	defer s.putState(st)
	d, b := st.dec, &st.batch
	d.Reset(b)
	d.ForTenant(tn)
	b.Tenant, b.Now = tn, int64(now)
	if kind == recordStream {
		_, err = d.DecodeStream(p, b)
	} else {
		err = d.DecodeSubmit(p, b)
	}
	if err != nil {
		return 0, fmt.Errorf("service: write-ahead log record: %w", err)
	}
	// Items refused when the batch came in stay refused: rates and
	// windows may judge differently now.
	var gone []bool
	for _, r := range refused {
		switch aggdv1.ItemKind(r.kind) {
		case aggdv1.ItemKind_ITEM_KIND_SAMPLE:
			if r.index < uint64(len(b.Results)) {
				b.Results[r.index] = window.ReasonDuplicateSequence
			}
		case aggdv1.ItemKind_ITEM_KIND_SPAN:
			if r.index < uint64(len(d.SpanResults)) {
				d.SpanResults[r.index] = window.ReasonDuplicateSequence
			}
		case aggdv1.ItemKind_ITEM_KIND_EVENT:
			if gone == nil {
				gone = make([]bool, d.NEvents)
			}
			if r.index < uint64(len(gone)) {
				gone[r.index] = true
			}
		}
	}
	if gone != nil {
		kept := b.Events[:0]
		for i := range b.Events {
			if !gone[d.EventIndex[i]] {
				kept = append(kept, b.Events[i])
			}
		}
		b.Events = kept
	}
	due := j.recordDue(st)
	next := j.due(0, b.Now)
	sample := true
	cut, _ := s.ing.(cutoffSetter)
	if flushed {
		if cut != nil {
			cut.SetReplayCutoff(tick)
			defer cut.SetReplayCutoff(0)
		}
		b.Checks = b.Checks[:0]
		if j.eventHold == 0 || next+j.eventHold <= tick {
			b.Events = b.Events[:0]
		}
		sample = next+j.spanHold > tick
	}
	s.ing.Ingest(b)
	if len(d.Spans) > 0 {
		if sr, ok := s.spanIng.(spanReplayer); ok {
			sr.ReplaySpans(tn, b.Now, d.Spans, d.SpanResults, sample)
		}
	}
	return due, nil
}
