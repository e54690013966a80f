package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// TestKillNineKeepsLateCorrectionsExact runs aggd with a write-ahead log
// and an aggregation rule into an intake that keeps the last write per
// series and timestamp: a bucket and the rule's window over the same
// samples are flushed, corrected by a late sample, aggd is killed with
// SIGKILL, or stopped cleanly with SIGTERM, and started again on the same
// directory, and another late sample must leave the intake holding the
// true totals of all three, for the bucket and for the rule's output, not
// the last one's partial.
func TestKillNineKeepsLateCorrectionsExact(t *testing.T) {
	if testing.Short() {
		t.Skip("builds aggd and runs it four times")
	}
	bin := buildAggd(t)
	for _, tc := range []struct {
		name string
		stop syscall.Signal
	}{
		{"kill -9", syscall.SIGKILL},
		{"clean stop", syscall.SIGTERM},
	} {
		t.Run(tc.name, func(t *testing.T) { lateCorrectionAcrossRestart(t, bin, tc.stop) })
	}
}

// lateRule sums late.c over 10s windows into late_c_sum.
const lateRule = `[[aggregate_rules]]
name = "late"
window = "10s"
[aggregate_rules.select]
category = "metric"
metric_name = ["late.c"]
[aggregate_rules.algorithms."late_c_sum"]
method = "sum"
source_field = "late.c"
`

func lateCorrectionAcrossRestart(t *testing.T, bin string, stop syscall.Signal) {
	dd := upstreamtest.NewDatadogIntake(t)
	rulesFile := filepath.Join(t.TempDir(), "rules.toml")
	if err := os.WriteFile(rulesFile, []byte(lateRule), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--config", intakeConfig(t, dd), "--wal-dir", filepath.Join(t.TempDir(), "data"), "--interval", "1s", "--grace", "0s",
		"--rules-file", rulesFile}
	// Flushed at the first tick, the bucket and the rule's window alike,
	// and kept for --late-window (2m).
	ts := time.Now().Add(-30 * time.Second).UnixNano()
	sub := &submitter{t: t, conns: map[string]aggdv1.AggregatorServiceClient{}}
	send := func(p *process, v float64) {
		t.Helper()
		if err := sub.send(p.addr, &aggdv1.Batch{Samples: []*aggdv1.Sample{
			{Name: "late.c", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: v, TimestampUnixNano: ts}}}); err != nil {
			t.Fatal(err)
		}
	}
	// held returns what the intake holds for the bucket (the first
	// non-zero point of late.c; zeros fill the counter's later intervals)
	// and for the rule's window (its one point), NaN for none yet.
	at := map[string]int64{}
	held := func() map[string]float64 {
		got := map[string]float64{"late.c": math.NaN(), "late_c_sum": math.NaN()}
		for _, p := range dd.Series() {
			if _, ok := got[p.Metric]; !ok || p.Value == 0 && p.TS != at[p.Metric] {
				continue
			}
			if at[p.Metric] == 0 {
				at[p.Metric] = p.TS
			}
			if p.TS == at[p.Metric] {
				got[p.Metric] = p.Held()
			}
		}
		return got
	}
	// await waits until the intake holds want for both; only a hang or a
	// wrong total reaches the bound.
	await := func(want float64, after string, p *process) {
		t.Helper()
		var got map[string]float64
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if got = held(); got["late.c"] == want && got["late_c_sum"] == want {
				return
			}
		}
		t.Fatalf("after %s the intake holds %v, want %v for the bucket and the rule's window\n%s", after, got, want, p.log)
	}

	p := startProcess(t, bin, args...)
	send(p, 1)
	await(1, "the first flush", p)
	send(p, 2)
	await(3, "a late sample", p)
	if err := p.cmd.Process.Signal(stop); err != nil {
		t.Fatal(err)
	}
	<-p.done
	if stop == syscall.SIGTERM && p.err != nil {
		t.Fatalf("aggd did not stop cleanly: %v\n%s", p.err, p.log)
	}
	q := startProcess(t, bin, args...)
	send(q, 4)
	await(7, fmt.Sprintf("a late sample following %v and a restart", stop), q)
}
