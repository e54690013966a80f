package flush_test

import (
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/rules"
	"github.com/aggd/aggd/internal/window"
)

// latencyRules aggregates lat per service over 10s windows: a sum, a
// maximum and a median, each with its _count companion.
const latencyRules = `
[[aggregate_rules]]
name = "latency"
group_by = ["service"]
[aggregate_rules.select]
category = "metric"
metric_name = ["lat"]
[aggregate_rules.algorithms."lat_sum"]
method = "sum"
source_field = "lat"
[aggregate_rules.algorithms."lat_max"]
method = "max"
source_field = "lat"
[aggregate_rules.algorithms."lat_q"]
method = "quantiles"
source_field = "lat"
[aggregate_rules.algorithms."lat_q".quantile_opts]
percentiles = [0.5]
`

// TestLastWriteIntakeHoldsTrueRuleOutputs sends a rule's on-time and late
// items, spread over shards, through flush and the real Datadog upstream
// into an intake that keeps the last write per series and timestamp: every
// output of the rule's window must hold the aggregate over all of them,
// and an item past the late window changes nothing: the metric's bucket
// refuses it when the originals are kept, the rule (counted) when they are
// dropped.
func TestLastWriteIntakeHoldsTrueRuleOutputs(t *testing.T) {
	for _, action := range []string{"", "drop"} {
		t.Run("action="+action, func(t *testing.T) { testRuleOutputsAtLastWriteIntake(t, action) })
	}
}

func testRuleOutputsAtLastWriteIntake(t *testing.T, action string) {
	const base = int64(1_700_000_000) // unix seconds, a multiple of 10
	at := func(s int64) int64 { return (base + s) * int64(time.Second) }
	cfg := window.DefaultConfig()
	cfg.LateWindow = 20 * time.Second // the window (base, base+10] is kept to +32
	set, err := rules.Parse("action = \"" + action + "\"\n" + latencyRules)
	if err != nil {
		t.Fatal(err)
	}
	eng := rules.NewEngine(set, flush.ShardCount(4), cfg)
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: cfg, Shards: 4, Rules: eng})
	acme := window.NewTenant("acme")
	intake, router := lastWriteIntake(t)
	fl, err := flush.NewFlusher(agg, router, tenants{acme}, flush.Config{Interval: cfg.Interval}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}

	// ingest sends lat samples of service api, one pod each, so that they
	// land in different shards, and returns their results.
	pod := 0
	ingest := func(now int64, vals map[int64]float64) []window.Reason {
		t.Helper()
		b := window.Batch{Tenant: acme, Now: now}
		for ts, v := range vals {
			pod++
			s := window.Sample{Name: "lat", Type: window.TypeGauge, Value: v, Timestamp: at(ts), SampleRate: 1,
				Tags: []string{"service:api", "pod:p" + string(rune('a'+pod))}}
			s.Prepare(acme, nil)
			b.Samples = append(b.Samples, s)
			b.Results = append(b.Results, window.Accepted)
		}
		agg.Ingest(&b)
		return b.Results
	}
	accepted := func(rs []window.Reason) {
		t.Helper()
		for _, r := range rs {
			if r != window.Accepted {
				t.Fatalf("sample refused: %v", r)
			}
		}
	}
	accepted(ingest(at(3), map[int64]float64{1: 10, 2: 20, 3: 30}))
	fl.Flush(time.Unix(0, at(20)), false) // drains (base, base+10]
	accepted(ingest(at(21), map[int64]float64{4: 5, 5: 40}))
	fl.Flush(time.Unix(0, at(30)), false)
	accepted(ingest(at(31), map[int64]float64{6: 50}))
	fl.Flush(time.Unix(0, at(40)), false)
	fl.Flush(time.Unix(0, at(50)), false)
	// The item past the late window belongs to a context the flushed bucket
	// held (pod pb), whatever shard the process's hash seed puts it in: a
	// context new to a shard that flushed nothing for the range would be
	// taken as that range's backfill.
	pod = 0
	if rs := ingest(at(51), map[int64]float64{7: 1000}); rs[0] != window.ReasonTooOld {
		t.Fatalf("sample past the late window: %v, want too_old", rs[0])
	}
	fl.Flush(time.Unix(0, at(60)), true)
	stopIntake(t, intake, router)

	got := map[string]float64{}
	for _, p := range intake.Series() {
		if !strings.HasPrefix(p.Metric, "lat_") {
			continue
		}
		if p.TS != base || p.Tags != "service:api" {
			t.Errorf("%s at %d tagged %q, want only %d tagged service:api", p.Metric, p.TS, p.Tags, base)
			continue
		}
		got[p.Metric] = p.Held()
	}
	// 10, 20, 30 on time; 5, 40 and 50 late.
	want := map[string]float64{
		"lat_sum": 155, "lat_sum_count": 6,
		"lat_max": 50, "lat_max_count": 6,
		"lat_q_P50": 25, "lat_q_count": 6, // 5 10 20 30 40 50: 20 + 0.5·(30−20)
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || math.Abs(g-w) > 1e-9 {
			t.Errorf("intake holds %s = %v (present %v), want %v", k, g, ok, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("intake holds %v, want %v", got, want)
	}
	c := eng.Counters("latency")
	wantLate := int64(0) // the metric's bucket refused it before the rule saw it
	if action == "drop" {
		wantLate = 1
	}
	if m, corr, late := c.Matched.Load(), c.Corrections.Load(), c.TooLate.Load(); m != 6 || corr != 6 || late != wantLate {
		t.Errorf("matched %d, corrections %d, too late %d; want 6 samples matched, 3 windows corrected twice, %d too late",
			m, corr, late, wantLate)
	}
}
