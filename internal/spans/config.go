package spans

import (
	"fmt"
	"os"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/aggd/aggd/internal/filter"
)

// Rule is one compiled [[trace.sampling_pipeline]] entry.
type Rule struct {
	Name string
	// Probabilistic rules keep a trace when the hash of its id falls below
	// Rate; condition rules keep (Keep) or drop it.
	Probabilistic bool
	Keep          bool
	Rate          float64
	// Cond selects the traces the rule decides: those with at least one
	// span that matches. Nil matches every trace.
	Cond *filter.Condition
}

// GroupDimension is one [[logging.group_dimensions]] or
// [[rum.group_dimensions]] entry.
type GroupDimension struct {
	GroupKey string
	Rules    []Rule
}

// Policy is a compiled tail-sampling.toml.
type Policy struct {
	Version int
	DataTTL time.Duration
	Rules   []Rule
	// Logging and RUM group dimensions; see the README for which items they
	// apply to.
	Logging, RUM       []GroupDimension
	LoggingTTL, RUMTTL time.Duration
	source             string
}

// Source returns the file the policy came from.
func (p *Policy) Source() string { return p.source }

type rawRule struct {
	Name      string   `toml:"name"`
	Type      string   `toml:"type"`
	Condition string   `toml:"condition"`
	Action    string   `toml:"action"`
	Rate      float64  `toml:"rate"`
	HashKeys  []string `toml:"hash_keys"` // read and unused, as in DataKit
}

// rawBuiltinMetric is a builtin_metrics entry: read and unused, since aggd
// reports its sampling in its own metrics (see the README).
type rawBuiltinMetric struct {
	Name    string `toml:"name"`
	Enabled bool   `toml:"enabled"`
}

type rawGroups struct {
	DataTTL         any                `toml:"data_ttl"`
	BuiltinMetrics  []rawBuiltinMetric `toml:"builtin_metrics"`
	Version         int                `toml:"version"`
	GroupDimensions []struct {
		GroupKey  string    `toml:"group_key"`
		Pipelines []rawRule `toml:"pipelines"`
	} `toml:"group_dimensions"`
}

type rawPolicy struct {
	Version int `toml:"version"`
	Trace   struct {
		DataTTL          any                `toml:"data_ttl"`
		BuiltinMetrics   []rawBuiltinMetric `toml:"builtin_metrics"`
		Version          int                `toml:"version"`
		GroupKey         string             `toml:"group_key"`
		SamplingPipeline []rawRule          `toml:"sampling_pipeline"`
	} `toml:"trace"`
	Logging rawGroups `toml:"logging"`
	RUM     rawGroups `toml:"rum"`
}

// DefaultDataTTL is how long a trace is held after its last span when the
// file does not say: DataKit's (TailSamplingConfigs.Init).
const DefaultDataTTL = 5 * time.Minute

// DefaultGroupTTL is DataKit's default data_ttl of [logging] and [rum].
const DefaultGroupTTL = time.Minute

// LoadPolicy reads and compiles a DataKit tail-sampling.toml.
func LoadPolicy(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p, err := ParsePolicy(string(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	p.source = path
	return p, nil
}

// ParsePolicy compiles the text of a tail-sampling.toml.
func ParsePolicy(text string) (*Policy, error) {
	var raw rawPolicy
	md, err := toml.Decode(text, &raw)
	if err != nil {
		return nil, err
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("unsupported key %q (aggd supports version, [trace] data_ttl, group_key, sampling_pipeline, builtin_metrics, and [logging]/[rum] data_ttl, group_dimensions, builtin_metrics)", und[0].String())
	}
	p := &Policy{Version: raw.Version}
	if p.DataTTL, err = ttl(raw.Trace.DataTTL, "trace", DefaultDataTTL); err != nil {
		return nil, err
	}
	if k := raw.Trace.GroupKey; k != "" && k != "trace_id" {
		return nil, fmt.Errorf("trace.group_key %q: only trace_id is supported", k)
	}
	if p.Rules, err = compileRules(raw.Trace.SamplingPipeline, "trace.sampling_pipeline"); err != nil {
		return nil, err
	}
	if p.Logging, p.LoggingTTL, err = compileGroups(raw.Logging, "logging"); err != nil {
		return nil, err
	}
	if p.RUM, p.RUMTTL, err = compileGroups(raw.RUM, "rum"); err != nil {
		return nil, err
	}
	return p, nil
}

// ttl reads a data_ttl as DataKit's TOML decoder reads a time.Duration: a
// duration string or an integer of nanoseconds; zero or absent is def.
func ttl(v any, section string, def time.Duration) (time.Duration, error) {
	var d time.Duration
	switch x := v.(type) {
	case nil:
	case string:
		var err error
		if d, err = time.ParseDuration(x); err != nil {
			return 0, fmt.Errorf("%s.data_ttl %q is not a duration", section, x)
		}
	case int64:
		d = time.Duration(x)
	default:
		return 0, fmt.Errorf("%s.data_ttl %v is neither a duration string nor integer nanoseconds", section, v)
	}
	switch {
	case d < 0:
		return 0, fmt.Errorf("%s.data_ttl %v is negative", section, d)
	case d == 0:
		return def, nil
	}
	return d, nil
}

func compileGroups(g rawGroups, section string) ([]GroupDimension, time.Duration, error) {
	d, err := ttl(g.DataTTL, section, DefaultGroupTTL)
	if err != nil {
		return nil, 0, err
	}
	var out []GroupDimension
	for i, gd := range g.GroupDimensions {
		if gd.GroupKey == "" {
			return nil, 0, fmt.Errorf("%s.group_dimensions[%d]: group_key is empty", section, i)
		}
		rules, err := compileRules(gd.Pipelines, fmt.Sprintf("%s.group_dimensions[%d].pipelines", section, i))
		if err != nil {
			return nil, 0, err
		}
		out = append(out, GroupDimension{GroupKey: gd.GroupKey, Rules: rules})
	}
	return out, d, nil
}

// compileRules compiles a pipeline as DataKit's TailSamplingConfigs.Init
// does: a probabilistic rule of rate 0 or less is removed (so later rules
// decide), then types, actions and rates are checked; hash_keys are read
// and unused.
func compileRules(raw []rawRule, where string) ([]Rule, error) {
	var out []Rule
	for i, r := range raw {
		at := fmt.Sprintf("%s[%d] %q", where, i, r.Name)
		rule := Rule{Name: r.Name}
		if r.Type == "probabilistic" && r.Rate <= 0 {
			continue // removed before anything else is checked, as in DataKit
		}
		if r.Condition != "" {
			var err error
			if rule.Cond, err = filter.Compile(r.Condition); err != nil {
				return nil, fmt.Errorf("%s: %w", at, err)
			}
		}
		switch r.Type {
		case "condition":
			switch r.Action {
			case "keep", "drop":
				rule.Keep = r.Action == "keep"
			default:
				return nil, fmt.Errorf("%s: action %q is not keep or drop", at, r.Action)
			}
		case "probabilistic":
			if r.Rate > 1 {
				return nil, fmt.Errorf("%s: rate %v is above 1", at, r.Rate)
			}
			rule.Probabilistic, rule.Rate = true, r.Rate
		default:
			return nil, fmt.Errorf("%s: type %q is not condition or probabilistic", at, r.Type)
		}
		out = append(out, rule)
	}
	return out, nil
}
