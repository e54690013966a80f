package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// clusterRulesFile holds rules over metrics whose contexts spread over the
// replicas: mergeable methods (sum, max, count, avg) and one that is not
// (quantiles), one rule by name and one by regular expression with two
// group_by keys and a condition.
const clusterRulesFile = `
[[aggregate_rules]]
name = "latency"
window = "10s"
group_by = ["svc"]
[aggregate_rules.select]
category = "metric"
metric_name = ["rl.latency"]
[aggregate_rules.algorithms."rl_lat_sum"]
method = "sum"
source_field = "rl.latency"
[aggregate_rules.algorithms."rl_lat_max"]
method = "max"
source_field = "rl.latency"
[aggregate_rules.algorithms."rl_lat_n"]
method = "count"
source_field = "rl.latency"
[aggregate_rules.algorithms."rl_lat_avg"]
method = "avg"
source_field = "rl.latency"
[aggregate_rules.algorithms."rl_lat_q"]
method = "quantiles"
source_field = "rl.latency"
[aggregate_rules.algorithms."rl_lat_q".quantile_opts]
percentiles = [0.5, 0.9, 0.99]

[[aggregate_rules]]
name = "bytes"
window = "5s"
group_by = ["svc", "region"]
[aggregate_rules.select]
category = "metric"
metric_name = ["reg:^rl\\.bytes$"]
condition = '{ region != "r2" }'
[aggregate_rules.algorithms."rl_bytes_sum"]
method = "sum"
source_field = "rl.bytes"
`

// TestClusterRulesDeliverWhatOneAggdWould runs three replicas of one
// cluster with aggregation rules, one of them killed with SIGKILL and
// restarted from its write-ahead log halfway, sends samples of many
// contexts feeding few rule groups round robin to them, and the same
// samples to a single aggd with the same rules. Both deliver to intakes
// that keep the last write per series and timestamp: the cluster's must
// hold every rule output the single aggd's holds, quantiles included, and
// the originals.
func TestClusterRulesDeliverWhatOneAggdWould(t *testing.T) {
	// batch i holds samples from base + i/4 s on, and as many again late,
	// anywhere from base on: integers, so that sums do not depend on the
	// order they are added in.
	batch := func(rng *rand.Rand, base int64, i int) *aggdv1.Batch {
		b := &aggdv1.Batch{}
		for j := range 60 {
			ts := loadTime(rng, base, i, j)
			tags := []string{fmt.Sprintf("svc:s%d", rng.IntN(5)), fmt.Sprintf("pod:p%d", rng.IntN(30)), fmt.Sprintf("region:r%d", rng.IntN(3))}
			if j%3 == 0 {
				b.Samples = append(b.Samples, &aggdv1.Sample{Name: "rl.bytes", Type: aggdv1.MetricType_METRIC_TYPE_COUNT,
					Value: float64(1 + rng.IntN(1000)), Tags: tags, TimestampUnixNano: ts})
				continue
			}
			b.Samples = append(b.Samples, &aggdv1.Sample{Name: "rl.latency", Type: aggdv1.MetricType_METRIC_TYPE_GAUGE,
				Value: float64(rng.IntN(5000)), Tags: tags, TimestampUnixNano: ts})
		}
		return b
	}
	ddC, ddS := runRulesCluster(t, clusterRulesFile, batch, "rule samples")
	want := seriesStore(ddS.Series(), "rl_")
	if len(want) < 150 {
		t.Fatalf("only %d rule output points from the single aggd", len(want))
	}
	compareStores(t, "rule outputs", want, seriesStore(ddC.Series(), "rl_"))
	compareStores(t, "originals", seriesStore(ddS.Series(), "rl."), seriesStore(ddC.Series(), "rl."))
}

