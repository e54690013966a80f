package main

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// TestKillNineKeepsLateCorrectionsExact runs aggd with a write-ahead log
// into an intake that keeps the last write per series and timestamp: a
// bucket is flushed, corrected by a late sample, aggd is killed with
// SIGKILL, or stopped cleanly with SIGTERM, and started again on the same
// directory, and another late sample for the bucket must leave the intake
// holding the true total of all three, not the last one's partial.
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

func lateCorrectionAcrossRestart(t *testing.T, bin string, stop syscall.Signal) {
	dd := upstreamtest.NewDatadogIntake(t)
	args := []string{"--config", intakeConfig(t, dd), "--wal-dir", filepath.Join(t.TempDir(), "data"), "--interval", "1s", "--grace", "0s"}
	ts := time.Now().Add(-30 * time.Second).UnixNano() // flushed at the first tick, kept for --late-window (2m)
	sub := &submitter{t: t, conns: map[string]aggdv1.AggregatorServiceClient{}}
	send := func(p *process, v float64) {
		t.Helper()
		if err := sub.send(p.addr, &aggdv1.Batch{Samples: []*aggdv1.Sample{
			{Name: "late.c", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: v, TimestampUnixNano: ts}}}); err != nil {
			t.Fatal(err)
		}
	}
	// next waits until the intake holds a value other than last for the
	// bucket (the first non-zero point of late.c; zeros fill the counter's
	// later intervals) and returns it. Only a hang reaches the bound.
	bucket := int64(0)
	next := func(last float64) float64 {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			v, seen := 0.0, false
			for _, p := range dd.Series() {
				if p.Metric != "late.c" || p.Value == 0 && p.TS != bucket {
					continue
				}
				if bucket == 0 {
					bucket = p.TS
				}
				if p.TS == bucket {
					v, seen = p.Value*float64(max(p.Interval, 1)), true // a RATE point: count per second
				}
			}
			if seen && v != last {
				return v
			}
		}
		t.Fatalf("the intake never held a new value for late.c after %v", last)
		return 0
	}

	p := startProcess(t, bin, args...)
	send(p, 1)
	if v := next(0); v != 1 {
		t.Fatalf("intake holds %v after the first flush, want 1", v)
	}
	send(p, 2)
	if v := next(1); v != 3 {
		t.Fatalf("intake holds %v after a late sample, want 3", v)
	}
	if err := p.cmd.Process.Signal(stop); err != nil {
		t.Fatal(err)
	}
	<-p.done
	if stop == syscall.SIGTERM && p.err != nil {
		t.Fatalf("aggd did not stop cleanly: %v\n%s", p.err, p.log)
	}
	q := startProcess(t, bin, args...)
	send(q, 4)
	if v := next(3); v != 7 {
		t.Fatalf("intake holds %v after a late sample following %v, want 7\n%s", v, stop, q.log)
	}
}
