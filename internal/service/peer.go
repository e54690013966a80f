package service

import (
	"context"
	"crypto/subtle"
	"fmt"
	"slices"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/journal"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// Forwarder sends the items of a batch that other replicas own to their
// owners (cluster.Forwarder).
type Forwarder interface {
	// Forward sends the accepted items of o that another replica owns,
	// waits for the owners' acks and records each outcome in o. It may
	// block while an owner is slow or unreachable, up to its own bound
	// or until ctx ends.
	Forward(ctx context.Context, o *Outgoing)
}

// Outgoing is what a Forwarder sees of a batch, and where it writes what
// the owners answered. Its slices are the batch's; the Forwarder must not
// keep them.
type Outgoing struct {
	Tenant *window.Tenant
	// Now is the batch's arrival time (unix nanoseconds).
	Now         int64
	Samples     []window.Sample
	Results     []window.Reason
	Details     []string
	Spans       []spans.Span
	SpanResults []window.Reason
	SpanDetails []string
	// Events, taken here, have their logging rule groups placed: an
	// event a group owner did not take has its entry of EventResults
	// (Accepted on entry, as long as Events) set to why, with a detail
	// in EventDetails.
	Events       []window.Event
	EventResults []window.Reason
	EventDetails []string
	// SampleSent and SpanSent have one entry per item. Forward sets an
	// entry for each item whose owner is another replica, and sets the
	// item's result to the owner's (Accepted when the owner took it) or
	// to why it could not be delivered, with a detail.
	SampleSent, SpanSent []bool
	// Peer is set when a peer forwarded the batch here, the owner of its
	// items: only the aggregation rule groups of its samples and spans
	// remain to be placed (a sample another owner refuses for them is refused
	// here too), and no item is marked sent.
	Peer bool
	// LocalSeeds, set by Forward, are the samples this replica kept as
	// the previous samples of contexts it is to own (their owner now is
	// another replica), as the seeds field of a ForwardRequest, so that
	// the journal logs them as it logs a peer's seeds; empty when none.
	// LocalSeedsAt is their latest timestamp (journal.LatestSeed). The
	// buffer is the Outgoing's, reused by the next batch.
	LocalSeeds   []byte
	LocalSeedsAt int64
}

// forward hands st's batch to the forwarder: all of it, or, for a batch
// a peer forwarded, what its samples feed in rule groups other replicas
// own.
func (s *Server) forward(ctx context.Context, st *callState) {
	o := &st.out
	o.SampleSent, o.SpanSent = o.SampleSent[:0], o.SpanSent[:0]
	if s.fwd == nil {
		return
	}
	b, d := &st.batch, st.dec
	o.Peer = st.peer
	o.Details, o.SpanDetails = d.Detail, d.SpanDetail
	st.evResults, st.evDetails = events(o, b.Events, st.evResults, st.evDetails)
	o.send(ctx, s.fwd, b.Tenant, b.Now, b.Samples, b.Results, d.Spans, d.SpanResults)
	refuseEvents(b, d, st.evResults, st.evDetails)
}

// events makes evs o's events, with results (all Accepted) and details
// in the given slices, which it returns.
func events(o *Outgoing, evs []window.Event, results []window.Reason, details []string) ([]window.Reason, []string) {
	n := len(evs)
	results, details = slices.Grow(results[:0], n)[:n], slices.Grow(details[:0], n)[:n]
	clear(results)
	clear(details)
	o.Events, o.EventResults, o.EventDetails = evs, results, details
	return results, details
}

// refuseEvents moves the events of b that results refuses out of it, into
// d's rejections with their details (else the reason's ingest detail).
func refuseEvents(b *window.Batch, d *codec.Decoder, results []window.Reason, details []string) {
	if !slices.ContainsFunc(results, func(r window.Reason) bool { return r != window.Accepted }) {
		return
	}
	kept := 0
	for i, r := range results {
		if r == window.Accepted {
			b.Events[kept], d.EventIndex[kept] = b.Events[i], d.EventIndex[i]
			kept++
			continue
		}
		detail := details[i]
		if detail == "" {
			detail = ingestDetail(r)
		}
		d.Rej = append(d.Rej, codec.Rejection{Kind: aggdv1.ItemKind_ITEM_KIND_EVENT, Index: d.EventIndex[i], Reason: r, Detail: detail})
	}
	clear(b.Events[kept:])
	b.Events, d.EventIndex = b.Events[:kept], d.EventIndex[:kept]
}

// send hands the items to fwd, which marks and answers those another
// replica owns. o.Details and o.SpanDetails must be as long as the items.
func (o *Outgoing) send(ctx context.Context, fwd Forwarder, tn *window.Tenant, now int64, smp []window.Sample, results []window.Reason, sps []spans.Span, spResults []window.Reason) {
	o.Tenant, o.Now = tn, now
	o.Samples, o.Results, o.Spans, o.SpanResults = smp, results, sps, spResults
	o.LocalSeeds, o.LocalSeedsAt = o.LocalSeeds[:0], 0
	o.SampleSent = append(o.SampleSent[:0], make([]bool, len(smp))...)
	o.SpanSent = append(o.SpanSent[:0], make([]bool, len(sps))...)
	if len(o.EventResults) != len(o.Events) {
		o.Events = nil
	}
	fwd.Forward(ctx, o)
	o.Samples, o.Results, o.Details, o.Spans, o.SpanResults, o.SpanDetails = nil, nil, nil, nil, nil, nil
	o.Events, o.EventResults, o.EventDetails = nil, nil, nil
}

// converted is the memory of forwarding a batch converted from another
// protocol (OTLP, DogStatsD), which has no per-item details of its own.
type converted struct {
	out              Outgoing
	details, spanDet []string
	evResults        []window.Reason
	evDetails        []string
}

var convertedPool = sync.Pool{New: func() any { return new(converted) }}

// routeConverted forwards the accepted items of a converted batch that
// other replicas own, waiting for their owners. The caller hides the
// returned batch's forwarded items while it ingests, and puts it back.
func routeConverted(ctx context.Context, fwd Forwarder, tn *window.Tenant, now int64, smp []window.Sample, results []window.Reason, sps []spans.Span, spResults []window.Reason) *converted {
	return routeWith(convertedPool.Get().(*converted), ctx, fwd, tn, now, smp, results, sps, spResults)
}

// routeWith is routeConverted with c, whose out may hold events.
func routeWith(c *converted, ctx context.Context, fwd Forwarder, tn *window.Tenant, now int64, smp []window.Sample, results []window.Reason, sps []spans.Span, spResults []window.Reason) *converted {
	c.details = append(c.details[:0], make([]string, len(smp))...)
	c.spanDet = append(c.spanDet[:0], make([]string, len(sps))...)
	c.out.Details, c.out.SpanDetails, c.out.Peer = c.details, c.spanDet, false
	c.out.send(ctx, fwd, tn, now, smp, results, sps, spResults)
	return c
}

// undelivered counts the items no owner could be reached for (of the
// item, or of a rule group a sample aggregated here feeds), and returns
// the first one's detail.
func (c *converted) undelivered(results, spResults []window.Reason) (n int, detail string) {
	for i := range c.out.SampleSent {
		if results[i] == window.ReasonOwnerUnavailable {
			if n++; detail == "" {
				detail = c.details[i]
			}
		}
	}
	for i, sent := range c.out.SpanSent {
		if sent && spResults[i] == window.ReasonOwnerUnavailable {
			if n++; detail == "" {
				detail = c.spanDet[i]
			}
		}
	}
	return n, detail
}

func (c *converted) put() {
	clear(c.details)
	clear(c.spanDet)
	clear(c.evDetails)
	if cap(c.details) > 1<<16 {
		*c = converted{}
	}
	convertedPool.Put(c)
}

// Routed is the ingester of samples made here without a client's ack
// (DogStatsD, and the stats of spans) in cluster mode: it forwards the
// samples other replicas own, with the forwarder's retries, and ingests
// the rest. A sample its owner could not take is refused
// owner_unavailable (counted by the forwarder and the tenant). Without a
// Forwarder it ingests everything.
type Routed struct {
	Forwarder Forwarder
	Ingester  interface{ Ingest(b *window.Batch) }
}

// Owner is a Forwarder that tells whether this replica owns a sample
// (cluster.Forwarder).
type Owner interface {
	Owns(tenant string, s *window.Sample, now int64) bool
}

// Ingest implements dogstatsd.Ingester and spans.StatsSink. An event
// (DogStatsD's) the owner of one of its logging rule groups could not take
// is refused and counted, as a sample is, and not sent upstream.
func (r *Routed) Ingest(b *window.Batch) {
	if r.Forwarder == nil || len(b.Samples) == 0 && len(b.Events) == 0 {
		r.Ingester.Ingest(b)
		return
	}
	c := convertedPool.Get().(*converted)
	c.evResults, c.evDetails = events(&c.out, b.Events, c.evResults, c.evDetails)
	c = routeWith(c, context.Background(), r.Forwarder, b.Tenant, b.Now, b.Samples, b.Results, nil, nil)
	defer c.put()
	if n := len(b.Events); slices.ContainsFunc(c.evResults, func(r window.Reason) bool { return r != window.Accepted }) {
		kept := b.Events[:0]
		for i, res := range c.evResults[:n] {
			if res == window.Accepted {
				kept = append(kept, b.Events[i])
				continue
			}
			b.Tenant.Rejected[res].Add(1)
		}
		clear(b.Events[len(kept):n])
		b.Events = kept
	}
	c.out.hide(b.Results, nil)
	r.Ingester.Ingest(b)
	c.out.unhide(b.Results, nil)
}

// IngestReplayed implements spans.ReplaySink: samples made again from a
// write-ahead log after a restart (the stats of replayed spans) are
// ingested here only where this replica owns them; the others' owners
// logged them when they acked them, and replay them themselves.
func (r *Routed) IngestReplayed(b *window.Batch) {
	o, ok := r.Forwarder.(Owner)
	if !ok {
		r.Ingester.Ingest(b)
		return
	}
	for i := range b.Samples {
		if b.Results[i] == window.Accepted && !o.Owns(b.Tenant.ID, &b.Samples[i], b.Now) {
			b.Results[i] = hidden
		}
	}
	r.Ingester.Ingest(b)
	for i, res := range b.Results {
		if res == hidden {
			b.Results[i] = window.Accepted
		}
	}
}

// hidden marks, while the batch is ingested, the items an owner took.
const hidden = window.Withheld

// hide keeps the items owners took out of local ingestion.
func (o *Outgoing) hide(results, spanResults []window.Reason) {
	mark(o.SampleSent, results, window.Accepted, hidden)
	mark(o.SpanSent, spanResults, window.Accepted, hidden)
}

// unhide makes the items owners took count as accepted in the ack.
func (o *Outgoing) unhide(results, spanResults []window.Reason) {
	mark(o.SampleSent, results, hidden, window.Accepted)
	mark(o.SpanSent, spanResults, hidden, window.Accepted)
}

func mark(sent []bool, results []window.Reason, from, to window.Reason) {
	for i, ok := range sent {
		if ok && results[i] == from {
			results[i] = to
		}
	}
}

// taken counts the items an owner took, after unhide.
func (o *Outgoing) taken(results, spanResults []window.Reason) int {
	n := 0
	for i, ok := range o.SampleSent {
		if ok && results[i] == window.Accepted {
			n++
		}
	}
	for i, ok := range o.SpanSent {
		if ok && spanResults[i] == window.Accepted {
			n++
		}
	}
	return n
}

// appendTaken appends every item an owner took, as the write-ahead log
// record lists refusals.
func (o *Outgoing) appendTaken(items []journal.Item, results, spanResults []window.Reason) []journal.Item {
	for i, ok := range o.SampleSent {
		if ok && results[i] == window.Accepted {
			items = append(items, journal.Item{Kind: aggdv1.ItemKind_ITEM_KIND_SAMPLE, Index: uint64(i)})
		}
	}
	for i, ok := range o.SpanSent {
		if ok && spanResults[i] == window.Accepted {
			items = append(items, journal.Item{Kind: aggdv1.ItemKind_ITEM_KIND_SPAN, Index: uint64(i)})
		}
	}
	return items
}

// CallID names one forwarded call.
type CallID = codec.CallID

// PeerCalls remembers the forwarded calls this replica applied, so that a
// call its sender sends again is answered, not applied twice
// (cluster.Calls).
type PeerCalls interface {
	// Begin returns the ack of call id if it was applied. Otherwise it
	// returns nil and the caller applies the call, then calls End; while
	// another attempt of the call is being applied, Begin waits for it,
	// or for ctx.
	Begin(ctx context.Context, id CallID) (*aggdv1.Ack, error)
	// End ends the attempt Begin let through: ack is its answer, nil if
	// it failed (the call is then not remembered).
	End(id CallID, ack *aggdv1.Ack)
}

// RegisterPeer registers aggd.v1.PeerService on g, for the replicas of
// one cluster: a call must carry `authorization: Bearer <token>`.
func (s *Server) RegisterPeer(g *grpc.Server, token string) {
	h := func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		return s.forwarded(ctx, dec, token)
	}
	members := func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		return s.peerMembers(ctx, dec, token)
	}
	g.RegisterService(&grpc.ServiceDesc{
		ServiceName: aggdv1.PeerService_ServiceDesc.ServiceName,
		HandlerType: (*any)(nil),
		Methods:     []grpc.MethodDesc{{MethodName: "Forward", Handler: h}, {MethodName: "Members", Handler: members}},
		Metadata:    aggdv1.PeerService_ServiceDesc.Metadata,
	}, s)
}

