package main

import (
	"context"
	"slices"
	"testing"
	"time"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// TestOTLPHistogramSketchIsAgentInterpolation sends one delta
// explicit-bucket histogram point over OTLP/gRPC and reads the sketch
// aggd's Datadog upstream writes. Its bins are the ones Datadog's OTLP
// mapping builds for the same point: getSketchBuckets
// (DataDog/opentelemetry-mapping-go, pkg/otlp/metrics) turns the bucket
// (-Inf, -2] into [-2, -2] and (100, +Inf) into [100, 100], and calls
// pkg/quantile's Agent.InsertInterpolate(lower, upper, count) for each
// bucket in order. The bins below were recorded from a transcription of
// pkg/quantile (Config.key, binLow, Agent.InsertInterpolate, flush,
// sparseStore.insertCounts) fed that sequence of calls:
//
//	InsertInterpolate(-2, -2, 1)   → key(-2) = -1383 gets 1
//	InsertInterpolate(-2, 1, 3)    → keys -1383 … 1338 (key(1), the bias):
//	                                 a count goes to the first key of a
//	                                 span once binLow of the key after it
//	                                 is a third of the width (1) further:
//	                                 -1383 (to -1), -1338 (to 0), 0 (to 1)
//	InsertInterpolate(1, 5, 40)    → one or two counts every few keys
//	                                 from 1338
//	InsertInterpolate(5, 10, 1000) → 15 to 31 a key from 1442 to 1486
//	InsertInterpolate(10, 100, 7)  → 1487 … 1628, one count a span
//	InsertInterpolate(100, 100, 2) → key(100) = 1635 gets 2
//
// Count and sum are the point's, exact.
func TestOTLPHistogramSketchIsAgentInterpolation(t *testing.T) {
	dd := upstreamtest.NewDatadogIntake(t)
	in := startAggd(t, "--config", intakeConfig(t, dd), "--interval", "1h", "--context-ttl", "3h")
	ts := uint64(time.Now().UnixNano())
	req := &colmetricspb.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{
		ScopeMetrics: []*metricspb.ScopeMetrics{{Metrics: []*metricspb.Metric{{
			Name: "interp.latency",
			Data: &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{
				AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
				DataPoints: []*metricspb.HistogramDataPoint{{StartTimeUnixNano: ts - 1, TimeUnixNano: ts, Count: 1053, Sum: proto.Float64(8123.5),
					ExplicitBounds: []float64{-2, 1, 5, 10, 100}, BucketCounts: []uint64{1, 3, 40, 1000, 7, 2}}},
			}},
		}}}},
	}}}
	if _, err := colmetricspb.NewMetricsServiceClient(in.conn).Export(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	in.stop(t)

	wantK := []int32{-1383, -1338, 0, 1338, 1345, 1351, 1357, 1362, 1367, 1371, 1375, 1379, 1383, 1387, 1390, 1393, 1396, 1399,
		1402, 1405, 1408, 1411, 1414, 1416, 1418, 1420, 1422, 1424, 1426, 1428, 1430, 1432, 1434, 1436, 1438, 1440, 1442, 1443,
		1444, 1445, 1446, 1447, 1448, 1449, 1450, 1451, 1452, 1453, 1454, 1455, 1456, 1457, 1458, 1459, 1460, 1461, 1462, 1463,
		1464, 1465, 1466, 1467, 1468, 1469, 1470, 1471, 1472, 1473, 1474, 1475, 1476, 1477, 1478, 1479, 1480, 1481, 1482, 1483,
		1484, 1485, 1486, 1487, 1541, 1570, 1590, 1605, 1618, 1628, 1635}
	wantN := []uint32{2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 2, 1, 2, 1, 2,
		15, 16, 16, 17, 16, 17, 17, 18, 18, 18, 18, 19, 18, 20, 19, 20, 20, 20, 21, 21, 21, 22, 22, 23, 22, 23, 24, 24, 24, 24,
		25, 26, 26, 26, 26, 27, 28, 27, 29, 28, 29, 30, 30, 31, 19, 1, 1, 1, 1, 1, 1, 1, 2}
	var got *upstreamtest.DDSketch
	for _, s := range dd.Sketches() {
		if s.Metric == "interp.latency" {
			got = &s
		}
	}
	if got == nil {
		t.Fatalf("no sketch of interp.latency at the intake: %v", dd.Sketches())
	}
	if !slices.Equal(got.K, wantK) || !slices.Equal(got.N, wantN) {
		t.Errorf("bins:\nk %v\nn %v\nwant the Agent's InsertInterpolate bins:\nk %v\nn %v", got.K, got.N, wantK, wantN)
	}
	if got.Cnt != 1053 || got.Sum != 8123.5 {
		t.Errorf("count %d, sum %v, want the point's 1053 and 8123.5", got.Cnt, got.Sum)
	}
}
