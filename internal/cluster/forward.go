package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/journal"
	"github.com/aggd/aggd/internal/rules"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// Config configures a Forwarder.
type Config struct {
	// Self is this replica's peer address, as the member lists name it.
	Self string
	// Token is the shared peer token every call carries.
	Token string
	// TLS, when set, secures the calls to peers (the server's mTLS
	// certificates); nil sends them in clear on the cluster network.
	TLS credentials.TransportCredentials
	// Timing places samples in buckets, whose start picks the member
	// list in force.
	Timing window.Timing
	// Interval is the flush interval: spans are placed by the bucket of
	// their arrival.
	Interval time.Duration
	// Timeout bounds how long a forward waits for its owner, retrying,
	// before its items are refused as owner_unavailable; 30 s by default.
	// While it waits, the client's ack waits: that is the push back.
	Timeout time.Duration
	// DepartedTimeout bounds instead the forward to a member that has left
	// (Membership.Departed), which owns its old buckets for late samples
	// only while it still runs: a replica scaled away stops once it has
	// flushed, and waiting the whole Timeout for it would hold the client's
	// acks for nothing. 2 s by default, at most Timeout.
	DepartedTimeout time.Duration
	// InitialBackoff and MaxBackoff space the retries; 50 ms and 2 s by
	// default.
	InitialBackoff, MaxBackoff time.Duration
	// Seeder takes the previous samples of the RATE and MONOTONIC_COUNT
	// contexts this replica is about to own (the aggregator); nil drops
	// them.
	Seeder service.Seeder
	// Rules, when set, places the aggregation rule groups of a sample,
	// a span and an event: the replica aggregating a sample, running a
	// span's trace or taking an event sends it, marked rules_only, to the owner of each
	// rule group it feeds that another replica owns. Its engine feeds
	// only the groups OwnsGroup says are this replica's.
	Rules RuleGroups
}

// RuleGroups places the aggregation rule groups a sample, a span or an
// event feeds
// (rules.Engine).
type RuleGroups interface {
	AppendGroups(dst []rules.GroupRef, t *window.Tenant, s *window.Sample, now int64) []rules.GroupRef
	AppendSpanGroups(dst []rules.GroupRef, t *window.Tenant, sp *spans.Span, now int64) []rules.GroupRef
	AppendEventGroups(dst []rules.GroupRef, t *window.Tenant, ev *window.Event, now int64) []rules.GroupRef
}

