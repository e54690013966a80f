package service

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/DataDog/sketches-go/ddsketch/mapping"
	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/window"
)

// MaxCumulativeStreams bounds the cumulative OTLP streams whose last
// point the receiver remembers to compute deltas.
const MaxCumulativeStreams = 1_000_000

// DefaultDroppedResourceAttrs are the resource attributes that name one
// process rather than what it measures: as tags they would start new
// contexts every time an SDK restarts.
var DefaultDroppedResourceAttrs = []string{
	"service.instance.id",
	"process.pid", "process.parent_pid", "process.command", "process.command_line",
	"process.command_args", "process.executable.path", "process.creation.time",
	"container.id", "k8s.pod.uid",
}

// OTLPConfig configures the OTLP receiver.
type OTLPConfig struct {
	// ResourceTags, when not empty, lists the only resource attributes
	// that become tags. DropResourceTags lists resource attributes that
	// never do. An entry ending in ".*" matches every key with that
	// prefix. host.name becomes the host in any case.
	ResourceTags, DropResourceTags []string
}

// DefaultOTLPConfig keeps every resource attribute but
// DefaultDroppedResourceAttrs.
func DefaultOTLPConfig() OTLPConfig {
	return OTLPConfig{DropResourceTags: DefaultDroppedResourceAttrs}
}

// Validate reports an empty attribute pattern.
func (c OTLPConfig) Validate() error {
	for _, k := range slices.Concat(c.ResourceTags, c.DropResourceTags) {
		if k == "" || k == ".*" {
			return errors.New("service: an OTLP resource attribute pattern is empty")
		}
	}
	return nil
}

func matchAttr(patterns []string, key string) bool {
	for _, p := range patterns {
		if pre, ok := strings.CutSuffix(p, ".*"); ok {
			if strings.HasPrefix(key, pre+".") {
				return true
			}
		} else if p == key {
			return true
		}
	}
	return false
}

// resourceTag reports whether a resource attribute becomes a tag.
func (c *OTLPConfig) resourceTag(key string) bool {
	return (len(c.ResourceTags) == 0 || matchAttr(c.ResourceTags, key)) && !matchAttr(c.DropResourceTags, key)
}

// OTLP receives OTLP metrics and traces, over gRPC (Register) and HTTP
// (Handler), into the same ingestion as the aggd.v1 API. It is safe for
// concurrent use.
type OTLP struct {
	colmetricspb.UnimplementedMetricsServiceServer
	s      *Server
	cfg    OTLPConfig
	traces otlpTraces
	deltas *deltaTracker
}

type otlpTraces struct {
	coltracepb.UnimplementedTraceServiceServer
	r *OTLP
}

// NewOTLP returns s's OTLP receiver. Cumulative streams that started
// before now count from their first point seen.
func (s *Server) NewOTLP(cfg OTLPConfig) *OTLP {
	r := &OTLP{s: s, cfg: cfg, deltas: newDeltaTracker(uint64(time.Now().UnixNano()), MaxCumulativeStreams)}
	r.traces.r = r
	return r
}

// Register registers the OTLP/gRPC metrics and trace services on g. The
// tenant comes from the call's metadata as for the aggd.v1 API.
func (r *OTLP) Register(g *grpc.Server) {
	colmetricspb.RegisterMetricsServiceServer(g, r)
	coltracepb.RegisterTraceServiceServer(g, &r.traces)
}

// RegisterOTLP registers an OTLP receiver with the default configuration
// on g.
func (s *Server) RegisterOTLP(g *grpc.Server) { s.NewOTLP(DefaultOTLPConfig()).Register(g) }

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

// attrTags appends key:value tags of the attributes keep accepts (nil:
// all); host.name becomes the host instead.
func attrTags(tags []string, host *string, attrs []*commonpb.KeyValue, keep func(string) bool) []string {
	for _, kv := range attrs {
		if kv.Key == "host.name" && host != nil {
			*host = anyString(kv.Value)
			continue
		}
		if keep != nil && !keep(kv.Key) {
			continue
		}
		tags = append(tags, kv.Key+":"+anyString(kv.Value))
	}
	return tags
}

