package service

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/journal"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// ingestLogged ingests the decoded batch and, with a journal, records it
// before returning: the ack that follows means the batch is on disk.
func (s *Server) ingestLogged(ctx context.Context, st *callState, kind journal.Kind) error {
	if !st.peer {
		s.applyTenantRates(&st.batch, st.dec)
	}
	// Forwards wait for their owners outside the journal's bracket, which
	// a flush waits on.
	s.forward(ctx, st)
	j := s.journal
	if j == nil {
		s.ingest(st)
		return nil
	}
	j.Enter()
	s.ingest(st)
	var idx uint64
	var err error
	if res, spRes := st.batch.Results, st.dec.SpanResults; int(st.ack.Accepted) > st.out.taken(res, spRes) {
		st.refused = st.refused[:0]
		for _, r := range st.ack.Rejections {
			st.refused = append(st.refused, journal.Item{Kind: r.Kind, Index: uint64(r.Index)})
		}
		// Items forwarded are in their owners' logs: replay skips them as
		// it skips the refused ones.
		st.refused = st.out.appendTaken(st.refused, res, spRes)
		// The generation does not change before Leave: the definitions
		// it lacks go with the record.
		defs := st.series.LogDefinitions(j.Generation(), st.batch.Samples)
		st.rec = journal.AppendRecord(st.rec[:0], journal.Record{
			Kind: kind, Tenant: st.batch.Tenant.ID, Now: st.batch.Now, Refused: st.refused,
			Stream: st.stream, Defs: defs, Frame: st.frame.Buf,
		})
		idx, err = j.Append(st.rec, j.BatchDue(&st.batch, st.dec.Spans, st.dec.SpanResults))
		if err != nil {
			st.series.Unlog() // not recorded: the definitions are not in the log
		}
		if cap(st.rec) > 4<<20 {
			st.rec = nil
		}
	}
	j.Leave()
	return s.journaled(idx, err)
}

// journaled waits for record idx, appended with err, to be durable, and
// turns a failure into the status the caller returns.
func (s *Server) journaled(idx uint64, err error) error {
	if err == nil && idx != 0 {
		err = s.journal.Wait(idx)
	}
	if err != nil {
		s.log.Error("write-ahead log", "err", err)
		// The error names the file: a full disk says which one.
		return status.Errorf(codes.Unavailable, "aggd could not write the batch to its write-ahead log (%v), so it is not acknowledged; send it again", err)
	}
	return nil
}

// ingestConverted is ingestLogged for items that came in another protocol
// (OTLP): ingest takes them in, then the accepted ones are recorded as the
// aggd.v1 Submit they amount to, so that replay takes them like any other
// batch. Cumulative-to-delta state is not logged: after a restart, the
// first point of each cumulative stream starts it again. In cluster mode
// the items other replicas own go to them first (routeConverted) and are
// neither ingested nor recorded here.
func (s *Server) ingestConverted(ctx context.Context, tn *window.Tenant, now int64, smp []window.Sample, results []window.Reason, sps []spans.Span, spResults []window.Reason, ingest func()) error {
	if s.fwd != nil {
		// Forwards wait for their owners outside the journal's bracket.
		c := routeConverted(ctx, s.fwd, tn, now, smp, results, sps, spResults)
		defer c.put()
		if n, detail := c.undelivered(results, spResults); n > 0 {
			// The request has no per-item answer: refuse all of it,
			// retryably, and take none of it here.
			tn.Rejected[window.ReasonOwnerUnavailable].Add(uint64(n))
			return status.Errorf(codes.Unavailable, "%d items: owner_unavailable: %s", n, detail)
		}
		c.out.hide(results, spResults)
		defer c.out.unhide(results, spResults)
	}
	j := s.journal
	if j == nil {
		ingest()
		return nil
	}
	j.Enter()
	ingest()
	var batch []byte
	for i := range smp {
		if results[i] == window.Accepted {
			batch, _ = codec.AppendBatchSample(batch, nil, &smp[i])
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
		rec := journal.AppendSubmit(make([]byte, 0, len(batch)+len(tn.ID)+24), tn.ID, now, batch)
		idx, err = j.Append(rec, j.Due(now, smp, results, sps, spResults, false, false))
	}
	j.Leave()
	return s.journaled(idx, err)
}
