package rules

import (
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aggd/aggd/internal/filter"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// datakitExamples are DataKit's documented aggr.toml examples, which the
// end-to-end test in cmd/aggd loads too.
var datakitExamples = func() string {
	b, err := os.ReadFile("testdata/datakit-examples.toml")
	if err != nil {
		panic(err)
	}
	return string(b)
}()

const sec = int64(time.Second)

var t0 = (time.Now().Unix() / 60) * 60 * sec

func engine(t *testing.T, text string, shards int) *Engine {
	t.Helper()
	set, err := Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	return NewEngine(set, shards, window.DefaultConfig())
}

func sample(name string, v float64, tags ...string) *window.Sample {
	return &window.Sample{Name: name, Type: window.TypeGauge, Value: v, SampleRate: 1, Tags: tags, Timestamp: t0 + sec}
}

func drain(e *Engine) map[string]float64 {
	out := map[string]float64{}
	for _, m := range e.Drain(t0+time.Hour.Nanoseconds(), true, func(_ int, f func()) { f() }, nil) {
		tags := slices.Clone(m.Tags)
		sort.Strings(tags)
		out[m.Tenant.ID+"/"+m.Name+"{"+strings.Join(tags, ",")+"}"] += m.Value
	}
	return out
}

func TestDataKitExamples(t *testing.T) {
	e := engine(t, datakitExamples, 2)
	tn := window.NewTenant("acme")
	for i, s := range []*window.Sample{
		sample("jvm.classes.loaded", 100, "measurement:otel_service", "service_name:orders"),
		sample("jvm.classes.loaded", 50, "measurement:otel_service", "service_name:orders"),
		sample("jvm.classes.loaded", 70, "measurement:otel_service", "service_name:billing"),
		sample("jvm.classes.loaded", 999, "measurement:other", "service_name:orders"), // another measurement
		sample("jvm.threads.live", 5, "measurement:otel_service", "service_name:orders"),
	} {
		if _, r := e.ObserveSample(i%2, tn, s, t0+sec, 0); r != window.Accepted {
			t.Fatal(r)
		}
	}
	root := spans.Span{TraceID: [16]byte{1}, SpanID: [8]byte{1}, Service: "api", Resource: "/pay", Start: t0 + sec, Duration: sec}
	child := root
	child.SpanID, child.ParentID, child.HasParent = [8]byte{2}, [8]byte{1}, true
	other := root
	other.TraceID, other.Resource = [16]byte{2}, "/cart"
	for _, sp := range []spans.Span{root, child, other, root} {
		e.ObserveSpan(tn, &sp, t0+sec, 0)
	}
	want := map[string]float64{
		"acme/jvm_class_loaded_sum{measurement:otel_service,metric:jvm_class_loaded_sum,service_name:billing}":       70,
		"acme/jvm_class_loaded_sum_count{measurement:otel_service,metric:jvm_class_loaded_sum,service_name:billing}": 1,
		"acme/jvm_class_loaded_sum{measurement:otel_service,metric:jvm_class_loaded_sum,service_name:orders}":        150,
		"acme/jvm_class_loaded_sum_count{measurement:otel_service,metric:jvm_class_loaded_sum,service_name:orders}":  2,
		"acme/root_span.count{measurement:opentelemetry,resource:/cart,service:api}":                                 1,
		"acme/root_span.count_count{measurement:opentelemetry,resource:/cart,service:api}":                           1,
		"acme/root_span.count{measurement:opentelemetry,resource:/pay,service:api}":                                  2,
		"acme/root_span.count_count{measurement:opentelemetry,resource:/pay,service:api}":                            2,
	}
	if got := drain(e); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got  %v\nwant %v", got, want)
	}
	if c := e.Counters("otel_jvm_class_loaded_sum"); c.Matched.Load() != 3 || c.Outputs.Load() != 4 {
		t.Fatalf("counters matched %d outputs %d", c.Matched.Load(), c.Outputs.Load())
	}
}

