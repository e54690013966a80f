package service

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/journal"
	"github.com/aggd/aggd/internal/overload"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// Ingester takes decoded batches into aggregation state. Ingest may refuse
// more samples by setting their Results; it must not keep b or its slices.
type Ingester interface {
	Ingest(b *window.Batch)
}

// SpanIngester takes decoded spans. results has one entry per span, set to
// Accepted by the caller; IngestSpans may refuse more. It must copy what
// it keeps.
type SpanIngester interface {
	IngestSpans(t *window.Tenant, now int64, sp []spans.Span, results []window.Reason)
}

// Config configures a Server: New takes everything through it.
type Config struct {
	// Ingest takes the decoded batches. Required.
	Ingest Ingester
	// Tenants resolves a call's tenant. Required.
	Tenants *Tenants
	// Limits bound the names, tags and hosts of one item; zero means
	// codec.DefaultLimits().
	Limits codec.Limits
	// Logger logs; nil discards.
	Logger *slog.Logger
	// Spans takes spans; nil refuses them (unsupported).
	Spans SpanIngester
	// MaxStreamAge makes a stream older than it end with Unavailable
	// after its current batch, so that long-lived clients move across
	// replicas behind an L4 load balancer; 0 means never.
	MaxStreamAge time.Duration
	// Load, if set, makes the server slow down and refuse traffic under
	// memory pressure: at Soft a stream stops reading (its acks wait), at
	// Hard new batches are refused with ResourceExhausted and RetryInfo;
	// tenants far smaller than the average are spared one step (see
	// admit).
	Load overload.Leveler
	// Memory, if set, is reserved against by every request before it is
	// decoded (see reserve).
	Memory MemoryRoom
	// Journal, if set, records every batch the server takes before it is
	// acked.
	Journal *journal.Journal
	// Forwarder, if set, takes the samples and spans other replicas own
	// before the rest is ingested.
	Forwarder Forwarder
	// PeerCalls, if set, remembers the calls peers forwarded here, so
	// that a retried one is not applied twice.
	PeerCalls PeerCalls
	// Seeder, if set, keeps the seeds forwarded calls carry (the previous
	// samples of RATE and MONOTONIC_COUNT contexts moving here); without
	// one they are ignored.
	Seeder Seeder
	// Decisions, if set, remembers the decisions on traces that forwarded
	// calls hand over (ForwardRequest.traces_kept and traces_dropped);
	// without it they are ignored.
	Decisions TraceDecisions
	// Members, if set, answers peers asking for this replica's schedule
	// of member lists (PeerService.Members); without it they are told
	// the method is not implemented.
	Members PeerMembers
}

// PeerMembers answers PeerService.Members (cluster.Forwarder).
type PeerMembers interface {
	Members(asker string) *aggdv1.MembersResponse
}

// Validate reports a missing or out-of-range setting.
func (c Config) Validate() error {
	if c.Ingest == nil || c.Tenants == nil {
		return errors.New("service: an ingester and tenants are required")
	}
	if c.MaxStreamAge < 0 {
		return fmt.Errorf("service: max stream age %v is negative", c.MaxStreamAge)
	}
	if c.Limits != (codec.Limits{}) {
		return c.Limits.Validate()
	}
	return nil
}

// Server implements aggd.v1.AggregatorService. It is safe for concurrent
// use.
type Server struct {
	maxStreamAge time.Duration
	load         overload.Leveler
	share        fairShare
	ing          Ingester
	seeder       Seeder
	decisions    TraceDecisions
	spanIng      SpanIngester
	tenants      *Tenants
	lim          codec.Limits
	log          *slog.Logger
	draining     atomic.Bool
	states       sync.Pool
	journal      *journal.Journal
	refusals     refusals
	room         MemoryRoom
	inflight     atomic.Int64 // bytes reserved by requests being decoded
	reserveWait  time.Duration
	fwd          Forwarder
	calls        PeerCalls
	members      PeerMembers
	// streamBase and streams number the streams for the write-ahead
	// log, uniquely across runs.
	streamBase uint64
	streams    atomic.Uint64
}

