package main

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// TestClusterJoinerRoutesAsItsPeers adds a replica the way a resolved
// name does (--peers-dns): the member list has no times, so each replica
// schedules the new list at a boundary after it sees it, and the new
// replica, whose first list names itself, learns from its peers which
// lists owned the buckets before. Samples of buckets the old list owns,
// sent to every replica round robin, the new one included, must reach the
// intake as one aggd sends them: a replica that took its first list as
// owning every bucket would send points of those buckets beside their
// owner's, and the last write would replace the owner's total. Samples
// of buckets past the boundary then reach it as one aggd sends them too.
func TestClusterJoinerRoutesAsItsPeers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds aggd and runs five processes")
	}
	names := []string{"a", "b", "c", "d"}
	c := newResolvedCluster(t, names...)
	abc := []string{"a", "b", "c"}
	c.members(abc...)
	for _, n := range abc {
		c.start(n)
	}
	load := &clusterLoad{rng: rand.New(rand.NewPCG(3, 4)), mono: map[int]float64{}}
	sub := &submitter{t: t, conns: map[string]aggdv1.AggregatorServiceClient{}}
	// Every sample falls in the thirty buckets from base, which only the
	// first list owns: d joins at a boundary after it started. Batches
	// are 250 ms apart; late samples fall anywhere in the thirty buckets.
	base := time.Now().Add(-10 * time.Minute).Truncate(10 * time.Second).UnixNano()
	next := 0
	run := func(from int64, n int, ns ...string) {
		t.Helper()
		for i := range n {
			b := load.batch(from+int64(i)*int64(250*time.Millisecond), base, base+int64(30*time.Second))
			if err := sub.send(c.replica[ns[next%len(ns)]].addr, b); err != nil {
				t.Fatal(err)
			}
			next++
			if err := sub.send(c.single.addr, b); err != nil {
				t.Fatal(err)
			}
		}
	}
	run(base, 40, abc...)

	c.members(names...)
	for _, n := range abc {
		waitVersion(t, c.replica[n], 2)
	}
	c.start("d")
	run(base+int64(10*time.Second), 80, names...)

	// Past the boundary d owns its share: the first points of the RATE
	// and MONOTONIC_COUNT contexts it takes over have their deltas from
	// the last samples a, b and c handed it once it was up.
	waitVersion(t, c.replica["d"], 2)
	for _, n := range abc {
		waitMetric(t, c.replica[n], "aggd_cluster_handovers_total", 1)
	}
	run(time.Now().Add(2*time.Second).Truncate(time.Second).UnixNano(), 40, names...)
	c.stopAndCompare(names...)
}

// waitVersion waits until p has scheduled member list v.
func waitVersion(t *testing.T, p *process, v float64) {
	t.Helper()
	waitMetric(t, p, "aggd_cluster_membership_version", v)
}