// TestDataKitDocumentedFile loads the rules of DataKit's aggregator
// documentation unchanged; the metric rules give what DataKit gives (the
// unloaded-classes rule reads a field it does not select, so nothing), the
// logging rules load and select nothing in aggd.
func TestDataKitDocumentedFile(t *testing.T) {
	b, err := os.ReadFile("testdata/datakit-doc-examples.toml")
	if err != nil {
		t.Fatal(err)
	}
	e := engine(t, string(b), 1)
	tn := window.NewTenant("t")
	for _, s := range []*window.Sample{
		sample("jvm.buffer.memory.used", 10, "measurement:otel_service", "service_name:a", "id:direct"),
		sample("jvm.buffer.memory.used", 30, "measurement:otel_service", "service_name:a", "id:direct"),
		sample("jvm.threads.live", 4, "measurement:otel_service", "service_name:a"),
		sample("jvm.threads.live", 6, "measurement:otel_service", "service_name:a"),
		sample("jvm.classes.unloaded", 6, "measurement:otel_service", "service_name:a"),
	} {
		e.ObserveSample(0, tn, s, t0+sec, 0)
	}
	want := map[string]float64{
		"t/jvm.buffer.memory.used.max{id:direct,measurement:otel_service,method:max,service_name:a}":        30,
		"t/jvm.buffer.memory.used.max_count{id:direct,measurement:otel_service,method:max,service_name:a}":  2,
		"t/jvm_threads_live_sum{measurement:otel_service,metric:jvm_threads_live_sum,service_name:a}":       10,
		"t/jvm_threads_live_sum_count{measurement:otel_service,metric:jvm_threads_live_sum,service_name:a}": 2,
	}
	if got := drain(e); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got  %v\nwant %v", got, want)
	}
}

// every is the rule DataKit's vectors below were computed with.
const every = `
default_window = "10s"
[[aggregate_rules]]
name = "all"
group_by = ["host"]
[aggregate_rules.select]
category = "metric"
measurements = ["m"]
metric_name = ["lat"]
[aggregate_rules.algorithms.l_sum]
method = "sum"
source_field = "lat"
[aggregate_rules.algorithms.l_avg]
method = "avg"
source_field = "lat"
[aggregate_rules.algorithms.l_count]
method = "count"
source_field = "lat"
[aggregate_rules.algorithms.l_min]
method = "min"
source_field = "lat"
[aggregate_rules.algorithms.l_max]
method = "max"
source_field = "lat"
[aggregate_rules.algorithms.l_stdev]
method = "stdev"
source_field = "lat"
[aggregate_rules.algorithms.l_cd]
method = "count_distinct"
source_field = "lat"
[aggregate_rules.algorithms.l_first]
method = "first"
source_field = "lat"
[aggregate_rules.algorithms.l_last]
method = "last"
source_field = "lat"
[aggregate_rules.algorithms.l_q]
method = "quantiles"
source_field = "lat"
[aggregate_rules.algorithms.l_q.quantile_opts]
percentiles = [0.5, 0.9, 0.99]
`

