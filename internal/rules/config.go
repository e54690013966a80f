// Package rules implements DataKit's aggregation rules (aggr.toml): each
// rule selects samples or spans, groups them by tags or fields, and derives
// series per window with its algorithms.
package rules

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/aggd/aggd/internal/filter"
)

// Method is an aggregation algorithm.
type Method uint8

// The methods DataKit documents.
const (
	Sum Method = iota
	Avg
	Count
	Min
	Max
	Histogram
	Stdev
	Quantiles
	CountDistinct
	First
	Last
)

var methodNames = map[string]Method{
	"sum": Sum, "avg": Avg, "count": Count, "min": Min, "max": Max, "histogram": Histogram,
	"stdev": Stdev, "quantiles": Quantiles, "count_distinct": CountDistinct, "first": First, "last": Last,
}

// DefaultBuckets are the histogram upper bounds when a rule sets none.
var DefaultBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// DefaultQuantiles are the quantiles when a rule sets none.
var DefaultQuantiles = []float64{0.5, 0.9, 0.99}

// Algorithm is one compiled [aggregate_rules.algorithms."<output>"].
type Algorithm struct {
	// Output names the derived series.
	Output      string
	Method      Method
	SourceField string
	// AddTags are "key:value" tags added to the output, sorted.
	AddTags   []string
	Buckets   []float64
	Quantiles []float64
}

// Rule is one compiled [[aggregate_rules]].
type Rule struct {
	Name         string
	GroupBy      []string
	Category     string // metric or tracing
	Measurements []string
	MetricNames  []string
	Cond         *filter.Condition
	Window       time.Duration
	Algorithms   []Algorithm

	counters *Counters // set by the engine; kept across reloads by name
}

// Set is a compiled aggr.toml.
type Set struct {
	DefaultWindow time.Duration
	// DropOriginals is action = "drop" or delete_rules_point = true: a
	// sample a rule matches is not aggregated as itself.
	DropOriginals bool
	Rules         []*Rule

	byName  map[string][]*Rule // metric rules by metric name
	anyName []*Rule            // metric rules with no metric_name list
	tracing []*Rule
	// maxWindow is the widest rule window, in nanoseconds.
	maxWindow int64
}

type rawAlgorithm struct {
	Method      string            `toml:"method"`
	SourceField string            `toml:"source_field"`
	AddTags     map[string]string `toml:"add_tags"`
	Buckets     []float64         `toml:"buckets"`
	Quantiles   []float64         `toml:"quantiles"`
}

type rawRule struct {
	Name    string   `toml:"name"`
	GroupBy []string `toml:"group_by"`
	Window  string   `toml:"window"`
	Select  struct {
		Category     string   `toml:"category"`
		Measurements []string `toml:"measurements"`
		MetricName   []string `toml:"metric_name"`
		Condition    string   `toml:"condition"`
	} `toml:"select"`
	Algorithms map[string]rawAlgorithm `toml:"algorithms"`
}

type rawSet struct {
	DefaultWindow    string    `toml:"default_window"`
	Action           string    `toml:"action"`
	DeleteRulesPoint bool      `toml:"delete_rules_point"`
	Rules            []rawRule `toml:"aggregate_rules"`
}