// Validate reports a configuration that cannot work.
func (c *Config) Validate() error {
	switch {
	case c.Self == "":
		return errors.New("cluster: this replica's peer address is not set")
	case c.Token == "":
		return errors.New("cluster: no peer token")
	case c.Interval <= 0:
		return errors.New("cluster: no flush interval")
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
	if c.DepartedTimeout <= 0 {
		c.DepartedTimeout = 2 * time.Second
	}
	c.DepartedTimeout = min(c.DepartedTimeout, c.Timeout)
	if c.InitialBackoff <= 0 {
		c.InitialBackoff = 50 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 2 * time.Second
	}
}

// Forwarder routes each sample by its context, and each span by its trace,
// to the owner the Membership names, and forwards what another replica
// owns over aggd.v1.PeerService. It implements service.Forwarder and
// prometheus.Collector, and is safe for concurrent use.
type Forwarder struct {
	cfg Config
	m   *Membership
	log *slog.Logger

	mu      sync.Mutex
	conns   map[string]*grpc.ClientConn
	reached map[string]int64 // by peer: when a call to it last succeeded
	closed  bool

	// predecessor, when not 0, is the start of this process: a replica
	// answered at this address before it, and this one has no log of
	// what that one took (Forwarder.RefusePredecessors).
	predecessor atomic.Int64
	// predecessorRefused counts the samples refused for it.
	predecessorRefused atomic.Uint64

	calls sync.Pool // *call

	// run (drawn at start) and seq name each call, so that its owner
	// applies a call sent again only once (Calls).
	run uint64
	seq atomic.Uint64

	// Item outcomes, by kind (0 samples, 1 spans, 2 seeds, 3 samples,
	// spans and events to rule group owners, 4 spans of held traces and
	// 5 decisions on traces handed to their new owner): owned here, acked
	// by their owner, refused by their owner, not delivered.
	local, acked, refused, undelivered [6]atomic.Uint64
	// swept is the number of the member list MoveTraces last looked for
	// moved traces under.
	swept atomic.Uint64
	// Calls to peers: succeeded, failed and retried, failed for good.
	callsOK, callsRetried, callsFailed atomic.Uint64
	handOvers                          atomic.Uint64
	latency                            prometheus.Histogram
	desc                               struct{ items, calls, members, version, handOvers, predecessor *prometheus.Desc }
}

// NewForwarder returns a forwarder over m. cfg must be valid.
func NewForwarder(cfg Config, m *Membership, log *slog.Logger) *Forwarder {
	cfg.setDefaults()
	f := &Forwarder{cfg: cfg, m: m, log: log, conns: map[string]*grpc.ClientConn{}, reached: map[string]int64{}, run: rand.Uint64() | 1}
	f.calls.New = func() any { return &call{groups: map[string]*group{}} }
	f.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "aggd_cluster_forward_seconds", Help: "Time from sending a forwarded batch to its owner's ack, retries included.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
	})
	f.desc.items = prometheus.NewDesc("aggd_cluster_items_total",
		"Accepted samples and spans by owner: local (owned here), acked (forwarded, the owner took it), refused (forwarded, the owner refused it), undelivered (owner unreachable in time: refused as owner_unavailable). Kind seed: previous samples of RATE and MONOTONIC_COUNT contexts handed to the replica owning them from a later member list (local: kept here, refused: that replica did not keep it, past max lateness or its bound on seeded contexts; undelivered: not delivered in time; for both, its first delta there is lost). Kind held_span: spans of traces held here for sampling and handed to the replica running them under a later member list (acked: it holds them; refused, undelivered: held and decided here again). Kind decision: decisions on traces handed the same way (acked, or undelivered and kept here). Kind rule: samples aggregated here, spans whose trace runs here and events taken here, once per replica owning aggregation rule groups they feed (local: this one; otherwise sent rules_only to that owner, and the item is refused unless it took it).",
		[]string{"kind", "outcome"}, nil)
	f.desc.calls = prometheus.NewDesc("aggd_cluster_forward_calls_total",
		"Forward calls to peers: ok, retry (failed and tried again), failed (given up or permanent).", []string{"outcome"}, nil)
	f.desc.members = prometheus.NewDesc("aggd_cluster_members", "Members of the latest member list.", nil, nil)
	f.desc.version = prometheus.NewDesc("aggd_cluster_membership_version", "Number of the latest member list.", nil, nil)
	f.desc.handOvers = prometheus.NewDesc("aggd_cluster_handovers_total", "Member lists scheduled whose hand-over of RATE and MONOTONIC_COUNT last samples to their new owners this replica has finished: each seed delivered or given up (aggd_cluster_items_total{kind=\"seed\"}).", nil, nil)
	f.desc.predecessor = prometheus.NewDesc("aggd_cluster_predecessor_refused_total", "Samples refused owner_unavailable because their bucket began before this replica started, at an address where another replica answered before and flushed it, whose write-ahead log this replica does not have.", nil, nil)
	return f
}

// call is the reusable memory of one Forward.
type call struct {
	groups map[string]*group
	order  []*group
	wg     sync.WaitGroup
	heirs  []string     // the later owners of one sample's context
	seeds  window.Batch // the samples this replica seeds for itself
	seedAt []int        // their indexes into Outgoing.Samples
	seedsB []byte       // the Batch of those kept, for the log
	item   []byte       // one seed's encoding
	refs   []rules.GroupRef
	owners []string // the owners of one sample's rule groups
}

// group is what one call sends to one owner.
type group struct {
	owner         string
	version       uint64
	samples       []int // indexes into Outgoing.Samples
	spans         []int
	seeds         []int            // samples the owner keeps as previous samples only
	handOver      bool             // the seeds or spans are a hand-over's
	decisions     []spans.Decision // decisions on traces moved to the owner
	observe       []int            // samples the owner observes for its rule groups only
	observeSpans  []int            // spans the owner observes for its rule groups only
	observeEvents []int            // events the owner observes for its rule groups only
	frame         []byte           // the ForwardRequest
	batch         []byte           // its Batch
	seedsB        []byte           // its seeds' Batch
	item          []byte           // one item's encoding
	// observeRefused holds the owner's answer for the items of observe
	// and observeSpans it did not take, applied once every owner
	// answered.
	observeRefused []refusal
}

// refusal is an owner's refusal of item i of a kind.
type refusal struct {
	i      int
	kind   ruleItem
	reason window.Reason
	detail string
}

// ruleItem is the kind of item sent to a rule group's owner.
type ruleItem uint8