// TestDataKitVectors holds the outputs of DataKit's aggregator (cliutils
// aggregate: AggregatorConfigure.Setup, PickPoints, newCalculators,
// Cache.AddBatchs, WindowsToData and each calculator's Aggr), recorded by
// running it on the same points: a DataKit point (measurement M, field K,
// tags) is the series K tagged measurement:M.
func TestDataKitVectors(t *testing.T) {
	type in struct {
		at int64 // seconds after t0
		s  *window.Sample
	}
	tests := []struct {
		name string
		conf string
		in   []in
		want map[string]float64
	}{{
		// algoSum, algoAvg, algoCount, algoMin, algoMax, algoStdev
		// (n-1, nothing under two points), algoCountDistinct,
		// algoCountFirst, algoCountLast, algoQuantiles (percentileFromSorted).
		name: "every algorithm", conf: every,
		in: []in{
			{3, sample("lat", 3, "measurement:m", "host:a")}, {1, sample("lat", 1, "measurement:m", "host:a")},
			{4, sample("lat", 4, "measurement:m", "host:a")}, {2, sample("lat", 2, "measurement:m", "host:a")},
			{5, sample("lat", 7, "measurement:m", "host:b")}, {5, sample("lat", 100, "measurement:other", "host:a")},
		},
		want: map[string]float64{
			"l_avg{host:a,measurement:m}": 2.5, "l_avg_count{host:a,measurement:m}": 4,
			"l_cd{host:a,measurement:m}": 4, "l_cd_count{host:a,measurement:m}": 4,
			"l_count{host:a,measurement:m}": 4, "l_count_count{host:a,measurement:m}": 4,
			"l_first{host:a,measurement:m}": 1, "l_first_count{host:a,measurement:m}": 4,
			"l_last{host:a,measurement:m}": 4, "l_last_count{host:a,measurement:m}": 4,
			"l_max{host:a,measurement:m}": 4, "l_max_count{host:a,measurement:m}": 4,
			"l_min{host:a,measurement:m}": 1, "l_min_count{host:a,measurement:m}": 4,
			"l_q_P50{host:a,measurement:m}": 2.5, "l_q_P90{host:a,measurement:m}": 3.7, "l_q_P99{host:a,measurement:m}": 3.9699999999999998,
			"l_q_count{host:a,measurement:m}": 4,
			"l_stdev{host:a,measurement:m}":   1.2909944487358054, "l_stdev_count{host:a,measurement:m}": 4,
			"l_sum{host:a,measurement:m}": 10, "l_sum_count{host:a,measurement:m}": 4,
			"l_avg{host:b,measurement:m}": 7, "l_avg_count{host:b,measurement:m}": 1,
			"l_cd{host:b,measurement:m}": 1, "l_cd_count{host:b,measurement:m}": 1,
			"l_count{host:b,measurement:m}": 1, "l_count_count{host:b,measurement:m}": 1,
			"l_first{host:b,measurement:m}": 7, "l_first_count{host:b,measurement:m}": 1,
			"l_last{host:b,measurement:m}": 7, "l_last_count{host:b,measurement:m}": 1,
			"l_max{host:b,measurement:m}": 7, "l_max_count{host:b,measurement:m}": 1,
			"l_min{host:b,measurement:m}": 7, "l_min_count{host:b,measurement:m}": 1,
			"l_q_P50{host:b,measurement:m}": 7, "l_q_P90{host:b,measurement:m}": 7, "l_q_P99{host:b,measurement:m}": 7,
			"l_q_count{host:b,measurement:m}": 1,
			"l_sum{host:b,measurement:m}":     7, "l_sum_count{host:b,measurement:m}": 1,
		},
	}, {
		// algoHistogram: points of one le summed; add_tags lose to the
		// point's tags; a group_by key a point lacks is not a tag.
		name: "histogram re-aggregates le buckets",
		conf: `
default_window = "10s"
[[aggregate_rules]]
name = "h"
group_by = ["le", "svc"]
[aggregate_rules.select]
category = "metric"
measurements = ["prom"]
metric_name = ["req_bucket"]
[aggregate_rules.algorithms.req]
method = "histogram"
source_field = "req_bucket"
[aggregate_rules.algorithms.req.add_tags]
svc = "from-add-tags"
le = "x"
kind = "h"
[aggregate_rules.algorithms.req.histogram_opts]
buckets = [1.0, 5.0]
`,
		in: []in{
			{1, sample("req_bucket", 3, "measurement:prom", "le:0.1", "svc:s")}, {2, sample("req_bucket", 4, "measurement:prom", "le:0.1", "svc:s")},
			{1, sample("req_bucket", 10, "measurement:prom", "le:+Inf", "svc:s")}, {2, sample("req_bucket", 12, "measurement:prom", "le:+Inf", "svc:s")},
			{2, sample("req_bucket", 5, "measurement:prom", "le:+Inf")},
		},
		want: map[string]float64{
			"req{kind:h,le:+Inf,measurement:prom,svc:from-add-tags}": 5, "req_count{kind:h,le:+Inf,measurement:prom,svc:from-add-tags}": 1,
			"req{kind:h,le:+Inf,measurement:prom,svc:s}": 22, "req_count{kind:h,le:+Inf,measurement:prom,svc:s}": 2,
			"req{kind:h,le:0.1,measurement:prom,svc:s}": 7, "req_count{kind:h,le:0.1,measurement:prom,svc:s}": 2,
		},
	}, {
		// algoHistogram without an le among the group's tags keeps the
		// first point's value (DataKit tags it le=""; aggd does not tag).
		name: "histogram without le",
		conf: "default_window = \"10s\"\n[[aggregate_rules]]\nname = \"h\"\ngroup_by = [\"svc\"]\n[aggregate_rules.select]\ncategory = \"metric\"\nmetric_name = [\"req_bucket\"]\n" +
			"[aggregate_rules.algorithms.req]\nmethod = \"merge_histogram\"\nsource_field = \"req_bucket\"\n",
		in:   []in{{1, sample("req_bucket", 3, "measurement:prom", "le:0.1", "svc:s")}, {2, sample("req_bucket", 4, "measurement:prom", "le:0.1", "svc:s")}},
		want: map[string]float64{"req{measurement:prom,svc:s}": 3, "req_count{measurement:prom,svc:s}": 2},
	}, {
		// AlignNextWallTime: a window holds the times after its start up
		// to its end; an algorithm's window of 10 ns or less is
		// default_window.
		name: "windows",
		conf: `
default_window = "10s"
[[aggregate_rules]]
name = "w"
[aggregate_rules.select]
category = "metric"
metric_name = ["x"]
[aggregate_rules.algorithms.x10]
method = "sum"
source_field = "x"
[aggregate_rules.algorithms.x30]
method = "sum"
source_field = "x"
window = 30000000000
[aggregate_rules.algorithms.x_default]
method = "sum"
source_field = "x"
window = 10
`,
		in: []in{{10, sample("x", 1)}, {11, sample("x", 1)}, {20, sample("x", 1)}, {31, sample("x", 1)}},
		want: map[string]float64{
			"x10{}@0": 1, "x10_count{}@0": 1, "x10{}@10": 2, "x10_count{}@10": 2, "x10{}@30": 1, "x10_count{}@30": 1,
			"x_default{}@0": 1, "x_default_count{}@0": 1, "x_default{}@10": 2, "x_default_count{}@10": 2, "x_default{}@30": 1, "x_default_count{}@30": 1,
			"x30{}@0": 3, "x30_count{}@0": 3, "x30{}@30": 1, "x30_count{}@30": 1,
		},
	}, {
		// newCalculators: source_field defaults to the output key; a
		// group_by tag is a string, counted but not summed.
		name: "source fields",
		conf: `
default_window = "10s"
[[aggregate_rules]]
name = "k"
group_by = ["svc"]
[aggregate_rules.select]
category = "metric"
metric_name = ["x"]
[aggregate_rules.algorithms.x]
method = "sum"
[aggregate_rules.algorithms.svcs]
method = "count"
source_field = "svc"
[aggregate_rules.algorithms.svcsum]
method = "sum"
source_field = "svc"
`,
		in:   []in{{1, sample("x", 2, "svc:s")}, {2, sample("x", 3, "svc:s")}},
		want: map[string]float64{"x{svc:s}": 5, "x_count{svc:s}": 2, "svcs{svc:s}": 2, "svcs_count{svc:s}": 2},
	}, {
		// RuleSelector.Setup: without metric_name nothing is selected.
		name: "no metric_name",
		conf: "[[aggregate_rules]]\nname = \"none\"\n[aggregate_rules.select]\ncategory = \"metric\"\n[aggregate_rules.algorithms.x]\nmethod = \"sum\"\n",
		in:   []in{{1, sample("x", 1)}},
		want: map[string]float64{},
	}, {
		// cliutils.WhiteListItem: reg: entries are regular expressions.
		name: "reg: entries",
		conf: "default_window = 10000000000\n[[aggregate_rules]]\nname = \"r\"\ngroup_by = [\"host\", \"zone\"]\n[aggregate_rules.select]\ncategory = \"metric\"\nmeasurements = [\"reg:^m\"]\nmetric_name = [\"reg:^v\"]\n" +
			"[aggregate_rules.algorithms.v_sum]\nmethod = \"sum\"\nsource_field = \"v\"\n",
		in:   []in{{2, sample("v", 2, "measurement:m1", "host:a")}, {3, sample("v", 2, "measurement:m1", "host:a")}, {4, sample("v", 9, "measurement:n1", "host:a")}},
		want: map[string]float64{"v_sum{host:a,measurement:m1}": 4, "v_sum_count{host:a,measurement:m1}": 2},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := engine(t, tt.conf, 3)
			tn := window.NewTenant("t")
			for i, x := range tt.in {
				x.s.Timestamp = t0 + x.at*sec
				e.ObserveSample(i%3, tn, x.s, t0+sec, 0)
			}
			got := map[string]float64{}
			windows := strings.Contains(tt.name, "windows")
			for _, m := range e.Drain(t0+time.Hour.Nanoseconds(), true, func(_ int, f func()) { f() }, nil) {
				tags := slices.Clone(m.Tags)
				sort.Strings(tags)
				k := m.Name + "{" + strings.Join(tags, ",") + "}"
				if windows {
					k += fmt.Sprint("@", (m.Timestamp-t0)/sec)
				}
				got[k] += m.Value
			}
			// Shards merge in another order than DataKit's arrival
			// order: floats may differ in their last bits.
			same := len(got) == len(tt.want)
			for k, w := range tt.want {
				g, ok := got[k]
				same = same && ok && math.Abs(g-w) <= 1e-12*math.Abs(w)
			}
			if !same {
				t.Fatalf("got  %v\nwant %v", got, tt.want)
			}
		})
	}
}

