package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/cluster"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
	"github.com/aggd/aggd/internal/window"
)

// comparedFlags are the flags every aggd of a cluster-against-one-aggd
// comparison runs with: one-second buckets flushed at once, samples hours
// late still taken and their buckets kept for corrections, so that both
// sides aggregate every sample, and a stop long enough to deliver it all.
func comparedFlags() []string {
	return []string{"--interval", "1s", "--grace", "0s", "--max-lateness", "2h", "--late-window", "2h", "--shutdown-timeout", "60s"}
}

// intakeConfig writes an aggd configuration sending to dd.
func intakeConfig(t *testing.T, dd *upstreamtest.DatadogIntake) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "aggd.toml")
	cfg := fmt.Sprintf("default_upstreams = [\"dd\"]\n\n[[upstream]]\nname = \"dd\"\ntype = \"datadog\"\nurl = %q\napi_key = \"k\"\ninitial_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n", dd.URL)
	if err := os.WriteFile(f, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// clusterLoad makes the test's samples: every metric type over a few
// dozen contexts each, timestamped, so that which replica takes a sample
// and when does not change its bucket.
type clusterLoad struct {
	rng  *rand.Rand
	mono map[int]float64 // each MONOTONIC_COUNT and RATE context's counter
}

const clusterContexts = 24

var clusterTypes = []aggdv1.MetricType{
	aggdv1.MetricType_METRIC_TYPE_GAUGE, aggdv1.MetricType_METRIC_TYPE_COUNT, aggdv1.MetricType_METRIC_TYPE_RATE,
	aggdv1.MetricType_METRIC_TYPE_MONOTONIC_COUNT, aggdv1.MetricType_METRIC_TYPE_HISTOGRAM,
	aggdv1.MetricType_METRIC_TYPE_DISTRIBUTION, aggdv1.MetricType_METRIC_TYPE_SET, aggdv1.MetricType_METRIC_TYPE_TIMING,
}

func typeName(ty aggdv1.MetricType) string {
	return "cl." + strings.ToLower(strings.TrimPrefix(ty.String(), "METRIC_TYPE_"))
}

// batch returns a batch of samples timestamped from ts on, one
// microsecond apart, and, when late is after base, as many again of the
// types without state timestamped anywhere in [base, late).
func (l *clusterLoad) batch(ts, base, late int64) *aggdv1.Batch {
	b := &aggdv1.Batch{}
	add := func(ty aggdv1.MetricType, at int64, stateOK bool) {
		c := l.rng.IntN(clusterContexts)
		s := &aggdv1.Sample{Name: typeName(ty), Type: ty, Tags: []string{fmt.Sprintf("ctx:%d", c), "env:test"}, TimestampUnixNano: at}
		switch ty {
		case aggdv1.MetricType_METRIC_TYPE_RATE, aggdv1.MetricType_METRIC_TYPE_MONOTONIC_COUNT:
			if !stateOK {
				return
			}
			k := int(ty)*1000 + c
			l.mono[k] += float64(1 + l.rng.IntN(9))
			s.Value = l.mono[k]
		case aggdv1.MetricType_METRIC_TYPE_SET:
			s.SetMember = fmt.Sprintf("user-%d", l.rng.IntN(40))
		case aggdv1.MetricType_METRIC_TYPE_COUNT:
			s.Value = float64(1 + l.rng.IntN(5))
		default:
			s.Value = math.Round(l.rng.Float64()*10000) / 100
		}
		b.Samples = append(b.Samples, s)
	}
	for i := range 8 * len(clusterTypes) {
		add(clusterTypes[i%len(clusterTypes)], ts+int64(i)*1000, true)
	}
	if late > base {
		for i := range 8 * len(clusterTypes) {
			add(clusterTypes[i%len(clusterTypes)], base+l.rng.Int64N(late-base)/1000*1000+int64(i), false)
		}
	}
	return b
}

// submitter sends batches to aggd replicas and to a single aggd.
type submitter struct {
	t     *testing.T
	conns map[string]aggdv1.AggregatorServiceClient
}

func (s *submitter) client(addr string) aggdv1.AggregatorServiceClient {
	if c := s.conns[addr]; c != nil {
		return c
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { cc.Close() })
	c := aggdv1.NewAggregatorServiceClient(cc)
	s.conns[addr] = c
	return c
}

// send submits b to addr and fails the test unless every item is taken.
func (s *submitter) send(addr string, b *aggdv1.Batch) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	resp, err := s.client(addr).Submit(ctx, &aggdv1.SubmitRequest{Batch: b})
	if err != nil {
		return fmt.Errorf("submit to %s: %w", addr, err)
	}
	n := len(b.Samples) + len(b.Events) + len(b.ServiceChecks) + len(b.Spans)
	if a := resp.GetAck(); a.GetRejected() != 0 || int(a.GetAccepted()) != n {
		return fmt.Errorf("submit to %s: accepted %d of %d: %v", addr, a.GetAccepted(), n, a.GetRejections())
	}
	return nil
}