const (
	ruleSample ruleItem = iota
	ruleSpan
	ruleEvent
)

var _ service.Forwarder = (*Forwarder)(nil)

// Forward implements service.Forwarder.
func (f *Forwarder) Forward(ctx context.Context, o *service.Outgoing) {
	if f.m.Single(f.cfg.Self) {
		f.countLocal(o)
		return
	}
	c := f.calls.Get().(*call)
	defer f.putCall(c)
	tenant := o.Tenant.ID
	for i := range o.Samples {
		if o.Results[i] != window.Accepted {
			continue
		}
		s := &o.Samples[i]
		if o.Peer {
			// A peer sent the batch's samples here, their owner: their
			// rule groups remain to be placed.
			if !s.RulesOnly {
				if f.refusePredecessor(o, i) {
					continue
				}
				f.routeRules(c, o, i)
			}
			continue
		}
		var owner string
		var v uint64
		owner, v, c.heirs = f.route(tenant, s, o.Now, c.heirs[:0])
		local := owner == f.cfg.Self || owner == ""
		if local && f.refusePredecessor(o, i) {
			continue
		}
		if len(c.heirs) > 0 {
			f.seed(c, o, i)
		}
		if local {
			f.local[0].Add(1)
			f.routeRules(c, o, i)
			continue
		}
		g := c.group(owner, v)
		g.samples = append(g.samples, i)
	}
	spanBucket := window.Start(o.Now, int64(f.cfg.Interval))
	for i := range o.Spans {
		if o.SpanResults[i] != window.Accepted {
			continue
		}
		if o.Peer {
			// A peer sent the batch's spans here, their trace's owner:
			// their rule groups remain to be placed.
			if !o.Spans[i].RulesOnly && !o.Spans[i].HandedOver {
				f.routeSpanRules(c, o, i)
			}
			continue
		}
		owner, v := f.m.Owner(TraceHash(tenant, o.Spans[i].TraceID), spanBucket)
		if owner == f.cfg.Self || owner == "" {
			f.local[1].Add(1)
			f.routeSpanRules(c, o, i)
			continue
		}
		g := c.group(owner, v)
		g.spans = append(g.spans, i)
	}
	for i := range o.Events {
		if o.EventResults[i] == window.Accepted && !o.Events[i].RulesOnly {
			f.routeEventRules(c, o, i) // taken here
		}
	}
	for _, g := range c.order {
		f.encode(g, o)
		c.wg.Go(func() { f.deliver(ctx, g, o) })
	}
	if len(c.seeds.Samples) > 0 {
		f.seedHere(c, o)
	}
	c.wg.Wait()
	// An item fed to several rule groups' owners has their answers
	// written once all are in, so that no two deliveries write one result.
	for _, g := range c.order {
		for _, rf := range g.observeRefused {
			results, details := o.Results, o.Details
			switch rf.kind {
			case ruleSpan:
				results, details = o.SpanResults, o.SpanDetails
			case ruleEvent:
				results, details = o.EventResults, o.EventDetails
			}
			if results[rf.i] == window.Accepted {
				results[rf.i], details[rf.i] = rf.reason, rf.detail
			}
		}
	}
}

// routeRules sends sample i, aggregated here, to the owner of each rule
// group it feeds that another replica owns, marked rules_only. Rule
// groups are placed as contexts are, by the member list in force at
// their window's start.
func (f *Forwarder) routeRules(c *call, o *service.Outgoing, i int) {
	if f.cfg.Rules == nil {
		return
	}
	c.refs = f.cfg.Rules.AppendGroups(c.refs[:0], o.Tenant, &o.Samples[i], o.Now)
	f.placeRules(c, i, ruleSample)
}

// routeSpanRules sends span i, whose trace runs here, to the owner of each
// rule group it feeds that another replica owns, marked rules_only, as
// routeRules does for a sample.
func (f *Forwarder) routeSpanRules(c *call, o *service.Outgoing, i int) {
	if f.cfg.Rules == nil {
		return
	}
	c.refs = f.cfg.Rules.AppendSpanGroups(c.refs[:0], o.Tenant, &o.Spans[i], o.Now)
	f.placeRules(c, i, ruleSpan)
}

// routeEventRules sends event i, taken here, to the owner of each logging
// rule group it feeds that another replica owns, marked rules_only, as
// routeRules does for a sample.
func (f *Forwarder) routeEventRules(c *call, o *service.Outgoing, i int) {
	if f.cfg.Rules == nil {
		return
	}
	c.refs = f.cfg.Rules.AppendEventGroups(c.refs[:0], o.Tenant, &o.Events[i], o.Now)
	f.placeRules(c, i, ruleEvent)
}