var errPeerToken = status.Error(codes.Unauthenticated, "peer call without the cluster's peer token")

// peerAuthorized reports whether ctx carries the peer token.
func peerAuthorized(ctx context.Context, token string) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if subtle.ConstantTimeCompare([]byte(v), []byte("Bearer "+token)) == 1 {
			return true
		}
	}
	return false
}

// peerProtocolError refuses a peer call that does not speak this
// release's peer protocol, or returns nil.
func peerProtocolError(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(codec.PeerProtocolKey)
	if len(v) == 1 && v[0] == codec.PeerProtocol {
		return nil
	}
	got := "none (a release from before the peer protocol had a version)"
	if len(v) > 0 {
		got = fmt.Sprintf("%q", v)
	}
	return status.Errorf(codes.FailedPrecondition,
		"peer call of peer protocol %s; this replica speaks %q: run one release of aggd across the cluster", got, codec.PeerProtocol)
}

// peerMembers answers a peer asking for this replica's schedule of member
// lists.
func (s *Server) peerMembers(ctx context.Context, dec func(any) error, token string) (any, error) {
	if token == "" || !peerAuthorized(ctx, token) {
		return nil, errPeerToken
	}
	if err := peerProtocolError(ctx); err != nil {
		return nil, err
	}
	if s.members == nil {
		return nil, status.Error(codes.Unimplemented, "this replica keeps no schedule of member lists")
	}
	var req aggdv1.MembersRequest
	if err := dec(&req); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return s.members.Members(req.GetAsker()), nil
}

