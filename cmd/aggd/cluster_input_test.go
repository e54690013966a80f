package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// otlpRequest is request i of the test's OTLP load: for every context,
// a delta sum, a gauge and a delta histogram point, or a cumulative sum's
// point, named with prefix, timestamped from base on, a quarter second
// apart.
func otlpRequest(prefix string, base int64, i int, cumulative bool) *colmetricspb.ExportMetricsServiceRequest {
	ts := uint64(base + int64(i)*int64(250*time.Millisecond))
	start := uint64(base - int64(time.Second)) // before aggd started: the first cumulative point is a baseline
	var delta, gauge, cum []*metricspb.NumberDataPoint
	var hpts []*metricspb.HistogramDataPoint
	for c := range clusterContexts {
		attrs := []*commonpb.KeyValue{{Key: "ctx", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: strconv.Itoa(c)}}}}
		at := ts + uint64(c)*1000
		delta = append(delta, &metricspb.NumberDataPoint{Attributes: attrs, StartTimeUnixNano: at - 1, TimeUnixNano: at,
			Value: &metricspb.NumberDataPoint_AsInt{AsInt: int64(1 + (i*7+c)%5)}})
		gauge = append(gauge, &metricspb.NumberDataPoint{Attributes: attrs, TimeUnixNano: at,
			Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: float64((i*13+c*5)%97) / 4}})
		cum = append(cum, &metricspb.NumberDataPoint{Attributes: attrs, StartTimeUnixNano: start, TimeUnixNano: at,
			Value: &metricspb.NumberDataPoint_AsInt{AsInt: int64((i + 1) * (c + 3))}})
		n1, n2, n3 := uint64(1+(i+c)%3), uint64((i*c)%4), uint64(1+c%2)
		hpts = append(hpts, &metricspb.HistogramDataPoint{Attributes: attrs, StartTimeUnixNano: at - 1, TimeUnixNano: at,
			Count: n1 + n2 + n3, Sum: proto.Float64(float64(n1)*0.5 + float64(n2)*5 + float64(n3)*50),
			ExplicitBounds: []float64{1, 10, 100}, BucketCounts: []uint64{n1, n2, n3, 0}})
	}
	metrics := []*metricspb.Metric{
		{Name: prefix + "delta", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{IsMonotonic: true, AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA, DataPoints: delta}}},
		{Name: prefix + "gauge", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{DataPoints: gauge}}},
		{Name: prefix + "hist", Data: &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA, DataPoints: hpts}}},
	}
	if i == 0 || i == 5 {
		// 3, 7, 7, 30, 80 and 300, alone in its bucket: one of the two
		// arrives at the replica that does not own it.
		metrics = append(metrics, &metricspb.Metric{Name: prefix + "exact", Data: &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{
			AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
			DataPoints: []*metricspb.HistogramDataPoint{{StartTimeUnixNano: ts - 1, TimeUnixNano: ts, Count: 6, Sum: proto.Float64(427),
				Min: proto.Float64(3), Max: proto.Float64(300), ExplicitBounds: []float64{5, 10, 50, 100}, BucketCounts: []uint64{1, 2, 1, 1, 1}}},
		}}})
	}
	if cumulative {
		metrics = []*metricspb.Metric{
			{Name: prefix + "cumulative", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{IsMonotonic: true, AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, DataPoints: cum}}},
		}
	}
	return &colmetricspb.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{
		Resource:     &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "shop"}}}}},
		ScopeMetrics: []*metricspb.ScopeMetrics{{Metrics: metrics}},
	}}}
}

// dogstatsdDatagram is datagram i of the test's DogStatsD load: counts,
// set members and distribution values of every context, timestamped
// (|T) from base on. Gauges are left out: several of them in one second
// have no order over a socket read by several readers.
func dogstatsdDatagram(base int64, i int) []byte {
	var b bytes.Buffer
	sec := (base + int64(i)*int64(250*time.Millisecond)) / 1e9
	for c := range clusterContexts {
		fmt.Fprintf(&b, "ds.count:%d|c|#ctx:%d,env:test|T%d\n", 1+(i+c)%4, c, sec)
		fmt.Fprintf(&b, "ds.set:user-%d|s|#ctx:%d|T%d\n", (i*c)%17, c, sec)
		fmt.Fprintf(&b, "ds.dist:%g|d|#ctx:%d|T%d\n", float64((i*31+c*7)%200)/8, c, sec)
	}
	return b.Bytes()
}

// sumMetric adds every series of the metric name in a /metrics text.
func sumMetric(text, name string) float64 {
	var n float64
	for _, m := range regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(name)+`(?:\{[^}]*\})? (\S+)$`).FindAllStringSubmatch(text, -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		n += v
	}
	return n
}