// TestDataKitSpanVectors: DataKit's selector forks a span point per
// metric_name field; integers are numbers (count_distinct sees them as
// floats), strings are counted and not summed. Recorded from DataKit as
// TestDataKitVectors, with duration in microseconds.
func TestDataKitSpanVectors(t *testing.T) {
	e := engine(t, `
default_window = "10s"
[[aggregate_rules]]
name = "t"
group_by = ["service", "zone"]
[aggregate_rules.select]
category = "tracing"
measurements = ["opentelemetry"]
metric_name = ["duration", "resource"]
condition = '{ duration > 500 }'
[aggregate_rules.algorithms.d_sum]
method = "sum"
source_field = "duration"
[aggregate_rules.algorithms.d_cd]
method = "count_distinct"
source_field = "duration"
[aggregate_rules.algorithms.r_count]
method = "count"
source_field = "resource"
[aggregate_rules.algorithms.r_cd]
method = "count_distinct"
source_field = "resource"
[aggregate_rules.algorithms.r_sum]
method = "sum"
source_field = "resource"
`, 1)
	tn := window.NewTenant("t")
	for i, x := range []struct {
		res string
		us  int64
	}{{"/a", 1000}, {"/b", 2000}, {"/a", 1000}, {"/c", 100}} {
		sp := spans.Span{TraceID: [16]byte{byte(i)}, Service: "api", Resource: x.res, Start: t0 + int64(i+1)*sec, Duration: x.us * 1000}
		e.ObserveSpan(tn, &sp, t0+sec, 0)
	}
	want := map[string]float64{
		"t/d_cd{measurement:opentelemetry,service:api}": 2, "t/d_cd_count{measurement:opentelemetry,service:api}": 2,
		"t/d_sum{measurement:opentelemetry,service:api}": 4000, "t/d_sum_count{measurement:opentelemetry,service:api}": 3,
		"t/r_cd{measurement:opentelemetry,service:api}": 2, "t/r_cd_count{measurement:opentelemetry,service:api}": 2,
		"t/r_count{measurement:opentelemetry,service:api}": 3, "t/r_count_count{measurement:opentelemetry,service:api}": 3,
	}
	if got := drain(e); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got  %v\nwant %v", got, want)
	}
}

