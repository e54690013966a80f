// Package telemetry exposes aggd's own metrics to Prometheus.
package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/aggd/aggd/internal/window"
)

// TenantLister lists the tenants whose counters are exported.
type TenantLister interface {
	List() []*window.Tenant
}

// TenantCollector exports the per-tenant counters kept in window.Tenant.
// Reading them at scrape time keeps the ingest path free of metric calls.
type TenantCollector struct {
	tenants  TenantLister
	accepted *prometheus.Desc
	rejected *prometheus.Desc
	contexts *prometheus.Desc
}

// NewTenantCollector returns a collector over tenants.
func NewTenantCollector(tenants TenantLister) *TenantCollector {
	return &TenantCollector{
		tenants:  tenants,
		accepted: prometheus.NewDesc("aggd_items_accepted_total", "Items (samples, events, checks, spans) accepted, by tenant.", []string{"tenant"}, nil),
		rejected: prometheus.NewDesc("aggd_items_rejected_total", "Items rejected, by tenant and reason.", []string{"tenant", "reason"}, nil),
		contexts: prometheus.NewDesc("aggd_contexts", "Live aggregation contexts, by tenant.", []string{"tenant"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *TenantCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.accepted
	ch <- c.rejected
	ch <- c.contexts
}

// Collect implements prometheus.Collector.
func (c *TenantCollector) Collect(ch chan<- prometheus.Metric) {
	for _, t := range c.tenants.List() {
		ch <- prometheus.MustNewConstMetric(c.accepted, prometheus.CounterValue, float64(t.Accepted.Load()), t.ID)
		ch <- prometheus.MustNewConstMetric(c.contexts, prometheus.GaugeValue, float64(t.Contexts.Load()), t.ID)
		for r := window.Reason(1); r < window.NumReasons; r++ {
			if n := t.Rejected[r].Load(); n > 0 {
				ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(n), t.ID, r.String())
			}
		}
	}
}

// FlushMetrics records flush durations, sizes and failures. It implements
// flush.Observer.
type FlushMetrics struct {
	duration prometheus.Histogram
	contexts prometheus.Counter
	failed   prometheus.Counter
}

// NewFlushMetrics registers the flush metrics with reg.
func NewFlushMetrics(reg prometheus.Registerer) *FlushMetrics {
	m := &FlushMetrics{
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "aggd_flush_duration_seconds", Help: "Time to drain, encode and export one flush.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		contexts: prometheus.NewCounter(prometheus.CounterOpts{Name: "aggd_flush_contexts_total", Help: "Context aggregates flushed."}),
		failed:   prometheus.NewCounter(prometheus.CounterOpts{Name: "aggd_flush_failed_total", Help: "Flushes whose export failed."}),
	}
	reg.MustRegister(m.duration, m.contexts, m.failed)
	return m
}

// ObserveFlush implements flush.Observer.
func (m *FlushMetrics) ObserveFlush(seconds float64, contexts int, err error) {
	m.duration.Observe(seconds)
	m.contexts.Add(float64(contexts))
	if err != nil {
		m.failed.Inc()
	}
}
