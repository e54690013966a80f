package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// TestClusterSpanStatsHaveOneWriter sends the spans of many traces round
// robin to two replicas of a cluster, and the same spans to a single aggd.
// Each trace has one owner, but the stats of one service and resource come
// from the traces of both: routed to the owner of their context like any
// sample, each series has one writer, and the cluster's last-write intake
// holds what the single aggd's does.
func TestClusterSpanStatsHaveOneWriter(t *testing.T) {
	if testing.Short() {
		t.Skip("builds aggd and runs three processes")
	}
	bin := buildAggd(t)
	ddC, ddS := upstreamtest.NewDatadogIntake(t), upstreamtest.NewDatadogIntake(t)
	cfgC, cfgS := intakeConfig(t, ddC), intakeConfig(t, ddS)
	common := comparedFlags()
	single := startProcess(t, bin, append([]string{"--config", cfgS}, common...)...)
	peerA, peerB := freeAddr(t), freeAddr(t)
	replicas := [2]*process{}
	for i, p := range []string{peerA, peerB} {
		replicas[i] = startProcess(t, bin, append([]string{"--config", cfgC, "--peer-listen", p, "--peers", peerA + "," + peerB, "--peer-token", "s3cret"}, common...)...)
	}

	sub := &submitter{t: t, conns: map[string]aggdv1.AggregatorServiceClient{}}
	send := func(addr string, b *aggdv1.Batch) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		resp, err := sub.client(addr).Submit(ctx, &aggdv1.SubmitRequest{Batch: b})
		if err != nil {
			t.Fatalf("submit to %s: %v", addr, err)
		}
		if a := resp.GetAck(); a.GetRejected() != 0 || int(a.GetAccepted()) != len(b.Spans) {
			t.Fatalf("submit to %s: accepted %d of %d spans: %v", addr, a.GetAccepted(), len(b.Spans), a.GetRejections())
		}
	}
	base := time.Now().Add(-10 * time.Minute).Truncate(10 * time.Second).UnixNano()
	const batches, traces = 40, 25 // four batches per bucket
	for i := range batches {
		b := &aggdv1.Batch{}
		for j := range traces {
			n := i*traces + j
			tid := []byte(fmt.Sprintf("trace-%010d", n))
			start := base + int64(i)*int64(250*time.Millisecond) + int64(j)*1000
			root := &aggdv1.Span{TraceId: tid, SpanId: []byte{1, 0, 0, 0, 0, 0, 0, byte(j)}, Service: "api", Name: "http.request",
				Resource: []string{"/items", "/users"}[n%2], Kind: aggdv1.SpanKind_SPAN_KIND_SERVER, StartUnixNano: start,
				DurationNano: int64(1+n%7) * int64(time.Millisecond), HttpStatusCode: 200}
			child := &aggdv1.Span{TraceId: tid, SpanId: []byte{2, 0, 0, 0, 0, 0, 0, byte(j)}, ParentSpanId: root.SpanId, Service: "db", Name: "query",
				Resource: "select", Kind: aggdv1.SpanKind_SPAN_KIND_CLIENT, StartUnixNano: start, DurationNano: int64(1+n%5) * int64(time.Millisecond),
				Error: n%9 == 0}
			b.Spans = append(b.Spans, root, child)
		}
		send(replicas[i%2].addr, b)
		send(single.addr, b)
	}

	var forwarded float64
	for _, p := range replicas {
		forwarded += metric(scrape(t, p.admin), `aggd_cluster_items_total{kind="sample",outcome="acked"}`)
	}
	if forwarded == 0 {
		t.Error("no span stats sample was forwarded to its owner")
	}
	for _, p := range append(replicas[:], single) {
		stopAggd(t, p)
	}
	if err := errorsJoin(ddC.Err(), ddS.Err()); err != nil {
		t.Fatal(err)
	}
	want := seriesStore(ddS.Series(), "aggd.span.")
	if len(want) < 100 {
		t.Fatalf("only %d span stats points from the single aggd", len(want))
	}
	compareStores(t, "span stats series", want, seriesStore(ddC.Series(), "aggd.span."))
	compareStores(t, "span stats sketches", sketchStore(ddS.Sketches(), "aggd.span."), sketchStore(ddC.Sketches(), "aggd.span."))
}