// TestDataKitLogVectors: logging rules take aggd's events as DataKit's
// log points (measurement: the source type; fields message, status,
// title, priority; tags host and the event's tags). Recorded from DataKit
// (AggregatorConfigure.PickPoints with category "logging", then
// newCalculators and each calculator's Aggr) on the log points these
// events stand for, built with point.DefaultLoggingOptions:
//
//	nginx,host=web-1 log_count=3i,log_count_count=3i
//	nginx,host=web-1 titles=2i,titles_count=2i
//	nginx,host=web-2 log_count=1i,log_count_count=1i
//	nginx,host=web-2 titles=1i,titles_count=1i
//
// msg_sum (a sum of a string) and zone_cd (a tag outside group_by) emit
// nothing in DataKit either. aggd adds measurement:nginx and, as for a
// span field, keeps the status field it groups by as a tag.
func TestDataKitLogVectors(t *testing.T) {
	e := engine(t, `
[[aggregate_rules]]
name = "logs"
group_by = ["host", "status"]
[aggregate_rules.select]
category = "logging"
measurements = ["nginx"]
metric_name = ["message", "title"]
condition = '{ status IN ["error", "warning"] }'
[aggregate_rules.algorithms.log_count]
method = "count"
source_field = "message"
[aggregate_rules.algorithms.titles]
method = "count_distinct"
source_field = "title"
[aggregate_rules.algorithms.msg_sum]
method = "sum"
source_field = "message"
[aggregate_rules.algorithms.zone_cd]
method = "count_distinct"
source_field = "zone"
`, 1)
	tn := window.NewTenant("t")
	for i, ev := range []window.Event{
		{SourceType: "nginx", AlertType: window.AlertError, Title: "upstream down", Text: "502 from a", Host: "web-1", Tags: []string{"zone:z1"}},
		{SourceType: "nginx", AlertType: window.AlertError, Title: "upstream down", Text: "502 from b", Host: "web-1", Tags: []string{"zone:z2"}},
		{SourceType: "nginx", AlertType: window.AlertError, Title: "timeout", Text: "504", Host: "web-1"},
		{SourceType: "nginx", AlertType: window.AlertWarning, Title: "slow", Text: "slow", Host: "web-2", Tags: []string{"zone:z1"}},
		{SourceType: "nginx", AlertType: window.AlertInfo, Title: "no status", Text: "info line", Host: "web-1", Tags: []string{"zone:z1"}},
		{SourceType: "nginx", AlertType: window.AlertInfo, Title: "ok", Text: "200", Host: "web-1", Tags: []string{"zone:z1"}},
		{SourceType: "mysql", AlertType: window.AlertError, Title: "deadlock", Text: "deadlock", Host: "db-1", Tags: []string{"zone:z1"}},
	} {
		ev.Timestamp = t0 + int64(i+1)*sec
		e.ObserveEvent(tn, &ev, t0+sec, 0)
	}
	want := map[string]float64{
		"t/log_count{host:web-1,measurement:nginx,status:error}": 3, "t/log_count_count{host:web-1,measurement:nginx,status:error}": 3,
		"t/titles{host:web-1,measurement:nginx,status:error}": 2, "t/titles_count{host:web-1,measurement:nginx,status:error}": 2,
		"t/log_count{host:web-2,measurement:nginx,status:warning}": 1, "t/log_count_count{host:web-2,measurement:nginx,status:warning}": 1,
		"t/titles{host:web-2,measurement:nginx,status:warning}": 1, "t/titles_count{host:web-2,measurement:nginx,status:warning}": 1,
	}
	if got := drain(e); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got  %v\nwant %v", got, want)
	}
	if m := e.Counters("logs").Matched.Load(); m != 4 {
		t.Fatalf("matched %d events, want 4", m)
	}
}