// waitMetric waits until p's series reaches at least v.
func waitMetric(t *testing.T, p *process, series string, v float64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for metric(scrape(t, p.admin), series) < v {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not reach %v\n%s", series, v, p.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestClusterRestartWithoutLogRefusesItsPredecessorsBuckets restarts a
// replica without a write-ahead log at the same peer address, as a pod
// without a volume given its predecessor's IP: its peer reached a replica
// there before, so the samples it owns in buckets begun before it started
// are refused owner_unavailable, with a reason, rather than taken as new
// and sent as points that would replace its predecessor's flushed totals
// at the last-write intake. The single aggd is sent what the cluster
// took, and the two intakes must hold the same.
func TestClusterRestartWithoutLogRefusesItsPredecessorsBuckets(t *testing.T) {
	if testing.Short() {
		t.Skip("builds aggd and runs four processes")
	}
	c := newResolvedCluster(t, "a", "b")
	c.members("a", "b")
	c.start("a")
	c.start("b")
	load := &clusterLoad{rng: rand.New(rand.NewPCG(5, 6)), mono: map[int]float64{}}
	sub := &submitter{t: t, conns: map[string]aggdv1.AggregatorServiceClient{}}
	base := time.Now().Add(-10 * time.Minute).Truncate(10 * time.Second).UnixNano()
	refused := 0
	// run sends n batches timestamped from from on, round robin over a
	// and b, each then to the single aggd without what the cluster
	// refused; a refusal must be owner_unavailable.
	run := func(from int64, n int) {
		t.Helper()
		for i := range n {
			b := load.batch(from+int64(i)*int64(250*time.Millisecond), base, base+int64(20*time.Second))
			addr := c.replica[[]string{"a", "b"}[i%2]].addr
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			resp, err := sub.client(addr).Submit(ctx, &aggdv1.SubmitRequest{Batch: b})
			cancel()
			if err != nil {
				t.Fatalf("submit to %s: %v", addr, err)
			}
			drop := map[uint32]bool{}
			for _, r := range resp.GetAck().GetRejections() {
				if r.GetKind() != aggdv1.ItemKind_ITEM_KIND_SAMPLE || r.GetReason() != "owner_unavailable" {
					t.Fatalf("submit to %s: refused %v", addr, r)
				}
				drop[r.GetIndex()] = true
			}
			refused += len(drop)
			kept := b.Samples[:0]
			for j, s := range b.Samples {
				if !drop[uint32(j)] {
					kept = append(kept, s)
				}
			}
			b.Samples = kept
			if err := sub.send(c.single.addr, b); err != nil {
				t.Fatal(err)
			}
		}
	}
	run(base, 40)
	if n := metric(scrape(t, c.replica["a"].admin), `aggd_cluster_items_total{kind="sample",outcome="acked"}`); n == 0 {
		t.Fatal("a forwarded nothing to b")
	}
	if refused != 0 {
		t.Fatalf("%d samples refused before b restarted", refused)
	}

	// b stops, flushing what it holds, and starts again on the same
	// address with nothing of it.
	stopAggd(t, c.replica["b"])
	c.start("b")
	run(base+int64(10*time.Second), 40)
	text := scrape(t, c.replica["b"].admin)
	if n := metric(text, "aggd_cluster_predecessor_refused_total"); n == 0 || int(n) != refused {
		t.Errorf("b counted %v samples refused for its predecessor's buckets; the clients were refused %d", n, refused)
	}
	t.Logf("%d samples refused for the buckets b's predecessor flushed", refused)

	c.stopAndCompare("a", "b")
	if refused == 0 {
		t.Error("nothing refused: the restarted replica took samples of its predecessor's buckets")
	}
}

// resolvedCluster is replicas whose member list has no times, as a
// resolved name's (--peers-dns), beside a single aggd: each sends to its
// own last-write intake. Counters are not flushed as 0 once idle
// (--counter-expiry 0): those points follow the flush ticks of live
// buckets, which the processes, stopped one after the other, do not
// share.
type resolvedCluster struct {
	t         *testing.T
	bin       string
	ddC, ddS  *upstreamtest.DatadogIntake
	cfgC      string
	single    *process
	peer      map[string]string
	peersFile string
	replica   map[string]*process
}

func newResolvedCluster(t *testing.T, names ...string) *resolvedCluster {
	c := &resolvedCluster{t: t, bin: buildAggd(t), ddC: upstreamtest.NewDatadogIntake(t), ddS: upstreamtest.NewDatadogIntake(t),
		peer: map[string]string{}, peersFile: filepath.Join(t.TempDir(), "peers"), replica: map[string]*process{}}
	c.cfgC = intakeConfig(t, c.ddC)
	c.single = startProcess(t, c.bin, append([]string{"--config", intakeConfig(t, c.ddS), "--counter-expiry", "0"}, comparedFlags()...)...)
	for _, n := range names {
		c.peer[n] = freeAddr(t)
	}
	return c
}

// members writes the member list: the replicas ns.
func (c *resolvedCluster) members(ns ...string) {
	if err := os.WriteFile(c.peersFile, []byte(strings.Join(members(c.peer, ns), "\n")+"\n"), 0o600); err != nil {
		c.t.Fatal(err)
	}
}

// start starts replica n, without a write-ahead log.
func (c *resolvedCluster) start(n string) {
	c.replica[n] = startProcess(c.t, c.bin, append([]string{"--config", c.cfgC, "--peer-listen", c.peer[n],
		"--peers-file", c.peersFile, "--peers-refresh", "100ms", "--peer-token", "s3cret", "--peer-forward-timeout", "3m", "--counter-expiry", "0"},
		comparedFlags()...)...)
}

// stopAndCompare stops every process, then fails the test unless the
// cluster's intake holds what the single aggd's does.
func (c *resolvedCluster) stopAndCompare(names ...string) {
	stopAll(c.t, append(procs(c.replica, names), c.single), c.ddC, c.ddS)
	compareStores(c.t, "series", seriesStore(c.ddS.Series(), "cl."), seriesStore(c.ddC.Series(), "cl."))
	compareStores(c.t, "sketches", sketchStore(c.ddS.Sketches(), "cl."), sketchStore(c.ddC.Sketches(), "cl."))
	if n := len(seriesStore(c.ddS.Series(), "cl.")); n < 100 {
		c.t.Errorf("only %d points from the single aggd: the load did not reach the intake", n)
	}
}
