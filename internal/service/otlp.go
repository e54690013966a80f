package service

import (
	"context"
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// MaxCumulativeStreams bounds the cumulative OTLP streams whose last
// point the receiver remembers to compute deltas.
const MaxCumulativeStreams = 1_000_000

// otlpReceiver serves the OTLP/gRPC MetricsService and TraceService into
// the same ingestion as the aggd.v1 API.
type otlpReceiver struct {
	colmetricspb.UnimplementedMetricsServiceServer
	s      *Server
	traces otlpTraces

	mu      sync.Mutex
	streams map[string]*cumulative
}

type otlpTraces struct {
	coltracepb.UnimplementedTraceServiceServer
	r *otlpReceiver
}

// cumulative is the last point of a cumulative stream.
type cumulative struct {
	start  uint64
	value  float64   // sums, summary sum
	count  uint64    // summary count
	counts []uint64  // explicit histogram buckets
	bounds []float64 // the bounds those counts were for
}

// RegisterOTLP registers the OTLP/gRPC metrics and trace services on g, so
// that OpenTelemetry SDKs and Collectors export to aggd's gRPC port. The
// tenant comes from the call's metadata as for the aggd.v1 API.
func (s *Server) RegisterOTLP(g *grpc.Server) {
	r := &otlpReceiver{s: s, streams: map[string]*cumulative{}}
	r.traces.r = r
	colmetricspb.RegisterMetricsServiceServer(g, r)
	coltracepb.RegisterTraceServiceServer(g, &r.traces)
}

// anyString renders an attribute value as a tag value.
func anyString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_DoubleValue:
		return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	case *commonpb.AnyValue_BytesValue:
		return hex.EncodeToString(x.BytesValue)
	case nil:
		return ""
	}
	return fmt.Sprint(v.GetValue())
}

// attrTags appends key:value tags; host.name becomes the host instead.
func attrTags(tags []string, host *string, attrs []*commonpb.KeyValue) []string {
	for _, kv := range attrs {
		v := anyString(kv.Value)
		if kv.Key == "host.name" && host != nil {
			*host = v
			continue
		}
		tags = append(tags, kv.Key+":"+v)
	}
	return tags
}

// pointBatch collects the samples of one Export and which data point each
// came from, to refuse a point whole.
type pointBatch struct {
	r        *otlpReceiver
	b        window.Batch
	lim      codec.Limits
	points   int
	rejected int
	firstErr string
	arena    []byte
}

// add validates and appends one sample of the current data point; it
// reports false (and counts the point refused) on the first bad sample.
func (pb *pointBatch) add(s window.Sample) bool {
	if r, detail := pb.lim.Check(&s); r != window.Accepted {
		pb.refuse(r, detail)
		return false
	}
	pb.arena = s.Prepare(pb.b.Tenant, pb.arena)
	pb.b.Samples = append(pb.b.Samples, s)
	pb.b.Results = append(pb.b.Results, window.Accepted)
	return true
}

func (pb *pointBatch) refuse(r window.Reason, detail string) {
	pb.rejected++
	pb.b.Tenant.Rejected[r].Add(1)
	if pb.firstErr == "" {
		pb.firstErr = r.String() + ": " + detail
	}
}

// streamKey names a cumulative stream.
func streamKey(t *window.Tenant, name string, tags []string) string {
	sorted := slices.Clone(tags)
	slices.Sort(sorted)
	return t.ID + "\x00" + name + "\x00" + strings.Join(sorted, "\x00")
}

// Export implements the OTLP MetricsService.
func (r *otlpReceiver) Export(ctx context.Context, req *colmetricspb.ExportMetricsServiceRequest) (*colmetricspb.ExportMetricsServiceResponse, error) {
	tn, err := r.s.tenants.Resolve(ctx)
	if err != nil {
		return nil, err
	}
	if err := r.s.admit(ctx, tn); err != nil {
		return nil, err
	}
	pb := &pointBatch{r: r, lim: r.s.lim}
	pb.b.Tenant, pb.b.Now = tn, time.Now().UnixNano()
	for _, rm := range req.ResourceMetrics {
		var host string
		resTags := attrTags(nil, &host, rm.GetResource().GetAttributes())
		for _, sm := range rm.ScopeMetrics {
			tags := attrTags(slices.Clone(resTags), &host, sm.GetScope().GetAttributes())
			for _, m := range sm.Metrics {
				r.metric(pb, m, tags, host)
			}
		}
	}
	if err := r.s.ingestConverted(tn, pb.b.Now, pb.b.Samples, pb.b.Results, nil, nil, func() { r.s.ing.Ingest(&pb.b) }); err != nil {
		return nil, err
	}
	accepted := 0
	for _, res := range pb.b.Results {
		if res == window.Accepted {
			accepted++
		} else {
			pb.refuse(res, ingestDetail(res))
		}
	}
	tn.Accepted.Add(uint64(accepted))
	resp := &colmetricspb.ExportMetricsServiceResponse{}
	if pb.rejected > 0 {
		resp.PartialSuccess = &colmetricspb.ExportMetricsPartialSuccess{RejectedDataPoints: int64(pb.rejected), ErrorMessage: pb.firstErr}
	}
	return resp, nil
}

