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

// handOverCluster is two replicas, a and b, with write-ahead logs, whose
// member file lists a alone at first, beside a single aggd; send feeds
// both a and the single aggd the same RATE and MONOTONIC_COUNT samples.
type handOverCluster struct {
	t         *testing.T
	bin       string
	ddC, ddS  *upstreamtest.DatadogIntake
	cfgC      string
	single    *process
	peer      map[string]string
	peersFile string
	walDir    string
	replica   map[string]*process
	sub       *submitter
	counter   map[string]float64
}

func newHandOverCluster(t *testing.T) *handOverCluster {
	if testing.Short() {
		t.Skip("builds aggd and runs three processes")
	}
	c := &handOverCluster{t: t, bin: buildAggd(t), ddC: upstreamtest.NewDatadogIntake(t), ddS: upstreamtest.NewDatadogIntake(t),
		peer: map[string]string{"a": freeAddr(t), "b": freeAddr(t)}, peersFile: filepath.Join(t.TempDir(), "peers"),
		walDir: t.TempDir(), replica: map[string]*process{}, counter: map[string]float64{},
		sub: &submitter{t: t, conns: map[string]aggdv1.AggregatorServiceClient{}}}
	c.cfgC = intakeConfig(t, c.ddC)
	c.single = startProcess(t, c.bin, append([]string{"--config", intakeConfig(t, c.ddS)}, comparedFlags()...)...)
	c.writeFile(c.peer["a"] + "\n")
	return c
}

func (c *handOverCluster) writeFile(text string) {
	if err := os.WriteFile(c.peersFile, []byte(text), 0o600); err != nil {
		c.t.Fatal(err)
	}
}

// start starts replica n on its log.
func (c *handOverCluster) start(n string) {
	c.replica[n] = startProcess(c.t, c.bin, append([]string{"--config", c.cfgC, "--wal-dir", filepath.Join(c.walDir, n),
		"--peer-listen", c.peer[n], "--peers-file", c.peersFile, "--peers-refresh", "100ms", "--peer-token", "s3cret",
		"--peer-forward-timeout", "3m"}, comparedFlags()...)...)
}

// kill kills replica n with -9.
func (c *handOverCluster) kill(n string) {
	if err := c.replica[n].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		c.t.Fatal(err)
	}
	<-c.replica[n].done
}

// scheduleB writes a member list adding b at a boundary five minutes
// ahead (within --max-future, so that the samples of the boundary's
// buckets are sent at once, timestamped ahead), and returns it.
func (c *handOverCluster) scheduleB() time.Time {
	boundary := time.Now().Add(5 * time.Minute).Truncate(time.Second)
	c.writeFile(fmt.Sprintf("%s\nat %d\n%s\n%s\n", c.peer["a"], boundary.Unix(), c.peer["a"], c.peer["b"]))
	return boundary
}

