package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/encoding/gzip" // registers the gzip compressor
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/window"
)

// OTLPConfig configures an OTLP/gRPC upstream.
type OTLPConfig struct {
	Pipeline PipelineConfig
	// Endpoint is the collector's host:port.
	Endpoint string
	// Insecure turns TLS off.
	Insecure bool
	// TLS configures TLS when Insecure is off; nil means system roots.
	TLS *tls.Config
	// Headers are sent with every export, before per-tenant headers.
	Headers map[string]string
	// TenantAttribute is the resource attribute naming the tenant.
	TenantAttribute string
	// TenantHeader, if set, is a request header carrying the tenant id
	// (such as X-Scope-OrgID).
	TenantHeader string
	// Compression is gzip or none.
	Compression Compression
	// MaxPayloadBytes bounds one export request.
	MaxPayloadBytes int
	Histogram       HistogramConfig
	// InstanceID, if set, is the service.instance.id of the aggregates'
	// resources: replicas each write their own aggregates of a series, and
	// the OTLP data model wants one writer per stream.
	InstanceID string
}

// Validate reports a setting out of range.
func (c OTLPConfig) Validate() error {
	var errs []error
	if c.Endpoint == "" {
		errs = append(errs, fmt.Errorf("upstream %s: endpoint is empty", c.Pipeline.Name))
	}
	if c.Compression != CompressGzip && c.Compression != CompressNone {
		errs = append(errs, fmt.Errorf("upstream %s: OTLP compression must be gzip or none", c.Pipeline.Name))
	}
	if c.MaxPayloadBytes < 0 || c.TenantAttribute == "" {
		errs = append(errs, fmt.Errorf("upstream %s: max payload bytes must not be negative, tenant attribute not empty", c.Pipeline.Name))
	}
	return errors.Join(append(errs, c.Pipeline.Validate(), c.Histogram.Validate())...)
}

// otlpMaxScale is the finest exponential histogram scale used: base
// 2^(2^-6) ≈ 1.0109, buckets 1.09 % wide.
const (
	otlpMaxScale   = 6
	otlpMaxBuckets = 2048
)

// OTLP exports aggregates to an OpenTelemetry Collector over OTLP/gRPC.
//
// Each tenant's aggregates go in their own requests, one resource per host
// with the tenant as a resource attribute. GAUGE and SET become gauges
// (time: bucket start), RATE a gauge in 1/s, COUNT a delta sum and
// MONOTONIC_COUNT a monotonic delta sum (start: bucket start, time: bucket
// end). HISTOGRAM, TIMING and DISTRIBUTION become delta exponential
// histograms at scale 6 or coarser (so they have at most 2048 buckets)
// with exact sum, min and max: a summary's count and sum would be
// cumulative by the OTLP data model, a window's are one interval's.
// Events and service checks become log records.
type OTLP struct {
	cfg  OTLPConfig
	pipe *Pipeline
	conn *grpc.ClientConn
}

// NewOTLP returns an OTLP upstream; it connects lazily. cfg must be valid.
func NewOTLP(cfg OTLPConfig, m PipelineMetrics, log *slog.Logger) (*OTLP, error) {
	if cfg.MaxPayloadBytes == 0 {
		cfg.MaxPayloadBytes = 4_000_000 // under the Collector's default 4 MiB receive limit
	}
	creds := insecure.NewCredentials()
	if !cfg.Insecure {
		creds = credentials.NewTLS(cfg.TLS)
	}
	conn, err := grpc.NewClient(cfg.Endpoint, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", cfg.Pipeline.Name, err)
	}
	o := &OTLP{cfg: cfg, conn: conn}
	o.pipe = NewPipeline(cfg.Pipeline, &otlpSender{conn: conn, name: cfg.Pipeline.Name, compression: cfg.Compression, metrics: m}, m, log)
	return o, nil
}

// Name returns the upstream's name.
func (o *OTLP) Name() string { return o.cfg.Pipeline.Name }

// Start starts the senders.
func (o *OTLP) Start(ctx context.Context) error { return o.pipe.Start(ctx) }

// Shutdown drains the send queue within ctx and closes the connection.
func (o *OTLP) Shutdown(ctx context.Context) error {
	err := o.pipe.Shutdown(ctx)
	return errors.Join(err, o.conn.Close())
}

