package rules

import (
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

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
		if _, r := e.ObserveSample(i%2, tn, s, t0+sec); r != window.Accepted {
			t.Fatal(r)
		}
	}
	root := spans.Span{TraceID: [16]byte{1}, SpanID: [8]byte{1}, Service: "api", Resource: "/pay", Start: t0, Duration: sec}
	child := root
	child.SpanID, child.ParentID, child.HasParent = [8]byte{2}, [8]byte{1}, true
	other := root
	other.TraceID, other.Resource = [16]byte{2}, "/cart"
	for _, sp := range []spans.Span{root, child, other, root} {
		e.ObserveSpan(tn, &sp, t0+sec)
	}
	want := map[string]float64{
		"acme/jvm_class_loaded_sum{metric:jvm_class_loaded_sum,service_name:billing}": 70,
		"acme/jvm_class_loaded_sum{metric:jvm_class_loaded_sum,service_name:orders}":  150,
		"acme/root_span.count{resource:/cart,service:api}":                            1,
		"acme/root_span.count{resource:/pay,service:api}":                             2,
	}
	if got := drain(e); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got  %v\nwant %v", got, want)
	}
	if c := e.Counters("otel_jvm_class_loaded_sum"); c.Matched.Load() != 3 || c.Outputs.Load() != 2 {
		t.Fatalf("counters matched %d outputs %d", c.Matched.Load(), c.Outputs.Load())
	}
}