// forwarded takes a batch a peer forwarded: logged and ingested as the
// peer's client sent it, at the peer's arrival time, and not forwarded
// again.
func (s *Server) forwarded(ctx context.Context, dec func(any) error, token string) (any, error) {
	if token == "" || !peerAuthorized(ctx, token) {
		return nil, errPeerToken
	}
	if err := peerProtocolError(ctx); err != nil {
		return nil, err // the sender counts it failed and refuses its items
	}
	st := s.getState()
	defer s.putState(st)
	if err := dec(&st.frame); err != nil {
		return nil, s.refuse(RefusedTooLarge, "", err)
	}
	fw, err := codec.ParseForward(st.frame.Buf)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	tn, err := s.tenants.Get(fw.Tenant)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "forwarded batch of tenant %q: %v", fw.Tenant, err)
	}
	if s.calls != nil && fw.Call != (codec.CallID{}) {
		// A call sent again after this replica applied it is answered
		// with its first ack; one still being applied is waited for.
		ack, err := s.calls.Begin(ctx, fw.Call)
		if err != nil {
			return nil, err
		}
		if ack != nil {
			return &aggdv1.ForwardResponse{Ack: ack}, nil
		}
		var resp *aggdv1.ForwardResponse
		defer func() { s.calls.End(fw.Call, resp.GetAck()) }()
		resp, err = s.applyForwarded(ctx, st, tn, fw.Now)
		return resp, err
	}
	return s.applyForwarded(ctx, st, tn, fw.Now)
}