func (c *handOverCluster) waitMetric(n, series string, want float64) {
	c.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for metric(scrape(c.t, c.replica[n].admin), series) < want {
		if time.Now().After(deadline) {
			c.t.Fatalf("replica %s: %s stayed below %v\n%s", n, series, want, c.replica[n].log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// send sends three samples of every context, a second apart from ts, to
// a and to the single aggd.
func (c *handOverCluster) send(ts int64) {
	c.t.Helper()
	c.sendTo("a", ts)
}

// sendTo is send with replica n in a's place.
func (c *handOverCluster) sendTo(n string, ts int64) {
	c.t.Helper()
	for i := range 3 {
		b := &aggdv1.Batch{}
		for _, ty := range []aggdv1.MetricType{aggdv1.MetricType_METRIC_TYPE_RATE, aggdv1.MetricType_METRIC_TYPE_MONOTONIC_COUNT} {
			for ctx := range clusterContexts {
				name := typeName(ty)
				tag := fmt.Sprintf("ctx:%d", ctx)
				c.counter[name+tag] += float64(1 + ctx%7)
				b.Samples = append(b.Samples, &aggdv1.Sample{Name: name, Type: ty, Tags: []string{tag}, Value: c.counter[name+tag],
					TimestampUnixNano: ts + int64(i)*int64(time.Second)})
			}
		}
		for _, addr := range []string{c.replica[n].addr, c.single.addr} {
			if err := c.sub.send(addr, b); err != nil {
				c.t.Fatal(err)
			}
		}
	}
}

// handedOver fails unless a handed last samples over to b.
func (c *handOverCluster) handedOver() {
	c.t.Helper()
	if got := metric(scrape(c.t, c.replica["a"].admin), `aggd_cluster_items_total{kind="seed",outcome="acked"}`); got == 0 {
		c.t.Errorf("a handed no last sample over to b\n%s", c.replica["a"].log)
	}
}

// compare stops every process and compares what the replicas stored at
// their intake with what the single aggd stored at its.
func (c *handOverCluster) compare() {
	t := c.t
	for _, n := range []string{"a", "b"} {
		stopAggd(t, c.replica[n])
	}
	stopAggd(t, c.single)
	if err := errorsJoin(c.ddC.Err(), c.ddS.Err()); err != nil {
		t.Fatal(err)
	}
	want := seriesStore(c.ddS.Series(), "cl.")
	compareStores(t, "series", want, seriesStore(c.ddC.Series(), "cl."))
	if len(want) < 2*clusterContexts*4 {
		t.Errorf("only %d points from the single aggd", len(want))
	}
}

// A replica restarted (after kill -9) finds in its member file a list that
// takes effect later ("at" in the future) and moves contexts it restored
// from its write-ahead log: it hands their last samples over once the log
// is replayed, so that their new owner's first points take their deltas
// from them, as one aggd's do.
func TestClusterRestartHandsOverPendingList(t *testing.T) {
	c := newHandOverCluster(t)
	c.start("b") // in no list yet
	c.start("a")
	// a owns every context and takes their samples, logging them.
	c.send(time.Now().Add(-time.Minute).Truncate(time.Second).UnixNano())
	c.kill("a")
	// While a is down, b is to join at a boundary well after a is back.
	boundary := c.scheduleB()
	c.waitMetric("b", "aggd_cluster_membership_version", 2)
	c.start("a")
	c.waitMetric("a", "aggd_cluster_handovers_total", 1)
	if time.Now().After(boundary) {
		t.Fatalf("a restarted after the boundary: the list was not pending\n%s", c.replica["a"].log)
	}
	// From the boundary on, b owns about half the contexts: their first
	// points there take their deltas from what a handed over.
	c.send(boundary.UnixNano())
	c.handedOver()
	c.compare()
}

// A new owner killed with -9 after it took a hand-over's seeds, and before
// the first samples of the contexts they are for, keeps them through the
// restart: its write-ahead log holds them, so its first points of those
// contexts take their deltas from them, as one aggd's do.
func TestClusterRestartedNewOwnerKeepsSeeds(t *testing.T) {
	c := newHandOverCluster(t)
	c.start("a")
	c.start("b") // in no list yet
	// a owns every context and takes their samples.
	c.send(time.Now().Add(-time.Minute).Truncate(time.Second).UnixNano())
	// b is to join: a hands the last samples of the contexts b is to own
	// over to b as seeds at once.
	boundary := c.scheduleB()
	c.waitMetric("a", "aggd_cluster_handovers_total", 1)
	c.handedOver()
	// b, holding the seeds and no sample of those contexts, is killed
	// and restarted on its log.
	c.restartB(boundary)
	// From the boundary on, b owns about half the contexts: their first
	// points there take their deltas from the seeds its log kept.
	c.send(boundary.UnixNano())
	c.compare()
}

// A replica that takes in samples of contexts it is to own, while their
// owner is still another replica, forwards them to that owner and keeps
// them as its own seeds. Killed with -9 before the boundary and restarted
// on its log, it keeps them again: its first points of those contexts
// take their deltas from the samples it took in, as one aggd's do, not
// from the older samples their owner handed over before.
func TestClusterRestartedHeirKeepsItsOwnSeeds(t *testing.T) {
	c := newHandOverCluster(t)
	c.start("a")
	c.start("b") // in no list yet
	start := time.Now().Add(-time.Minute).Truncate(time.Second)
	c.send(start.UnixNano())
	boundary := c.scheduleB()
	c.waitMetric("a", "aggd_cluster_handovers_total", 1)
	c.handedOver()
	c.waitMetric("b", "aggd_cluster_membership_version", 2)
	// Later samples reach b, which forwards them to a, their owner until
	// the boundary, and keeps those of the contexts it is to own as
	// seeds.
	c.sendTo("b", start.Add(10*time.Second).UnixNano())
	if got := metric(scrape(t, c.replica["b"].admin), `aggd_cluster_items_total{kind="seed",outcome="local"}`); got == 0 {
		t.Fatalf("b kept no seed for itself\n%s", c.replica["b"].log)
	}
	c.restartB(boundary)
	c.send(boundary.UnixNano())
	c.compare()
}

// restartB kills b with -9 and restarts it on its log, failing unless it
// is back, with the list adding it, before the boundary.
func (c *handOverCluster) restartB(boundary time.Time) {
	c.t.Helper()
	c.kill("b")
	c.start("b")
	c.waitMetric("b", "aggd_cluster_membership_version", 2)
	if time.Now().After(boundary) {
		c.t.Fatalf("b restarted after the boundary\n%s", c.replica["b"].log)
	}
}
