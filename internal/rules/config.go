// Package rules implements DataKit's aggregation rules (aggr.toml): each
// rule selects samples or spans, groups them by tags or fields, and derives
// series per window with its algorithms.
package rules

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/aggd/aggd/internal/filter"
)

// Method is an aggregation algorithm.
type Method uint8

// The methods DataKit implements.
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

// methodNames are DataKit's method names (NormalizeAlgoMethod), read after
// trimming and lower-casing as DataKit does.
var methodNames = map[string]Method{
	"sum": Sum, "avg": Avg, "count": Count, "min": Min, "max": Max, "histogram": Histogram, "merge_histogram": Histogram,
	"stdev": Stdev, "quantiles": Quantiles, "count_distinct": CountDistinct, "first": First, "last": Last,
}

// Algorithm is one compiled [aggregate_rules.algorithms."<output>"].
type Algorithm struct {
	// Output names the derived series and their <Output>_… companions.
	Output string
	Method Method
	// SourceField is the field read, the output's key when the file names
	// none (as in DataKit).
	SourceField string
	// AddTags are "key:value" tags added to the output, sorted.
	AddTags []string
	// Window is the algorithm's window: its own window, else the rule's,
	// else default_window.
	Window time.Duration
	// Percentiles are quantile_opts.percentiles, in the file's order.
	Percentiles []float64
	// pNames are the quantile outputs, <Output>_P<percent>.
	pNames []string
	// countName is <Output>_count.
	countName string
}

// pattern is an entry of measurements or metric_name: a name, or a
// regular expression after "reg:" (DataKit's WhiteListItem).
type pattern struct {
	s  string
	re *regexp.Regexp
}

func (p pattern) match(s string) bool {
	if p.re != nil {
		return p.re.MatchString(s)
	}
	return p.s == s
}

func matchAny(ps []pattern, s string) bool {
	for _, p := range ps {
		if p.match(s) {
			return true
		}
	}
	return false
}

// Rule is one compiled [[aggregate_rules]].
type Rule struct {
	Name string
	// GroupBy is sorted, as DataKit sorts it.
	GroupBy      []string
	Category     string // metric, tracing or logging select; others select nothing
	Measurements []string
	MetricNames  []string
	Cond         *filter.Condition
	Algorithms   []Algorithm

	measurements, metricNames []pattern
	counters                  *Counters // set by the engine; kept across reloads by name
}

// Set is a compiled aggr.toml.
type Set struct {
	DefaultWindow time.Duration
	// DropOriginals is action = "drop" or delete_rules_point = true: a
	// sample a rule matches is not aggregated as itself.
	DropOriginals bool
	Rules         []*Rule

	byName  map[string][]*Rule // metric rules by exact metric name
	byRegex []*Rule            // metric rules with a reg: metric name
	// byHist holds metric rules by the name of the histogram whose fields
	// (histFields) their exact metric names select.
	byHist  map[string][]*Rule
	tracing []*Rule
	logging []*Rule
	// maxWindow is the widest algorithm window, in nanoseconds.
	maxWindow int64
}