// otlpBatch is one tenant's request being built.
type otlpBatch struct {
	tenant    *window.Tenant
	header    http.Header
	req       *colmetricspb.ExportMetricsServiceRequest
	resources map[string]*metricspb.ScopeMetrics // by host
	size      int
	points    int
	// replaces: the batch carries corrections of flushed buckets.
	replaces bool
}

// Export encodes the part of f routed here and queues it.
func (o *OTLP) Export(ctx context.Context, f *window.Flush, routes Routes) error {
	batches := map[*window.Tenant]*otlpBatch{}
	var errs []error
	for m := range f.Metrics() {
		b, ok := batches[m.Tenant]
		if !ok {
			if cred, routed := routes(m.Tenant); routed {
				b = newOTLPBatch(m.Tenant, o.header(m.Tenant, cred))
			}
			batches[m.Tenant] = b
		}
		if b == nil {
			continue
		}
		metric := o.metric(m)
		n := proto.Size(metric) + 8
		if b.size+n > o.cfg.MaxPayloadBytes*95/100 && b.points > 0 {
			errs = append(errs, o.send(ctx, b))
			*b = *newOTLPBatch(b.tenant, b.header)
		}
		sm := b.resources[m.Host]
		if sm == nil {
			sm = o.resource(b, m.Host)
		}
		sm.Metrics = append(sm.Metrics, metric)
		b.size += n
		b.points++
		b.replaces = b.replaces || m.Late
	}
	for _, b := range batches {
		if b != nil && b.points > 0 {
			errs = append(errs, o.send(ctx, b))
		}
	}
	errs = append(errs, o.exportLogs(ctx, f, routes))
	return errors.Join(errs...)
}

func newOTLPBatch(t *window.Tenant, h http.Header) *otlpBatch {
	return &otlpBatch{tenant: t, header: h, req: &colmetricspb.ExportMetricsServiceRequest{}, resources: map[string]*metricspb.ScopeMetrics{}}
}

// header returns the request headers of tenant t: the upstream's, then the
// tenant's own, then the tenant header.
func (o *OTLP) header(t *window.Tenant, cred Credentials) http.Header {
	h := http.Header{}
	for k, v := range o.cfg.Headers {
		h.Set(k, v)
	}
	for k, v := range cred.Headers {
		h.Set(k, v)
	}
	if o.cfg.TenantHeader != "" {
		h.Set(o.cfg.TenantHeader, t.ID)
	}
	return h
}

// resourceAttrs are the attributes of the resource of tenant t's
// aggregates, events and checks of host.
func (o *OTLP) resourceAttrs(t *window.Tenant, host string) []*commonpb.KeyValue {
	attrs := []*commonpb.KeyValue{strAttr(o.cfg.TenantAttribute, t.ID)}
	if host != "" {
		attrs = append(attrs, strAttr("host.name", host))
	}
	if o.cfg.InstanceID != "" {
		attrs = append(attrs, strAttr("service.instance.id", o.cfg.InstanceID))
	}
	return attrs
}

func (o *OTLP) resource(b *otlpBatch, host string) *metricspb.ScopeMetrics {
	attrs := o.resourceAttrs(b.tenant, host)
	sm := &metricspb.ScopeMetrics{Scope: &commonpb.InstrumentationScope{Name: "aggd"}}
	b.req.ResourceMetrics = append(b.req.ResourceMetrics, &metricspb.ResourceMetrics{
		Resource: &resourcepb.Resource{Attributes: attrs}, ScopeMetrics: []*metricspb.ScopeMetrics{sm},
	})
	b.resources[host] = sm
	b.size += 64 + len(host) + len(b.tenant.ID)
	return sm
}

func (o *OTLP) send(ctx context.Context, b *otlpBatch) error {
	body, err := proto.Marshal(b.req)
	if err != nil {
		return err
	}
	return o.pipe.Enqueue(ctx, &Payload{Tenant: b.tenant.ID, Kind: "metrics", Body: body, Header: b.header, Points: b.points, Replaces: b.replaces})
}

func strAttr(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

// tagAttrs turns "key:value" tags into attributes; a bare tag becomes a key
// with an empty value. Attribute keys are unique in OTLP: the values of a
// key tagged more than once become one array value.
func tagAttrs(tags []string) []*commonpb.KeyValue {
	attrs := make([]*commonpb.KeyValue, 0, len(tags))
	at := map[string]int{}
	for _, t := range tags {
		k, v, _ := strings.Cut(t, ":")
		i, seen := at[k]
		if !seen {
			at[k] = len(attrs)
			attrs = append(attrs, strAttr(k, v))
			continue
		}
		val := attrs[i].Value
		arr := val.GetArrayValue()
		if arr == nil {
			arr = &commonpb.ArrayValue{Values: []*commonpb.AnyValue{{Value: val.Value}}}
			val.Value = &commonpb.AnyValue_ArrayValue{ArrayValue: arr}
		}
		arr.Values = append(arr.Values, &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}})
	}
	return attrs
}

