package upstreamtest

import (
	"errors"
	"fmt"
	"math"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
)

// The checks below are the OpenTelemetry data model's rules a strict
// receiver (or a backend behind a Collector) holds exports to; a receiver
// refuses an export that breaks one.

// checkAttrs reports a repeated attribute key or a value without a type.
func checkAttrs(where string, attrs []*commonpb.KeyValue) error {
	seen := make(map[string]bool, len(attrs))
	for _, kv := range attrs {
		if kv.Key == "" {
			return fmt.Errorf("%s: an attribute has an empty key", where)
		}
		if seen[kv.Key] {
			return fmt.Errorf("%s: attribute key %q appears twice", where, kv.Key)
		}
		seen[kv.Key] = true
		if kv.Value == nil || kv.Value.Value == nil {
			return fmt.Errorf("%s: attribute %q has no value", where, kv.Key)
		}
	}
	return nil
}

// CheckMetrics reports the first data model rule req breaks.
func CheckMetrics(req *colmetricspb.ExportMetricsServiceRequest) error {
	for _, rm := range req.ResourceMetrics {
		if err := checkAttrs("resource", rm.GetResource().GetAttributes()); err != nil {
			return err
		}
		for _, sm := range rm.ScopeMetrics {
			if err := checkAttrs("scope", sm.GetScope().GetAttributes()); err != nil {
				return err
			}
			for _, m := range sm.Metrics {
				if err := checkMetric(m); err != nil {
					return fmt.Errorf("metric %s: %w", m.Name, err)
				}
			}
		}
	}
	return nil
}

func checkTemporality(t metricspb.AggregationTemporality) error {
	if t != metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA && t != metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE {
		return fmt.Errorf("aggregation temporality %v", t)
	}
	return nil
}

func checkTimes(start, ts uint64, needStart bool) error {
	switch {
	case ts == 0:
		return errors.New("a point has no time")
	case needStart && (start == 0 || start > ts):
		return fmt.Errorf("a point's start %d is not in (0, time %d]", start, ts)
	}
	return nil
}

func checkMetric(m *metricspb.Metric) error {
	if m.Name == "" {
		return errors.New("empty name")
	}
	switch d := m.Data.(type) {
	case *metricspb.Metric_Gauge:
		for _, dp := range d.Gauge.DataPoints {
			if err := errors.Join(checkAttrs("point", dp.Attributes), checkTimes(dp.StartTimeUnixNano, dp.TimeUnixNano, false)); err != nil {
				return err
			}
			if dp.Value == nil {
				return errors.New("a gauge point has no value")
			}
		}
	case *metricspb.Metric_Sum:
		if err := checkTemporality(d.Sum.AggregationTemporality); err != nil {
			return err
		}
		for _, dp := range d.Sum.DataPoints {
			if err := errors.Join(checkAttrs("point", dp.Attributes), checkTimes(dp.StartTimeUnixNano, dp.TimeUnixNano, true)); err != nil {
				return err
			}
			if d.Sum.IsMonotonic && d.Sum.AggregationTemporality == metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA && dp.GetAsDouble() < 0 {
				return errors.New("a monotonic delta sum goes down")
			}
		}
	case *metricspb.Metric_Histogram:
		if err := checkTemporality(d.Histogram.AggregationTemporality); err != nil {
			return err
		}
		for _, dp := range d.Histogram.DataPoints {
			if err := errors.Join(checkAttrs("point", dp.Attributes), checkTimes(dp.StartTimeUnixNano, dp.TimeUnixNano, true)); err != nil {
				return err
			}
			var n uint64
			for _, c := range dp.BucketCounts {
				n += c
			}
			if len(dp.BucketCounts) > 0 && (len(dp.BucketCounts) != len(dp.ExplicitBounds)+1 || n != dp.Count) {
				return errors.New("histogram buckets do not match bounds or count")
			}
		}
	case *metricspb.Metric_ExponentialHistogram:
		if err := checkTemporality(d.ExponentialHistogram.AggregationTemporality); err != nil {
			return err
		}
		for _, dp := range d.ExponentialHistogram.DataPoints {
			if err := errors.Join(checkAttrs("point", dp.Attributes), checkTimes(dp.StartTimeUnixNano, dp.TimeUnixNano, true)); err != nil {
				return err
			}
			n := dp.ZeroCount
			for _, c := range dp.GetPositive().GetBucketCounts() {
				n += c
			}
			for _, c := range dp.GetNegative().GetBucketCounts() {
				n += c
			}
			if n != dp.Count {
				return fmt.Errorf("exponential histogram buckets add up to %d, count %d", n, dp.Count)
			}
			if dp.Scale < -10 || dp.Scale > 20 {
				return fmt.Errorf("scale %d", dp.Scale)
			}
			if dp.Min != nil && dp.Max != nil && dp.GetMin() > dp.GetMax() {
				return errors.New("min above max")
			}
		}
	case *metricspb.Metric_Summary:
		for _, dp := range d.Summary.DataPoints {
			if err := errors.Join(checkAttrs("point", dp.Attributes), checkTimes(dp.StartTimeUnixNano, dp.TimeUnixNano, false)); err != nil {
				return err
			}
			for _, q := range dp.QuantileValues {
				if !(q.Quantile >= 0 && q.Quantile <= 1) || math.IsNaN(q.Value) {
					return fmt.Errorf("quantile %v", q.Quantile)
				}
			}
		}
	default:
		return errors.New("no data")
	}
	return nil
}