// clusterTracingRulesFile holds a tracing rule grouped by the span's
// service and resource, whose groups spread over the replicas while each
// trace runs on one: mergeable methods and quantiles.
const clusterTracingRulesFile = `
[[aggregate_rules]]
name = "spans"
window = "10s"
group_by = ["service", "resource"]
[aggregate_rules.select]
category = "tracing"
metric_name = ["duration"]
condition = '{ duration > 0 }'
[aggregate_rules.algorithms."tr_dur_sum"]
method = "sum"
source_field = "duration"
[aggregate_rules.algorithms."tr_dur_max"]
method = "max"
source_field = "duration"
[aggregate_rules.algorithms."tr_dur_n"]
method = "count"
source_field = "duration"
[aggregate_rules.algorithms."tr_dur_q"]
method = "quantiles"
source_field = "duration"
[aggregate_rules.algorithms."tr_dur_q".quantile_opts]
percentiles = [0.5, 0.9, 0.99]
`

// TestClusterTracingRulesDeliverWhatOneAggdWould is
// TestClusterRulesDeliverWhatOneAggdWould for a tracing rule: traces of
// many ids, whose spans feed few rule groups, go round robin to three
// replicas (one killed and restarted halfway) and to a single aggd; the
// replica running a trace sends each span to the owner of each rule group
// it feeds, and the cluster's intake must hold every rule output the
// single aggd's holds.
func TestClusterTracingRulesDeliverWhatOneAggdWould(t *testing.T) {
	// batch i holds 20 traces of two spans starting from base + i/4 s
	// on, and as many again late, anywhere from base on; durations are
	// whole microseconds, so that sums do not depend on the order.
	batch := func(rng *rand.Rand, base int64, i int) *aggdv1.Batch {
		b := &aggdv1.Batch{}
		for j := range 20 {
			start := loadTime(rng, base, i, j)
			tid := make([]byte, 16)
			tid[0], tid[1], tid[2], tid[15] = byte(i), byte(i>>8), byte(j), 1
			svc := fmt.Sprintf("svc%d", rng.IntN(4))
			root := &aggdv1.Span{TraceId: tid, SpanId: []byte{1, 0, 0, 0, 0, 0, 0, 1}, Service: svc, Name: "http.request",
				Resource: fmt.Sprintf("/r%d", rng.IntN(3)), Kind: aggdv1.SpanKind_SPAN_KIND_SERVER, StartUnixNano: start,
				DurationNano: int64(1+rng.IntN(5000)) * 1000}
			child := &aggdv1.Span{TraceId: tid, SpanId: []byte{2, 0, 0, 0, 0, 0, 0, 1}, ParentSpanId: root.SpanId, Service: "db", Name: "query",
				Resource: "select", Kind: aggdv1.SpanKind_SPAN_KIND_CLIENT, StartUnixNano: start + 1000, DurationNano: int64(1+rng.IntN(500)) * 1000}
			b.Spans = append(b.Spans, root, child)
		}
		return b
	}
	ddC, ddS := runRulesCluster(t, clusterTracingRulesFile, batch, "rule spans")
	want := seriesStore(ddS.Series(), "tr_")
	if len(want) < 150 {
		t.Fatalf("only %d rule output points from the single aggd", len(want))
	}
	compareStores(t, "rule outputs", want, seriesStore(ddC.Series(), "tr_"))
}

// clusterLoggingRulesFile holds a logging rule grouped by the event's
// host and status, whose groups collect events taken by every replica:
// a count and a count of distinct titles, which no merge of partial
// outputs gives.
const clusterLoggingRulesFile = `
[[aggregate_rules]]
name = "events"
window = "10s"
group_by = ["host", "status"]
[aggregate_rules.select]
category = "logging"
measurements = ["nginx"]
metric_name = ["message", "title"]
[aggregate_rules.algorithms."lg_n"]
method = "count"
source_field = "message"
[aggregate_rules.algorithms."lg_titles"]
method = "count_distinct"
source_field = "title"
`

