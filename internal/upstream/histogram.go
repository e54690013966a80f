package upstream

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/aggd/aggd/internal/window"
)

// HistogramConfig says which series a HISTOGRAM or TIMING context is
// flushed as, DogStatsD style: name.<aggregate> and name.<N>percentile.
type HistogramConfig struct {
	// Aggregates among min, max, sum, avg, count and median.
	Aggregates []string
	// Percentiles in (0, 1), flushed as name.<100·p>percentile.
	Percentiles []float64
}

// DefaultHistogramConfig returns the documented default series.
func DefaultHistogramConfig() HistogramConfig {
	return HistogramConfig{Aggregates: []string{"min", "max", "sum", "avg", "count", "median"}, Percentiles: []float64{0.95}}
}

// Validate reports an unknown aggregate or a percentile out of range.
func (c HistogramConfig) Validate() error {
	for _, a := range c.Aggregates {
		switch a {
		case "min", "max", "sum", "avg", "count", "median":
		default:
			return fmt.Errorf("histogram aggregate %q is not one of min, max, sum, avg, count, median", a)
		}
	}
	for _, p := range c.Percentiles {
		if !(p > 0 && p < 1) {
			return fmt.Errorf("histogram percentile %v is not in (0, 1)", p)
		}
	}
	return nil
}

// histogramSeries is one precomputed output series of a histogram.
type histogramSeries struct {
	suffix string // ".max", ".95percentile"
	agg    string
	q      float64
}

func (c HistogramConfig) series() []histogramSeries {
	var out []histogramSeries
	for _, a := range c.Aggregates {
		out = append(out, histogramSeries{suffix: "." + a, agg: a})
	}
	for _, p := range c.Percentiles {
		out = append(out, histogramSeries{suffix: "." + PercentileName(p), agg: "percentile", q: p})
	}
	return out
}

// PercentileName names percentile p as DogStatsD does: 0.95 is
// "95percentile", 0.999 "99.9percentile".
func PercentileName(p float64) string {
	s := strconv.FormatFloat(p*100, 'f', 4, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s + "percentile"
}

// value returns the series' value for a histogram aggregate, and whether it
// is a count (else a gauge).
func (s histogramSeries) value(m *window.Metric) (float64, bool) {
	switch s.agg {
	case "min":
		return m.Min, false
	case "max":
		return m.Max, false
	case "sum":
		return m.Sum, false
	case "avg":
		return m.Sum / m.Count, false
	case "count":
		return m.Count, true
	case "median":
		return m.Quantile(0.5), false
	}
	return m.Quantile(s.q), false
}