// TestLogMeasurementAndReplay: an event without a source type is DataKit's
// "default" source; a replayed event is taken only by windows the flush at
// its cutoff did not drain, as samples are.
func TestLogMeasurementAndReplay(t *testing.T) {
	e := engine(t, `
[[aggregate_rules]]
name = "logs"
window = "20s"
[aggregate_rules.select]
category = "logging"
measurements = ["default"]
metric_name = ["message"]
[aggregate_rules.algorithms.n]
method = "count"
source_field = "message"
`, 1)
	tn := window.NewTenant("t")
	cutoff := t0 + 22*sec // (t0, t0+20] was drained at t0+22
	for _, ts := range []int64{1, 15, 25} {
		ev := window.Event{Title: "x", Text: "y", Timestamp: t0 + ts*sec}
		e.ObserveEvent(tn, &ev, t0+30*sec, cutoff)
	}
	other := window.Event{Title: "x", Text: "y", SourceType: "nginx", Timestamp: t0 + 25*sec}
	e.ObserveEvent(tn, &other, t0+30*sec, 0)
	got := drain(e)
	if got["t/n{measurement:default}"] != 1 || got["t/n_count{measurement:default}"] != 1 || len(got) != 2 {
		t.Fatalf("got %v, want one event of the default source in the open window", got)
	}
}

func TestObserveEventDoesNotAllocate(t *testing.T) {
	e := engine(t, `
[[aggregate_rules]]
name = "logs"
group_by = ["host", "status"]
[aggregate_rules.select]
category = "logging"
metric_name = ["message"]
condition = '{ status = "error" }'
[aggregate_rules.algorithms.n]
method = "count"
source_field = "message"
`, 1)
	tn := window.NewTenant("acme")
	ev := window.Event{Title: "down", Text: "502", Host: "web-1", AlertType: window.AlertError, Timestamp: t0 + sec}
	e.ObserveEvent(tn, &ev, t0+sec, 0) // opens the group
	if n := testing.AllocsPerRun(100, func() { e.ObserveEvent(tn, &ev, t0+sec, 0) }); n != 0 {
		t.Fatalf("%v allocations per observed event", n)
	}
}

// TestDataKitLargeInputs holds what DataKit's algoQuantiles (past its
// 8192-value reservoir, replacing slots by HashCombine of the count) and
// algoCountDistinct (past 4096 values, a 2^18-bit linear counting sketch)
// give for 0, 1, …, n−1 added in order, recorded by running them.
func TestDataKitLargeInputs(t *testing.T) {
	var q acc
	for i := range 20000 {
		q.addQuantile(float64(i))
	}
	if q.qn != 20000 || len(q.all) != quantileSampleLimit {
		t.Fatalf("count %d, kept %d", q.qn, len(q.all))
	}
	slices.Sort(q.all)
	for _, v := range []struct{ p, want float64 }{{0.5, 9020.5}, {0.9, 18043.9}, {0.99, 19813.09}} {
		if got := percentile(q.all, v.p); math.Abs(got-v.want) > 1e-9 {
			t.Errorf("P%v = %v, DataKit %v", v.p*100, got, v.want)
		}
	}
	var d acc
	var b []byte
	for i := range 50000 {
		b = distinctText(b[:0], filter.Num(float64(i)))
		d.addHash(fnv1a(b))
	}
	if n := d.distinctCount(); n != 46613 {
		t.Fatalf("estimate %d, DataKit 46613", n)
	}
}

// xSum20s sums x over windows of 20 s.
const xSum20s = `
[[aggregate_rules]]
name = "r"
window = "20s"
[aggregate_rules.select]
category = "metric"
metric_name = ["x"]
[aggregate_rules.algorithms."x_sum"]
method = "sum"
source_field = "x"
`

