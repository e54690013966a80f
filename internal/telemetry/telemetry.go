// Package telemetry exposes aggd's own metrics to Prometheus.
package telemetry

import (
	"cmp"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/aggd/aggd/internal/dogstatsd"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// TenantLister lists the tenants whose counters are exported.
type TenantLister interface {
	List() []*window.Tenant
}

// TenantCollector exports the per-tenant counters kept in window.Tenant.
// Reading them at scrape time keeps the ingest path free of metric calls.
// With MaxTenants set, only that many tenants, those with the most items
// accepted, get series of their own; the rest are summed under the tenant
// OtherTenants, so that a scrape stays bounded however many tenants there
// are.
type TenantCollector struct {
	tenants    TenantLister
	max        int
	accepted   *prometheus.Desc
	rejected   *prometheus.Desc
	contexts   *prometheus.Desc
	seeded     *prometheus.Desc
	overflowed *prometheus.Desc
}

// OtherTenants is the tenant label of the series that sum the tenants
// past TenantCollector's MaxTenants.
const OtherTenants = "_other"

// NewTenantCollector returns a collector over tenants that exports at most
// maxTenants of them one by one (0: every one).
func NewTenantCollector(tenants TenantLister, maxTenants int) *TenantCollector {
	return &TenantCollector{
		tenants:  tenants,
		max:      maxTenants,
		accepted: prometheus.NewDesc("aggd_items_accepted_total", "Items (samples, events, checks, spans) accepted, by tenant.", []string{"tenant"}, nil),
		rejected: prometheus.NewDesc("aggd_items_rejected_total", "Items rejected, by tenant and reason.", []string{"tenant", "reason"}, nil),
		contexts: prometheus.NewDesc("aggd_contexts", "Live aggregation contexts, by tenant.", []string{"tenant"}, nil),
		seeded: prometheus.NewDesc("aggd_contexts_seeded",
			"Contexts holding only the previous sample another replica handed over (cluster mode), not yet in aggd_contexts, by tenant.", []string{"tenant"}, nil),
		overflowed: prometheus.NewDesc("aggd_items_overflowed_total",
			"Samples of new contexts past the tenant's max_contexts, folded into its aggd.overflow.<type> series.", []string{"tenant"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *TenantCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.accepted
	ch <- c.rejected
	ch <- c.contexts
	ch <- c.seeded
	ch <- c.overflowed
}

// tenantCounts is one tenant's counters, or the sum of several.
type tenantCounts struct {
	accepted, overflowed uint64
	contexts, seeded     int64
	rejected             [window.NumReasons]uint64
}

func (t *tenantCounts) add(tn *window.Tenant) {
	t.accepted += tn.Accepted.Load()
	t.overflowed += tn.Overflowed.Load()
	t.contexts += tn.Contexts.Load()
	t.seeded += tn.Seeded.Load()
	for r := range tn.Rejected {
		t.rejected[r] += tn.Rejected[r].Load()
	}
}

// Collect implements prometheus.Collector.
func (c *TenantCollector) Collect(ch chan<- prometheus.Metric) {
	list := c.tenants.List()
	var other *tenantCounts
	if c.max > 0 && len(list) > c.max {
		list = slices.Clone(list)
		slices.SortFunc(list, func(a, b *window.Tenant) int {
			return cmp.Compare(b.Accepted.Load(), a.Accepted.Load())
		})
		other = &tenantCounts{}
		for _, tn := range list[c.max:] {
			other.add(tn)
		}
		list = list[:c.max]
	}
	for _, tn := range list {
		var t tenantCounts
		t.add(tn)
		c.emit(ch, tn.ID, &t)
	}
	if other != nil {
		c.emit(ch, OtherTenants, other)
	}
}

func (c *TenantCollector) emit(ch chan<- prometheus.Metric, id string, t *tenantCounts) {
	ch <- prometheus.MustNewConstMetric(c.accepted, prometheus.CounterValue, float64(t.accepted), id)
	ch <- prometheus.MustNewConstMetric(c.contexts, prometheus.GaugeValue, float64(t.contexts), id)
	ch <- prometheus.MustNewConstMetric(c.seeded, prometheus.GaugeValue, float64(t.seeded), id)
	ch <- prometheus.MustNewConstMetric(c.overflowed, prometheus.CounterValue, float64(t.overflowed), id)
	for r := window.Reason(1); r < window.NumReasons; r++ {
		if n := t.rejected[r]; n > 0 {
			ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(n), id, r.String())
		}
	}
}

// RefusalCounter reports requests refused whole, by reason.
type RefusalCounter interface {
	Refusals(fn func(reason string, n uint64))
}

// RefusalCollector exports a RefusalCounter as
// aggd_requests_refused_total{reason}.
type RefusalCollector struct {
	src  RefusalCounter
	desc *prometheus.Desc
}

// NewRefusalCollector returns a collector over src.
func NewRefusalCollector(src RefusalCounter) *RefusalCollector {
	return &RefusalCollector{src: src, desc: prometheus.NewDesc("aggd_requests_refused_total",
		"Requests refused whole with RESOURCE_EXHAUSTED, by reason: tenant_limit, too_large, memory, queue.", []string{"reason"}, nil)}
}

// Describe implements prometheus.Collector.
func (c *RefusalCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *RefusalCollector) Collect(ch chan<- prometheus.Metric) {
	c.src.Refusals(func(reason string, n uint64) {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), reason)
	})
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

// SendMetrics records what upstream pipelines do. It implements
// upstream.PipelineMetrics.
type SendMetrics struct {
	success, points *prometheus.CounterVec
	failed, lost    *prometheus.CounterVec
	latency         *prometheus.HistogramVec
	depth, bytes    *prometheus.GaugeVec
	capacity        *prometheus.GaugeVec
	capacityBytes   *prometheus.GaugeVec
}

// NewSendMetrics registers the send metrics with reg.
func NewSendMetrics(reg prometheus.Registerer) *SendMetrics {
	up := []string{"upstream"}
	m := &SendMetrics{
		success: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aggr_send_success_total", Help: "Payloads the intake accepted."}, up),
		points:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aggr_send_points_total", Help: "Aggregates, events and checks the intake accepted."}, up),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aggr_send_failed_total",
			Help: "Failed send attempts (retried) and full-queue waits, by reason. reason=timeout counts requests the intake may have stored: possible duplicates."}, []string{"upstream", "reason"}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aggr_lost_points_total",
			Help: "Aggregates, events and checks given up on, by reason (permanent refusals, queue_full, too_large, shutdown)."}, []string{"upstream", "reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "aggr_send_latency_seconds", Help: "Latency of accepted requests.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15)}, up),
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "aggr_queue_depth", Help: "Payloads waiting to be sent."}, up),
		bytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "aggr_queue_bytes", Help: "Bytes of payloads waiting to be sent."}, up),
		capacity: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "aggd_queue_capacity",
			Help: "Payloads the send queue in memory holds at most (compare aggr_queue_depth); absent with the queue on disk."}, up),
		capacityBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "aggd_queue_capacity_bytes",
			Help: "Bytes the send queue on disk holds at most (compare aggr_queue_bytes); absent with the queue in memory."}, up),
	}
	reg.MustRegister(m.success, m.points, m.failed, m.lost, m.latency, m.depth, m.bytes, m.capacity, m.capacityBytes)
	return m
}