// CheckTraces reports the first data model rule req breaks.
func CheckTraces(req *coltracepb.ExportTraceServiceRequest) error {
	for _, rs := range req.ResourceSpans {
		if err := checkAttrs("resource", rs.GetResource().GetAttributes()); err != nil {
			return err
		}
		for _, ss := range rs.ScopeSpans {
			if err := checkAttrs("scope", ss.GetScope().GetAttributes()); err != nil {
				return err
			}
			for _, sp := range ss.Spans {
				if len(sp.TraceId) != 16 || len(sp.SpanId) != 8 || (len(sp.ParentSpanId) != 0 && len(sp.ParentSpanId) != 8) {
					return fmt.Errorf("span %s: ids of %d, %d and %d bytes", sp.Name, len(sp.TraceId), len(sp.SpanId), len(sp.ParentSpanId))
				}
				if sp.EndTimeUnixNano < sp.StartTimeUnixNano || sp.StartTimeUnixNano == 0 {
					return fmt.Errorf("span %s: ends before it starts", sp.Name)
				}
				if err := checkAttrs("span "+sp.Name, sp.Attributes); err != nil {
					return err
				}
				for _, e := range sp.Events {
					if err := checkAttrs("event "+e.Name, e.Attributes); err != nil {
						return err
					}
				}
				for _, l := range sp.Links {
					if len(l.TraceId) != 16 || len(l.SpanId) != 8 {
						return fmt.Errorf("span %s: a link's ids are not 16 and 8 bytes", sp.Name)
					}
					if err := checkAttrs("link", l.Attributes); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// CheckLogs reports the first data model rule req breaks.
func CheckLogs(req *collogspb.ExportLogsServiceRequest) error {
	for _, rl := range req.ResourceLogs {
		if err := checkAttrs("resource", rl.GetResource().GetAttributes()); err != nil {
			return err
		}
		for _, sl := range rl.ScopeLogs {
			if err := checkAttrs("scope", sl.GetScope().GetAttributes()); err != nil {
				return err
			}
			for _, lr := range sl.LogRecords {
				if err := checkAttrs("log record", lr.Attributes); err != nil {
					return err
				}
				if lr.TimeUnixNano == 0 && lr.ObservedTimeUnixNano == 0 {
					return errors.New("a log record has no time")
				}
				if lr.SeverityNumber < 0 || lr.SeverityNumber > 24 {
					return fmt.Errorf("severity number %d", lr.SeverityNumber)
				}
			}
		}
	}
	return nil
}
