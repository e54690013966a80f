package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/rules"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/service/servicetest"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// clusterRules group one metric by a tag with a mergeable method each
// (sum, max, count) and one that is not (quantiles).
const clusterRules = `
[[aggregate_rules]]
name = "req"
window = "10s"
group_by = ["svc"]
[aggregate_rules.select]
category = "metric"
metric_name = ["req"]
[aggregate_rules.algorithms."req_sum"]
method = "sum"
source_field = "req"
[aggregate_rules.algorithms."req_max"]
method = "max"
source_field = "req"
[aggregate_rules.algorithms."req_n"]
method = "count"
source_field = "req"
[aggregate_rules.algorithms."req_q"]
method = "quantiles"
source_field = "req"
[aggregate_rules.algorithms."req_q".quantile_opts]
percentiles = [0.5, 0.9]
`

// ruleNode is one replica of a test cluster: its rules engine, fed by a
// real aggregator behind the aggregator and peer services on loopback.
type ruleNode struct {
	addr   string
	engine *rules.Engine
	agg    *flush.Aggregator
	fwd    *Forwarder
}

// ruleNodes starts a replica per rules text, all one cluster (nil
// forwarders for one replica alone).
func ruleNodes(t *testing.T, texts ...string) []*ruleNode {
	t.Helper()
	cfg := window.DefaultConfig()
	lis := make([]net.Listener, len(texts))
	members := make([]string, len(texts))
	for i := range texts {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lis[i], members[i] = l, l.Addr().String()
	}
	nodes := make([]*ruleNode, len(texts))
	for i, text := range texts {
		set, err := rules.Parse(text)
		if err != nil {
			t.Fatal(err)
		}
		n := &ruleNode{addr: members[i], engine: rules.NewEngine(set, flush.ShardCount(2), cfg)}
		agg := flush.NewAggregator(flush.AggregatorConfig{Window: cfg, Shards: 2, Rules: n.engine})
		n.agg = agg
		if len(texts) > 1 {
			n.fwd = NewForwarder(Config{Self: members[i], Token: token, Timing: cfg.Timing(), Interval: cfg.Interval,
				Rules: n.engine}, NewMembership(members, int64(cfg.Interval), int64(time.Hour)), slog.New(slog.DiscardHandler))
			n.engine.SetOwner(n.fwd.OwnsGroup)
			t.Cleanup(func() { n.fwd.Shutdown(context.Background()) })
		}
		servicetest.ServeOn(t, lis[i], agg, token, func(c *service.Config) {
			if n.fwd != nil {
				c.Forwarder = n.fwd
			}
			c.PeerCalls = NewCalls(time.Minute, 0)
		})
		nodes[i] = n
	}
	return nodes
}

// outputs drains n's rule windows: every output point by series and
// timestamp.
func (n *ruleNode) outputs() map[string]float64 {
	out := map[string]float64{}
	for _, m := range n.engine.Drain(time.Now().Add(time.Hour).UnixNano(), true, func(_ int, f func()) { f() }, nil) {
		tags := slices.Clone(m.Tags)
		slices.Sort(tags)
		out[fmt.Sprintf("%s{%s}@%d", m.Name, strings.Join(tags, ","), m.Timestamp)] = m.Value
	}
	return out
}

// Samples of many contexts feeding few rule groups, sent round robin to
// three replicas: each group is aggregated by one replica, whatever
// replicas own its contexts, so the replicas' outputs are disjoint and
// together are exactly what one aggd's rules output, quantiles included,
// whether the rules drop the originals or not.
func TestRuleGroupsHaveOneOwner(t *testing.T) {
	for _, tt := range []struct{ name, text string }{
		{"originals kept", clusterRules},
		{"originals dropped", "delete_rules_point = true\n" + clusterRules},
	} {
		t.Run(tt.name, func(t *testing.T) { ruleGroupsHaveOneOwner(t, tt.text) })
	}
}