// New returns a server configured by cfg, or why cfg is not valid.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lim := cmp.Or(cfg.Limits, codec.DefaultLimits())
	s := &Server{ing: cfg.Ingest, tenants: cfg.Tenants, lim: lim, log: cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler)),
		spanIng: cfg.Spans, maxStreamAge: cfg.MaxStreamAge, load: cfg.Load, room: cfg.Memory, journal: cfg.Journal, fwd: cfg.Forwarder, calls: cfg.PeerCalls, seeder: cfg.Seeder, decisions: cfg.Decisions, members: cfg.Members, reserveWait: defaultReserveWait}
	s.states.New = func() any {
		st := &callState{dec: codec.NewDecoder(lim)}
		st.dec.Series = &st.series
		return st
	}
	s.streamBase = rand.Uint64() &^ (1<<32 - 1)
	return s, nil
}

// overloadRetry is the delay suggested to refused clients.
const overloadRetry = time.Second

func (s *Server) errOverloaded(tenant string) error {
	if c, ok := s.load.(LoadCause); ok {
		if msg, queue := c.Cause(); queue {
			st, _ := status.New(codes.ResourceExhausted, msg).
				WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(overloadRetry)})
			return s.refuse(RefusedQueue, tenant, st.Err())
		}
	}
	return s.refuse(RefusedMemory, tenant, errOverloaded())
}

// LoadCause, implemented by a LoadLevel, says why the level is up: the
// message clients are refused with, and whether it is the send queue
// rather than memory.
type LoadCause interface {
	Cause() (msg string, queue bool)
}

func errOverloaded() error {
	st, _ := status.New(codes.ResourceExhausted, "aggd is over its memory budget; retry later").
		WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(overloadRetry)})
	return st.Err()
}