func TestEveryAlgorithm(t *testing.T) {
	text := `
[[aggregate_rules]]
name = "all"
group_by = ["host"]
[aggregate_rules.select]
category = "metric"
metric_name = ["lat"]
condition = '{ env = "prod" }'
` + func() string {
		var b strings.Builder
		for _, m := range []string{"sum", "avg", "count", "min", "max", "stdev", "count_distinct", "first", "last"} {
			fmt.Fprintf(&b, "[aggregate_rules.algorithms.%q]\nmethod = %q\nsource_field = \"lat\"\n", "lat_"+m, m)
		}
		b.WriteString("[aggregate_rules.algorithms.\"lat_q\"]\nmethod = \"quantiles\"\nsource_field = \"lat\"\nquantiles = [0.5, 1]\n")
		b.WriteString("[aggregate_rules.algorithms.\"lat_h\"]\nmethod = \"histogram\"\nsource_field = \"lat\"\nbuckets = [2, 5]\n")
		return b.String()
	}()
	e := engine(t, text, 3)
	tn := window.NewTenant("t")
	vals := []float64{4, 1, 4, 7, 9} // in arrival order, timestamps rising
	for i, v := range vals {
		s := sample("lat", v, "env:prod", "host:a")
		s.Timestamp = t0 + int64(i+1)*sec
		e.ObserveSample(i%3, tn, s, t0+sec)
	}
	e.ObserveSample(0, tn, sample("lat", 100, "env:dev", "host:a"), t0+sec) // condition false
	single := sample("lat", 3, "env:prod", "host:b")
	e.ObserveSample(1, tn, single, t0+sec)
	got := drain(e)
	mean := 5.0
	ss := 0.0
	for _, v := range vals {
		ss += (v - mean) * (v - mean)
	}
	want := map[string]float64{
		"t/lat_sum{host:a}": 25, "t/lat_avg{host:a}": 5, "t/lat_count{host:a}": 5, "t/lat_min{host:a}": 1, "t/lat_max{host:a}": 9,
		"t/lat_stdev{host:a}": math.Sqrt(ss / 5), "t/lat_count_distinct{host:a}": 4, "t/lat_first{host:a}": 4, "t/lat_last{host:a}": 9,
		"t/lat_q{host:a,quantile:0.5}": 4, "t/lat_q{host:a,quantile:1}": 9,
		"t/lat_h{host:a,le:2}": 1, "t/lat_h{host:a,le:5}": 3, "t/lat_h{host:a,le:+Inf}": 5,
		// A group of one value.
		"t/lat_sum{host:b}": 3, "t/lat_avg{host:b}": 3, "t/lat_count{host:b}": 1, "t/lat_min{host:b}": 3, "t/lat_max{host:b}": 3,
		"t/lat_stdev{host:b}": 0, "t/lat_count_distinct{host:b}": 1, "t/lat_first{host:b}": 3, "t/lat_last{host:b}": 3,
		"t/lat_q{host:b,quantile:0.5}": 3, "t/lat_q{host:b,quantile:1}": 3,
		"t/lat_h{host:b,le:2}": 0, "t/lat_h{host:b,le:5}": 1, "t/lat_h{host:b,le:+Inf}": 1,
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || math.Abs(g-w) > 1e-9+0.01*math.Abs(w) {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d series, want %d: %v", len(got), len(want), got)
	}
	// An empty window emits nothing.
	if out := e.Drain(t0+2*time.Hour.Nanoseconds(), true, func(_ int, f func()) { f() }, nil); len(out) != 0 {
		t.Fatalf("an empty window emitted %v", out)
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
		e.ObserveSample(0, tn, s, t0+sec)
	}
	// Windows of 20 s, due at end + grace (2 s): [t0, t0+20) at t0+22.
	out := e.Drain(t0+22*sec, false, func(_ int, f func()) { f() }, nil)
	if len(out) != 1 || out[0].Value != 2 || out[0].Timestamp != t0 || out[0].Interval != 20*sec {
		t.Fatalf("first window: %+v", out)
	}
	if matched, r := e.ObserveSample(0, tn, sample("x", 1), t0+int64(2*time.Hour)); !matched || r != window.ReasonTooOld {
		t.Fatalf("an old sample: matched %v, %v", matched, r)
	}
}

func TestParseErrorsNameTheRuleAndField(t *testing.T) {
	base := "[[aggregate_rules]]\nname = \"r1\"\n[aggregate_rules.select]\ncategory = \"metric\"\n"
	for _, tc := range []struct{ text, want string }{
		{base + "[aggregate_rules.algorithms.\"o\"]\nmethod = \"expo_histogram\"\nsource_field = \"x\"\n", `"r1": algorithms."o".method "expo_histogram"`},
		{base + "[[aggregate_rules.derived_metrics]]\nname = \"d\"\n", `aggregate_rules[0] "r1": unsupported key "derived_metrics"`},
		{base + "[aggregate_rules.algorithms.\"o\"]\nmethod = \"sum\"\nsource_field = \"x\"\nbogus = 1\n", `aggregate_rules[0] "r1": unsupported key "algorithms.o.bogus"`},
		{"[[aggregate_rules]]\nname = \"ok\"\n[[aggregate_rules]]\nname = \"r3\"\nwindw = \"1m\"\n", `aggregate_rules[1] "r3": unsupported key "windw"`},
		{base + "[aggregate_rules.algorithms.\"o\"]\nmethod = \"sum\"\n", `"r1": algorithms."o".source_field is empty`},
		{base, `"r1": no algorithms`},
		{"[[aggregate_rules]]\nname = \"r2\"\n[aggregate_rules.select]\ncategory = \"logging\"\n", `"r2": select.category "logging"`},
		{base + "condition = \"{ a = }\"\n[aggregate_rules.algorithms.\"o\"]\nmethod = \"sum\"\nsource_field = \"x\"\n", `"r1": select.condition`},
		{"action = \"maybe\"\n", "action"},
		{"default_window = \"soon\"\n", "default_window"},
		{base + "[aggregate_rules.algorithms.\"o\"]\nmethod = \"sum\"\nsource_field = \"x\"\nbuckets = [1]\n", "buckets go with histogram"},
	} {
		_, err := Parse(tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error containing %s", err, tc.want)
		}
	}
}

func TestObserveDoesNotAllocate(t *testing.T) {
	e := engine(t, datakitExamples, 1)
	tn := window.NewTenant("acme")
	s := sample("jvm.classes.loaded", 1, "measurement:otel_service", "service_name:orders")
	miss := sample("unrelated.metric", 1, "service_name:orders")
	e.ObserveSample(0, tn, s, t0+sec) // opens the group
	if n := testing.AllocsPerRun(100, func() { e.ObserveSample(0, tn, s, t0+sec); e.ObserveSample(0, tn, miss, t0+sec) }); n != 0 {
		t.Fatalf("%v allocations per observed sample", n)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(datakitExamples)
	f.Add("[[aggregate_rules]]\nname = \"x\"\n[aggregate_rules.select]\ncategory = \"metric\"\ncondition = \"{ a IN [1] }\"\n[aggregate_rules.algorithms.\"q\"]\nmethod = \"quantiles\"\nsource_field = \"a\"\nquantiles = [0.5]\n")
	f.Fuzz(func(t *testing.T, text string) {
		set, err := Parse(text)
		if err != nil {
			return
		}
		e := NewEngine(set, 1, window.DefaultConfig())
		tn := window.NewTenant("t")
		for _, r := range set.Rules {
			for _, n := range append(r.MetricNames, "m") {
				e.ObserveSample(0, tn, sample(n, 1, "a:1"), t0+sec)
			}
		}
		e.Drain(t0+time.Hour.Nanoseconds(), true, func(_ int, f func()) { f() }, nil)
	})
}

// TestReplayCutoffSkipsDrainedWindows: while a write-ahead log is
// replayed, samples of rule windows a flush already drained are matched
// but not added; the windows still open take theirs. Due covers every
// window a sample can fall in.
func TestReplayCutoffSkipsDrainedWindows(t *testing.T) {
	e := engine(t, xSum20s, 1)
	tn := window.NewTenant("t")
	e.SetReplayCutoff(t0 + 22*sec) // [t0, t0+20) was drained at t0+22
	for _, ts := range []int64{1, 15, 25} {
		s := sample("x", 1)
		s.Timestamp = t0 + ts*sec
		if matched, _ := e.ObserveSample(0, tn, s, t0+30*sec); !matched {
			t.Fatalf("sample at +%ds not matched", ts)
		}
	}
	e.SetReplayCutoff(0)
	s := sample("x", 1)
	s.Timestamp = t0 + 5*sec
	e.ObserveSample(0, tn, s, t0+30*sec) // after replay: a late sample counts
	got := drain(e)
	if got["t/x_sum{}"] != 2 || len(got) != 1 {
		t.Fatalf("got %v, want the open window's sample and the late one", got)
	}
	if d := e.Due(t0 + 25*sec); d < t0+40*sec+2*sec {
		t.Fatalf("Due(+25s) = +%ds, before the window's end plus grace", (d-t0)/sec)
	}
}