// appendAttrIdentity appends what identifies attrs as a set: each key and
// its typed value, in key order.
func appendAttrIdentity(b []byte, attrs []*commonpb.KeyValue) []byte {
	if !slices.IsSortedFunc(attrs, func(a, b *commonpb.KeyValue) int { return strings.Compare(a.Key, b.Key) }) {
		attrs = slices.SortedFunc(slices.Values(attrs), func(a, b *commonpb.KeyValue) int { return strings.Compare(a.Key, b.Key) })
	}
	b = protowire.AppendVarint(b, uint64(len(attrs)))
	for _, kv := range attrs {
		b = protowire.AppendString(b, kv.Key)
		switch x := kv.Value.GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			b = append(b, 's')
			b = protowire.AppendString(b, x.StringValue)
		case *commonpb.AnyValue_IntValue:
			b = append(b, 'i')
			b = protowire.AppendVarint(b, uint64(x.IntValue))
		case *commonpb.AnyValue_DoubleValue:
			b = append(b, 'd')
			b = protowire.AppendFixed64(b, math.Float64bits(x.DoubleValue))
		case *commonpb.AnyValue_BoolValue:
			b = append(b, 'b')
			b = protowire.AppendVarint(b, protowire.EncodeBool(x.BoolValue))
		case *commonpb.AnyValue_BytesValue:
			b = append(b, 'y')
			b = protowire.AppendBytes(b, x.BytesValue)
		case nil:
			b = append(b, 'n')
		default:
			m, _ := proto.MarshalOptions{Deterministic: true}.Marshal(kv.Value)
			b = append(b, 'x')
			b = protowire.AppendBytes(b, m)
		}
	}
	return b
}