// admit applies memory pressure to tn before a batch is read. A tenant
// holding at least half the average contexts of the tenants that hold any
// (the one tenant, when there is one) waits past the soft limit and is
// refused past the hard one; a smaller tenant goes on past the soft limit
// and only waits past the hard one. The memory is the contexts', so the
// tenants growing it are slowed first and the others keep their latency.
func (s *Server) admit(ctx context.Context, tn *window.Tenant) error {
	if s.load == nil {
		return nil
	}
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		switch lv := s.load.Level(); {
		case lv == overload.OK:
			return nil
		case s.share.heavy(s.tenants, tn):
			if lv == overload.Hard {
				return s.errOverloaded(tn.ID)
			}
		case lv == overload.Soft:
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// fairShare caches the average contexts per tenant holding any, for
// admit: recomputed at most every 100 ms, and only under pressure.
type fairShare struct {
	mu  sync.Mutex
	at  time.Time // of the last computation; zero at first
	avg atomic.Int64
}

// heavy reports whether tn holds at least half the average contexts.
func (f *fairShare) heavy(ts *Tenants, tn *window.Tenant) bool {
	if f.mu.TryLock() {
		if now := time.Now(); now.Sub(f.at) >= 100*time.Millisecond {
			var sum, n int64
			for _, t := range ts.List() {
				if c := t.Contexts.Load(); c > 0 {
					sum, n = sum+c, n+1
				}
			}
			f.avg.Store(sum / max(n, 1))
			f.at = now
		}
		f.mu.Unlock()
	}
	return 2*tn.Contexts.Load() >= f.avg.Load()
}

var errStreamAge = status.Error(codes.Unavailable, "stream reached its maximum age; reconnect to continue")

// ServerOptions returns the options a grpc.Server needs to serve s: the
// codec that hands request bytes to the protowire decoder, and the buffer
// pool that does not zero the buffers requests are read into.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ForceServerCodecV2(codec.GRPC()), experimental.BufferPool(codec.BufferPool())}
}

// Register registers s on g. The service is the generated one, with
// handlers that decode without the generated types.
func (s *Server) Register(g *grpc.Server) {
	g.RegisterService(&grpc.ServiceDesc{
		ServiceName: aggdv1.AggregatorService_ServiceDesc.ServiceName,
		HandlerType: (*any)(nil),
		Methods:     []grpc.MethodDesc{{MethodName: "Submit", Handler: s.submitHandler}},
		Streams: []grpc.StreamDesc{{
			StreamName: "Stream", Handler: s.streamHandler,
			ServerStreams: true, ClientStreams: true,
		}},
		Metadata: aggdv1.AggregatorService_ServiceDesc.Metadata,
	}, s)
}

// Drain makes every stream end after its current batch with Unavailable,
// so clients reconnect elsewhere. It is the first step of shutdown.
func (s *Server) Drain() { s.draining.Store(true) }

// callState is the reusable memory of one call.
type callState struct {
	dec   *codec.Decoder
	batch window.Batch
	frame codec.Frame
	ack   aggdv1.Ack
	// entry is the batch's write-ahead log record; refused are the
	// ack's rejections, for it.
	entry   journal.Entry
	refused []journal.Item
	out     Outgoing
	// evResults and evDetails are what the owners of the events' rule
	// groups made of them (Outgoing.EventResults).
	evResults []window.Reason
	evDetails []string
	peer      bool // the batch came from a peer: not forwarded again
	// seeded is the latest timestamp of the seeds a forwarded batch
	// brought and this replica kept, 0 when none (see seed).
	seeded int64
	// series are the call's series references; stream numbers the
	// stream for the write-ahead log (0 for Submit).
	series codec.Series
	stream uint64
}

func (s *Server) getState() *callState { return s.states.Get().(*callState) }

func (s *Server) putState(st *callState) {
	if cap(st.batch.Samples) > 1<<16 || cap(st.dec.Spans) > 1<<14 {
		return // do not pin one huge request's decoded items
	}
	st.frame.Trim(4 << 20) // do not pin one huge request's buffer
	s.states.Put(st)
}

var errDraining = status.Error(codes.Unavailable, "aggd is shutting down; reconnect to continue")

func (s *Server) streamHandler(_ any, ss grpc.ServerStream) error {
	tenant, err := s.tenants.Resolve(ss.Context())
	if err != nil {
		return s.refuse(RefusedTenantLimit, "", err)
	}
	st := s.getState()
	defer s.putState(st)
	// A batch is decoded from gRPC's buffer, not a copy: the frame holds
	// it until the next batch is read, or the stream ends.
	st.frame.Borrow = true
	defer func() { st.frame.Release(); st.frame.Borrow = false }()
	st.series.Reset()
	st.stream = s.streamBase | s.streams.Add(1)&(1<<32-1)
	resp := &aggdv1.StreamResponse{Ack: &st.ack}
	var last uint64 // highest sequence taken on this stream
	var deadline time.Time
	if s.maxStreamAge > 0 {
		deadline = time.Now().Add(s.maxStreamAge)
	}
	for {
		if !deadline.IsZero() && time.Now().After(deadline) {
			return errStreamAge
		}
		// Under memory pressure, stop reading: the client's unacked
		// batches wait in its window and in TCP's.
		if err := s.admit(ss.Context(), tenant); err != nil {
			return err
		}
		// A drain ends the stream before it reads another batch; a batch
		// read already is taken and acked first.
		if s.draining.Load() {
			return errDraining
		}
		if err := ss.RecvMsg(&st.frame); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return s.refuse(RefusedTooLarge, tenant.ID, err)
		}
		// A batch read as memory crossed the hard limit is refused unacked:
		// the client sends it again after the suggested delay.
		if s.load != nil && s.load.Level() == overload.Hard && s.share.heavy(s.tenants, tenant) {
			return s.errOverloaded(tenant.ID)
		}
		st.dec.Reset(&st.batch)
		release, err := s.reserve(ss.Context(), st, true, tenant.ID)
		if err != nil {
			return err
		}
		err = s.streamBatch(ss, st, tenant, resp, &last)
		release()
		if err != nil {
			return err
		}
	}
}

// streamBatch decodes, takes in and acks the batch of a stream read into
// st; last is the highest sequence taken on the stream.
func (s *Server) streamBatch(ss grpc.ServerStream, st *callState, tenant *window.Tenant, resp *aggdv1.StreamResponse, last *uint64) error {
	st.dec.ForTenant(tenant)
	st.batch.Tenant = tenant
	st.batch.Now = time.Now().UnixNano()
	seq, err := st.dec.DecodeStream(st.frame.Buf, &st.batch)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	// Sequences, when a client sets them, rise on a stream. One not
	// above the last taken is a resend of a batch already applied:
	// it is acked, every item refused, and nothing applied twice.
	if seq != 0 && seq <= *last {
		s.refuseDuplicate(st, seq, *last)
	} else {
		if err := s.ingestLogged(ss.Context(), st, journal.Stream); err != nil {
			return err
		}
		*last = max(*last, seq)
	}
	st.ack.Sequence = seq
	return ss.SendMsg(resp)
}