// TestClusterLoggingRulesDeliverWhatOneAggdWould is
// TestClusterRulesDeliverWhatOneAggdWould for a logging rule: events
// feeding few rule groups go round robin to three replicas (one killed
// and restarted halfway) and to a single aggd; the replica taking an
// event sends it to the owner of each rule group it feeds, and the
// cluster's intake must hold every rule output the single aggd's holds.
func TestClusterLoggingRulesDeliverWhatOneAggdWould(t *testing.T) {
	alerts := []aggdv1.EventAlertType{aggdv1.EventAlertType_EVENT_ALERT_TYPE_ERROR, aggdv1.EventAlertType_EVENT_ALERT_TYPE_WARNING}
	// batch i holds 20 events from base + i/4 s on, and as many again
	// late, anywhere from base on.
	batch := func(rng *rand.Rand, base int64, i int) *aggdv1.Batch {
		b := &aggdv1.Batch{}
		for j := range 20 {
			ts := loadTime(rng, base, i, j)
			b.Events = append(b.Events, &aggdv1.Event{Title: fmt.Sprintf("t%d", rng.IntN(12)), Text: "upstream failed", TimestampUnixNano: ts,
				AlertType: alerts[rng.IntN(2)], SourceType: "nginx", Host: fmt.Sprintf("web-%d", rng.IntN(8))})
		}
		return b
	}
	ddC, ddS := runRulesCluster(t, clusterLoggingRulesFile, batch, "rule events")
	want := seriesStore(ddS.Series(), "lg_")
	if len(want) < 100 {
		t.Fatalf("only %d rule output points from the single aggd", len(want))
	}
	compareStores(t, "rule outputs", want, seriesStore(ddC.Series(), "lg_"))
	// Each event is sent upstream by the replica that took it, and by no
	// rule group owner: every event the single aggd sent, and no more
	// again than a restart after SIGKILL may send twice (the killed
	// replica took a sixth of the events before it; owners sending marked
	// events would add about two thirds).
	events := func(dd *upstreamtest.DatadogIntake) map[string]int {
		out := map[string]int{}
		for _, ev := range dd.Events() {
			out[fmt.Sprint(ev["title"], ev["host"], ev["date_happened"], ev["alert_type"])]++
		}
		return out
	}
	c, one := events(ddC), events(ddS)
	for k, n := range one {
		if c[k] < n {
			t.Errorf("event %s: the cluster sent it %d times, the single aggd %d", k, c[k], n)
		}
	}
	if n, sent := len(ddS.Events()), len(ddC.Events()); n < 1000 || len(c) != len(one) || sent > n+n/6 {
		t.Errorf("the cluster sent %d distinct events (%d in all), the single aggd %d (%d)", len(c), sent, len(one), n)
	}
}

// loadTime is the time of item j of batch i of the rules cluster tests:
// from base + i/4 s on, and for every other item late, anywhere from base
// on.
func loadTime(rng *rand.Rand, base int64, i, j int) int64 {
	if j%2 == 1 && i > 0 {
		return base + rng.Int64N(int64(i)*int64(250*time.Millisecond))/1000*1000 + int64(j)
	}
	return base + int64(i)*int64(250*time.Millisecond) + int64(j)*1000
}