func numberValue(dp *metricspb.NumberDataPoint) float64 {
	if v, ok := dp.Value.(*metricspb.NumberDataPoint_AsInt); ok {
		return float64(v.AsInt)
	}
	return dp.GetAsDouble()
}

// metric converts one metric's data points.
func (r *otlpReceiver) metric(pb *pointBatch, m *metricspb.Metric, resTags []string, host string) {
	base := func(attrs []*commonpb.KeyValue, ts uint64) window.Sample {
		h := host
		tags := attrTags(slices.Clone(resTags), &h, attrs)
		return window.Sample{Name: m.Name, Host: h, Tags: tags, SampleRate: 1, Timestamp: int64(ts)}
	}
	switch d := m.Data.(type) {
	case *metricspb.Metric_Gauge:
		for _, dp := range d.Gauge.DataPoints {
			s := base(dp.Attributes, dp.TimeUnixNano)
			s.Type, s.Value = window.TypeGauge, numberValue(dp)
			pb.add(s)
		}
	case *metricspb.Metric_Sum:
		cum := d.Sum.AggregationTemporality == metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE
		for _, dp := range d.Sum.DataPoints {
			s := base(dp.Attributes, dp.TimeUnixNano)
			v := numberValue(dp)
			switch {
			case cum && !d.Sum.IsMonotonic: // an up-down counter's level
				s.Type, s.Value = window.TypeGauge, v
			case cum:
				delta, ok := r.sumDelta(pb, streamKey(pb.b.Tenant, m.Name, s.Tags), dp.StartTimeUnixNano, v)
				if !ok {
					continue
				}
				s.Type, s.Value = window.TypeCount, delta
			default:
				s.Type, s.Value = window.TypeCount, v
			}
			pb.add(s)
		}
	case *metricspb.Metric_Histogram:
		cum := d.Histogram.AggregationTemporality == metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE
		for _, dp := range d.Histogram.DataPoints {
			s := base(dp.Attributes, dp.TimeUnixNano)
			counts := dp.BucketCounts
			if cum {
				var ok bool
				if counts, ok = r.histogramDelta(pb, streamKey(pb.b.Tenant, m.Name, s.Tags), dp); !ok {
					continue
				}
			}
			r.explicitBuckets(pb, s, dp, counts)
		}
	case *metricspb.Metric_ExponentialHistogram:
		for _, dp := range d.ExponentialHistogram.DataPoints {
			if d.ExponentialHistogram.AggregationTemporality == metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE {
				pb.refuse(window.ReasonUnsupported, "cumulative exponential histograms are not taken; export them as delta")
				continue
			}
			r.expBuckets(pb, base(dp.Attributes, dp.TimeUnixNano), dp)
		}
	case *metricspb.Metric_Summary:
		for _, dp := range d.Summary.DataPoints {
			s := base(dp.Attributes, dp.TimeUnixNano)
			key := streamKey(pb.b.Tenant, m.Name, s.Tags)
			if dc, ds, ok := r.summaryDelta(pb, key, dp); ok {
				c, sum := s, s
				c.Name, c.Type, c.Value = m.Name+".count", window.TypeCount, dc
				sum.Name, sum.Type, sum.Value = m.Name+".sum", window.TypeCount, ds
				if !pb.add(c) || !pb.add(sum) {
					continue
				}
			}
			for _, q := range dp.QuantileValues {
				g := s
				g.Tags = append(slices.Clone(s.Tags), "quantile:"+strconv.FormatFloat(q.Quantile, 'g', -1, 64))
				g.Type, g.Value = window.TypeGauge, q.Value
				pb.add(g)
			}
		}
	default:
		pb.refuse(window.ReasonUnsupported, fmt.Sprintf("metric %s has no supported data", m.Name))
	}
}