func ruleGroupsHaveOneOwner(t *testing.T, text string) {
	nodes := ruleNodes(t, text, text, text)
	single := ruleNodes(t, text)[0]
	rng := rand.New(rand.NewPCG(3, 4))
	base := time.Now().Add(-time.Minute).Truncate(10 * time.Second).UnixNano()
	for i := range 30 {
		b := &aggdv1.Batch{}
		for j := range 40 {
			b.Samples = append(b.Samples, &aggdv1.Sample{
				Name: "req", Type: aggdv1.MetricType_METRIC_TYPE_GAUGE, Value: float64(rng.IntN(1000)),
				Tags:              []string{fmt.Sprintf("svc:s%d", rng.IntN(5)), fmt.Sprintf("pod:p%d", rng.IntN(20))},
				TimestampUnixNano: base + int64(i*40+j)*int64(25*time.Millisecond),
			})
		}
		for _, addr := range []string{nodes[i%3].addr, single.addr} {
			if ack := submit(t, addr, b); ack.GetAccepted() != 40 {
				t.Fatalf("ack from %s: %v", addr, ack)
			}
		}
	}
	// Each context is aggregated by one replica, and a sample sent for
	// rule groups only makes none.
	contexts := 0
	for _, n := range nodes {
		contexts += n.agg.Contexts()
	}
	if w := single.agg.Contexts(); contexts != w {
		t.Errorf("the replicas hold %d contexts, one aggd %d", contexts, w)
	}
	want := single.outputs()
	got := map[string]float64{}
	for i, n := range nodes {
		for k, v := range n.outputs() {
			if _, dup := got[k]; dup {
				t.Errorf("%s sent by two replicas (one is %d)", k, i)
			}
			got[k] = v
		}
	}
	if len(want) < 5*4*5 { // five groups, three windows at least, five series each
		t.Fatalf("one aggd output only %d points", len(want))
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Errorf("%s: cluster %v (present %v), one aggd %v", k, g, ok, w)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: sent by the cluster only", k)
		}
	}
	var sent, local float64
	for _, n := range nodes {
		sent += itemsCounted(t, n.fwd, "rule", "acked")
		local += itemsCounted(t, n.fwd, "rule", "local")
		if u := itemsCounted(t, n.fwd, "rule", "undelivered") + itemsCounted(t, n.fwd, "rule", "refused"); u != 0 {
			t.Errorf("%v rule samples undelivered or refused", u)
		}
	}
	if sent == 0 || local == 0 {
		t.Errorf("rule samples sent to their group's owner %v, kept %v: want some of each", sent, local)
	}
}

// A sample sent for a rule group whose owner has no rule matching it (the
// replicas' rules files differ) is refused rules_mismatch, with a detail,
// and counted; the same batch's other samples are taken.
func TestRuleGroupOwnerWithOtherRules(t *testing.T) {
	nodes := ruleNodes(t, clusterRules, strings.ReplaceAll(clusterRules, `metric_name = ["req"]`, `metric_name = ["other"]`))
	entry, owner := nodes[0], nodes[1]
	// Samples aggregated where they arrive, feeding groups the other
	// replica owns, and one feeding no rule.
	var names []string
	r := NewRing([]string{entry.addr, owner.addr})
	for i := 0; len(names) < 3; i++ {
		name := fmt.Sprintf("svc:s%d", i)
		ctx := window.AppendKey(nil, "req", "", []string{name})
		if r.Owner(ContextHash("default", ctx)) != entry.addr {
			continue
		}
		s := &window.Sample{Name: "req", Tags: []string{name}, Timestamp: time.Now().UnixNano()}
		refs := entry.engine.AppendGroups(nil, window.NewTenant("default"), s, s.Timestamp)
		if len(refs) > 0 && !entry.fwd.OwnsGroup(refs[0].Hash, refs[0].Start) {
			names = append(names, name)
		}
	}
	b := &aggdv1.Batch{}
	now := time.Now().UnixNano()
	for _, n := range names {
		b.Samples = append(b.Samples, &aggdv1.Sample{Name: "req", Type: aggdv1.MetricType_METRIC_TYPE_GAUGE, Value: 1, Tags: []string{n}, TimestampUnixNano: now})
	}
	b.Samples = append(b.Samples, &aggdv1.Sample{Name: "unruled", Type: aggdv1.MetricType_METRIC_TYPE_GAUGE, Value: 1, TimestampUnixNano: now})
	ack := submit(t, entry.addr, b)
	if ack.GetAccepted() != 1 || ack.GetRejected() != 3 {
		t.Fatalf("ack %v: want the three rule samples refused", ack)
	}
	for _, rj := range ack.GetRejections() {
		if rj.GetReason() != "rules_mismatch" || !strings.Contains(rj.GetDetail(), "rules files differ") {
			t.Errorf("rejection %v", rj)
		}
	}
	if n := itemsCounted(t, entry.fwd, "rule", "refused"); n != 3 {
		t.Errorf("refused %v, want 3", n)
	}
}