// Sent implements upstream.PipelineMetrics.
func (m *SendMetrics) Sent(upstream string, points int, latency time.Duration) {
	m.success.WithLabelValues(upstream).Inc()
	m.points.WithLabelValues(upstream).Add(float64(points))
	m.latency.WithLabelValues(upstream).Observe(latency.Seconds())
}

// Failed implements upstream.PipelineMetrics.
func (m *SendMetrics) Failed(upstream, reason string) {
	m.failed.WithLabelValues(upstream, reason).Inc()
}

// Lost implements upstream.PipelineMetrics.
func (m *SendMetrics) Lost(upstream, reason string, points int) {
	m.lost.WithLabelValues(upstream, reason).Add(float64(points))
}

// startReasons are the reasons of failures and losses every pipeline can
// have, exported as zeros from the start so that a rate or an increase
// sees their first occurrence.
var startReasons = struct{ failed, lost []string }{
	failed: []string{"queue_full", "timeout", "error"},
	lost:   []string{"queue_full", "shutdown"},
}

// Started implements upstream.PipelineMetrics: every series of the
// upstream exists from now on, and its queue's bound is set.
func (m *SendMetrics) Started(upstream string, capacity int, capacityBytes int64) {
	m.success.WithLabelValues(upstream)
	m.points.WithLabelValues(upstream)
	m.latency.WithLabelValues(upstream)
	m.depth.WithLabelValues(upstream)
	m.bytes.WithLabelValues(upstream)
	for _, r := range startReasons.failed {
		m.failed.WithLabelValues(upstream, r)
	}
	for _, r := range startReasons.lost {
		m.lost.WithLabelValues(upstream, r)
	}
	if capacityBytes > 0 {
		m.capacityBytes.WithLabelValues(upstream).Set(float64(capacityBytes))
	} else {
		m.capacity.WithLabelValues(upstream).Set(float64(capacity))
	}
}

// Queue implements upstream.PipelineMetrics.
func (m *SendMetrics) Queue(upstream string, depth, bytes int) {
	m.depth.WithLabelValues(upstream).Set(float64(depth))
	m.bytes.WithLabelValues(upstream).Set(float64(bytes))
}

// SamplerCollector exports the tail sampler's counters.
type SamplerCollector struct {
	c                                *spans.Counters
	traces, spansTotal, late, early  *prometheus.Desc
	heldTraces, heldSpans, heldBytes *prometheus.Desc
}