// metric converts one aggregate.
func (o *OTLP) metric(m *window.Metric) *metricspb.Metric {
	start := uint64(m.Timestamp)
	end := uint64(m.Timestamp + m.Interval)
	attrs := tagAttrs(m.Tags)
	gauge := func(unit string, v float64) *metricspb.Metric {
		return &metricspb.Metric{Name: m.Name, Unit: unit, Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{
			DataPoints: []*metricspb.NumberDataPoint{{Attributes: attrs, TimeUnixNano: start, Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: v}}},
		}}}
	}
	switch m.Type {
	case window.TypeCount, window.TypeMonotonicCount:
		return &metricspb.Metric{Name: m.Name, Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{
			AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
			IsMonotonic:            m.Type == window.TypeMonotonicCount,
			DataPoints: []*metricspb.NumberDataPoint{{Attributes: attrs, StartTimeUnixNano: start, TimeUnixNano: end,
				Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: m.Value}}},
		}}}
	case window.TypeRate:
		return gauge("1/s", m.Value)
	case window.TypeHistogram, window.TypeTiming, window.TypeDistribution:
		dp := expHistogram(m)
		dp.Attributes, dp.StartTimeUnixNano, dp.TimeUnixNano = attrs, start, end
		return &metricspb.Metric{Name: m.Name, Data: &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{
			AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
			DataPoints:             []*metricspb.ExponentialHistogramDataPoint{dp},
		}}}
	}
	return gauge("", m.Value) // GAUGE, SET
}

// expHistogram converts a distribution's sketch. Each sketch bin (within
// 1 % of its values) moves whole into the exponential bucket holding its
// representative value, so a quantile read at a bucket's midpoint is
// within about 1.6 % at scale 6 (more at coarser scales, chosen only when
// the values span more than 2048 buckets).
func expHistogram(m *window.Metric) *metricspb.ExponentialHistogramDataPoint {
	lo, hi := math.MaxInt, math.MinInt
	scale := otlpMaxScale
	index := func(v float64) int {
		return int(math.Ceil(math.Log2(math.Abs(v))*math.Ldexp(1, scale))) - 1
	}
	// The widest magnitude range decides the scale.
	for _, v := range []float64{m.Min, m.Max} {
		if v != 0 {
			i := index(v)
			lo, hi = min(lo, i), max(hi, i)
		}
	}
	for lo <= hi && hi-lo+1 > otlpMaxBuckets && scale > -10 {
		scale--
		lo, hi = lo>>1, hi>>1
	}
	type bin struct {
		i int
		n float64
	}
	var pos, neg []bin
	var zero float64
	m.ForEach(func(v, n float64) bool {
		switch {
		case v > 0:
			pos = append(pos, bin{index(v), n})
		case v < 0:
			neg = append(neg, bin{index(v), n})
		default:
			zero += n
		}
		return false
	})
	var carry float64
	round := func(x float64) uint64 {
		x += carry
		r := math.Round(x)
		carry = x - r
		return uint64(max(r, 0))
	}
	var total uint64
	buckets := func(bins []bin) *metricspb.ExponentialHistogramDataPoint_Buckets {
		if len(bins) == 0 {
			return nil
		}
		slices.SortFunc(bins, func(a, b bin) int { return a.i - b.i })
		off := bins[0].i
		counts := make([]uint64, bins[len(bins)-1].i-off+1)
		for _, b := range bins {
			c := round(b.n)
			counts[b.i-off] += c
			total += c
		}
		return &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: int32(off), BucketCounts: counts}
	}
	dp := &metricspb.ExponentialHistogramDataPoint{Scale: int32(scale), Positive: buckets(pos), Negative: buckets(neg)}
	dp.ZeroCount = round(zero)
	total += dp.ZeroCount
	dp.Count = total
	sum, mn, mx := m.Sum, m.Min, m.Max
	dp.Sum, dp.Min, dp.Max = &sum, &mn, &mx
	return dp
}

