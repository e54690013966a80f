package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// TestLastWriteIntakeEndToEnd runs aggd into a Datadog intake that keeps
// the last write per series and timestamp. Every metric type gets samples
// for one bucket that was flushed before they arrive, over several ticks,
// and a tenant past its context bound spreads new contexts over every
// shard: what the intake holds for that bucket must be the true aggregate
// of every accepted sample.
func TestLastWriteIntakeEndToEnd(t *testing.T) {
	dd, _, cfgFile := flakyIntake(t, "")
	tenants := filepath.Join(t.TempDir(), "tenants.toml")
	os.WriteFile(tenants, []byte(fmt.Sprintf("[[tenant]]\nid = \"acme\"\ntokens = [%q]\nmax_contexts = 30\n", acmeToken)), 0o600)
	in := startAggd(t, "--config", cfgFile, "--tenants-file", tenants, "--interval", "1s", "--grace", "0s", "--shards", "4")
	client := aggdv1.NewAggregatorServiceClient(in.conn)

	const rounds, folded = 3, 200
	bucket := time.Now().Add(-30 * time.Second).Truncate(time.Second) // flushed long ago
	at := func(r int) int64 { return bucket.Add(time.Duration(r) * 100 * time.Millisecond).UnixNano() }
	for r := 1; r <= rounds; r++ {
		ts := at(r)
		v := float64(r)
		samples := []*aggdv1.Sample{
			{Name: "c", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, TimestampUnixNano: ts},
			{Name: "g", Type: aggdv1.MetricType_METRIC_TYPE_GAUGE, Value: v, TimestampUnixNano: ts},
			{Name: "r", Type: aggdv1.MetricType_METRIC_TYPE_RATE, Value: 10 * v, TimestampUnixNano: ts},
			{Name: "m", Type: aggdv1.MetricType_METRIC_TYPE_MONOTONIC_COUNT, Value: 10 * v, TimestampUnixNano: ts},
			{Name: "h", Type: aggdv1.MetricType_METRIC_TYPE_HISTOGRAM, Value: v, TimestampUnixNano: ts},
			{Name: "t", Type: aggdv1.MetricType_METRIC_TYPE_TIMING, Value: v, TimestampUnixNano: ts},
			{Name: "d", Type: aggdv1.MetricType_METRIC_TYPE_DISTRIBUTION, Value: v, TimestampUnixNano: ts},
			{Name: "s", Type: aggdv1.MetricType_METRIC_TYPE_SET, SetMember: fmt.Sprint("m", r), TimestampUnixNano: ts},
		}
		// The typed contexts come first, within the bound of 30; most of
		// the next 200 fold into aggd.overflow.count.
		var many []*aggdv1.Sample
		for i := range folded {
			many = append(many, &aggdv1.Sample{Name: fmt.Sprint("o.", i), Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, TimestampUnixNano: ts})
		}
		for _, batch := range [][]*aggdv1.Sample{samples, many} {
			resp, err := client.Submit(withToken(acmeToken), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: batch}})
			if err != nil || resp.Ack.Rejected != 0 {
				t.Fatalf("round %d: %v %v", r, resp, err)
			}
		}
		// Let a tick flush this round before the next corrects it.
		deadline := time.Now().Add(10 * time.Second)
		for !intakeHolds(dd, "c", bucket.Unix(), float64(r)) {
			if time.Now().After(deadline) {
				t.Fatalf("round %d never reached the intake: %v", r, dd.Series())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	in.stop(t)
	if err := dd.Err(); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	var overflow float64
	for _, p := range dd.Series() {
		if p.TS != bucket.Unix() {
			continue // counters' zeros in later intervals
		}
		v := p.Value
		if p.Type == 2 { // a rate of sum ÷ interval
			v *= float64(p.Interval)
		}
		if strings.HasPrefix(p.Metric, "o.") || p.Metric == "aggd.overflow.count" {
			overflow += v
			continue
		}
		got[p.Metric] = v
	}
	want := map[string]float64{
		"c": rounds, "g": rounds, "r": 100, "m": 10 * (rounds - 1), "s": rounds,
		"h.count": rounds, "h.max": rounds, "h.avg": 2, "h.median": 2, "h.95percentile": 3,
		"t.count": rounds, "t.max": rounds, "t.avg": 2, "t.median": 2, "t.95percentile": 3,
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || math.Abs(g-w) > 1e-9*w {
			t.Errorf("intake holds %s = %v (present %v), want %v", k, g, ok, w)
		}
	}
	if overflow != folded*rounds {
		t.Errorf("intake holds %v over the tenant's series past its bound, want %d", overflow, folded*rounds)
	}
	sk := dd.Sketches()
	if len(sk) != 1 || sk[0].Cnt != rounds || sk[0].Sum != 6 || sk[0].TS != bucket.Unix() {
		t.Errorf("intake holds sketches %+v, want one of %d samples summing to 6", sk, rounds)
	}
	if dd.Replaced() == 0 {
		t.Error("no point was replaced: the test did not exercise corrections")
	}
}

// intakeHolds reports whether the intake holds metric at ts with v as its
// sum (a rate times its interval).
func intakeHolds(dd *upstreamtest.DatadogIntake, metric string, ts int64, v float64) bool {
	for _, p := range dd.Series() {
		if p.Metric == metric && p.TS == ts && p.Value*float64(p.Interval) == v {
			return true
		}
	}
	return false
}
