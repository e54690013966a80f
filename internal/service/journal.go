package service

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	e := &st.entry
	e.Record = journal.Record{Kind: kind, Tenant: st.batch.Tenant.ID, Now: st.batch.Now, Stream: st.stream, Frame: st.frame.Buf}
	e.Series, e.Batch, e.Spans, e.SpanResults = &st.series, &st.batch, st.dec.Spans, st.dec.SpanResults
	e.Seeded = st.seeded
	e.LocalSeeds, e.LocalSeedsAt = st.out.LocalSeeds, st.out.LocalSeedsAt
	err := s.journal.Take(e, func() bool {
		s.ingest(st)
		res, spRes := st.batch.Results, st.dec.SpanResults
		if int(st.ack.Accepted) <= st.out.taken(res, spRes) && st.seeded == 0 && len(e.LocalSeeds) == 0 {
			return false // nothing taken here: no seed kept, no item
		}
		st.refused = st.refused[:0]
		for _, r := range st.ack.Rejections {
			st.refused = append(st.refused, journal.Item{Kind: r.Kind, Index: uint64(r.Index)})
		}
		// Items forwarded are in their owners' logs: replay skips them as
		// it skips the refused ones.
		st.refused = st.out.appendTaken(st.refused, res, spRes)
		e.Record.Refused = st.refused
		return true
	})
	e.Record.Frame = nil // the state's buffer may be dropped
	return s.journaled(err)
}

// journaled turns a failure to record a batch into the status the caller
// returns.
func (s *Server) journaled(err error) error {
	if err != nil {
		s.log.Error("write-ahead log", "err", err)
		// The error names the file: a full disk says which one.
		return status.Errorf(codes.Unavailable, "aggd could not write the batch to its write-ahead log (%v), so it is not acknowledged; send it again", err)
	}
	return nil
}

// ingestConverted is ingestLogged for items that came in another protocol
// (OTLP), b holding the decoded samples (nil for spans only): ingest
// takes them in, then the accepted ones are recorded as the
// aggd.v1 Submit they amount to, so that replay takes them like any other
// batch. Cumulative-to-delta state is not logged: after a restart, the
// first point of each cumulative stream starts it again. In cluster mode
// the items other replicas own go to them first (routeConverted) and are
// neither ingested nor recorded here. OTLP makes no RATE or
// MONOTONIC_COUNT samples, so the forward keeps no seed here to log
// (Outgoing.LocalSeeds).
func (s *Server) ingestConverted(ctx context.Context, tn *window.Tenant, now int64, b *window.Batch, sps []spans.Span, spResults []window.Reason, ingest func()) error {
	var smp []window.Sample
	var results []window.Reason
	if b != nil {
		smp, results = b.Samples, b.Results
	}
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
	e := journal.Entry{Record: journal.Record{Tenant: tn.ID, Now: now}, Converted: true,
		Batch: b, Spans: sps, SpanResults: spResults}
	return s.journaled(s.journal.Take(&e, func() bool { ingest(); return true }))
}