// placeRules adds item i of kind k to the call's group of each owner of
// the rule groups c.refs names, once per owner, and counts it local for
// this replica's.
func (f *Forwarder) placeRules(c *call, i int, k ruleItem) {
	c.owners = c.owners[:0]
	for _, ref := range c.refs {
		owner, v := f.m.Owner(ref.Hash, ref.Start)
		if owner == "" {
			owner = f.cfg.Self
		}
		if slices.Contains(c.owners, owner) {
			continue
		}
		c.owners = append(c.owners, owner)
		if owner == f.cfg.Self {
			f.local[3].Add(1)
			continue
		}
		g := c.group(owner, v)
		switch k {
		case ruleSample:
			g.observe = append(g.observe, i)
		case ruleSpan:
			g.observeSpans = append(g.observeSpans, i)
		case ruleEvent:
			g.observeEvents = append(g.observeEvents, i)
		}
	}
}

// OwnsGroup reports whether this replica owns the aggregation rule groups
// of hash h in the window starting at start (rules.Engine.SetOwner).
func (f *Forwarder) OwnsGroup(h uint64, start int64) bool {
	if f.m.Single(f.cfg.Self) {
		return true
	}
	owner, _ := f.m.Owner(h, start)
	return owner == f.cfg.Self || owner == ""
}

// route returns the owner of s, a sample of tenant arriving at now: the
// owner of its context in its bucket, by the member list in force at the
// bucket's start, and that list's number. For a RATE or MONOTONIC_COUNT
// sample it appends to heirs the replicas owning the context under later
// lists, which need it as their previous sample; while no change is
// scheduled there are none.
func (f *Forwarder) route(tenant string, s *window.Sample, now int64, heirs []string) (string, uint64, []string) {
	start, _ := f.cfg.Timing.Bucket(s.Timestamp, now)
	h := ContextHash(tenant, s.Key)
	owner, v := f.m.Owner(h, start)
	if s.Type.Stateful() {
		heirs = f.m.Heirs(heirs, h, start, owner)
	}
	return owner, v, heirs
}

// Owns implements service.Owner: whether this replica owns s, a sample of
// tenant arriving at now.
func (f *Forwarder) Owns(tenant string, s *window.Sample, now int64) bool {
	if f.m.Single(f.cfg.Self) {
		return true
	}
	owner, _, _ := f.route(tenant, s, now, nil)
	return owner == f.cfg.Self || owner == ""
}

// LastSamples holds the last samples of RATE and MONOTONIC_COUNT contexts
// (flush.Aggregator): it calls fn with them in slices of at most n, holding
// no lock of its own while fn runs, until fn returns false.
type LastSamples interface {
	LastSamples(n int, fn func([]window.Last) bool)
}

// handOverChunk bounds the last samples a hand-over holds at once: it
// reads that many, sends them and waits for their heirs before it reads
// more, so its memory does not grow with the number of contexts.
const handOverChunk = 1000