// pointBatch collects the samples of one Export and which data point each
// came from, to refuse a point whole.
type pointBatch struct {
	r        *OTLP
	b        window.Batch
	lim      codec.Limits
	rejected int
	firstErr string
	arena    []byte
	key      []byte
	scratch  []uint64
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

// Export implements the OTLP MetricsService.
func (r *OTLP) Export(ctx context.Context, req *colmetricspb.ExportMetricsServiceRequest) (*colmetricspb.ExportMetricsServiceResponse, error) {
	tn, err := r.s.tenants.Resolve(ctx)
	if err != nil {
		return nil, err
	}
	if err := r.s.admit(ctx, tn); err != nil {
		return nil, err
	}
	return r.exportMetrics(tn, req)
}

// exportMetrics converts and ingests the metrics of an admitted request.
func (r *OTLP) exportMetrics(tn *window.Tenant, req *colmetricspb.ExportMetricsServiceRequest) (*colmetricspb.ExportMetricsServiceResponse, error) {
	pb := &pointBatch{r: r, lim: r.s.lim}
	pb.b.Tenant, pb.b.Now = tn, time.Now().UnixNano()
	var resID []byte
	for _, rm := range req.ResourceMetrics {
		var host string
		res := rm.GetResource().GetAttributes()
		resTags := attrTags(nil, &host, res, r.cfg.resourceTag)
		resID = appendAttrIdentity(protowire.AppendString(resID[:0], tn.ID), res)
		for _, sm := range rm.ScopeMetrics {
			scope := sm.GetScope()
			tags := attrTags(slices.Clone(resTags), nil, scope.GetAttributes(), nil)
			id := protowire.AppendString(slices.Clone(resID), scope.GetName())
			id = protowire.AppendString(id, scope.GetVersion())
			id = appendAttrIdentity(id, scope.GetAttributes())
			for _, m := range sm.Metrics {
				r.metric(pb, m, tags, host, id)
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

const noRecordedValue = uint32(metricspb.DataPointFlags_DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK)

// streamKey names a point's cumulative stream: scope is the resource's and
// scope's identity, kind the metric's kind.
func (pb *pointBatch) streamKey(scope []byte, kind byte, m *metricspb.Metric, attrs []*commonpb.KeyValue) []byte {
	k := append(pb.key[:0], scope...)
	k = append(k, kind)
	k = protowire.AppendString(k, m.Name)
	k = protowire.AppendString(k, m.Unit)
	k = appendAttrIdentity(k, attrs)
	pb.key = k
	return k
}

// tracked reports whether a cumulative point yields a delta, refusing it
// when the stream cannot be tracked.
func (pb *pointBatch) tracked(res deltaResult) bool {
	if res == deltaFull {
		pb.refuse(window.ReasonTenantLimit, "too many cumulative streams to track")
	}
	return res == deltaOK
}

// metric converts one metric's data points. Points flagged
// NO_RECORDED_VALUE (staleness markers) are skipped.
func (r *OTLP) metric(pb *pointBatch, m *metricspb.Metric, resTags []string, host string, scope []byte) {
	base := func(attrs []*commonpb.KeyValue, ts uint64) window.Sample {
		h := host
		tags := attrTags(slices.Clone(resTags), &h, attrs, nil)
		return window.Sample{Name: m.Name, Host: h, Tags: tags, SampleRate: 1, Timestamp: int64(ts)}
	}
	const cumulative = metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE
	switch d := m.Data.(type) {
	case *metricspb.Metric_Gauge:
		for _, dp := range d.Gauge.DataPoints {
			if dp.Flags&noRecordedValue != 0 {
				continue
			}
			s := base(dp.Attributes, dp.TimeUnixNano)
			s.Type, s.Value = window.TypeGauge, numberValue(dp)
			pb.add(s)
		}
	case *metricspb.Metric_Sum:
		cum := d.Sum.AggregationTemporality == cumulative
		for _, dp := range d.Sum.DataPoints {
			if dp.Flags&noRecordedValue != 0 {
				continue
			}
			s := base(dp.Attributes, dp.TimeUnixNano)
			v := numberValue(dp)
			switch {
			case cum && !d.Sum.IsMonotonic: // an up-down counter's level
				s.Type, s.Value = window.TypeGauge, v
			case cum:
				if !finite(v) {
					pb.refuse(window.ReasonInvalidValue, fmt.Sprintf("value %v is not finite", v))
					continue
				}
				delta, res := r.deltas.sum(pb.streamKey(scope, 's', m, dp.Attributes), dp.StartTimeUnixNano, dp.TimeUnixNano, v)
				if !pb.tracked(res) {
					continue
				}
				s.Type, s.Value = window.TypeCount, delta
			default:
				s.Type, s.Value = window.TypeCount, v
			}
			pb.add(s)
		}
	case *metricspb.Metric_Histogram:
		cum := d.Histogram.AggregationTemporality == cumulative
		for _, dp := range d.Histogram.DataPoints {
			if dp.Flags&noRecordedValue != 0 {
				continue
			}
			if detail := checkExplicit(dp); detail != "" {
				pb.refuse(window.ReasonMalformed, detail)
				continue
			}
			h := histInput{bounds: dp.ExplicitBounds, counts: dp.BucketCounts, count: dp.Count, sum: dp.GetSum(), hasSum: dp.Sum != nil}
			if cum {
				delta, res := r.deltas.histogram(pb.streamKey(scope, 'h', m, dp.Attributes), dp.StartTimeUnixNano, dp.TimeUnixNano,
					dp.ExplicitBounds, dp.BucketCounts, dp.Count, dp.GetSum(), pb.scratch)
				if !pb.tracked(res) {
					continue
				}
				pb.scratch = delta.counts[:0]
				h.counts, h.count, h.sum = delta.counts, delta.count, delta.sum
				// A delta's extremes are unknown: the Collector removes them.
			} else {
				h.min, h.max = dp.Min, dp.Max
			}
			r.histogram(pb, base(dp.Attributes, dp.TimeUnixNano), &h)
		}
	case *metricspb.Metric_ExponentialHistogram:
		cum := d.ExponentialHistogram.AggregationTemporality == cumulative
		for _, dp := range d.ExponentialHistogram.DataPoints {
			if dp.Flags&noRecordedValue != 0 {
				continue
			}
			if dp.Scale < -10 || dp.Scale > 20 {
				pb.refuse(window.ReasonInvalidValue, fmt.Sprintf("exponential histogram scale %d is outside [-10, 20]", dp.Scale))
				continue
			}
			p := expPoint{scale: dp.Scale, zeroThreshold: dp.ZeroThreshold, zeroCount: dp.ZeroCount, count: dp.Count, sum: dp.GetSum(),
				pos: expBuckets{dp.Positive.GetOffset(), dp.Positive.GetBucketCounts()},
				neg: expBuckets{dp.Negative.GetOffset(), dp.Negative.GetBucketCounts()}}
			min, max := dp.Min, dp.Max
			if cum {
				var res deltaResult
				p, res = r.deltas.exponential(pb.streamKey(scope, 'e', m, dp.Attributes), dp.StartTimeUnixNano, dp.TimeUnixNano, p)
				if !pb.tracked(res) {
					continue
				}
				min, max = nil, nil
			}
			r.exponential(pb, base(dp.Attributes, dp.TimeUnixNano), &p, dp.Sum != nil, min, max)
		}
	case *metricspb.Metric_Summary:
		for _, dp := range d.Summary.DataPoints {
			if dp.Flags&noRecordedValue != 0 {
				continue
			}
			s := base(dp.Attributes, dp.TimeUnixNano)
			dc, ds, res := r.deltas.summary(pb.streamKey(scope, 'q', m, dp.Attributes), dp.StartTimeUnixNano, dp.TimeUnixNano, dp.Count, dp.Sum)
			if pb.tracked(res) {
				c, sum := s, s
				c.Name, c.Type, c.Value = m.Name+".count", window.TypeCount, float64(dc)
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

// checkExplicit reports what makes an explicit-bucket histogram point
// malformed, or "".
func checkExplicit(dp *metricspb.HistogramDataPoint) string {
	b := dp.ExplicitBounds
	switch {
	case len(dp.BucketCounts) == 0 && len(b) == 0:
		return ""
	case len(dp.BucketCounts) != len(b)+1:
		return fmt.Sprintf("%d bucket counts for %d explicit bounds, want one more count than bounds", len(dp.BucketCounts), len(b))
	}
	for i, v := range b {
		if !finite(v) || (i > 0 && !(v > b[i-1])) {
			return "explicit bounds must be finite and increasing"
		}
	}
	var n uint64
	for _, c := range dp.BucketCounts {
		n += c
	}
	if n != dp.Count {
		return fmt.Sprintf("bucket counts add up to %d, count is %d", n, dp.Count)
	}
	return ""
}

// histInput is a delta explicit-bucket histogram point.
type histInput struct {
	bounds   []float64
	counts   []uint64
	count    uint64
	sum      float64
	hasSum   bool
	min, max *float64
}

// sketchMapping is the index mapping of aggd's sketches: spreading a
// bucket over its bins puts each share at a bin's own value.
var sketchMapping, _ = mapping.NewLogarithmicMapping(window.RelativeAccuracy)

// spread adds count c (a whole number) spread evenly over [lo, hi] to h's
// bins: each sketch bin the interval crosses gets the share of its width,
// in whole counts, as the Datadog Agent's quantile.Agent.InsertInterpolate
// does.
func spread(h *window.HistPoint, lo, hi, c float64) {
	switch {
	case c == 0:
	case !(hi > lo):
		h.Values, h.Counts = append(h.Values, lo), append(h.Counts, c)
	case lo < 0 && hi > 0:
		neg := math.Round(c * -lo / (hi - lo))
		spread(h, lo, 0, neg)
		spread(h, 0, hi, c-neg)
	case hi <= 0:
		n := len(h.Values)
		spreadPositive(h, -hi, -lo, c)
		for i := n; i < len(h.Values); i++ {
			h.Values[i] = -h.Values[i]
		}
	default:
		spreadPositive(h, lo, hi, c)
	}
}

// spreadPositive spreads c over [lo, hi], 0 ≤ lo < hi. The part below a
// millionth of hi goes to the lowest bin, which bounds the bins touched.
// Each bin gets the rounded running share less what earlier bins got, so
// the counts add up to c.
func spreadPositive(h *window.HistPoint, lo, hi, c float64) {
	m := sketchMapping
	a := max(lo, hi*1e-6, m.MinIndexableValue())
	k0, k1 := m.Index(a), m.Index(hi)
	given := 0.0
	for k := k0; k <= k1; k++ {
		pl, ph := max(m.LowerBound(k), lo), min(m.LowerBound(k+1), hi)
		if k == k0 {
			pl = lo
		}
		if k == k1 {
			ph = hi
		}
		if !(ph > pl) {
			continue
		}
		n := math.Round(c*(ph-lo)/(hi-lo)) - given
		if k == k1 {
			n = c - given
		}
		if n <= 0 {
			continue
		}
		given += n
		h.Values = append(h.Values, min(max(m.Value(k), pl), ph))
		h.Counts = append(h.Counts, n)
	}
}

// histogram adds an explicit-bucket histogram point as one distribution
// sample: each bucket's count spread over its bounds (the open-ended
// buckets over the point's minimum or maximum when set, else at their
// finite bound, as Datadog's OTLP mapping does in getSketchBuckets), with
// the point's exact count, sum, minimum and maximum.
func (r *OTLP) histogram(pb *pointBatch, s window.Sample, in *histInput) {
	if in.count == 0 {
		return
	}
	h := &window.HistPoint{Count: float64(in.count), Min: math.Inf(1), Max: math.Inf(-1)}
	b := in.bounds
	if len(in.counts) == 0 { // count and sum only
		avg := in.sum / float64(in.count)
		spread(h, avg, avg, float64(in.count))
	}
	for i, c := range in.counts {
		if c == 0 {
			continue
		}
		lo, hi := math.Inf(-1), math.Inf(1)
		if i > 0 {
			lo = b[i-1]
		}
		if i < len(b) {
			hi = b[i]
		}
		if in.min != nil {
			lo, hi = max(lo, *in.min), max(hi, *in.min)
		}
		if in.max != nil {
			lo, hi = min(lo, *in.max), min(hi, *in.max)
		}
		switch {
		case math.IsInf(lo, -1) && math.IsInf(hi, 1): // one bucket, no bounds: at the mean
			lo = in.sum / float64(in.count)
			hi = lo
		case math.IsInf(hi, 1):
			hi = lo
		case math.IsInf(lo, -1):
			lo = hi
		}
		h.Min, h.Max = min(h.Min, lo), max(h.Max, hi)
		spread(h, lo, hi, float64(c))
	}
	h.Sum = in.sum
	if !in.hasSum || !finite(in.sum) {
		h.Sum = 0
		for i, v := range h.Values {
			h.Sum += v * h.Counts[i]
		}
	}
	if in.min != nil {
		h.Min = *in.min
	}
	if in.max != nil {
		h.Max = *in.max
	}
	r.addHist(pb, s, h)
}

// appendHistSamples appends a histogram sample to an aggd.v1 batch as
// one weighted sample per bin: replaying it restores the counts and the
// sketch, with the sum, minimum and maximum the bins give.
func appendHistSamples(batch []byte, s *window.Sample) []byte {
	w := *s
	w.Hist = nil
	for i, v := range s.Hist.Values {
		w.Value, w.SampleRate = v, 1/s.Hist.Counts[i]
		batch = protowire.AppendTag(batch, 1, protowire.BytesType)
		batch = protowire.AppendBytes(batch, codec.AppendSample(nil, &w))
	}
	return batch
}

func (r *OTLP) addHist(pb *pointBatch, s window.Sample, h *window.HistPoint) {
	if !finite(h.Sum) || !finite(h.Min) || !finite(h.Max) || h.Min > h.Max {
		pb.refuse(window.ReasonInvalidValue, "histogram sum, min and max must be finite, min at most max")
		return
	}
	s.Type, s.Hist = window.TypeDistribution, h
	pb.add(s)
}

// exponential adds an exponential histogram point as one distribution
// sample: each bucket's count spread over its bounds, the zero bucket's at
// zero, with the point's exact count and sum, and its minimum and maximum
// when set (else the bounds of its outer buckets).
func (r *OTLP) exponential(pb *pointBatch, s window.Sample, p *expPoint, hasSum bool, pmin, pmax *float64) {
	if p.count == 0 {
		return
	}
	h := &window.HistPoint{Count: float64(p.count), Min: math.Inf(1), Max: math.Inf(-1)}
	base := math.Exp2(math.Ldexp(1, -int(p.scale)))
	var n uint64
	bad := false
	add := func(lo, hi float64, c uint64) {
		if c == 0 {
			return
		}
		if !finite(lo) || !finite(hi) {
			bad = true
			return
		}
		if pmin != nil {
			lo, hi = max(lo, *pmin), max(hi, *pmin)
		}
		if pmax != nil {
			lo, hi = min(lo, *pmax), min(hi, *pmax)
		}
		n += c
		h.Min, h.Max = min(h.Min, lo), max(h.Max, hi)
		spread(h, lo, hi, float64(c))
	}
	add(0, 0, p.zeroCount)
	for j, c := range p.pos.counts {
		i := float64(int(p.pos.offset) + j)
		add(math.Pow(base, i), math.Pow(base, i+1), c)
	}
	for j, c := range p.neg.counts {
		i := float64(int(p.neg.offset) + j)
		add(-math.Pow(base, i+1), -math.Pow(base, i), c)
	}
	if bad {
		pb.refuse(window.ReasonInvalidValue, "exponential histogram bucket bounds overflow")
		return
	}
	if n != p.count {
		pb.refuse(window.ReasonMalformed, fmt.Sprintf("exponential histogram buckets add up to %d, count is %d", n, p.count))
		return
	}
	h.Sum = p.sum
	if !hasSum {
		h.Sum = 0
		for i, v := range h.Values {
			h.Sum += v * h.Counts[i]
		}
	}
	if pmin != nil {
		h.Min = *pmin
	}
	if pmax != nil {
		h.Max = *pmax
	}
	r.addHist(pb, s, h)
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