func (s *Server) submitHandler(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	st := s.getState()
	if err := dec(&st.frame); err != nil {
		s.putState(st)
		return nil, s.refuse(RefusedTooLarge, "", err)
	}
	handler := func(ctx context.Context, _ any) (any, error) {
		defer s.putState(st)
		tenant, err := s.tenants.Resolve(ctx)
		if err != nil {
			return nil, s.refuse(RefusedTenantLimit, "", err)
		}
		if s.draining.Load() {
			return nil, errDraining
		}
		if err := s.admit(ctx, tenant); err != nil {
			return nil, err
		}
		st.dec.Reset(&st.batch)
		release, err := s.reserve(ctx, st, false, tenant.ID)
		if err != nil {
			return nil, err
		}
		defer release()
		st.dec.ForTenant(tenant)
		st.batch.Tenant = tenant
		st.batch.Now = time.Now().UnixNano()
		st.series.Reset() // a Submit's references live for the request
		st.stream = 0
		if err := st.dec.DecodeSubmit(st.frame.Buf, &st.batch); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		if err := s.ingestLogged(ctx, st, journal.Submit); err != nil {
			return nil, err
		}
		// The response outlives the call state: copy the ack.
		ack := &aggdv1.Ack{Accepted: st.ack.Accepted, Rejected: st.ack.Rejected, Rejections: append([]*aggdv1.Rejection(nil), st.ack.Rejections...)}
		return &aggdv1.SubmitResponse{Ack: ack}, nil
	}
	if interceptor == nil {
		return handler(ctx, &st.frame)
	}
	info := &grpc.UnaryServerInfo{Server: s, FullMethod: aggdv1.AggregatorService_Submit_FullMethodName}
	return interceptor(ctx, &st.frame, info, handler)
}

// refuseDuplicate fills st.ack for a batch whose sequence was taken
// already on this stream: every item is refused, none is applied.
func (s *Server) refuseDuplicate(st *callState, seq, last uint64) {
	d, ack := st.dec, &st.ack
	resetRejections(ack)
	detail := fmt.Sprintf("sequence %d is not above %d, the last taken on this stream; the batch was not applied again", seq, last)
	for _, k := range [...]struct {
		kind aggdv1.ItemKind
		n    int
	}{
		{aggdv1.ItemKind_ITEM_KIND_SAMPLE, d.NSamples},
		{aggdv1.ItemKind_ITEM_KIND_EVENT, d.NEvents},
		{aggdv1.ItemKind_ITEM_KIND_SERVICE_CHECK, d.NChecks},
		{aggdv1.ItemKind_ITEM_KIND_SPAN, d.NSpans},
	} {
		for i := range k.n {
			ack.Rejections = append(ack.Rejections, &aggdv1.Rejection{
				Kind: k.kind, Index: uint32(i), Reason: window.ReasonDuplicateSequence.String(), Detail: detail,
			})
		}
	}
	ack.Accepted, ack.Rejected = 0, uint32(len(ack.Rejections))
	st.batch.Tenant.Rejected[window.ReasonDuplicateSequence].Add(uint64(ack.Rejected))
}

// resetRejections empties ack's rejections, keeping their backing array.
func resetRejections(ack *aggdv1.Ack) {
	clear(ack.Rejections)
	ack.Rejections = ack.Rejections[:0]
}

// appendRejections appends the items of one kind that results refused to
// the ack, with details[i] or the ingest detail of the reason, and counts
// them for tn.
func appendRejections(ack *aggdv1.Ack, tn *window.Tenant, kind aggdv1.ItemKind, results []window.Reason, details []string) {
	for i, r := range results {
		if r == window.Accepted {
			continue
		}
		detail := details[i]
		if detail == "" {
			detail = ingestDetail(r)
		}
		ack.Rejections = append(ack.Rejections, &aggdv1.Rejection{Kind: kind, Index: uint32(i), Reason: r.String(), Detail: detail})
		tn.Rejected[r].Add(1)
	}
}