// groupsOf places every sample's rule group at one hash, for
// BenchmarkForwardRuleSamples.
type groupsOf uint64

func (h groupsOf) AppendGroups(dst []rules.GroupRef, _ *window.Tenant, s *window.Sample, now int64) []rules.GroupRef {
	return append(dst, rules.GroupRef{Hash: uint64(h), Start: s.Timestamp})
}

func (h groupsOf) AppendEventGroups(dst []rules.GroupRef, _ *window.Tenant, ev *window.Event, now int64) []rules.GroupRef {
	return append(dst, rules.GroupRef{Hash: uint64(h), Start: ev.Timestamp})
}

func (h groupsOf) AppendSpanGroups(dst []rules.GroupRef, _ *window.Tenant, sp *spans.Span, now int64) []rules.GroupRef {
	return append(dst, rules.GroupRef{Hash: uint64(h), Start: sp.Start})
}

// BenchmarkForwardRules submits batches of 500 items that stay on the
// entry replica of a cluster of two (samples whose contexts it owns,
// spans whose traces it runs, events, which stay where they arrive):
// without rules (local), and with every item feeding a rule group the
// other replica owns (rule-forwarded: each goes there marked rules_only,
// over the peer service, and is decoded there). The difference per item is
// the cost of sending an item to its rule group's owner, as
// BenchmarkForward's is of sending it to its context's or trace's owner.
func BenchmarkForwardRules(b *testing.B) {
	const self = "127.0.0.1:1"
	ownerAddr := benchOwner(b)
	r := NewRing([]string{self, ownerAddr})
	batches := map[string]*aggdv1.Batch{"samples": {}, "spans": {}, "events": {}}
	for i := 0; len(batches["samples"].Samples) < 500; i++ {
		tags := []string{fmt.Sprintf("ctx:%d", i), "env:bench"}
		if r.Owner(ContextHash("default", window.AppendKey(nil, "bench.count", "", tags))) == self {
			batches["samples"].Samples = append(batches["samples"].Samples, &aggdv1.Sample{Name: "bench.count", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, Tags: tags})
		}
	}
	now := time.Now().UnixNano()
	for tr := 0; len(batches["spans"].Spans) < 500; tr++ {
		id := [16]byte{byte(tr), byte(tr >> 8), 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
		if r.Owner(TraceHash("default", id)) != self {
			continue
		}
		for i := range 5 { // traces of 5 spans, as aggload sends them
			batches["spans"].Spans = append(batches["spans"].Spans, &aggdv1.Span{TraceId: id[:], SpanId: []byte{byte(i), 1, 1, 1, 1, 1, byte(tr >> 8), byte(tr)},
				Service: "svc", Name: "http.request", Resource: fmt.Sprintf("/r/%d", tr%20), StartUnixNano: now, DurationNano: 1000})
		}
	}
	for i := range 500 {
		batches["events"].Events = append(batches["events"].Events, &aggdv1.Event{Title: "deploy", Text: fmt.Sprintf("release %d", i), Tags: []string{"env:bench"}})
	}
	var remote groupsOf
	for h := uint64(1); ; h++ {
		if r.Owner(h) == ownerAddr {
			remote = groupsOf(h)
			break
		}
	}
	for _, items := range []string{"samples", "spans", "events"} {
		for _, mode := range []string{"local", "rule-forwarded"} {
			b.Run(items+"/"+mode, func(b *testing.B) {
				cfg := Config{Self: self, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second}
				if mode == "rule-forwarded" {
					cfg.Rules = remote
				}
				fwd := NewForwarder(cfg, NewMembership([]string{self, ownerAddr}, int64(time.Second), int64(time.Hour)), slog.New(slog.DiscardHandler))
				defer fwd.Shutdown(context.Background())
				submitLoop(b, replica(b, discard{}, fwd), batches[items])
				if n := itemsCounted(b, fwd, "rule", "acked"); mode == "rule-forwarded" && n == 0 {
					b.Fatal("no item went to its rule group's owner")
				}
			})
		}
	}
}