// runRulesCluster runs three replicas of one cluster with the rules of
// rulesFile, one of them killed with SIGKILL and restarted from its
// write-ahead log halfway, sends batch(i) round robin to them, and the
// same batches to a single aggd with the same rules, each delivering to
// an intake keeping the last write per series and timestamp. It checks
// that items (named what) were sent to other replicas' rule groups, and
// kept for this one's, and none refused or undelivered; and returns the
// cluster's intake and the single aggd's once all have stopped.
func runRulesCluster(t *testing.T, rules string, batch func(rng *rand.Rand, base int64, i int) *aggdv1.Batch, what string) (cluster, single *upstreamtest.DatadogIntake) {
	if testing.Short() {
		t.Skip("builds aggd and runs four processes")
	}
	bin := buildAggd(t)
	ddC, ddS := upstreamtest.NewDatadogIntake(t), upstreamtest.NewDatadogIntake(t)
	cfgC, cfgS := intakeConfig(t, ddC), intakeConfig(t, ddS)
	rulesFile := filepath.Join(t.TempDir(), "aggr.toml")
	if err := os.WriteFile(rulesFile, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	common := append(comparedFlags(), "--rules-file", rulesFile)
	one := startProcess(t, bin, append([]string{"--config", cfgS}, common...)...)
	names := []string{"a", "b", "c"}
	peer := map[string]string{}
	for _, n := range names {
		peer[n] = freeAddr(t)
	}
	peers := strings.Join(members(peer, names), ",")
	walDir := t.TempDir()
	replica := map[string]*process{}
	start := func(n string) {
		replica[n] = startProcess(t, bin, append([]string{"--config", cfgC, "--wal-dir", filepath.Join(walDir, n),
			"--peer-listen", peer[n], "--peers", peers, "--peer-token", "s3cret", "--peer-forward-timeout", "3m"}, common...)...)
	}
	for _, n := range names {
		start(n)
	}

	rng := rand.New(rand.NewPCG(5, 6))
	base := time.Now().Add(-10 * time.Minute).Truncate(10 * time.Second).UnixNano()
	sub := &submitter{t: t, conns: map[string]aggdv1.AggregatorServiceClient{}}
	next := 0
	// run sends batches [from, to) round robin to addrs, and each to the
	// single aggd.
	run := func(from, to int, addrs ...string) error {
		for i := from; i < to; i++ {
			b := batch(rng, base, i)
			if err := sub.send(addrs[next%len(addrs)], b); err != nil {
				return err
			}
			next++
			if err := sub.send(one.addr, b); err != nil {
				return err
			}
		}
		return nil
	}
	addrs := func(ns ...string) []string {
		var out []string
		for _, n := range ns {
			out = append(out, replica[n].addr)
		}
		return out
	}
	const batches = 80
	if err := run(0, batches/2, addrs(names...)...); err != nil {
		t.Fatal(err)
	}
	// c is killed; what the others forward to it, samples and rule
	// samples, waits, and is taken once it is back and has replayed its
	// log.
	if err := replica["c"].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-replica["c"].done
	sent := make(chan error, 1)
	live := addrs("a", "b")
	go func() { sent <- run(batches/2, batches/2+10, live...) }()
	retried := func() float64 {
		return metric(scrape(t, replica["a"].admin), `aggd_cluster_forward_calls_total{outcome="retry"}`) +
			metric(scrape(t, replica["b"].admin), `aggd_cluster_forward_calls_total{outcome="retry"}`)
	}
	for deadline := time.Now().Add(time.Minute); retried() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no forward to the killed replica was retried")
		}
	}
	start("c")
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if err := run(batches/2+10, batches, addrs(names...)...); err != nil {
		t.Fatal(err)
	}

	var routed, local float64
	for _, n := range names {
		text := scrape(t, replica[n].admin)
		routed += metric(text, `aggd_cluster_items_total{kind="rule",outcome="acked"}`)
		local += metric(text, `aggd_cluster_items_total{kind="rule",outcome="local"}`)
		for _, o := range []string{"refused", "undelivered"} {
			if v := metric(text, `aggd_cluster_items_total{kind="rule",outcome="`+o+`"}`); v != 0 {
				t.Errorf("replica %s: %v %s %s", n, v, what, o)
			}
		}
	}
	t.Logf("%s sent to their group's owner %.0f, kept where taken %.0f", what, routed, local)
	if routed == 0 || local == 0 {
		t.Errorf("want %s both sent to other replicas and kept", what)
	}
	stopAll(t, append(procs(replica, names), one), ddC, ddS)
	return ddC, ddS
}