// stream returns the state of a cumulative stream, creating it; nil when
// the state is full.
func (r *otlpReceiver) stream(pb *pointBatch, key string, start uint64) (st *cumulative, fresh bool) {
	st = r.streams[key]
	if st == nil {
		if len(r.streams) >= MaxCumulativeStreams {
			pb.refuse(window.ReasonTenantLimit, "too many cumulative streams to track")
			return nil, false
		}
		st = &cumulative{start: start}
		r.streams[key] = st
		return st, true
	}
	if st.start != start { // the stream restarted
		*st = cumulative{start: start}
		return st, true
	}
	return st, false
}

// sumDelta turns a cumulative monotonic sum into a delta. The first point of
// a stream is its baseline and yields nothing; a restart (new start time)
// or a drop counts from zero.
func (r *otlpReceiver) sumDelta(pb *pointBatch, key string, start uint64, v float64) (float64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, fresh := r.stream(pb, key, start)
	if st == nil {
		return 0, false
	}
	prev := st.value
	st.value = v
	switch {
	case fresh && start == 0:
		return 0, false // no start time: the first point is only a baseline
	case fresh:
		return v, true // a stream with a start time counts from it
	case v < prev:
		return v, true
	}
	return v - prev, true
}

func (r *otlpReceiver) histogramDelta(pb *pointBatch, key string, dp *metricspb.HistogramDataPoint) ([]uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, fresh := r.stream(pb, key, dp.StartTimeUnixNano)
	if st == nil {
		return nil, false
	}
	prev, prevBounds := st.counts, st.bounds
	st.counts, st.bounds = slices.Clone(dp.BucketCounts), slices.Clone(dp.ExplicitBounds)
	if fresh && dp.StartTimeUnixNano == 0 {
		return nil, false
	}
	if fresh || !slices.Equal(prevBounds, dp.ExplicitBounds) || len(prev) != len(dp.BucketCounts) {
		return dp.BucketCounts, true
	}
	out := make([]uint64, len(prev))
	for i, c := range dp.BucketCounts {
		if c < prev[i] { // a reset
			return dp.BucketCounts, true
		}
		out[i] = c - prev[i]
	}
	return out, true
}

func (r *otlpReceiver) summaryDelta(pb *pointBatch, key string, dp *metricspb.SummaryDataPoint) (float64, float64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, fresh := r.stream(pb, key, dp.StartTimeUnixNano)
	if st == nil {
		return 0, 0, false
	}
	pc, ps := st.count, st.value
	st.count, st.value = dp.Count, dp.Sum
	switch {
	case fresh && dp.StartTimeUnixNano == 0:
		return 0, 0, false
	case fresh || dp.Count < pc:
		return float64(dp.Count), dp.Sum, true
	}
	return float64(dp.Count - pc), dp.Sum - ps, true
}

// weighted adds count values v as one distribution sample.
func (pb *pointBatch) weighted(s window.Sample, v float64, count uint64) bool {
	if count == 0 {
		return true
	}
	s.Type, s.Value, s.SampleRate = window.TypeDistribution, v, 1/float64(count)
	return pb.add(s)
}

// explicitBuckets adds each bucket's count at its midpoint; the open-ended
// buckets use the point's min and max when set, else their finite bound.
func (r *otlpReceiver) explicitBuckets(pb *pointBatch, s window.Sample, dp *metricspb.HistogramDataPoint, counts []uint64) {
	b := dp.ExplicitBounds
	if len(counts) != len(b)+1 {
		pb.refuse(window.ReasonMalformed, "bucket counts do not match the explicit bounds")
		return
	}
	for i, c := range counts {
		var v float64
		switch {
		case len(b) == 0:
			v = dp.GetSum() / math.Max(float64(dp.Count), 1)
		case i == 0:
			v = b[0]
			if dp.Min != nil {
				v = math.Min(dp.GetMin(), b[0])
			}
		case i == len(b):
			v = b[len(b)-1]
			if dp.Max != nil {
				v = math.Max(dp.GetMax(), v)
			}
		default:
			v = (b[i-1] + b[i]) / 2
		}
		if !pb.weighted(s, v, c) {
			return
		}
	}
}

// expBuckets adds each exponential bucket's count at its geometric middle.
func (r *otlpReceiver) expBuckets(pb *pointBatch, s window.Sample, dp *metricspb.ExponentialHistogramDataPoint) {
	base := math.Exp2(math.Ldexp(1, -int(dp.Scale)))
	if !(base > 1) || math.IsInf(base, 0) {
		pb.refuse(window.ReasonInvalidValue, "exponential histogram scale out of range")
		return
	}
	mid := func(i int) float64 { return math.Pow(base, float64(i)+0.5) }
	if !pb.weighted(s, 0, dp.ZeroCount) {
		return
	}
	for sign, bk := range map[float64]*metricspb.ExponentialHistogramDataPoint_Buckets{1: dp.Positive, -1: dp.Negative} {
		for j, c := range bk.GetBucketCounts() {
			if !pb.weighted(s, sign*mid(int(bk.GetOffset())+j), c) {
				return
			}
		}
	}
}