// TestClusterDeliversWhatOneAggdWould runs aggd replicas as one cluster
// under a member list that changes while they run (a replica added, one
// removed, one killed with SIGKILL and restarted), sends timestamped
// samples of every type to them round robin, and the same samples to a
// single aggd. Both deliver to intakes that keep the last write per
// series and timestamp: the cluster's intake must hold what the single
// aggd's does, the first points of RATE and MONOTONIC_COUNT contexts after
// a change of owner included: one change is announced once the samples
// before it were all sent, the other halfway through them.
func TestClusterDeliversWhatOneAggdWould(t *testing.T) {
	if testing.Short() {
		t.Skip("builds aggd and runs five processes")
	}
	bin := buildAggd(t)
	ddC, ddS := upstreamtest.NewDatadogIntake(t), upstreamtest.NewDatadogIntake(t)
	cfgC, cfgS := intakeConfig(t, ddC), intakeConfig(t, ddS)
	common := comparedFlags()
	single := startProcess(t, bin, append([]string{"--config", cfgS}, common...)...)

	// Bucket time of the run: ten minutes ago, in phases of ten buckets.
	// Member lists change at T1 (d joins) and T2 (b leaves).
	base := time.Now().Add(-10 * time.Minute).Truncate(10 * time.Second).UnixNano()
	const phase = int64(10 * time.Second)
	t1, t2 := base+phase, base+2*phase
	names := []string{"a", "b", "c", "d"}
	peer := map[string]string{}
	for _, n := range names {
		peer[n] = freeAddr(t)
	}
	peersFile := filepath.Join(t.TempDir(), "peers")
	writePeers := func(lists ...[]string) {
		var sb strings.Builder
		for i, l := range lists {
			if i == 1 {
				fmt.Fprintf(&sb, "at %d\n", t1/1e9)
			} else if i == 2 {
				fmt.Fprintf(&sb, "at %d\n", t2/1e9)
			}
			for _, n := range l {
				sb.WriteString(peer[n] + "\n")
			}
		}
		if err := os.WriteFile(peersFile, []byte(sb.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	abc, abcd, acd := []string{"a", "b", "c"}, []string{"a", "b", "c", "d"}, []string{"a", "c", "d"}
	writePeers(abc)
	walDir := t.TempDir()
	replica := map[string]*process{}
	start := func(n string) {
		replica[n] = startProcess(t, bin, append([]string{"--config", cfgC, "--wal-dir", filepath.Join(walDir, n),
			"--peer-listen", peer[n], "--peers-file", peersFile, "--peers-refresh", "100ms", "--peer-token", "s3cret",
			"--peer-forward-timeout", "3m"}, common...)...)
	}
	for _, n := range abc {
		start(n)
	}
	// versionSeen waits until every replica of ns schedules version v.
	versionSeen := func(v float64, ns ...string) {
		t.Helper()
		for _, n := range ns {
			deadline := time.Now().Add(time.Minute)
			for metric(scrape(t, replica[n].admin), "aggd_cluster_membership_version") != v {
				if time.Now().After(deadline) {
					t.Fatalf("replica %s did not read member list %d\n%s", n, int(v), replica[n].log)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}

	load := &clusterLoad{rng: rand.New(rand.NewPCG(1, 2)), mono: map[int]float64{}}
	sub := &submitter{t: t, conns: map[string]aggdv1.AggregatorServiceClient{}}
	next := 0
	var runAt func(from int64, n int, withLate bool, addrs []string) error
	// run sends n batches from bucket time from, 250 ms apart, round robin
	// over the replicas ns, and each to the single aggd.
	// Late samples go anywhere from base on.
	run := func(from int64, n int, withLate bool, ns ...string) error {
		addrs := make([]string, len(ns))
		for i, n := range ns {
			addrs[i] = replica[n].addr
		}
		return runAt(from, n, withLate, addrs)
	}
	runAt = func(from int64, n int, withLate bool, addrs []string) error {
		for i := range n {
			ts := from + int64(i)*int64(250*time.Millisecond)
			late := int64(0)
			if withLate {
				late = from
			}
			b := load.batch(ts, base, late)
			addr := addrs[next%len(addrs)]
			next++
			if err := sub.send(addr, b); err != nil {
				return err
			}
			if err := sub.send(single.addr, b); err != nil {
				return err
			}
		}
		return nil
	}
	// handedOver waits until every replica of ns has handed over the
	// state of n member changes.
	handedOver := func(n float64, ns ...string) {
		t.Helper()
		for _, r := range ns {
			deadline := time.Now().Add(time.Minute)
			for metric(scrape(t, replica[r].admin), "aggd_cluster_handovers_total") < n {
				if time.Now().After(deadline) {
					t.Fatalf("replica %s did not hand over member list %d\n%s", r, int(n), replica[r].log)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	const perPhase = 40 // batches: four per bucket
	if err := run(base, perPhase, false, abc...); err != nil {
		t.Fatal(err)
	}

	// d starts, and joins from T1, announced once every sample before T1
	// was sent: the last sample of each RATE and MONOTONIC_COUNT context
	// d will own reaches d by the hand-over of the change.
	writePeers(abc, abcd)
	start("d")
	versionSeen(2, abcd...)
	handedOver(1, abc...)
	if err := run(t1, perPhase/2, true, abcd...); err != nil {
		t.Fatal(err)
	}
	// b is to leave from T2, announced halfway to it: the hand-over, then
	// the samples sent until T2, give the new owners of b's contexts their
	// previous samples.
	writePeers(abc, abcd, acd)
	versionSeen(3, abcd...)
	handedOver(2, abc...)
	handedOver(1, "d")
	// c is killed under load, its log holding batches of flushed buckets
	// it keeps for late samples: it replays them into kept buckets, so
	// that late samples after the restart still send corrected totals.
	restart := t1 + phase/2
	// c is killed; what the others forward to it waits, and is taken
	// once it is back.
	if err := replica["c"].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-replica["c"].done
	sent := make(chan error, 1)
	live := []string{replica["a"].addr, replica["b"].addr, replica["d"].addr}
	go func() { sent <- runAt(restart, perPhase/2, true, live) }()
	retried := func() float64 {
		var n float64
		for _, r := range []string{"a", "b", "d"} {
			n += metric(scrape(t, replica[r].admin), `aggd_cluster_forward_calls_total{outcome="retry"}`)
		}
		return n
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

	// b leaves from T2; it stays up for the late samples of its buckets.
	versionSeen(3, "c")
	if err := run(t2, perPhase, true, acd...); err != nil {
		t.Fatal(err)
	}

	// Every replica stops cleanly, flushing what it holds.
	var forwarded, local, seeded float64
	for _, n := range names {
		text := scrape(t, replica[n].admin)
		forwarded += metric(text, `aggd_cluster_items_total{kind="sample",outcome="acked"}`)
		local += metric(text, `aggd_cluster_items_total{kind="sample",outcome="local"}`)
		seeded += metric(text, `aggd_cluster_items_total{kind="seed",outcome="acked"}`) + metric(text, `aggd_cluster_items_total{kind="seed",outcome="local"}`)
		if u := metric(text, `aggd_cluster_items_total{kind="sample",outcome="undelivered"}`); u != 0 {
			t.Errorf("replica %s: %v samples undelivered", n, u)
		}
	}
	t.Logf("samples forwarded %.0f, owned where they arrived %.0f: %.2f forwarded; %.0f previous samples handed to later owners", forwarded, local, forwarded/(forwarded+local), seeded)
	if seeded == 0 {
		t.Error("no previous sample of a RATE or MONOTONIC_COUNT context was handed to its later owner")
	}
	stopAll(t, append(procs(replica, names), single), ddC, ddS)

	want := seriesStore(ddS.Series(), "cl.")
	owners := cluster.NewMembership(nil, int64(time.Second), 0)
	owners.Schedule(members(peer, abc), math.MinInt64/2, 0)
	owners.Schedule(members(peer, abcd), t1, 0)
	owners.Schedule(members(peer, acd), t2, 0)
	diag = func(metric, tags string, ts int64) string {
		name := metric
		for _, ty := range clusterTypes {
			if strings.HasPrefix(metric, typeName(ty)) {
				name = typeName(ty)
			}
		}
		key := window.AppendKey(nil, name, "", strings.Split(tags, ","))
		o, v := owners.Owner(cluster.ContextHash("default", key), ts*1e9)
		for n, a := range peer {
			if a == o {
				return fmt.Sprintf("owner %s v%d", n, v)
			}
		}
		return o
	}
	compareStores(t, "series", want, seriesStore(ddC.Series(), "cl."))
	compareStores(t, "sketches", sketchStore(ddS.Sketches(), "cl."), sketchStore(ddC.Sketches(), "cl."))
	if n := len(seriesStore(ddS.Series(), "cl.")); n < 500 {
		t.Errorf("only %d points from the single aggd: the load did not reach the intake", n)
	}
}

// stopAggd stops p with SIGTERM, as a pod is stopped, and waits for it to
// flush what it holds and exit.
func stopAggd(t *testing.T, p *process) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("aggd: %v\n%s", p.err, p.log)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("aggd did not stop\n%s", p.log)
	}
}

// procs returns the processes named ns.
func procs(byName map[string]*process, ns []string) []*process {
	var out []*process
	for _, n := range ns {
		out = append(out, byName[n])
	}
	return out
}

// stopAll stops ps as stopAggd does, then fails the test if an intake
// saw a request it could not take.
func stopAll(t *testing.T, ps []*process, intakes ...*upstreamtest.DatadogIntake) {
	t.Helper()
	for _, p := range ps {
		stopAggd(t, p)
	}
	for _, in := range intakes {
		if err := in.Err(); err != nil {
			t.Fatal(err)
		}
	}
}

func errorsJoin(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

type storeKey struct {
	metric, host, tags string
	ts                 int64
}

func sortedTags(tags string) string {
	s := strings.Split(tags, ",")
	slices.Sort(s)
	return strings.Join(s, ",")
}

// seriesStore keeps the points of the metrics named with prefix.
func seriesStore(pts []upstreamtest.DDPoint, prefix string) map[storeKey]string {
	out := map[storeKey]string{}
	for _, p := range pts {
		if strings.HasPrefix(p.Metric, prefix) {
			out[storeKey{p.Metric, p.Host, sortedTags(p.Tags), p.TS}] = fmt.Sprintf("%.9g type %d", p.Value, p.Type)
		}
	}
	return out
}

// sketchStore keeps the sketches of the metrics named with prefix.
func sketchStore(sks []upstreamtest.DDSketch, prefix string) map[storeKey]string {
	out := map[storeKey]string{}
	for _, s := range sks {
		if strings.HasPrefix(s.Metric, prefix) {
			out[storeKey{s.Metric, s.Host, sortedTags(s.Tags), s.TS}] = fmt.Sprintf("cnt %d min %.9g max %.9g sum %.9g k %v n %v", s.Cnt, s.Min, s.Max, s.Sum, s.K, s.N)
		}
	}
	return out
}

// compareStores reports every stored value of the cluster's intake that
// differs from the single aggd's, and every one missing or extra.
func compareStores(t *testing.T, what string, want, got map[storeKey]string) {
	t.Helper()
	bad, checked := 0, 0
	for k, w := range want {
		checked++
		if g, ok := got[k]; !ok || g != w {
			if bad++; bad <= 60 {
				t.Errorf("%s %s %s @%d (%s): cluster stored %q, one aggd %q", what, k.metric, k.tags, k.ts, diag(k.metric, k.tags, k.ts), g, w)
			}
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			if bad++; bad <= 20 {
				t.Errorf("%s %s %s @%d: cluster stored %q, one aggd nothing", what, k.metric, k.tags, k.ts, g)
			}
		}
	}
	t.Logf("%s: %d stored values compared, %d differ", what, checked, bad)
}

var diag = func(string, string, int64) string { return "" }

func members(peer map[string]string, ns []string) []string {
	var out []string
	for _, n := range ns {
		out = append(out, peer[n])
	}
	return out
}