func TestWindowsAndDropOriginals(t *testing.T) {
	e := engine(t, "default_window = \"10s\"\ndelete_rules_point = true\n"+xSum20s, 1)
	if !e.DropOriginals() {
		t.Fatal("delete_rules_point did not drop originals")
	}
	tn := window.NewTenant("t")
	for _, ts := range []int64{1, 15, 25} {
		s := sample("x", 1)
		s.Timestamp = t0 + ts*sec
		e.ObserveSample(0, tn, s, t0+sec, 0)
	}
	// Windows of 20 s, due at end + grace (2 s): (t0, t0+20] at t0+22.
	out := e.Drain(t0+22*sec, false, func(_ int, f func()) { f() }, nil)
	if len(out) != 2 || out[0].Value != 2 || out[0].Timestamp != t0 || out[0].Interval != 20*sec || out[1].Name != "x_sum_count" {
		t.Fatalf("first window: %+v", out)
	}
	if matched, r := e.ObserveSample(0, tn, sample("x", 1), t0+int64(2*time.Hour), 0); !matched || r != window.ReasonTooOld {
		t.Fatalf("an old sample: matched %v, %v", matched, r)
	}
}

func TestParseErrorsNameTheRuleAndField(t *testing.T) {
	base := "[[aggregate_rules]]\nname = \"r1\"\n[aggregate_rules.select]\ncategory = \"metric\"\n"
	for _, tc := range []struct{ text, want string }{
		// validateAggregationAlgo's refusals.
		{base + "[aggregate_rules.algorithms.\"o\"]\nmethod = \"expo_histogram\"\nsource_field = \"x\"\n", `"r1": algorithms."o".method "expo_histogram"`},
		{base + "[aggregate_rules.algorithms.\"q\"]\nmethod = \"quantiles\"\n", `quantiles requires quantile_opts.percentiles`},
		{base + "[aggregate_rules.algorithms.\"q\"]\nmethod = \"quantiles\"\n[aggregate_rules.algorithms.\"q\".quantile_opts]\npercentiles = [1.5]\n", `1.5 is not in [0, 1]`},
		{base + "[aggregate_rules.algorithms.\"o\"]\nsource_field = \"x\"\n", `algorithms."o".method is empty`},
		{base + "[[aggregate_rules.derived_metrics]]\nname = \"d\"\n", `aggregate_rules[0] "r1": unsupported key "derived_metrics"`},
		{base + "[aggregate_rules.algorithms.\"o\"]\nmethod = \"sum\"\nsource_field = \"x\"\nbogus = 1\n", `aggregate_rules[0] "r1": unsupported key "algorithms.o.bogus"`},
		{base + "[aggregate_rules.algorithms.\"o\"]\nmethod = \"sum\"\nbuckets = [1]\n", `unsupported key "algorithms.o.buckets"`},
		{"[[aggregate_rules]]\nname = \"ok\"\n[[aggregate_rules]]\nname = \"r3\"\nwindw = \"1m\"\n", `aggregate_rules[1] "r3": unsupported key "windw"`},
		{base, `"r1": no algorithms`},
		{"[[aggregate_rules]]\nname = \"r2\"\n[aggregate_rules.select]\ncategory = \"logs\"\n", `"r2": select.category "logs" is not a DataKit category`},
		{base + "condition = \"{ a = }\"\n[aggregate_rules.algorithms.\"o\"]\nmethod = \"sum\"\nsource_field = \"x\"\n", `"r1": select.condition`},
		{base + "metric_name = [\"reg:(\"]\n[aggregate_rules.algorithms.\"o\"]\nmethod = \"sum\"\n", `select.metric_name "reg:("`},
		{base + "[aggregate_rules.algorithms.\"o\"]\nmethod = \"sum\"\nwindow = \"soon\"\n", `algorithms."o".window`},
		{"action = \"maybe\"\n", "action"},
		{"default_window = \"soon\"\n", "default_window"},
		{"default_window = true\n", "default_window"},
	} {
		_, err := Parse(tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error containing %s", err, tc.want)
		}
	}
	// What DataKit accepts loads: a method written "SUM ", an integer
	// default_window, other categories, expo_opts.
	set, err := Parse("default_window = 20000000000\n[[aggregate_rules]]\nname = \"l\"\n[aggregate_rules.select]\ncategory = \"logging\"\nmetric_name = [\"message\"]\n" +
		"[aggregate_rules.algorithms.n]\nmethod = \"SUM \"\n[aggregate_rules.algorithms.n.expo_opts]\nmax_scale = 20\n")
	if err != nil || set.DefaultWindow != 20*time.Second || set.Rules[0].Algorithms[0].Method != Sum || set.Rules[0].Algorithms[0].SourceField != "n" {
		t.Fatalf("%+v %v", set, err)
	}
}

