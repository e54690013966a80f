package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// TestClusterKeepsTracesWholeAcrossMemberChanges sends the three spans of
// each trace of a workload in three rounds through a round-robin client,
// with a member change between rounds: a replica added (c), one removed
// (b, stopped once it has handed over), and one killed with -9 and
// restarted on its log (a, which had handed traces to c: its log holds
// them again). Each replica sends kept traces to its own OTLP receiver.
// Every trace one aggd with the same sampling file keeps arrives whole:
// its three spans, each once, at one receiver; no other trace arrives.
func TestClusterKeepsTracesWholeAcrossMemberChanges(t *testing.T) {
	if testing.Short() {
		t.Skip("builds aggd and runs four processes")
	}
	bin := buildAggd(t)
	dir := t.TempDir()
	sampling, peersFile := filepath.Join(dir, "tail-sampling.toml"), filepath.Join(dir, "peers")
	if err := os.WriteFile(sampling, []byte(samplingFile), 0o600); err != nil {
		t.Fatal(err)
	}
	names := []string{"a", "b", "c"}
	peer, cfg, recv := map[string]string{}, map[string]string{}, map[string]*upstreamtest.OTLPReceiver{}
	for _, n := range names {
		peer[n], recv[n] = freeAddr(t), upstreamtest.NewOTLPReceiver(t)
		cfg[n] = filepath.Join(dir, n+".toml")
		text := fmt.Sprintf("[[upstream]]\nname = \"otel\"\ntype = \"otlp\"\nendpoint = %q\ninsecure = true\n", recv[n].Addr)
		if err := os.WriteFile(cfg[n], []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The member file keeps its history: each change is a new "at" line.
	history := fmt.Sprintf("%s\n%s\n", peer["a"], peer["b"])
	write := func() {
		if err := os.WriteFile(peersFile, []byte(history), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write()
	replica := map[string]*process{}
	start := func(n string) {
		replica[n] = startProcess(t, bin, append([]string{"--config", cfg[n], "--sampling-file", sampling,
			"--wal-dir", filepath.Join(dir, "wal-"+n), "--peer-listen", peer[n], "--peers-file", peersFile,
			"--peers-refresh", "100ms", "--peer-token", "s3cret"}, comparedFlags()...)...)
	}
	// change schedules members two seconds ahead, as list number v, and
	// waits until the replicas up have it in force.
	change := func(up []string, v float64, members ...string) {
		t.Helper()
		at := time.Now().Add(2 * time.Second).Unix()
		history += fmt.Sprintf("at %d\n", at)
		for _, m := range members {
			history += peer[m] + "\n"
		}
		write()
		time.Sleep(time.Until(time.Unix(at, 0).Add(1500 * time.Millisecond)))
		for _, n := range up {
			waitFor(t, replica[n], `aggd_cluster_membership_version`, func(n float64) bool { return n >= v })
		}
	}
	sub := &submitter{t: t, conns: map[string]aggdv1.AggregatorServiceClient{}}
	kinds, traces := workload(300)
	// round sends span j of every trace, started now: its stats fall in
	// buckets of the list in force, whose owners are up.
	round := func(j int, to ...string) {
		t.Helper()
		start := time.Now().UnixNano()
		for i, from := 0, 0; from < len(traces); i, from = i+1, from+25 {
			b := &aggdv1.Batch{}
			for _, tr := range traces[from:min(from+25, len(traces))] {
				tr[j].StartUnixNano = start
				b.Spans = append(b.Spans, tr[j])
			}
			if err := sub.send(replica[to[i%len(to)]].addr, b); err != nil {
				for _, n := range to {
					t.Logf("%s (peer %s):\n%s", n, peer[n], replica[n].log)
				}
				t.Fatalf("round %d: %v", j, err)
			}
		}
	}

	start("a")
	start("b")
	round(0, "a", "b")
	// c joins: the traces it now owns move to it from a and b.
	start("c")
	change([]string{"a", "b", "c"}, 2, "a", "b", "c")
	waitFor(t, replica["a"], `aggd_cluster_items_total{kind="held_span",outcome="acked"}`, func(v float64) bool { return v > 0 })
	waitFor(t, replica["b"], `aggd_cluster_items_total{kind="held_span",outcome="acked"}`, func(v float64) bool { return v > 0 })
	round(1, "a", "b", "c")
	// b leaves: it hands every trace it holds to a or c, then stops.
	change([]string{"a", "b", "c"}, 3, "a", "c")
	waitFor(t, replica["b"], `aggd_sampling_held_traces`, func(v float64) bool { return v == 0 })
	stopAggd(t, replica["b"])
	// a is killed and restarted on its log, which holds the spans it
	// handed to c as well as its own.
	if err := replica["a"].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-replica["a"].done
	start("a")
	round(2, "a", "c")
	for _, n := range []string{"a", "c"} {
		stopAggd(t, replica[n])
	}

	for _, n := range names {
		if err := recv[n].Err(); err != nil {
			t.Errorf("%s's receiver: %v", n, err)
		}
	}
	policy, err := spans.ParsePolicy(samplingFile)
	if err != nil {
		t.Fatal(err)
	}
	// from[trace][span] counts the receivers' copies, by receiver.
	from := map[string]map[string]map[string]int{}
	for _, n := range names {
		for _, r := range recv[n].TraceRequests() {
			for _, rs := range r.Req.ResourceSpans {
				for _, ss := range rs.ScopeSpans {
					for _, s := range ss.Spans {
						id := hex.EncodeToString(s.TraceId)
						if from[id] == nil {
							from[id] = map[string]map[string]int{}
						}
						if from[id][n] == nil {
							from[id][n] = map[string]int{}
						}
						from[id][n][hex.EncodeToString(s.SpanId)]++
					}
				}
			}
		}
	}
	kept := 0
	for i, tr := range traces {
		id := hex.EncodeToString(tr[0].TraceId)
		want := false
		switch kinds[id] {
		case kindError, kindSlow:
			want = true
		case kindRest:
			want = spans.KeepByRate([16]byte(tr[0].TraceId), policy.Rules[len(policy.Rules)-1].Rate)
		}
		got := from[id]
		switch {
		case !want && len(got) > 0:
			t.Errorf("trace %d (%s): one aggd drops it, the cluster sent %v", i, id, got)
		case want && len(got) != 1:
			t.Errorf("trace %d (%s): kept, sent by %d replicas (%v), want one", i, id, len(got), got)
		case want:
			for n, sps := range got {
				if len(sps) != 3 {
					t.Errorf("trace %d (%s): %s sent spans %v, want its 3 spans", i, id, n, sps)
				}
				for sp, c := range sps {
					if c != 1 {
						t.Errorf("trace %d (%s): %s sent span %s %d times", i, id, n, sp, c)
					}
				}
			}
			kept++
		}
	}
	if t.Failed() {
		for _, n := range []string{"a", "c"} {
			t.Logf("%s (peer %s):\n%s", n, peer[n], replica[n].log)
		}
	}
	if kept < 60 {
		t.Errorf("only %d traces kept: the test needs more", kept)
	}
}

// waitFor waits up to a minute for p's metric series to satisfy ok.
func waitFor(t *testing.T, p *process, series string, ok func(float64) bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !ok(metric(scrape(t, p.admin), series)) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s is %v after a minute\n%s", p.addr, series, metric(scrape(t, p.admin), series), p.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