// ExpHistogramQuantile returns the nearest-rank q-quantile of dp read at
// bucket midpoints (geometric), as a consumer would, clamped to min and
// max. It is exported for tests of this upstream's consumers.
func ExpHistogramQuantile(dp *metricspb.ExponentialHistogramDataPoint, q float64) float64 {
	rank := max(math.Ceil(q*float64(dp.Count)), 1)
	base := math.Exp2(math.Ldexp(1, -int(dp.Scale)))
	mid := func(i int) float64 { return math.Pow(base, float64(i)) * (1 + base) / 2 }
	var seen float64
	clamp := func(v float64) float64 { return min(max(v, dp.GetMin()), dp.GetMax()) }
	if nb := dp.GetNegative(); nb != nil {
		for j := len(nb.BucketCounts) - 1; j >= 0; j-- {
			if seen += float64(nb.BucketCounts[j]); seen >= rank {
				return clamp(-mid(int(nb.Offset) + j))
			}
		}
	}
	if seen += float64(dp.ZeroCount); seen >= rank {
		return clamp(0)
	}
	if pb := dp.GetPositive(); pb != nil {
		for j, c := range pb.BucketCounts {
			if seen += float64(c); seen >= rank {
				return clamp(mid(int(pb.Offset) + j))
			}
		}
	}
	return dp.GetMax()
}

// otlpSender exports payloads with the MetricsService Export call.
type otlpSender struct {
	conn        *grpc.ClientConn
	name        string
	compression Compression
	metrics     PipelineMetrics
}

var otlpCodec = codec.Client()

// Send implements Sender, classifying errors as the OTLP specification
// says: Canceled, DeadlineExceeded, Aborted, OutOfRange, Unavailable and
// DataLoss are retried, ResourceExhausted only with RetryInfo; the rest are
// permanent. Rejected points of a partial success are counted as lost.
func (s *otlpSender) Send(ctx context.Context, p *Payload) error {
	md := metadata.MD{}
	for k, v := range p.Header {
		md[strings.ToLower(k)] = v
	}
	ctx = metadata.NewOutgoingContext(ctx, md)
	opts := []grpc.CallOption{grpc.ForceCodecV2(otlpCodec)}
	if s.compression == CompressGzip {
		opts = append(opts, grpc.UseCompressor("gzip"))
	}
	var err error
	switch p.Kind {
	case "logs":
		var resp collogspb.ExportLogsServiceResponse
		if err = s.conn.Invoke(ctx, collogspb.LogsService_Export_FullMethodName, codec.Raw(p.Body), &resp, opts...); err == nil {
			if ps := resp.GetPartialSuccess(); ps.GetRejectedLogRecords() > 0 {
				s.metrics.Lost(s.name, "partial_success", int(ps.GetRejectedLogRecords()))
			}
			return nil
		}
	case "traces":
		var resp coltracepb.ExportTraceServiceResponse
		if err = s.conn.Invoke(ctx, coltracepb.TraceService_Export_FullMethodName, codec.Raw(p.Body), &resp, opts...); err == nil {
			if ps := resp.GetPartialSuccess(); ps.GetRejectedSpans() > 0 {
				s.metrics.Lost(s.name, "partial_success", int(ps.GetRejectedSpans()))
			}
			return nil
		}
	default:
		var resp colmetricspb.ExportMetricsServiceResponse
		if err = s.conn.Invoke(ctx, colmetricspb.MetricsService_Export_FullMethodName, codec.Raw(p.Body), &resp, opts...); err == nil {
			if ps := resp.GetPartialSuccess(); ps.GetRejectedDataPoints() > 0 {
				s.metrics.Lost(s.name, "partial_success", int(ps.GetRejectedDataPoints()))
			}
			return nil
		}
	}
	st := status.Convert(err)
	reason := "grpc_" + strings.ToLower(st.Code().String())
	var after time.Duration
	hasInfo := false
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			after, hasInfo = ri.GetRetryDelay().AsDuration(), true
		}
	}
	switch st.Code() {
	case codes.Canceled, codes.DeadlineExceeded, codes.Aborted, codes.OutOfRange, codes.Unavailable, codes.DataLoss:
	case codes.ResourceExhausted:
		if !hasInfo {
			return &PermanentError{Reason: reason, Err: err}
		}
	default:
		return &PermanentError{Reason: reason, Err: err}
	}
	if st.Code() == codes.DeadlineExceeded {
		reason = "timeout"
	}
	if hasInfo {
		return &RetryAfterError{After: after, Reason: reason, Err: err}
	}
	return &ReasonError{Reason: reason, Err: err}
}