// Export implements the OTLP TraceService: spans go through the same
// stats and tail sampling as aggd.v1 spans.
func (t *otlpTraces) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s := t.r.s
	tn, err := s.tenants.Resolve(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.admit(ctx, tn); err != nil {
		return nil, err
	}
	var sps []spans.Span
	var results []window.Reason
	var firstErr string
	for _, rs := range req.ResourceSpans {
		service := "unknown_service"
		var resAttrs []spans.Attr
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.Key == "service.name" {
				service = anyString(kv.Value)
				continue
			}
			resAttrs = append(resAttrs, spans.Attr{Key: kv.Key, Value: anyString(kv.Value)})
		}
		for _, ss := range rs.ScopeSpans {
			attrs := slices.Clone(resAttrs)
			for _, kv := range ss.GetScope().GetAttributes() {
				attrs = append(attrs, spans.Attr{Key: kv.Key, Value: anyString(kv.Value)})
			}
			for _, p := range ss.Spans {
				sp, r, detail := otlpSpan(p, service, attrs)
				if r == window.Accepted {
					r, detail = s.lim.CheckSpan(&sp)
				}
				if r != window.Accepted && firstErr == "" {
					firstErr = r.String() + ": " + detail
				}
				sps = append(sps, sp)
				results = append(results, r)
			}
		}
	}
	if s.spanIng != nil {
		now := time.Now().UnixNano()
		if err := s.ingestConverted(tn, now, nil, nil, sps, results, func() { s.spanIng.IngestSpans(tn, now, sps, results) }); err != nil {
			return nil, err
		}
	} else {
		for i := range results {
			if results[i] == window.Accepted {
				results[i] = window.ReasonUnsupported
			}
		}
	}
	rejected := 0
	for _, r := range results {
		if r != window.Accepted {
			rejected++
			tn.Rejected[r].Add(1)
			if firstErr == "" {
				firstErr = r.String() + ": " + ingestDetail(r)
			}
		}
	}
	tn.Accepted.Add(uint64(len(results) - rejected))
	resp := &coltracepb.ExportTraceServiceResponse{}
	if rejected > 0 {
		resp.PartialSuccess = &coltracepb.ExportTracePartialSuccess{RejectedSpans: int64(rejected), ErrorMessage: firstErr}
	}
	return resp, nil
}

// otlpSpan converts an OTLP span. The resource is the resource.name
// attribute, else http.route, else the span name; the HTTP status is
// http.response.status_code or http.status_code.
func otlpSpan(p *tracepb.Span, service string, resAttrs []spans.Attr) (spans.Span, window.Reason, string) {
	var s spans.Span
	if len(p.TraceId) != 16 || len(p.SpanId) != 8 || (len(p.ParentSpanId) != 0 && len(p.ParentSpanId) != 8) {
		return s, window.ReasonInvalidValue, "trace_id must be 16 bytes, span_id 8, parent_span_id empty or 8"
	}
	copy(s.TraceID[:], p.TraceId)
	copy(s.SpanID[:], p.SpanId)
	if len(p.ParentSpanId) == 8 && [8]byte(p.ParentSpanId) != [8]byte{} {
		copy(s.ParentID[:], p.ParentSpanId)
		s.HasParent = true
	}
	s.Service, s.Name, s.Resource = service, p.Name, p.Name
	s.Kind = spans.Kind(min(max(int32(p.Kind), 0), int32(spans.KindConsumer)))
	s.Start = int64(p.StartTimeUnixNano)
	s.Duration = int64(p.EndTimeUnixNano) - int64(p.StartTimeUnixNano)
	s.Error = p.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR
	s.Attrs = append(s.Attrs, resAttrs...)
	route := ""
	for _, kv := range p.Attributes {
		v := anyString(kv.Value)
		switch kv.Key {
		case "resource.name":
			s.Resource = v
		case "http.route":
			route = v
		case "http.response.status_code", "http.status_code":
			if c, err := strconv.ParseUint(v, 10, 32); err == nil {
				s.HTTPStatus = uint32(c)
			}
		}
		s.Attrs = append(s.Attrs, spans.Attr{Key: kv.Key, Value: v})
	}
	if route != "" && s.Resource == p.Name {
		s.Resource = route
	}
	return s, window.Accepted, ""
}