// Load reads and compiles an aggr.toml.
func Load(path string) (*Set, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := Parse(string(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Parse compiles the text of an aggr.toml. interval is the flush period:
// windows are whole multiples of it.
func Parse(text string) (*Set, error) {
	var raw rawSet
	md, err := toml.Decode(text, &raw)
	if err != nil {
		return nil, err
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, unknownKey(text, und[0].String())
	}
	s := &Set{DefaultWindow: 10 * time.Second, byName: map[string][]*Rule{}}
	if raw.DefaultWindow != "" {
		if s.DefaultWindow, err = time.ParseDuration(raw.DefaultWindow); err != nil || s.DefaultWindow < time.Second {
			return nil, fmt.Errorf("default_window %q is not a duration of at least 1s", raw.DefaultWindow)
		}
	}
	switch raw.Action {
	case "", "passthrough":
	case "drop":
		s.DropOriginals = true
	default:
		return nil, fmt.Errorf("action %q is not \"\", passthrough or drop", raw.Action)
	}
	s.DropOriginals = s.DropOriginals || raw.DeleteRulesPoint
	names := map[string]bool{}
	for i, rr := range raw.Rules {
		r, err := compileRule(rr, s.DefaultWindow)
		if err != nil {
			return nil, fmt.Errorf("aggregate_rules[%d] %q: %w", i, rr.Name, err)
		}
		if names[r.Name] {
			return nil, fmt.Errorf("aggregate_rules[%d]: rule name %q is used twice", i, r.Name)
		}
		names[r.Name] = true
		s.Rules = append(s.Rules, r)
		s.maxWindow = max(s.maxWindow, int64(r.Window))
		switch {
		case r.Category == "tracing":
			s.tracing = append(s.tracing, r)
		case len(r.MetricNames) == 0:
			s.anyName = append(s.anyName, r)
		default:
			for _, n := range r.MetricNames {
				s.byName[n] = append(s.byName[n], r)
			}
		}
	}
	return s, nil
}

// unknownKey explains an unsupported key, naming the rule it is in.
func unknownKey(text, key string) error {
	parts := strings.Split(key, ".")
	if len(parts) < 2 || parts[0] != "aggregate_rules" {
		return fmt.Errorf("unsupported key %q (aggd supports default_window, action, delete_rules_point and aggregate_rules)", key)
	}
	// Find the first rule holding the key, by decoding the rules loosely.
	var loose struct {
		Rules []map[string]any `toml:"aggregate_rules"`
	}
	toml.Decode(text, &loose)
	rule := "?"
	for i, r := range loose.Rules {
		if has(r, parts[1:]) {
			name, _ := r["name"].(string)
			rule = fmt.Sprintf("[%d] %q", i, name)
			break
		}
	}
	return fmt.Errorf("aggregate_rules%s: unsupported key %q (a rule takes name, group_by, window, select.{category, measurements, metric_name, condition} and algorithms.<output>.{method, source_field, add_tags, buckets, quantiles})",
		rule, strings.Join(parts[1:], "."))
}

// has reports whether the nested map m holds the key path.
func has(m map[string]any, path []string) bool {
	v, ok := m[path[0]]
	if !ok {
		return false
	}
	if len(path) == 1 {
		return true
	}
	switch x := v.(type) {
	case map[string]any:
		return has(x, path[1:])
	case []map[string]any:
		for _, e := range x {
			if has(e, path[1:]) {
				return true
			}
		}
	}
	return false
}

func compileRule(rr rawRule, defWindow time.Duration) (*Rule, error) {
	if rr.Name == "" {
		return nil, fmt.Errorf("name is empty")
	}
	r := &Rule{Name: rr.Name, GroupBy: rr.GroupBy, Category: rr.Select.Category, Measurements: rr.Select.Measurements,
		MetricNames: rr.Select.MetricName, Window: defWindow}
	switch r.Category {
	case "metric", "tracing":
	case "":
		return nil, fmt.Errorf("select.category is empty")
	default:
		return nil, fmt.Errorf("select.category %q: aggd applies rules to metric and tracing", r.Category)
	}
	if rr.Window != "" {
		w, err := time.ParseDuration(rr.Window)
		if err != nil || w < time.Second {
			return nil, fmt.Errorf("window %q is not a duration of at least 1s", rr.Window)
		}
		r.Window = w
	}
	if rr.Select.Condition != "" {
		c, err := filter.Compile(rr.Select.Condition)
		if err != nil {
			return nil, fmt.Errorf("select.condition: %w", err)
		}
		r.Cond = c
	}
	if len(rr.Algorithms) == 0 {
		return nil, fmt.Errorf("no algorithms")
	}
	outs := make([]string, 0, len(rr.Algorithms))
	for o := range rr.Algorithms {
		outs = append(outs, o)
	}
	sort.Strings(outs)
	for _, out := range outs {
		ra := rr.Algorithms[out]
		m, ok := methodNames[ra.Method]
		if !ok {
			return nil, fmt.Errorf("algorithms.%q.method %q is not supported (sum, avg, count, min, max, histogram, stdev, quantiles, count_distinct, first, last)", out, ra.Method)
		}
		if ra.SourceField == "" {
			return nil, fmt.Errorf("algorithms.%q.source_field is empty", out)
		}
		a := Algorithm{Output: out, Method: m, SourceField: ra.SourceField, Buckets: ra.Buckets, Quantiles: ra.Quantiles}
		for k, v := range ra.AddTags {
			a.AddTags = append(a.AddTags, k+":"+v)
		}
		slices.Sort(a.AddTags)
		switch {
		case m == Histogram && a.Buckets == nil:
			a.Buckets = DefaultBuckets
		case m == Quantiles && a.Quantiles == nil:
			a.Quantiles = DefaultQuantiles
		case m != Histogram && ra.Buckets != nil, m != Quantiles && ra.Quantiles != nil:
			return nil, fmt.Errorf("algorithms.%q: buckets go with histogram, quantiles with quantiles", out)
		}
		if !slices.IsSorted(a.Buckets) {
			return nil, fmt.Errorf("algorithms.%q.buckets must ascend", out)
		}
		for _, q := range a.Quantiles {
			if !(q >= 0 && q <= 1) {
				return nil, fmt.Errorf("algorithms.%q.quantiles: %v is not in [0, 1]", out, q)
			}
		}
		r.Algorithms = append(r.Algorithms, a)
	}
	return r, nil
}