// TestClusterRoutesOTLPAndDogStatsD runs two aggd replicas as one cluster
// and a single aggd, and sends the same OTLP/gRPC, OTLP/HTTP and DogStatsD
// input to both, round robin over the replicas, so that every series
// arrives at both replicas and about half of it at one that does not own
// it. The cluster's last-write intake must hold what the single
// aggd's does.
func TestClusterRoutesOTLPAndDogStatsD(t *testing.T) {
	if testing.Short() {
		t.Skip("builds aggd and runs three processes")
	}
	bin := buildAggd(t)
	ddC, ddS := upstreamtest.NewDatadogIntake(t), upstreamtest.NewDatadogIntake(t)
	cfgC, cfgS := intakeConfig(t, ddC), intakeConfig(t, ddS)
	common := comparedFlags()
	dir := t.TempDir()
	type node struct {
		p          *process
		http, sock string
	}
	startNode := func(name string, args ...string) node {
		n := node{http: freeAddr(t), sock: filepath.Join(dir, name+".sock")}
		n.p = startProcess(t, bin, append(append([]string{"--otlp-http-listen", n.http, "--dogstatsd-socket", n.sock}, common...), args...)...)
		return n
	}
	single := startNode("single", "--config", cfgS)
	peerA, peerB := freeAddr(t), freeAddr(t)
	peers := peerA + "," + peerB
	a := startNode("a", "--config", cfgC, "--peer-listen", peerA, "--peers", peers, "--peer-token", "s3cret")
	b := startNode("b", "--config", cfgC, "--peer-listen", peerB, "--peers", peers, "--peer-token", "s3cret")

	base := time.Now().Add(-10 * time.Minute).Truncate(10 * time.Second).UnixNano()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	grpcExport := func(addr string, req *colmetricspb.ExportMetricsServiceRequest) {
		t.Helper()
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		resp, err := colmetricspb.NewMetricsServiceClient(cc).Export(ctx, req)
		if err != nil || resp.GetPartialSuccess().GetRejectedDataPoints() != 0 {
			t.Fatalf("OTLP/gRPC export to %s: %v %v", addr, err, resp.GetPartialSuccess())
		}
	}
	httpExport := func(addr string, req *colmetricspb.ExportMetricsServiceRequest) {
		t.Helper()
		body, _ := proto.Marshal(req)
		resp, err := http.Post("http://"+addr+"/v1/metrics", "application/x-protobuf", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("OTLP/HTTP export to %s: %s", addr, resp.Status)
		}
	}
	dial := func(sock string) net.Conn {
		c, err := net.Dial("unixgram", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dsdA, dsdB, dsdS := dial(a.sock), dial(b.sock), dial(single.sock)
	const requests = 40 // four per bucket
	lines := [2]int{}
	for i := range requests {
		// Round robin over the replicas, as a load balancer without
		// affinity spreads requests. The cumulative streams of a client
		// go to one replica, as a load balancer with affinity sends them
		// (README, Cluster mode).
		r, rh := [2]node{a, b}[i%2], [2]node{b, a}[i%2]
		g, h := otlpRequest("ot.", base, i, false), otlpRequest("oh.", base, i, false)
		grpcExport(r.p.addr, g)
		grpcExport(single.p.addr, g)
		httpExport(rh.http, h)
		httpExport(single.http, h)
		for _, prefix := range []string{"ot.", "oh."} {
			c := otlpRequest(prefix, base, i, true)
			grpcExport(a.p.addr, c)
			grpcExport(single.p.addr, c)
		}
		d := dogstatsdDatagram(base, i)
		lines[i%2] += bytes.Count(d, []byte("\n"))
		for _, c := range []net.Conn{[2]net.Conn{dsdA, dsdB}[i%2], dsdS} {
			if _, err := c.Write(d); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Datagrams have no ack: wait until both have read every line.
	for p, n := range map[*process]int{a.p: lines[0], b.p: lines[1], single.p: lines[0] + lines[1]} {
		for deadline := time.Now().Add(time.Minute); sumMetric(scrape(t, p.admin), "aggd_dogstatsd_lines_total") < float64(n); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("aggd read %v of %d DogStatsD lines", sumMetric(scrape(t, p.admin), "aggd_dogstatsd_lines_total"), n)
			}
		}
	}
	var acked, local float64
	for _, p := range []*process{a.p, b.p} {
		text := scrape(t, p.admin)
		acked += metric(text, `aggd_cluster_items_total{kind="sample",outcome="acked"}`)
		local += metric(text, `aggd_cluster_items_total{kind="sample",outcome="local"}`)
		if u := metric(text, `aggd_cluster_items_total{kind="sample",outcome="undelivered"}`); u != 0 {
			t.Errorf("%v samples undelivered", u)
		}
	}
	t.Logf("samples forwarded %.0f, owned where they arrived %.0f", acked, local)
	if acked == 0 || local == 0 {
		t.Errorf("forwarded %v, local %v: the load did not reach both owners", acked, local)
	}
	for _, p := range []*process{a.p, b.p, single.p} {
		stopAggd(t, p)
	}
	if err := errorsJoin(ddC.Err(), ddS.Err()); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"ot.", "oh.", "ds."} {
		want := seriesStore(ddS.Series(), prefix)
		if len(want) < 100 {
			t.Errorf("%s: only %d points from the single aggd: the load did not reach the intake", prefix, len(want))
		}
		compareStores(t, prefix+" series", want, seriesStore(ddC.Series(), prefix))
		// A forwarded OTLP histogram point keeps its exact sum, minimum
		// and maximum: the sketches equal the single aggd's whole.
		compareStores(t, prefix+" sketches", sketchStore(ddS.Sketches(), prefix), sketchStore(ddC.Sketches(), prefix))
	}
	for _, prefix := range []string{"ot.", "oh."} {
		exact := 0
		for _, sk := range ddC.Sketches() {
			if sk.Metric != prefix+"exact" {
				continue
			}
			exact++
			if sk.Cnt != 6 || sk.Sum != 427 || sk.Min != 3 || sk.Max != 300 {
				t.Errorf("%s @%d: count %d sum %v min %v max %v, want 6, 427, 3, 300", sk.Metric, sk.TS, sk.Cnt, sk.Sum, sk.Min, sk.Max)
			}
		}
		if exact != 2 {
			t.Errorf("%sexact: %d sketches at the cluster's intake, want 2", prefix, exact)
		}
	}
	for _, prefix := range []string{"ot.", "oh.", "ds."} {
		if len(sketchStore(ddS.Sketches(), prefix)) == 0 {
			t.Errorf("%s: no sketch reached the intake", prefix)
		}
	}
}

// TestClusterUnreachableOwnerRefusesOTLPAndCountsDogStatsD runs a replica
// whose only peer never answers: an OTLP request holding points that peer
// owns is refused UNAVAILABLE and nothing of it is taken, and DogStatsD
// samples it owns are counted undelivered, not aggregated here.
func TestClusterUnreachableOwnerRefusesOTLPAndCountsDogStatsD(t *testing.T) {
	if testing.Short() {
		t.Skip("builds aggd and runs it")
	}
	bin := buildAggd(t)
	dd := upstreamtest.NewDatadogIntake(t)
	self, dead := freeAddr(t), freeAddr(t)
	sock := filepath.Join(t.TempDir(), "dsd.sock")
	p := startProcess(t, bin, "--config", intakeConfig(t, dd), "--interval", "1s", "--grace", "0s", "--max-lateness", "2h",
		"--late-window", "2h", "--dogstatsd-socket", sock, "--peer-listen", self, "--peers", self+","+dead,
		"--peer-token", "s3cret", "--peer-forward-timeout", "1s")
	base := time.Now().Add(-10 * time.Minute).Truncate(10 * time.Second).UnixNano()

	cc, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = colmetricspb.NewMetricsServiceClient(cc).Export(context.Background(), otlpRequest("ot.", base, 0, false))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "owner_unavailable") {
		t.Fatalf("export with an unreachable owner: %v, want UNAVAILABLE owner_unavailable", err)
	}

	undelivered := func() float64 { return undeliveredAt(scrape(t, p.admin)) }
	otlpUndelivered := undelivered()
	localBefore := metric(scrape(t, p.admin), `aggd_cluster_items_total{kind="sample",outcome="local"}`)
	if otlpUndelivered == 0 {
		t.Fatal("no OTLP point counted undelivered")
	}
	c, err := net.Dial("unixgram", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d := dogstatsdDatagram(base, 0)
	if _, err := c.Write(d); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); sumMetric(scrape(t, p.admin), "aggd_dogstatsd_lines_total") < float64(bytes.Count(d, []byte("\n"))) || undelivered() == otlpUndelivered; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("DogStatsD samples of the unreachable owner were not counted undelivered (%v)", undelivered())
		}
	}
	text := scrape(t, p.admin)
	local := metric(text, `aggd_cluster_items_total{kind="sample",outcome="local"}`) - localBefore
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	if p.err != nil {
		t.Fatalf("aggd: %v\n%s", p.err, p.log)
	}
	if n := len(seriesStore(dd.Series(), "ot.")) + len(sketchStore(dd.Sketches(), "ot.")); n != 0 {
		t.Errorf("%d points of the refused OTLP request reached the intake", n)
	}
	// Every DogStatsD sample was either aggregated here or counted.
	dsdUndelivered := undeliveredAt(text) - otlpUndelivered
	if lines := float64(bytes.Count(d, []byte("\n"))); local+dsdUndelivered != lines || dsdUndelivered == 0 || local == 0 {
		t.Errorf("DogStatsD: %v lines, %v owned here, %v undelivered", lines, local, dsdUndelivered)
	}
}

func undeliveredAt(text string) float64 {
	return metric(text, `aggd_cluster_items_total{kind="sample",outcome="undelivered"}`)
}