// applyForwarded logs and ingests the forwarded batch in st.
func (s *Server) applyForwarded(ctx context.Context, st *callState, tn *window.Tenant, now int64) (*aggdv1.ForwardResponse, error) {
	if s.draining.Load() {
		return nil, errDraining
	}
	if err := s.admit(ctx, tn); err != nil {
		return nil, err
	}
	release, err := s.reserve(ctx, st, false, tn.ID)
	if err != nil {
		return nil, err
	}
	defer release()
	st.peer = true
	st.dec.Histograms = true // peers send OTLP histogram points whole
	defer func() { st.peer, st.dec.Histograms = false, false }()
	st.series.Reset() // peers send full names
	st.stream = 0
	seedsRefused, err := s.seed(st, tn, now)
	if err != nil {
		return nil, err
	}
	defer func() { st.seeded = 0 }()
	st.dec.Reset(&st.batch)
	st.dec.ForTenant(tn)
	st.batch.Tenant = tn
	st.batch.Now = now
	if err := st.dec.DecodeSubmit(st.frame.Buf, &st.batch); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := ctx.Err(); err != nil {
		// The forwarding replica gave up on this call and refuses its
		// items to its client, which may send them again: take none.
		return nil, status.FromContextError(err).Err()
	}
	if err := s.ingestLogged(ctx, st, journal.Submit); err != nil {
		return nil, err
	}
	if s.decisions != nil {
		// After the batch's spans: the handed-over spans of a decided
		// trace held here follow its decision.
		codec.ForwardDecisions(st.frame.Buf, func(id [16]byte, keep bool) { s.decisions.Remember(tn, id, keep, now) })
	}
	ack := &aggdv1.Ack{Accepted: st.ack.Accepted, Rejected: st.ack.Rejected, Rejections: slices.Clone(st.ack.Rejections)}
	return &aggdv1.ForwardResponse{Ack: ack, SeedsRefused: seedsRefused}, nil
}