// HandOver sends the last sample of every RATE and MONOTONIC_COUNT
// context of src that this replica owns (in the bucket of that sample, or
// in a later one before v: it took the sample as a seed and has not taken
// one of its own) and another replica owns under v, to that replica as a
// seed: it then has
// the previous sample of a context whose last sample came before v was
// scheduled, which the seeds of arriving samples (Forward) do not give it.
// The heir keeps the later of a hand-over and a seed. It reads src in
// slices of handOverChunk, each sent (one call per heir and tenant) and
// answered before the next is read, and returns once every heir has
// answered or been given up (counted as seeds undelivered): a heir that
// did not take one call within Timeout gets no further calls, so that an
// unreachable heir holds the hand-over for one Timeout, not one per
// thousand contexts.
func (f *Forwarder) HandOver(ctx context.Context, src LastSamples, v Version) {
	type heirTenant struct {
		heir string
		t    *window.Tenant
	}
	now := time.Now().UnixNano()
	out := map[heirTenant][]window.Sample{}
	var mu sync.Mutex
	gone := map[string]bool{} // heirs given up
	src.LastSamples(handOverChunk, func(ls []window.Last) bool {
		for _, l := range ls {
			h := ContextHash(l.Tenant.ID, []byte(l.Key))
			start, _ := f.cfg.Timing.Bucket(l.Timestamp, now)
			if !f.m.Held(f.cfg.Self, h, start, v.Since) {
				continue // another replica holds its latest sample
			}
			heir := v.owner(h)
			if heir == f.cfg.Self || heir == "" {
				continue
			}
			if gone[heir] {
				f.undelivered[2].Add(1)
				continue
			}
			s := window.Sample{Type: l.Type, Value: l.Value, Timestamp: l.Timestamp, SampleRate: 1}
			s.Name, s.Host, s.Tags = window.SplitKey(l.Key, nil)
			k := heirTenant{heir, l.Tenant}
			out[k] = append(out[k], s)
		}
		var wg sync.WaitGroup
		for k, smp := range out {
			wg.Go(func() {
				o := &service.Outgoing{Tenant: k.t, Now: now, Samples: smp}
				g := &group{owner: k.heir, version: v.N, handOver: true}
				for i := range smp {
					g.seeds = append(g.seeds, i)
				}
				f.encode(g, o)
				if err := f.deliver(ctx, g, o); err != nil {
					mu.Lock()
					gone[k.heir] = true
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		clear(out)
		return true
	})
	f.handOvers.Add(1)
}

// seed hands sample i to the heirs route found (c.heirs): each keeps it
// as its context's previous sample, so that its first delta as the owner
// is the one a single aggd computes.
func (f *Forwarder) seed(c *call, o *service.Outgoing, i int) {
	for _, heir := range c.heirs {
		if heir == f.cfg.Self {
			c.seeds.Samples = append(c.seeds.Samples, o.Samples[i])
			c.seeds.Results = append(c.seeds.Results, window.Accepted)
			c.seedAt = append(c.seedAt, i)
			continue
		}
		g := c.group(heir, f.m.Latest().N)
		g.seeds = append(g.seeds, i)
	}
}

// seedHere keeps the seeds of the contexts this replica will own.
func (f *Forwarder) seedHere(c *call, o *service.Outgoing) {
	b := &c.seeds
	b.Tenant, b.Now = o.Tenant, o.Now
	var refused uint64
	if f.cfg.Seeder != nil {
		f.cfg.Seeder.Seed(b, false)
		// The seeds kept go to this replica's log as a peer's would, in
		// a ForwardRequest's seeds field: restarted (after -9 too) before
		// the contexts' next samples, it keeps them again.
		batch := c.seedsB[:0]
		for k, r := range b.Results {
			if r != window.Accepted {
				refused++
				continue
			}
			batch, c.item = codec.AppendBatchSample(batch, c.item, &o.Samples[c.seedAt[k]])
		}
		c.seedsB = batch
		if len(batch) > 0 {
			o.LocalSeeds = protowire.AppendTag(o.LocalSeeds[:0], seedsField, protowire.BytesType)
			o.LocalSeeds = protowire.AppendBytes(o.LocalSeeds, batch)
			o.LocalSeedsAt = journal.LatestSeed(b)
		}
	}
	f.refused[2].Add(refused)
	f.local[2].Add(uint64(len(b.Samples)) - refused)
	clear(b.Samples) // drop the batch's strings
	b.Samples, b.Results, b.Tenant, c.seedAt = b.Samples[:0], b.Results[:0], nil, c.seedAt[:0]
}

func (f *Forwarder) countLocal(o *service.Outgoing) {
	if o.Peer {
		return // counted where they arrived
	}
	var n [2]uint64
	for _, r := range o.Results {
		if r == window.Accepted {
			n[0]++
		}
	}
	for _, r := range o.SpanResults {
		if r == window.Accepted {
			n[1]++
		}
	}
	f.local[0].Add(n[0])
	f.local[1].Add(n[1])
}

func (c *call) group(owner string, v uint64) *group {
	g := c.groups[owner]
	if g == nil {
		g = &group{owner: owner}
		c.groups[owner] = g
	}
	if len(g.samples) == 0 && len(g.spans) == 0 && len(g.seeds) == 0 && len(g.observe) == 0 && len(g.observeSpans) == 0 && len(g.observeEvents) == 0 {
		c.order = append(c.order, g)
	}
	g.version = max(g.version, v)
	return g
}

func (f *Forwarder) putCall(c *call) {
	for _, g := range c.order {
		g.samples, g.spans, g.seeds, g.version = g.samples[:0], g.spans[:0], g.seeds[:0], 0
		clear(g.observeRefused) // drop the details
		g.observe, g.observeRefused = g.observe[:0], g.observeRefused[:0]
		g.observeSpans, g.observeEvents = g.observeSpans[:0], g.observeEvents[:0]
		if cap(g.frame) > 4<<20 {
			g.frame, g.batch, g.seedsB = nil, nil, nil
		}
	}
	c.order = c.order[:0]
	if cap(c.seedsB) > 4<<20 {
		c.seedsB = nil
	}
	if len(c.groups) > 64 {
		clear(c.groups) // members come and go; keep the map small
	}
	f.calls.Put(c)
}

// encode builds g's ForwardRequest in g.frame.
func (f *Forwarder) encode(g *group, o *service.Outgoing) {
	batch := g.batch[:0]
	for _, i := range g.samples {
		batch, g.item = codec.AppendBatchSample(batch, g.item, &o.Samples[i])
	}
	for _, i := range g.observe { // after the samples: see deliver
		s := o.Samples[i]
		s.RulesOnly = true
		batch, g.item = codec.AppendBatchSample(batch, g.item, &s)
	}
	for _, i := range g.spans {
		batch = g.appendSpan(batch, &o.Spans[i])
	}
	for _, i := range g.observeSpans { // after the spans: see deliver
		sp := o.Spans[i]
		sp.RulesOnly = true
		batch = g.appendSpan(batch, &sp)
	}
	for _, i := range g.observeEvents {
		ev := o.Events[i]
		ev.RulesOnly = true
		g.item = codec.AppendEvent(g.item[:0], &ev)
		batch = protowire.AppendTag(batch, 2, protowire.BytesType)
		batch = protowire.AppendBytes(batch, g.item)
	}
	g.batch = batch
	call := codec.CallID{Replica: f.run, Sequence: f.seq.Add(1)}
	frame := codec.AppendForward(g.frame[:0], batch, codec.Forward{Tenant: o.Tenant.ID, Now: o.Now, Call: call}, g.version)
	if len(g.seeds) > 0 {
		seeds := g.seedsB[:0]
		for _, i := range g.seeds {
			seeds, g.item = codec.AppendBatchSample(seeds, g.item, &o.Samples[i])
		}
		g.seedsB = seeds
		frame = protowire.AppendTag(frame, seedsField, protowire.BytesType)
		frame = protowire.AppendBytes(frame, seeds)
		if g.handOver {
			frame = protowire.AppendTag(frame, handedOverField, protowire.VarintType)
			frame = protowire.AppendVarint(frame, 1)
		}
	}
	for _, d := range g.decisions {
		frame = codec.AppendForwardDecision(frame, d.TraceID, d.Keep)
	}
	g.frame = frame
}

// appendSpan appends sp to batch, an aggd.v1 Batch, as its field 4.
func (g *group) appendSpan(batch []byte, sp *spans.Span) []byte {
	g.item = codec.AppendSpan(g.item[:0], sp)
	batch = protowire.AppendTag(batch, 4, protowire.BytesType)
	return protowire.AppendBytes(batch, g.item)
}

// seedsField is ForwardRequest.seeds, handedOverField
// ForwardRequest.seeds_handed_over.
const (
	seedsField      = 7
	handedOverField = 8
)

// deliver sends g to its owner and writes the outcome into o. It returns
// the error of a call its owner did not take.
func (f *Forwarder) deliver(ctx context.Context, g *group, o *service.Outgoing) error {
	for _, i := range g.samples {
		o.SampleSent[i] = true
	}
	for _, i := range g.spans {
		o.SpanSent[i] = true
	}
	timeout, left := f.cfg.Timeout, ""
	if f.m.Departed(g.owner, time.Now().UnixNano()) {
		timeout, left = f.cfg.DepartedTimeout, ", and it has left the member list"
	}
	resp, err := f.send(ctx, g.owner, g.frame, timeout)
	if err != nil {
		detail := fmt.Sprintf("the replica owning it (%s) did not take it: %v%s", g.owner, err, left)
		for _, i := range g.samples {
			o.Results[i], o.Details[i] = window.ReasonOwnerUnavailable, detail
		}
		for _, i := range g.spans {
			o.SpanResults[i], o.SpanDetails[i] = window.ReasonOwnerUnavailable, detail
		}
		ruleDetail := fmt.Sprintf("the replica owning one of its aggregation rule groups (%s) did not take it: %v", g.owner, err)
		for k, items := range [...][]int{ruleSample: g.observe, ruleSpan: g.observeSpans, ruleEvent: g.observeEvents} {
			for _, i := range items {
				g.observeRefused = append(g.observeRefused, refusal{i, ruleItem(k), window.ReasonOwnerUnavailable, ruleDetail})
			}
		}
		f.undelivered[0].Add(uint64(len(g.samples)))
		f.undelivered[g.spanKind()].Add(uint64(len(g.spans)))
		f.undelivered[5].Add(uint64(len(g.decisions)))
		f.undelivered[2].Add(uint64(len(g.seeds)))
		f.undelivered[3].Add(uint64(len(g.observe) + len(g.observeSpans) + len(g.observeEvents)))
		f.log.Warn("forward failed", "owner", g.owner, "samples", len(g.samples), "spans", len(g.spans), "seeds", len(g.seeds),
			"rule_samples", len(g.observe), "rule_spans", len(g.observeSpans), "rule_events", len(g.observeEvents), "err", err)
		return err
	}
	seedsRefused := min(uint64(resp.GetSeedsRefused()), uint64(len(g.seeds)))
	f.refused[2].Add(seedsRefused)
	f.acked[2].Add(uint64(len(g.seeds)) - seedsRefused)
	var refused [2]uint64
	for _, rj := range resp.GetAck().GetRejections() {
		j := int(rj.GetIndex())
		switch rj.GetKind() {
		case aggdv1.ItemKind_ITEM_KIND_SAMPLE:
			if j < len(g.samples) {
				i := g.samples[j]
				o.Results[i], o.Details[i] = parseReason(rj.GetReason()), rj.GetDetail()
				refused[0]++
			} else if k := j - len(g.samples); k < len(g.observe) {
				g.observeRefused = append(g.observeRefused, refusal{g.observe[k], ruleSample, parseReason(rj.GetReason()), rj.GetDetail()})
			}
		case aggdv1.ItemKind_ITEM_KIND_SPAN:
			if j < len(g.spans) {
				i := g.spans[j]
				o.SpanResults[i], o.SpanDetails[i] = parseReason(rj.GetReason()), rj.GetDetail()
				refused[1]++
			} else if k := j - len(g.spans); k < len(g.observeSpans) {
				g.observeRefused = append(g.observeRefused, refusal{g.observeSpans[k], ruleSpan, parseReason(rj.GetReason()), rj.GetDetail()})
			}
		case aggdv1.ItemKind_ITEM_KIND_EVENT:
			if j < len(g.observeEvents) {
				g.observeRefused = append(g.observeRefused, refusal{g.observeEvents[j], ruleEvent, parseReason(rj.GetReason()), rj.GetDetail()})
			}
		}
	}
	f.refused[0].Add(refused[0])
	f.refused[g.spanKind()].Add(refused[1])
	f.acked[0].Add(uint64(len(g.samples)) - refused[0])
	f.acked[g.spanKind()].Add(uint64(len(g.spans)) - refused[1])
	f.acked[5].Add(uint64(len(g.decisions)))
	f.refused[3].Add(uint64(len(g.observeRefused)))
	f.acked[3].Add(uint64(len(g.observe) + len(g.observeSpans) + len(g.observeEvents) - len(g.observeRefused)))
	return nil
}

// spanKind is the kind g's spans count as: spans of held traces in a
// hand-over (MoveTraces), else spans.
func (g *group) spanKind() int {
	if g.handOver {
		return 4
	}
	return 1
}

// parseReason returns the Reason named name; an unknown name (a newer
// owner's) reads as malformed.
func parseReason(name string) window.Reason {
	for r := window.Reason(1); r < window.NumReasons; r++ {
		if r.String() == name {
			return r
		}
	}
	return window.ReasonMalformed
}

// forwardMethod is PeerService.Forward's full name.
const forwardMethod = "/aggd.v1.PeerService/Forward"

// peerCallContext is ctx carrying what a call to a peer must: the
// cluster's token and the peer protocol this replica speaks.
func peerCallContext(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token, codec.PeerProtocolKey, codec.PeerProtocol)
}

// send calls Forward on owner with frame, retrying with backoff what may
// succeed later until Timeout or ctx ends.
func (f *Forwarder) send(ctx context.Context, owner string, frame []byte, timeout time.Duration) (*aggdv1.ForwardResponse, error) {
	conn, err := f.conn(owner)
	if err != nil {
		f.callsFailed.Add(1)
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ctx = peerCallContext(ctx, f.cfg.Token)
	start := time.Now()
	backoff := f.cfg.InitialBackoff
	for {
		// One call waits for its owner as long as the forward may, and
		// is sent again when it failed (the owner unreachable, refusing
		// for now, or its connection lost). Every attempt carries the
		// same name: an owner that applied the call answers a repeat
		// with its first ack (Calls), so a call whose answer was lost
		// is not applied twice.
		resp := &aggdv1.ForwardResponse{}
		err := conn.Invoke(ctx, forwardMethod, rawFrame(frame), resp)
		if err == nil {
			f.callsOK.Add(1)
			f.latency.Observe(time.Since(start).Seconds())
			f.markReached(owner, time.Now().UnixNano())
			return resp, nil
		}
		if permanent(err) {
			f.callsFailed.Add(1)
			return nil, err
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
			f.callsRetried.Add(1)
			backoff = min(2*backoff, f.cfg.MaxBackoff)
		case <-ctx.Done():
			t.Stop()
			f.callsFailed.Add(1)
			return nil, fmt.Errorf("gave up after %v: %w", time.Since(start).Round(time.Millisecond), err)
		}
	}
}

// permanent reports whether err will not go away by sending again.
func permanent(err error) bool {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument, codes.FailedPrecondition, codes.Unimplemented:
		return true
	}
	return false
}

// conn returns the connection to owner, dialling it the first time.
func (f *Forwarder) conn(owner string) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, errors.New("cluster: forwarder shut down")
	}
	if c := f.conns[owner]; c != nil {
		return c, nil
	}
	creds := f.cfg.TLS
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	c, err := grpc.NewClient(owner, grpc.WithTransportCredentials(creds),
		// Pings find a peer gone silent, so that its calls fail and are
		// retried on a new connection; peers' servers allow one every 10 s.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: false}),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(frameCodec{encoding.GetCodecV2(proto.Name)})))
	if err != nil {
		return nil, err
	}
	f.conns[owner] = c
	return c, nil
}

// Shutdown closes the connections to peers. Forwards still running fail.
// It is idempotent.
func (f *Forwarder) Shutdown(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for k, c := range f.conns {
		c.Close()
		delete(f.conns, k)
	}
	return nil
}

// rawFrame is a request already encoded.
type rawFrame []byte

// frameCodec is the proto codec, except that a rawFrame is sent as is.
type frameCodec struct{ encoding.CodecV2 }

// Marshal implements encoding.CodecV2.
func (c frameCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(rawFrame); ok {
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// Describe implements prometheus.Collector.
func (f *Forwarder) Describe(ch chan<- *prometheus.Desc) {
	ch <- f.desc.items
	ch <- f.desc.calls
	ch <- f.desc.members
	ch <- f.desc.version
	ch <- f.desc.handOvers
	ch <- f.desc.predecessor
	f.latency.Describe(ch)
}

// Collect implements prometheus.Collector.
func (f *Forwarder) Collect(ch chan<- prometheus.Metric) {
	for k, kind := range [6]string{"sample", "span", "seed", "rule", "held_span", "decision"} {
		for _, o := range []struct {
			name string
			n    *atomic.Uint64
		}{{"local", &f.local[k]}, {"acked", &f.acked[k]}, {"refused", &f.refused[k]}, {"undelivered", &f.undelivered[k]}} {
			ch <- prometheus.MustNewConstMetric(f.desc.items, prometheus.CounterValue, float64(o.n.Load()), kind, o.name)
		}
	}
	ch <- prometheus.MustNewConstMetric(f.desc.calls, prometheus.CounterValue, float64(f.callsOK.Load()), "ok")
	ch <- prometheus.MustNewConstMetric(f.desc.calls, prometheus.CounterValue, float64(f.callsRetried.Load()), "retry")
	ch <- prometheus.MustNewConstMetric(f.desc.calls, prometheus.CounterValue, float64(f.callsFailed.Load()), "failed")
	v := f.m.Latest()
	ch <- prometheus.MustNewConstMetric(f.desc.members, prometheus.GaugeValue, float64(len(v.Ring.Members())))
	ch <- prometheus.MustNewConstMetric(f.desc.version, prometheus.GaugeValue, float64(v.N))
	ch <- prometheus.MustNewConstMetric(f.desc.handOvers, prometheus.CounterValue, float64(f.handOvers.Load()))
	ch <- prometheus.MustNewConstMetric(f.desc.predecessor, prometheus.CounterValue, float64(f.predecessorRefused.Load()))
	f.latency.Collect(ch)
}