type rawAlgorithm struct {
	Method        string            `toml:"method"`
	SourceField   string            `toml:"source_field"`
	Window        any               `toml:"window"`
	AddTags       map[string]string `toml:"add_tags"`
	HistogramOpts *struct {
		Buckets []float64 `toml:"buckets"`
	} `toml:"histogram_opts"`
	QuantileOpts *struct {
		Percentiles []float64 `toml:"percentiles"`
	} `toml:"quantile_opts"`
	// ExpoOpts is read and unused, as in DataKit.
	ExpoOpts *struct {
		MaxScale     int32 `toml:"max_scale"`
		MaxBuckets   int32 `toml:"max_buckets"`
		RecordMinMax bool  `toml:"record_min_max"`
	} `toml:"expo_opts"`
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
	DefaultWindow    any       `toml:"default_window"`
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
	s := &Set{DefaultWindow: 10 * time.Second, byName: map[string][]*Rule{}, byHist: map[string][]*Rule{}}
	if raw.DefaultWindow != nil {
		d, err := duration(raw.DefaultWindow)
		if err != nil || d < time.Second {
			return nil, fmt.Errorf("default_window %v is not a duration (a string, or integer nanoseconds) of at least 1s", raw.DefaultWindow)
		}
		s.DefaultWindow = d
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
		for _, a := range r.Algorithms {
			s.maxWindow = max(s.maxWindow, int64(a.Window))
		}
		switch r.Category {
		case "tracing":
			s.tracing = append(s.tracing, r)
			continue
		case "logging":
			s.logging = append(s.logging, r)
			continue
		case "metric":
		default:
			continue
		}
		// A rule without metric_name selects nothing, as in DataKit.
		regex := false
		for _, p := range r.metricNames {
			if p.re != nil {
				regex = true
			} else if !slices.Contains(s.byName[p.s], r) {
				s.byName[p.s] = append(s.byName[p.s], r)
			}
			for _, f := range histFields {
				if base, ok := strings.CutSuffix(p.s, f); ok && p.re == nil && base != "" && !slices.Contains(s.byHist[base], r) {
					s.byHist[base] = append(s.byHist[base], r)
				}
			}
		}
		if regex {
			s.byRegex = append(s.byRegex, r)
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
	return fmt.Errorf("aggregate_rules%s: unsupported key %q (a rule takes name, group_by, window, select.{category, measurements, metric_name, condition} and algorithms.<output>.{method, source_field, window, add_tags, histogram_opts.buckets, quantile_opts.percentiles, expo_opts})",
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

// duration reads a window as DataKit reads default_window: a duration
// string, or an integer of nanoseconds.
func duration(v any) (time.Duration, error) {
	switch x := v.(type) {
	case string:
		return time.ParseDuration(x)
	case int64:
		return time.Duration(x), nil
	case float64:
		return time.Duration(int64(x)), nil
	}
	return 0, fmt.Errorf("%v is neither a duration string nor integer nanoseconds", v)
}

func compilePatterns(list []string, key string) ([]pattern, error) {
	var out []pattern
	for _, s := range list {
		s = strings.TrimSpace(s)
		p := pattern{s: s}
		if rest, ok := strings.CutPrefix(s, "reg:"); ok {
			re, err := regexp.Compile(rest)
			if err != nil {
				return nil, fmt.Errorf("select.%s %q: %w", key, s, err)
			}
			p = pattern{s: rest, re: re}
		}
		out = append(out, p)
	}
	return out, nil
}

func compileRule(rr rawRule, defWindow time.Duration) (*Rule, error) {
	if rr.Name == "" {
		return nil, fmt.Errorf("name is empty")
	}
	r := &Rule{Name: rr.Name, GroupBy: slices.Sorted(slices.Values(rr.GroupBy)), Category: rr.Select.Category,
		Measurements: rr.Select.Measurements, MetricNames: rr.Select.MetricName}
	switch r.Category {
	case "metric", "tracing", "logging":
	case "network", "keyevent", "object", "object_change", "custom_object", "rum", "security",
		"profiling", "dialtesting", "agent_llm":
		// DataKit's other categories load; aggd has no such items, so the
		// rule selects nothing.
	case "":
		return nil, fmt.Errorf("select.category is empty")
	default:
		return nil, fmt.Errorf("select.category %q is not a DataKit category", r.Category)
	}
	var err error
	if r.measurements, err = compilePatterns(rr.Select.Measurements, "measurements"); err != nil {
		return nil, err
	}
	if r.metricNames, err = compilePatterns(rr.Select.MetricName, "metric_name"); err != nil {
		return nil, err
	}
	ruleWindow := defWindow
	if rr.Window != "" { // aggd's rule-level window
		w, err := time.ParseDuration(rr.Window)
		if err != nil || w < time.Second {
			return nil, fmt.Errorf("window %q is not a duration of at least 1s", rr.Window)
		}
		ruleWindow = w
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
		a, err := compileAlgorithm(out, rr.Algorithms[out], ruleWindow)
		if err != nil {
			return nil, err
		}
		r.Algorithms = append(r.Algorithms, a)
	}
	return r, nil
}

// compileAlgorithm checks an algorithm as DataKit's validateAggregationAlgo
// does and fills in DataKit's defaults.
func compileAlgorithm(out string, ra rawAlgorithm, ruleWindow time.Duration) (Algorithm, error) {
	if strings.TrimSpace(out) == "" {
		return Algorithm{}, fmt.Errorf("an algorithm's name is empty")
	}
	name := strings.ToLower(strings.TrimSpace(ra.Method))
	m, ok := methodNames[name]
	if !ok {
		if name == "" {
			return Algorithm{}, fmt.Errorf("algorithms.%q.method is empty", out)
		}
		return Algorithm{}, fmt.Errorf("algorithms.%q.method %q is not supported (sum, avg, count, min, max, histogram, stdev, quantiles, count_distinct, first, last)", out, ra.Method)
	}
	a := Algorithm{Output: out, Method: m, SourceField: ra.SourceField, Window: ruleWindow, countName: out + "_count"}
	if a.SourceField == "" {
		a.SourceField = out
	}
	if ra.Window != nil {
		w, err := duration(ra.Window)
		if err != nil {
			return Algorithm{}, fmt.Errorf("algorithms.%q.window: %w", out, err)
		}
		// DataKit takes a window of 10 ns or less as none.
		if w > 10 {
			if w < time.Second {
				return Algorithm{}, fmt.Errorf("algorithms.%q.window %v is under 1s", out, w)
			}
			a.Window = w
		}
	}
	for k, v := range ra.AddTags {
		a.AddTags = append(a.AddTags, k+":"+v)
	}
	slices.Sort(a.AddTags)
	if ra.QuantileOpts != nil {
		a.Percentiles = ra.QuantileOpts.Percentiles
	}
	if m == Quantiles {
		if len(a.Percentiles) == 0 {
			return Algorithm{}, fmt.Errorf("algorithms.%q: quantiles requires quantile_opts.percentiles", out)
		}
		for _, p := range a.Percentiles {
			if !(p >= 0 && p <= 1) {
				return Algorithm{}, fmt.Errorf("algorithms.%q.quantile_opts.percentiles: %v is not in [0, 1]", out, p)
			}
			a.pNames = append(a.pNames, fmt.Sprintf("%s_P%.0f", out, p*100))
		}
	}
	return a, nil
}