func TestObserveDoesNotAllocate(t *testing.T) {
	e := engine(t, datakitExamples, 1)
	tn := window.NewTenant("acme")
	s := sample("jvm.classes.loaded", 1, "measurement:otel_service", "service_name:orders")
	miss := sample("unrelated.metric", 1, "service_name:orders")
	e.ObserveSample(0, tn, s, t0+sec, 0) // opens the group
	if n := testing.AllocsPerRun(100, func() { e.ObserveSample(0, tn, s, t0+sec, 0); e.ObserveSample(0, tn, miss, t0+sec, 0) }); n != 0 {
		t.Fatalf("%v allocations per observed sample", n)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(datakitExamples)
	f.Add(every)
	f.Add("[[aggregate_rules]]\nname = \"x\"\n[aggregate_rules.select]\ncategory = \"metric\"\nmetric_name = [\"reg:.\"]\ncondition = \"{ a IN [1] }\"\n[aggregate_rules.algorithms.\"q\"]\nmethod = \"quantiles\"\nsource_field = \"a\"\n[aggregate_rules.algorithms.\"q\".quantile_opts]\npercentiles = [0.5]\n")
	f.Fuzz(func(t *testing.T, text string) {
		set, err := Parse(text)
		if err != nil {
			return
		}
		e := NewEngine(set, 1, window.DefaultConfig())
		tn := window.NewTenant("t")
		for _, r := range set.Rules {
			for _, n := range append(r.MetricNames, "m") {
				e.ObserveSample(0, tn, sample(n, 1, "a:1"), t0+sec, 0)
			}
		}
		e.Drain(t0+time.Hour.Nanoseconds(), true, func(_ int, f func()) { f() }, nil)
	})
}

// TestReplayCutoffRestoresDrainedWindows: while a write-ahead log is
// replayed, samples of rule windows a flush already drained go back into
// them as flushed, not sent again; the windows still open take theirs. A
// late sample after the replay sends the drained window's corrected
// total. Due covers every window a sample can fall in.
func TestReplayCutoffRestoresDrainedWindows(t *testing.T) {
	e := engine(t, xSum20s, 1)
	tn := window.NewTenant("t")
	cutoff := t0 + 22*sec // (t0, t0+20] was drained at t0+22
	e.Resume(cutoff)
	for _, ts := range []int64{1, 15, 25} {
		s := sample("x", 1)
		s.Timestamp = t0 + ts*sec
		if matched, _ := e.ObserveSample(0, tn, s, t0+30*sec, cutoff); !matched {
			t.Fatalf("sample at +%ds not matched", ts)
		}
	}
	if out := e.Drain(t0+32*sec, false, func(_ int, f func()) { f() }, nil); len(out) != 0 {
		t.Fatalf("the first drain after the replay sent %v, want nothing: the drained window was flushed, the open one is not due", out)
	}
	s := sample("x", 1)
	s.Timestamp = t0 + 5*sec
	e.ObserveSample(0, tn, s, t0+33*sec, 0) // after replay: a late sample counts
	got := map[string]float64{}
	for _, m := range e.Drain(t0+42*sec, false, func(_ int, f func()) { f() }, nil) {
		got[fmt.Sprintf("%s@+%ds late=%v", m.Name, (m.Timestamp-t0)/sec, m.Late)] = m.Value
	}
	want := map[string]float64{"x_sum@+0s late=true": 3, "x_sum_count@+0s late=true": 3, "x_sum@+20s late=false": 1, "x_sum_count@+20s late=false": 1}
	if !maps.Equal(got, want) {
		t.Fatalf("got %v, want %v: the drained window's correction over all its samples, and the open window", got, want)
	}
	if d := e.Due(t0 + 25*sec); d < t0+40*sec+2*sec {
		t.Fatalf("Due(+25s) = +%ds, before the window's end plus grace", (d-t0)/sec)
	}
}

func TestObserveSpanDoesNotAllocate(t *testing.T) {
	e := engine(t, datakitExamples, 1)
	tn := window.NewTenant("acme")
	root := spans.Span{TraceID: [16]byte{1}, SpanID: [8]byte{1}, Service: "api", Resource: "/pay", Start: t0 + sec, Duration: sec}
	e.ObserveSpan(tn, &root, t0+sec, 0) // opens the group
	if n := testing.AllocsPerRun(100, func() { e.ObserveSpan(tn, &root, t0+sec, 0) }); n != 0 {
		t.Fatalf("%v allocations per observed span", n)
	}
}
