package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otelmetric "go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc/metadata"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
)

func TestAggregationRulesEndToEnd(t *testing.T) {
	in := startAggd(t, "--rules-file", filepath.Join(repo, "internal/rules/testdata/datakit-examples.toml"), "--interval", "1h", "--context-ttl", "3h")
	client := aggdv1.NewAggregatorServiceClient(in.conn)
	jvm := func(svc string, v float64) *aggdv1.Sample {
		return smp("jvm.classes.loaded", aggdv1.MetricType_METRIC_TYPE_GAUGE, v, "measurement:otel_service", "service_name:"+svc)
	}
	_, traces := workload(10) // 10 traces of 3 spans; one root each
	var batch aggdv1.Batch
	batch.Samples = []*aggdv1.Sample{jvm("orders", 100), jvm("orders", 50), jvm("billing", 70)}
	for _, tr := range traces {
		batch.Spans = append(batch.Spans, tr...)
	}
	resp, err := client.Submit(context.Background(), &aggdv1.SubmitRequest{Batch: &batch})
	if err != nil || resp.Ack.Rejected != 0 {
		t.Fatalf("%v %v", resp, err)
	}
	rl, err := aggdv1.NewAdminServiceClient(in.conn).ListRules(context.Background(), &aggdv1.ListRulesRequest{})
	if err != nil || len(rl.Rules) != 2 || rl.Rules[0].Matched != 3 || rl.Rules[1].Matched != 10 {
		t.Fatalf("ListRules: %v %v", rl, err)
	}
	got := map[string]float64{}
	originals := 0
	for _, l := range in.stop(t) {
		if l["kind"] != "metric" {
			continue
		}
		switch l["name"] {
		case "jvm_class_loaded_sum", "jvm_class_loaded_sum_count", "root_span.count", "root_span.count_count":
			var tags []string
			for _, x := range l["tags"].([]any) {
				tags = append(tags, x.(string))
			}
			sort.Strings(tags)
			got[l["name"].(string)+"{"+strings.Join(tags, ",")+"}"] += l["value"].(float64)
			if l["interval"] != 15.0 {
				t.Errorf("%s interval %v, want the default_window 15", l["name"], l["interval"])
			}
		case "jvm.classes.loaded":
			originals++
		}
	}
	// DataKit's output point (measurement, field, tags) is the series
	// named by the field, tagged measurement:<measurement>, with its
	// <field>_count companion.
	want := map[string]float64{
		"jvm_class_loaded_sum{measurement:otel_service,metric:jvm_class_loaded_sum,service_name:orders}":        150,
		"jvm_class_loaded_sum_count{measurement:otel_service,metric:jvm_class_loaded_sum,service_name:orders}":  2,
		"jvm_class_loaded_sum{measurement:otel_service,metric:jvm_class_loaded_sum,service_name:billing}":       70,
		"jvm_class_loaded_sum_count{measurement:otel_service,metric:jvm_class_loaded_sum,service_name:billing}": 1,
		"root_span.count{measurement:opentelemetry,resource:/items,service:api}":                                9, // trace 2 of 10 is a health check
		"root_span.count_count{measurement:opentelemetry,resource:/items,service:api}":                          9,
		"root_span.count{measurement:opentelemetry,resource:/health,service:api}":                               1,
		"root_span.count_count{measurement:opentelemetry,resource:/health,service:api}":                         1,
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], w, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d series, want %d: %v", len(got), len(want), got)
	}
	if originals != 2 {
		t.Errorf("%d original series passed on, want 2 (orders, billing)", originals)
	}
}

