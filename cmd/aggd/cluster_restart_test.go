package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// A replica restarted (after kill -9) finds in its member file a list that
// takes effect later ("at" in the future) and moves contexts it restored
// from its write-ahead log: it hands their last samples over once the log
// is replayed, so that their new owner's first points take their deltas
// from them, as one aggd's do.
func TestClusterRestartHandsOverPendingList(t *testing.T) {
	if testing.Short() {
		t.Skip("builds aggd and runs three processes")
	}
	bin := buildAggd(t)
	ddC, ddS := upstreamtest.NewDatadogIntake(t), upstreamtest.NewDatadogIntake(t)
	cfgC, cfgS := intakeConfig(t, ddC), intakeConfig(t, ddS)
	single := startProcess(t, bin, append([]string{"--config", cfgS}, comparedFlags()...)...)
	peer := map[string]string{"a": freeAddr(t), "b": freeAddr(t)}
	peersFile := filepath.Join(t.TempDir(), "peers")
	writeFile := func(text string) {
		if err := os.WriteFile(peersFile, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(peer["a"] + "\n")
	walDir := t.TempDir()
	replica := map[string]*process{}
	start := func(n string) {
		replica[n] = startProcess(t, bin, append([]string{"--config", cfgC, "--wal-dir", filepath.Join(walDir, n),
			"--peer-listen", peer[n], "--peers-file", peersFile, "--peers-refresh", "100ms", "--peer-token", "s3cret",
			"--peer-forward-timeout", "3m"}, comparedFlags()...)...)
	}
	waitMetric := func(n, series string, want float64) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for metric(scrape(t, replica[n].admin), series) < want {
			if time.Now().After(deadline) {
				t.Fatalf("replica %s: %s stayed below %v\n%s", n, series, want, replica[n].log)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	start("b") // in no list yet
	start("a")
	sub := &submitter{t: t, conns: map[string]aggdv1.AggregatorServiceClient{}}
	counter := map[string]float64{}
	send := func(ts int64) {
		t.Helper()
		b := &aggdv1.Batch{}
		for _, ty := range []aggdv1.MetricType{aggdv1.MetricType_METRIC_TYPE_RATE, aggdv1.MetricType_METRIC_TYPE_MONOTONIC_COUNT} {
			for c := range clusterContexts {
				name := typeName(ty)
				tag := fmt.Sprintf("ctx:%d", c)
				counter[name+tag] += float64(1 + c%7)
				b.Samples = append(b.Samples, &aggdv1.Sample{Name: name, Type: ty, Tags: []string{tag}, Value: counter[name+tag], TimestampUnixNano: ts})
			}
		}
		for _, addr := range []string{replica["a"].addr, single.addr} {
			if err := sub.send(addr, b); err != nil {
				t.Fatal(err)
			}
		}
	}
	// a owns every context and takes their samples, logging them.
	base := time.Now().Add(-time.Minute).Truncate(time.Second).UnixNano()
	for i := range 3 {
		send(base + int64(i)*int64(time.Second))
	}
	if err := replica["a"].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-replica["a"].done
	// While a is down, b is to join at a boundary well after a is back:
	// five minutes ahead, within --max-future, so that the samples of
	// the boundary's buckets are sent at once, timestamped ahead.
	boundary := time.Now().Add(5 * time.Minute).Truncate(time.Second)
	writeFile(fmt.Sprintf("%s\nat %d\n%s\n%s\n", peer["a"], boundary.Unix(), peer["a"], peer["b"]))
	waitMetric("b", "aggd_cluster_membership_version", 2)
	start("a")
	waitMetric("a", "aggd_cluster_handovers_total", 1)
	if time.Now().After(boundary) {
		t.Fatalf("a restarted after the boundary: the list was not pending\n%s", replica["a"].log)
	}
	// From the boundary on, b owns about half the contexts: their first
	// points there take their deltas from what a handed over.
	for i := range 3 {
		send(boundary.UnixNano() + int64(i)*int64(time.Second))
	}
	if got := metric(scrape(t, replica["a"].admin), `aggd_cluster_items_total{kind="seed",outcome="acked"}`); got == 0 {
		t.Error("a handed no last sample over to b")
	}
	for _, n := range []string{"a", "b"} {
		stopAggd(t, replica[n])
	}
	stopAggd(t, single)
	if err := errorsJoin(ddC.Err(), ddS.Err()); err != nil {
		t.Fatal(err)
	}
	want := seriesStore(ddS.Series(), "cl.")
	compareStores(t, "series", want, seriesStore(ddC.Series(), "cl."))
	if len(want) < 2*clusterContexts*4 {
		t.Errorf("only %d points from the single aggd", len(want))
	}
}
