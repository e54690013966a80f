package upstream

import (
	"fmt"
	"strconv"

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

// DefaultHistogramConfig returns the Datadog Agent's defaults
// (histogram_aggregates and histogram_percentiles): max, median, avg, count
// and the 95th percentile.
func DefaultHistogramConfig() HistogramConfig {
	return HistogramConfig{Aggregates: []string{"max", "median", "avg", "count"}, Percentiles: []float64{0.95}}
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
	seen := map[string]bool{}
	for _, p := range c.Percentiles {
		if !(p > 0 && p < 1) {
			return fmt.Errorf("histogram percentile %v is not in (0, 1)", p)
		}
		n := PercentileName(p)
		if n == "0percentile" || n == "100percentile" {
			return fmt.Errorf("histogram percentile %v rounds to %s: the Agent names percentiles by whole percents", p, n)
		}
		if seen[n] {
			return fmt.Errorf("histogram percentile %v repeats %s: the Agent names percentiles by whole percents", p, n)
		}
		seen[n] = true
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
		// The Agent ranks by the whole percent it names.
		out = append(out, histogramSeries{suffix: "." + PercentileName(p), agg: "percentile", q: float64(int(p*100+0.5)) / 100})
	}
	return out
}

// PercentileName names percentile p as the Agent does (parsePercentiles
// and Histogram.flush): whole percents, rounded, so 0.95 is "95percentile"
// and 0.999 "100percentile".
func PercentileName(p float64) string { return strconv.Itoa(int(p*100+0.5)) + "percentile" }

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