// TestRulesReloadUnderLoad reloads the rules file over and over while
// streams ingest: no sample is lost or counted twice.
func TestRulesReloadUnderLoad(t *testing.T) {
	rulesFile := filepath.Join(t.TempDir(), "aggr.toml")
	text := "[[aggregate_rules]]\nname = \"n\"\n[aggregate_rules.select]\ncategory = \"metric\"\nmetric_name = [\"load\"]\n[aggregate_rules.algorithms.\"load_count\"]\nmethod = \"count\"\nsource_field = \"load\"\n"
	os.WriteFile(rulesFile, []byte(text), 0o600)
	in := startAggd(t, "--rules-file", rulesFile, "--rules-reload-interval", "5ms", "--interval", "1h", "--context-ttl", "3h")
	client := aggdv1.NewAggregatorServiceClient(in.conn)
	const streams, batches, per = 4, 300, 50
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var rewrites, sent atomic.Int64
	go func() { // replace the file, as a ConfigMap update does: every change is a reload
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(15 * time.Millisecond):
				tmp := rulesFile + ".new"
				os.WriteFile(tmp, []byte(text+strings.Repeat("#", i%50)+"\n"), 0o600)
				os.Rename(tmp, rulesFile)
				rewrites.Add(1)
			}
		}
	}()
	for s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := client.Stream(metadata.AppendToOutgoingContext(context.Background(), "x-tenant-id", "load"))
			if err != nil {
				t.Error(err)
				return
			}
			// The load lasts for at least 20 rewrites of the file, however
			// fast the machine.
			for i := 0; i < batches || rewrites.Load() < 20; i++ {
				b := &aggdv1.Batch{}
				for j := range per {
					b.Samples = append(b.Samples, smp("load", aggdv1.MetricType_METRIC_TYPE_COUNT, 1, "stream:"+string(rune('a'+s)), "j:"+string(rune('a'+j%26))))
				}
				st.Send(&aggdv1.StreamRequest{Sequence: uint64(i + 1), Batch: b})
				if _, err := st.Recv(); err != nil {
					t.Error(err)
					return
				}
				sent.Add(per)
			}
			st.CloseSend()
		}()
	}
	wg.Wait()
	close(stop)
	reloads := metric(scrape(t, in.admin), `aggd_config_reloads_total{file="rules",result="success"}`)
	var derived, originals float64
	for _, l := range in.stop(t) {
		switch l["name"] {
		case "load_count":
			derived += l["value"].(float64)
		case "load":
			originals += l["value"].(float64)
		}
	}
	if want := float64(sent.Load()); derived != want || originals != want {
		t.Fatalf("derived %v, originals %v, want %v each", derived, originals, want)
	}
	if reloads < 5 {
		t.Fatalf("only %v reloads happened during the load", reloads)
	}
	t.Logf("%v reloads during the load; every sample counted once", reloads)
}