// ingest hands the decoded batch to the ingester and fills st.ack. Items
// forwarded to their owners (st.out) are acked as the owners acked them
// and not ingested here.
func (s *Server) ingest(st *callState) {
	b, d := &st.batch, st.dec
	st.out.hide(b.Results, d.SpanResults)
	n := len(b.Events)
	b.EventResults = slices.Grow(b.EventResults[:0], n)[:n]
	clear(b.EventResults)
	s.ing.Ingest(b)
	if len(b.EventResults) == len(b.Events) {
		// A peer's event marked RulesOnly that no rule here selects.
		st.evDetails = slices.Grow(st.evDetails[:0], n)[:n]
		clear(st.evDetails)
		refuseEvents(b, d, b.EventResults, st.evDetails)
	}
	if len(d.Spans) > 0 {
		if s.spanIng == nil {
			for i := range d.SpanResults {
				if d.SpanResults[i] == window.Accepted {
					d.SpanResults[i], d.SpanDetail[i] = window.ReasonUnsupported, "span ingestion is not enabled on this server"
				}
			}
		} else {
			s.spanIng.IngestSpans(b.Tenant, b.Now, d.Spans, d.SpanResults)
		}
	}
	st.out.unhide(b.Results, d.SpanResults)
	ack := &st.ack
	resetRejections(ack)
	tn := b.Tenant
	appendRejections(ack, tn, aggdv1.ItemKind_ITEM_KIND_SAMPLE, b.Results, d.Detail)
	appendRejections(ack, tn, aggdv1.ItemKind_ITEM_KIND_SPAN, d.SpanResults, d.SpanDetail)
	for _, rj := range d.Rej {
		ack.Rejections = append(ack.Rejections, &aggdv1.Rejection{
			Kind: rj.Kind, Index: uint32(rj.Index), Reason: rj.Reason.String(), Detail: rj.Detail,
		})
		tn.Rejected[rj.Reason].Add(1)
	}
	total := d.NSamples + d.NEvents + d.NChecks + d.NSpans
	ack.Rejected = uint32(len(ack.Rejections))
	ack.Accepted = uint32(total) - ack.Rejected
	tn.Accepted.Add(uint64(ack.Accepted))
}

// applyTenantRates refuses the samples past the tenant's samples per
// second and the events past its events per window (tenant_limit).
func (s *Server) applyTenantRates(b *window.Batch, d *codec.Decoder) {
	tn := b.Tenant
	if tn.Limits.SamplesPerSecond > 0 {
		n := 0
		for _, r := range b.Results {
			if r == window.Accepted {
				n++
			}
		}
		ok := s.tenants.admitSamples(tn, n, time.Unix(0, b.Now))
		for i := range b.Results {
			if b.Results[i] != window.Accepted {
				continue
			}
			if ok > 0 {
				ok--
				continue
			}
			b.Results[i] = window.ReasonTenantLimit
			d.Detail[i] = "the tenant's samples_per_second limit"
		}
	}
	if max := tn.Limits.EventsPerWindow; max > 0 && len(b.Events) > 0 {
		kept := 0
		for i := range b.Events {
			if tn.EventsInWindow.Add(1) > max {
				d.Rej = append(d.Rej, codec.Rejection{Kind: aggdv1.ItemKind_ITEM_KIND_EVENT, Index: d.EventIndex[i], Reason: window.ReasonTenantLimit, Detail: "the tenant's events_per_window limit"})
				continue
			}
			// d.EventIndex stays the request index of each event kept.
			b.Events[kept], d.EventIndex[kept] = b.Events[i], d.EventIndex[i]
			kept++
		}
		clear(b.Events[kept:])
		b.Events, d.EventIndex = b.Events[:kept], d.EventIndex[:kept]
	}
}

// ingestDetail explains the reasons ingestion gives.
func ingestDetail(r window.Reason) string {
	switch r {
	case window.ReasonTypeConflict:
		return "the context already has another metric type in this bucket"
	case window.ReasonTooOld:
		return "timestamp is older than the server's max lateness"
	case window.ReasonTooNew:
		return "timestamp is further ahead than the server's max future"
	case window.ReasonSetLimit:
		return "the set already holds the maximum number of distinct members in this bucket"
	case window.ReasonTenantLimit:
		return "the tenant holds its maximum number of contexts"
	case window.ReasonRulesMismatch:
		return "a peer sent this item for its aggregation rule groups, and no rule of this replica matches it: the replicas' rules files differ"
	}
	return r.String()
}