// TraceDecisions remembers the decisions on traces another replica made
// before a member list moved them here (spans.Sampler).
type TraceDecisions interface {
	Remember(t *window.Tenant, id [16]byte, keep bool, now int64)
}

// Seeder keeps samples aggregated elsewhere as their contexts' previous
// samples (flush.Aggregator.Seed): Config.Seeder takes the seeds of
// forwarded batches; handedOver marks a hand-over's (see
// ForwardRequest.seeds_handed_over).
type Seeder = journal.Seeder

// seed keeps the seeds of the ForwardRequest in st.frame (see
// ForwardRequest.seeds), before its batch: they are samples of buckets
// before the batch's, routed there in the same ack, so the order of
// arrival a single aggd sees is kept. It returns how many seeds were
// refused, and sets st.seeded to the latest timestamp of those kept
// (their arrival time for seeds without one), for the call's record:
// the record keeps the request, seeds included, and replay keeps them
// again (journal.ReplayRecord), so that a restart after the ack does not
// lose them.
func (s *Server) seed(st *callState, tn *window.Tenant, now int64) (uint32, error) {
	seeds, handedOver := codec.ForwardSeeds(st.frame.Buf)
	if seeds == nil || s.seeder == nil {
		return 0, nil
	}
	st.dec.Reset(&st.batch)
	st.dec.ForTenant(tn)
	st.batch.Tenant, st.batch.Now = tn, now
	if err := st.dec.DecodeSeeds(seeds, &st.batch); err != nil {
		return 0, status.Error(codes.InvalidArgument, "seeds: "+err.Error())
	}
	s.seeder.Seed(&st.batch, handedOver)
	var refused uint32
	for _, r := range st.batch.Results {
		if r != window.Accepted {
			refused++
		}
	}
	st.seeded = journal.LatestSeed(&st.batch)
	return refused, nil
}