// TestLoggingRulesEndToEnd: a DataKit logging rule counts aggd's events,
// sent over gRPC and DogStatsD, as DataKit counts log points (see
// internal/rules TestDataKitLogVectors), and the events still pass on.
func TestLoggingRulesEndToEnd(t *testing.T) {
	rulesFile := filepath.Join(t.TempDir(), "aggr.toml")
	if err := os.WriteFile(rulesFile, []byte(`
[[aggregate_rules]]
name = "nginx_errors"
group_by = ["host", "status"]
[aggregate_rules.select]
category = "logging"
measurements = ["nginx"]
metric_name = ["message"]
condition = '{ status IN ["error", "warning"] }'
[aggregate_rules.algorithms.nginx_logs]
method = "count"
source_field = "message"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeUDP(t)
	in := startAggd(t, "--rules-file", rulesFile, "--dogstatsd-udp", addr, "--dogstatsd-tenant", "default",
		"--interval", "1h", "--context-ttl", "3h")
	ev := func(title, host string, at aggdv1.EventAlertType, source string) *aggdv1.Event {
		return &aggdv1.Event{Title: title, Text: title + " text", Host: host, AlertType: at, SourceType: source}
	}
	const errType, warnType, infoType = aggdv1.EventAlertType_EVENT_ALERT_TYPE_ERROR, aggdv1.EventAlertType_EVENT_ALERT_TYPE_WARNING, aggdv1.EventAlertType_EVENT_ALERT_TYPE_INFO
	resp, err := aggdv1.NewAggregatorServiceClient(in.conn).Submit(context.Background(), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Events: []*aggdv1.Event{
		ev("502", "web-1", errType, "nginx"), ev("504", "web-1", errType, "nginx"), ev("slow", "web-2", warnType, "nginx"),
		ev("200", "web-1", infoType, "nginx"), ev("deadlock", "db-1", errType, "mysql"),
	}}})
	if err != nil || resp.Ack.Rejected != 0 {
		t.Fatalf("%v %v", resp, err)
	}
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("_e{3,8}:503|503 text|h:web-1|t:error|s:nginx"))
	conn.Close()
	// A bound only a hang reaches: the machine may be slow.
	for deadline := time.Now().Add(30 * time.Second); metric(scrape(t, in.admin), `aggd_dogstatsd_lines_total{tenant="default"}`) < 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the listener did not read the datagram")
		}
	}
	rl, err := aggdv1.NewAdminServiceClient(in.conn).ListRules(context.Background(), &aggdv1.ListRulesRequest{})
	if err != nil || len(rl.Rules) != 1 || rl.Rules[0].Matched != 4 {
		t.Fatalf("ListRules: %v %v", rl, err)
	}
	got := map[string]float64{}
	events := 0
	for _, l := range in.stop(t) {
		switch l["kind"] {
		case "event":
			events++
		case "metric":
			name := l["name"].(string)
			if !strings.HasPrefix(name, "nginx_logs") {
				continue
			}
			var tags []string
			for _, x := range l["tags"].([]any) {
				tags = append(tags, x.(string))
			}
			sort.Strings(tags)
			got[name+"{"+strings.Join(tags, ",")+"}"] += l["value"].(float64)
			if l["interval"] != 10.0 {
				t.Errorf("%s interval %v, want the default_window 10", name, l["interval"])
			}
		}
	}
	want := map[string]float64{
		"nginx_logs{host:web-1,measurement:nginx,status:error}":         3,
		"nginx_logs_count{host:web-1,measurement:nginx,status:error}":   3,
		"nginx_logs{host:web-2,measurement:nginx,status:warning}":       1,
		"nginx_logs_count{host:web-2,measurement:nginx,status:warning}": 1,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
	if events != 6 {
		t.Errorf("%d events passed on, want all 6", events)
	}
}

// TestRulesReadOTLPHistograms exports an OpenTelemetry SDK histogram to a
// running aggd over OTLP/gRPC: a rule reading the fields DataKit makes of
// it (<name>_sum, <name>_count) sums the exact moments of its points.
func TestRulesReadOTLPHistograms(t *testing.T) {
	rulesFile := filepath.Join(t.TempDir(), "aggr.toml")
	if err := os.WriteFile(rulesFile, []byte(`
[[aggregate_rules]]
name = "latency"
group_by = ["route"]
[aggregate_rules.select]
category = "metric"
metric_name = ["otel.latency_sum", "otel.latency_count"]
[aggregate_rules.algorithms."latency_total"]
method = "sum"
source_field = "otel.latency_sum"
[aggregate_rules.algorithms."latency_n"]
method = "sum"
source_field = "otel.latency_count"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	in := startAggd(t, "--rules-file", rulesFile, "--interval", "1h", "--context-ttl", "3h")
	ctx := context.Background()
	mexp, texp := sdkExporters(t, "grpc", in.addr, "", map[string]string{"x-tenant-id": "otel-team"})
	texp.Shutdown(ctx)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	latency, _ := mp.Meter("test").Float64Histogram("otel.latency", otelmetric.WithExplicitBucketBoundaries(10, 20, 50, 100))
	route := otelmetric.WithAttributes(attribute.String("route", "/pay"))
	for _, v := range []float64{5, 15, 15, 40, 70, 500} {
		latency.Record(ctx, v, route)
	}
	collectAndExport(t, reader, mexp)
	latency.Record(ctx, 15, route)
	collectAndExport(t, reader, mexp) // cumulative: aggd takes the difference, one value of 15
	mexp.Shutdown(ctx)

	got := map[string]float64{}
	for _, l := range in.stop(t) {
		if l["kind"] == "metric" && strings.HasPrefix(l["name"].(string), "latency_") {
			got[key(l)] += l["value"].(float64)
		}
	}
	want := map[string]float64{
		"otel-team/latency_total{route:/pay}": 660, "otel-team/latency_n{route:/pay}": 7,
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], w, got)
		}
	}
}