// NewSamplerCollector returns a collector over c.
func NewSamplerCollector(c *spans.Counters) *SamplerCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &SamplerCollector{c: c,
		traces:     d("aggd_sampling_traces_total", "Traces decided, by decision.", "decision"),
		spansTotal: d("aggd_sampling_spans_total", "Spans kept or dropped, late ones included.", "decision"),
		late:       d("aggd_sampling_late_spans_total", "Spans that arrived after their trace was decided, by decision.", "decision"),
		early:      d("aggd_sampling_early_decisions_total", "Traces decided before data_ttl, by reason (bounds, shutdown).", "reason"),
		heldTraces: d("aggd_sampling_held_traces", "Traces held for a decision."),
		heldSpans:  d("aggd_sampling_held_spans", "Spans held for a decision."),
		heldBytes:  d("aggd_sampling_held_bytes", "Estimated memory of the held spans."),
	}
}

// Describe implements prometheus.Collector.
func (s *SamplerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{s.traces, s.spansTotal, s.late, s.early, s.heldTraces, s.heldSpans, s.heldBytes} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (s *SamplerCollector) Collect(ch chan<- prometheus.Metric) {
	c := s.c
	counter := func(d *prometheus.Desc, v int64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	gauge := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	counter(s.traces, c.TracesKept.Load(), "kept")
	counter(s.traces, c.TracesDropped.Load(), "dropped")
	counter(s.spansTotal, c.SpansKept.Load(), "kept")
	counter(s.spansTotal, c.SpansDropped.Load(), "dropped")
	counter(s.late, c.LateKept.Load(), "kept")
	counter(s.late, c.LateDropped.Load(), "dropped")
	c.Early.Range(func(k, v any) bool {
		counter(s.early, v.(interface{ Load() int64 }).Load(), k.(string))
		return true
	})
	gauge(s.heldTraces, c.HeldTraces.Load())
	gauge(s.heldSpans, c.HeldSpans.Load())
	gauge(s.heldBytes, c.HeldBytes.Load())
}

// ReloadMetrics counts configuration reloads by file and outcome.
type ReloadMetrics struct{ v *prometheus.CounterVec }

// NewReloadMetrics registers aggd_config_reloads_total with reg.
func NewReloadMetrics(reg prometheus.Registerer) *ReloadMetrics {
	m := &ReloadMetrics{prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aggd_config_reloads_total",
		Help: "Configuration file reloads by file and result (success or failure; a failure keeps the last good configuration)."}, []string{"file", "result"})}
	reg.MustRegister(m.v)
	return m
}

// Observer returns the reload observer of file.
func (m *ReloadMetrics) Observer(file string) func(ok bool) {
	return func(ok bool) {
		r := "failure"
		if ok {
			r = "success"
		}
		m.v.WithLabelValues(file, r).Inc()
	}
}

// DogStatsDCollector exports a DogStatsD listener's counters.
type DogStatsDCollector struct {
	s                    *dogstatsd.Server
	tenant               string
	packets, lines, errs *prometheus.Desc
	drops, refused       *prometheus.Desc
}

// NewDogStatsDCollector returns a collector over s, labelled with its tenant.
func NewDogStatsDCollector(s *dogstatsd.Server, tenant string) *DogStatsDCollector {
	l := []string{"tenant"}
	return &DogStatsDCollector{s: s, tenant: tenant,
		packets: prometheus.NewDesc("aggd_dogstatsd_packets_total", "Datagrams read.", l, nil),
		lines:   prometheus.NewDesc("aggd_dogstatsd_lines_total", "Lines read, bad ones included (those count in aggd_items_rejected_total).", l, nil),
		errs:    prometheus.NewDesc("aggd_dogstatsd_read_errors_total", "Socket read errors.", l, nil),
		drops:   prometheus.NewDesc("aggd_dogstatsd_kernel_drops_total", "Datagrams the kernel dropped because the UDP receive buffer was full.", l, nil),
		refused: prometheus.NewDesc("aggd_dogstatsd_refused_total", "Datagrams read and dropped, by cause: memory past the hard limit of --memory-limit, or a full send queue on disk (send_queue).", []string{"tenant", "cause"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *DogStatsDCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.lines
	ch <- c.errs
	ch <- c.drops
	ch <- c.refused
}

// Collect implements prometheus.Collector.
func (c *DogStatsDCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(c.s.Packets.Load()), c.tenant)
	ch <- prometheus.MustNewConstMetric(c.lines, prometheus.CounterValue, float64(c.s.Lines.Load()), c.tenant)
	ch <- prometheus.MustNewConstMetric(c.errs, prometheus.CounterValue, float64(c.s.ReadErrors.Load()), c.tenant)
	ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(c.s.RefusedMemory.Load()), c.tenant, "memory")
	ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(c.s.RefusedQueue.Load()), c.tenant, "send_queue")
	if d, ok := c.s.KernelDrops(); ok {
		ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(d), c.tenant)
	}
}
