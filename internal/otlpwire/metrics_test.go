package otlpwire_test

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/otlpwire"
)

// dump writes what the decoder hands over as lines, to compare with what
// proto.Unmarshal makes of the same bytes.
type dump struct{ strings.Builder }

func (d *dump) Resource(r *otlpwire.Resource) { fmt.Fprintf(d, "R %s\n", viewAttrs(r.Attrs)) }
func (d *dump) Scope(s *otlpwire.Scope) {
	fmt.Fprintf(d, "S %q %q %s\n", s.Name, s.Version, viewAttrs(s.Attrs))
}
func (d *dump) Point(m *otlpwire.Metric, p *otlpwire.Point) {
	fmt.Fprintf(d, "M %q %q %d %d %v\n", m.Name, m.Unit, m.Kind, m.Temporality, m.Monotonic)
	if p == nil {
		return
	}
	fmt.Fprintf(d, "P %s %d %d %d\n", viewAttrs(p.Attrs), p.Start, p.Time, p.Flags)
	switch m.Kind {
	case otlpwire.MetricGauge, otlpwire.MetricSum:
		fmt.Fprintf(d, "V %v %v %v\n", p.HasValue, p.IsInt, bits(p.Value))
	case otlpwire.MetricHistogram:
		fmt.Fprintf(d, "H %d %v %v %v %v %v %v %v %v\n", p.Count, p.HasSum, bits(p.Sum), p.HasMin, bits(p.Min), p.HasMax, bits(p.Max), p.Counts, floatBits(p.Bounds))
	case otlpwire.MetricExponentialHistogram:
		fmt.Fprintf(d, "E %d %v %v %v %v %v %v %d %d %v %d %v %d %v\n", p.Count, p.HasSum, bits(p.Sum), p.HasMin, bits(p.Min), p.HasMax, bits(p.Max),
			p.Scale, p.ZeroCount, bits(p.ZeroThreshold), p.Positive.Offset, p.Positive.Counts, p.Negative.Offset, p.Negative.Counts)
	case otlpwire.MetricSummary:
		fmt.Fprintf(d, "Q %d %v", p.Count, bits(p.Sum))
		for _, q := range p.Quantiles {
			fmt.Fprintf(d, " %v=%v", bits(q.Quantile), bits(q.Value))
		}
		d.WriteString("\n")
	}
}

func bits(f float64) uint64 { return math.Float64bits(f) }

func floatBits(fs []float64) []uint64 {
	out := []uint64{}
	for _, f := range fs {
		out = append(out, bits(f))
	}
	return out
}

func viewAttrs(kvs []otlpwire.KeyValue) string {
	var b strings.Builder
	for _, kv := range kvs {
		fmt.Fprintf(&b, "%q=", kv.Key)
		v := kv.Value
		switch v.Kind {
		case otlpwire.KindString:
			fmt.Fprintf(&b, "s%q", v.Str)
		case otlpwire.KindBytes:
			fmt.Fprintf(&b, "y%q", v.Str)
		case otlpwire.KindBool:
			fmt.Fprintf(&b, "b%v", v.Int != 0)
		case otlpwire.KindInt:
			fmt.Fprintf(&b, "i%d", v.Int)
		case otlpwire.KindDouble:
			fmt.Fprintf(&b, "d%d", bits(v.Double))
		case otlpwire.KindArray:
			var a commonpb.ArrayValue
			if proto.Unmarshal(v.Raw, &a) != nil {
				b.WriteString("a!")
			}
			fmt.Fprintf(&b, "a{%s}", prototext.MarshalOptions{}.Format(&a))
		case otlpwire.KindKVList:
			var l commonpb.KeyValueList
			if proto.Unmarshal(v.Raw, &l) != nil {
				b.WriteString("l!")
			}
			fmt.Fprintf(&b, "l{%s}", prototext.MarshalOptions{}.Format(&l))
		default:
			b.WriteString("-")
		}
		b.WriteString(";")
	}
	return b.String()
}

// toView converts generated attributes to the decoder's, to dump them the
// same way.
func toView(kvs []*commonpb.KeyValue) []otlpwire.KeyValue {
	var out []otlpwire.KeyValue
	for _, kv := range kvs {
		v := otlpwire.Value{}
		switch x := kv.GetValue().GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			v = otlpwire.Value{Kind: otlpwire.KindString, Str: x.StringValue}
		case *commonpb.AnyValue_BytesValue:
			v = otlpwire.Value{Kind: otlpwire.KindBytes, Str: string(x.BytesValue)}
		case *commonpb.AnyValue_BoolValue:
			v = otlpwire.Value{Kind: otlpwire.KindBool}
			if x.BoolValue {
				v.Int = 1
			}
		case *commonpb.AnyValue_IntValue:
			v = otlpwire.Value{Kind: otlpwire.KindInt, Int: x.IntValue}
		case *commonpb.AnyValue_DoubleValue:
			v = otlpwire.Value{Kind: otlpwire.KindDouble, Double: x.DoubleValue}
		case *commonpb.AnyValue_ArrayValue:
			raw, _ := proto.Marshal(x.ArrayValue)
			v = otlpwire.Value{Kind: otlpwire.KindArray, Raw: raw}
		case *commonpb.AnyValue_KvlistValue:
			raw, _ := proto.Marshal(x.KvlistValue)
			v = otlpwire.Value{Kind: otlpwire.KindKVList, Raw: raw}
		}
		out = append(out, otlpwire.KeyValue{Key: kv.Key, Value: v})
	}
	return out
}

// dumpProto dumps what proto.Unmarshal decoded, as the decoder would.
func dumpProto(req *colmetricspb.ExportMetricsServiceRequest) string {
	d := &dump{}
	for _, rm := range req.ResourceMetrics {
		d.Resource(&otlpwire.Resource{Attrs: toView(rm.GetResource().GetAttributes())})
		for _, sm := range rm.ScopeMetrics {
			sc := sm.GetScope()
			d.Scope(&otlpwire.Scope{Name: sc.GetName(), Version: sc.GetVersion(), Attrs: toView(sc.GetAttributes())})
			for _, m := range sm.Metrics {
				h := &otlpwire.Metric{Name: m.Name, Unit: m.Unit}
				point := func(p *otlpwire.Point) { d.Point(h, p) }
				switch x := m.Data.(type) {
				case *metricspb.Metric_Gauge:
					h.Kind = otlpwire.MetricGauge
					for _, dp := range x.Gauge.DataPoints {
						point(numberPoint(dp))
					}
				case *metricspb.Metric_Sum:
					h.Kind, h.Temporality, h.Monotonic = otlpwire.MetricSum, int32(x.Sum.AggregationTemporality), x.Sum.IsMonotonic
					for _, dp := range x.Sum.DataPoints {
						point(numberPoint(dp))
					}
				case *metricspb.Metric_Histogram:
					h.Kind, h.Temporality = otlpwire.MetricHistogram, int32(x.Histogram.AggregationTemporality)
					for _, dp := range x.Histogram.DataPoints {
						point(&otlpwire.Point{Attrs: toView(dp.Attributes), Start: dp.StartTimeUnixNano, Time: dp.TimeUnixNano, Flags: dp.Flags,
							Count: dp.Count, Sum: dp.GetSum(), HasSum: dp.Sum != nil, Min: dp.GetMin(), HasMin: dp.Min != nil, Max: dp.GetMax(), HasMax: dp.Max != nil,
							Counts: dp.BucketCounts, Bounds: dp.ExplicitBounds})
					}
				case *metricspb.Metric_ExponentialHistogram:
					h.Kind, h.Temporality = otlpwire.MetricExponentialHistogram, int32(x.ExponentialHistogram.AggregationTemporality)
					for _, dp := range x.ExponentialHistogram.DataPoints {
						point(&otlpwire.Point{Attrs: toView(dp.Attributes), Start: dp.StartTimeUnixNano, Time: dp.TimeUnixNano, Flags: dp.Flags,
							Count: dp.Count, Sum: dp.GetSum(), HasSum: dp.Sum != nil, Min: dp.GetMin(), HasMin: dp.Min != nil, Max: dp.GetMax(), HasMax: dp.Max != nil,
							Scale: dp.Scale, ZeroCount: dp.ZeroCount, ZeroThreshold: dp.ZeroThreshold,
							Positive: otlpwire.Buckets{Offset: dp.GetPositive().GetOffset(), Counts: dp.GetPositive().GetBucketCounts()},
							Negative: otlpwire.Buckets{Offset: dp.GetNegative().GetOffset(), Counts: dp.GetNegative().GetBucketCounts()}})
					}
				case *metricspb.Metric_Summary:
					h.Kind = otlpwire.MetricSummary
					for _, dp := range x.Summary.DataPoints {
						p := &otlpwire.Point{Attrs: toView(dp.Attributes), Start: dp.StartTimeUnixNano, Time: dp.TimeUnixNano, Flags: dp.Flags, Count: dp.Count, Sum: dp.Sum}
						for _, q := range dp.QuantileValues {
							p.Quantiles = append(p.Quantiles, otlpwire.Quantile{Quantile: q.Quantile, Value: q.Value})
						}
						point(p)
					}
				default:
					d.Point(h, nil)
				}
			}
		}
	}
	return d.String()
}

func numberPoint(dp *metricspb.NumberDataPoint) *otlpwire.Point {
	p := &otlpwire.Point{Attrs: toView(dp.Attributes), Start: dp.StartTimeUnixNano, Time: dp.TimeUnixNano, Flags: dp.Flags}
	switch v := dp.Value.(type) {
	case *metricspb.NumberDataPoint_AsDouble:
		p.Value, p.HasValue = v.AsDouble, true
	case *metricspb.NumberDataPoint_AsInt:
		p.Value, p.IsInt, p.HasValue = float64(v.AsInt), true, true
	}
	return p
}

func str(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

// sample is a request with every kind of metric and attribute.
func sample() *colmetricspb.ExportMetricsServiceRequest {
	one, two := 1.5, 9.0
	attrs := []*commonpb.KeyValue{str("k", "v"), {Key: "i", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: -3}}},
		{Key: "b", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: true}}},
		{Key: "d", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: 2.5}}},
		{Key: "y", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BytesValue{BytesValue: []byte{0, 1}}}},
		{Key: "a", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: []*commonpb.AnyValue{{Value: &commonpb.AnyValue_IntValue{IntValue: 1}}}}}}},
		{Key: "l", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{KvlistValue: &commonpb.KeyValueList{Values: []*commonpb.KeyValue{str("x", "y")}}}}},
		{Key: "e"}}
	return &colmetricspb.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{str("host.name", "h"), str("service.name", "s")}},
		ScopeMetrics: []*metricspb.ScopeMetrics{{Scope: &commonpb.InstrumentationScope{Name: "lib", Version: "1", Attributes: attrs[:2]}, Metrics: []*metricspb.Metric{
			{Name: "g", Unit: "ms", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{DataPoints: []*metricspb.NumberDataPoint{
				{Attributes: attrs, TimeUnixNano: 5, Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: 1.25}}}}}},
			{Name: "s", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{AggregationTemporality: 2, IsMonotonic: true, DataPoints: []*metricspb.NumberDataPoint{
				{StartTimeUnixNano: 1, TimeUnixNano: 5, Flags: 1, Value: &metricspb.NumberDataPoint_AsInt{AsInt: -7}}}}}},
			{Name: "h", Data: &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{AggregationTemporality: 1, DataPoints: []*metricspb.HistogramDataPoint{
				{TimeUnixNano: 5, Count: 3, Sum: &two, Min: &one, BucketCounts: []uint64{1, 2}, ExplicitBounds: []float64{2}}}}}},
			{Name: "e", Data: &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{AggregationTemporality: 2, DataPoints: []*metricspb.ExponentialHistogramDataPoint{
				{TimeUnixNano: 5, Count: 4, Scale: -2, ZeroCount: 1, ZeroThreshold: 0.1, Max: &two,
					Positive: &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: -3, BucketCounts: []uint64{1, 1}},
					Negative: &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: 2, BucketCounts: []uint64{1}}}}}}},
			{Name: "q", Data: &metricspb.Metric_Summary{Summary: &metricspb.Summary{DataPoints: []*metricspb.SummaryDataPoint{
				{TimeUnixNano: 5, Count: 2, Sum: 3, QuantileValues: []*metricspb.SummaryDataPoint_ValueAtQuantile{{Quantile: 0.5, Value: 1}}}}}}},
			{Name: "none"},
		}}},
	}}}
}

func decodeDump(t testing.TB, d *otlpwire.Decoder, b []byte) (string, error) {
	out := &dump{}
	err := d.DecodeMetrics(b, out)
	return out.String(), err
}

func TestDecodeMetricsMatchesProto(t *testing.T) {
	b, _ := proto.Marshal(sample())
	var req colmetricspb.ExportMetricsServiceRequest
	if err := proto.Unmarshal(b, &req); err != nil {
		t.Fatal(err)
	}
	got, err := decodeDump(t, &otlpwire.Decoder{}, b)
	if err != nil {
		t.Fatal(err)
	}
	if want := dumpProto(&req); got != want {
		t.Fatalf("decoded\n%s\nproto.Unmarshal\n%s", got, want)
	}
	// Reading a request the other way round (header after points, fields
	// repeated) still matches.
	twice := append(append([]byte{}, b...), b...)
	proto.Unmarshal(twice, &req)
	if got, _ := decodeDump(t, &otlpwire.Decoder{}, twice); got != dumpProto(&req) {
		t.Fatalf("a request concatenated to itself decodes differently:\n%s\nwant\n%s", got, dumpProto(&req))
	}
}

// FuzzDecodeMetrics holds the decoder to proto.Unmarshal: wherever
// proto.Unmarshal takes the bytes, the decoder hands over the same request.
func FuzzDecodeMetrics(f *testing.F) {
	b, _ := proto.Marshal(sample())
	f.Add(b)
	for _, m := range sample().ResourceMetrics[0].ScopeMetrics[0].Metrics {
		mb, _ := proto.Marshal(&colmetricspb.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{ScopeMetrics: []*metricspb.ScopeMetrics{{Metrics: []*metricspb.Metric{m}}}}}})
		f.Add(mb)
	}
	d := &otlpwire.Decoder{}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeDump(t, d, b)
		var req colmetricspb.ExportMetricsServiceRequest
		if perr := proto.Unmarshal(b, &req); perr != nil {
			return // the decoder may be more lenient, but must not panic
		}
		if err != nil {
			t.Fatalf("proto.Unmarshal takes the request, the decoder says %v", err)
		}
		want := dumpProto(&req)
		if got != want {
			t.Fatalf("decoded\n%s\nproto.Unmarshal\n%s", got, want)
		}
		// A RawPointHandler reads the same, taking the points whose
		// attribute encodings came before.
		raw := &rawDump{seen: map[string][]otlpwire.KeyValue{}}
		if err := d.DecodeMetrics(b, raw); err != nil || raw.String() != want {
			t.Fatalf("with a RawPointHandler: %v\n%s\nproto.Unmarshal\n%s", err, raw.String(), want)
		}
		// The count sizes the memory reserved for decoding: it may not
		// be below the points there are.
		if n, want := otlpwire.CountPoints(b), protoPoints(&req); n < want {
			t.Fatalf("CountPoints = %d, proto.Unmarshal finds %d points", n, want)
		}
	})
}

// protoPoints counts the data points of req.
func protoPoints(req *colmetricspb.ExportMetricsServiceRequest) int {
	n := 0
	for _, rm := range req.ResourceMetrics {
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				n += len(m.GetGauge().GetDataPoints()) + len(m.GetSum().GetDataPoints()) + len(m.GetHistogram().GetDataPoints()) +
					len(m.GetExponentialHistogram().GetDataPoints()) + len(m.GetSummary().GetDataPoints())
			}
		}
	}
	return n
}

func TestCountPoints(t *testing.T) {
	req := sample()
	b, _ := proto.Marshal(req)
	if got, want := otlpwire.CountPoints(b), protoPoints(req); got != want || want == 0 {
		t.Fatalf("CountPoints = %d, want %d", got, want)
	}
}

// rawDump is a dump that takes the points whose attribute encodings it
// saw decode, with the attributes they decoded to.
type rawDump struct {
	dump
	seen  map[string][]otlpwire.KeyValue
	taken int
	run   []string // the encodings of the points of the run PrepareRaw got, in order
}

func (d *rawDump) PrepareRaw(_ *otlpwire.Metric, run []otlpwire.Point) {
	if len(d.run) != 0 {
		panic("a run prepared before the last one's points all came")
	}
	for i := range run {
		d.run = append(d.run, encodings(&run[i]))
		if err := checkSpan(&run[i]); err != nil {
			panic(err)
		}
	}
}

// checkSpan reports a point whose AttrSpan is set but does not hold
// exactly its attributes' fields.
func checkSpan(p *otlpwire.Point) error {
	if p.AttrSpan == nil {
		return nil
	}
	var fields [][]byte
	for b := p.AttrSpan; len(b) > 0; {
		_, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.BytesType {
			return fmt.Errorf("attribute span %x: not a field of bytes", p.AttrSpan)
		}
		v, m := protowire.ConsumeBytes(b[n:])
		if m < 0 {
			return fmt.Errorf("attribute span %x: truncated", p.AttrSpan)
		}
		fields, b = append(fields, v), b[n+m:]
	}
	if len(fields) != len(p.AttrFields) {
		return fmt.Errorf("attribute span of %d fields, %d attributes", len(fields), len(p.AttrFields))
	}
	for i, f := range fields {
		if !bytes.Equal(f, p.AttrFields[i]) || &f[0] != &p.AttrFields[i][0] {
			return fmt.Errorf("attribute span's field %d is not attribute %d", i, i)
		}
	}
	return nil
}

// spans records the attribute spans of the points it gets.
type spans struct {
	dump
	got []string
}

func (s *spans) PrepareRaw(_ *otlpwire.Metric, run []otlpwire.Point) {
	for i := range run {
		if run[i].AttrSpan == nil {
			s.got = append(s.got, "nil")
			continue
		}
		s.got = append(s.got, fmt.Sprintf("%d fields of %d bytes", len(run[i].AttrFields), len(run[i].AttrSpan)))
	}
}

func (s *spans) PointRaw(*otlpwire.Metric, *otlpwire.Point) bool { return true }

// TestAttrSpan: a point's attributes are one span of its encoding when
// no other field lies between them, whatever comes before and after.
func TestAttrSpan(t *testing.T) {
	attr := func(b []byte, k, v string) []byte {
		kv := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), k)
		val := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), v)
		kv = protowire.AppendBytes(protowire.AppendTag(kv, 2, protowire.BytesType), val)
		return protowire.AppendBytes(protowire.AppendTag(b, 7, protowire.BytesType), kv)
	}
	timeField := func(b []byte) []byte {
		return protowire.AppendFixed64(protowire.AppendTag(b, 3, protowire.Fixed64Type), 5)
	}
	points := [][]byte{
		nil,
		attr(attr(nil, "a", "1"), "b", "2"),
		timeField(attr(attr(timeField(nil), "a", "1"), "b", "22")),
		attr(timeField(attr(nil, "a", "1")), "b", "2"),
		attr(attr(timeField(attr(nil, "a", "1")), "b", "2"), "c", "3"),
	}
	var sum []byte
	for _, p := range points {
		sum = protowire.AppendBytes(protowire.AppendTag(sum, 1, protowire.BytesType), p)
	}
	metric := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "m")
	metric = protowire.AppendBytes(protowire.AppendTag(metric, 7, protowire.BytesType), sum)
	scope := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), metric)
	res := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), scope)
	req := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), res)
	var d otlpwire.Decoder
	h := &spans{}
	if err := d.DecodeMetrics(req, h); err != nil {
		t.Fatal(err)
	}
	want := []string{"nil", "2 fields of 20 bytes", "2 fields of 21 bytes", "nil", "nil"}
	if !slices.Equal(h.got, want) {
		t.Errorf("spans %q, want %q", h.got, want)
	}
}

func encodings(p *otlpwire.Point) string {
	var b strings.Builder
	for _, f := range p.AttrFields {
		fmt.Fprintf(&b, "%d:%s", len(f), f)
	}
	return b.String()
}

func (d *rawDump) Point(m *otlpwire.Metric, p *otlpwire.Point) {
	if p != nil {
		d.seen[encodings(p)] = append([]otlpwire.KeyValue(nil), p.Attrs...) // views into the test's bytes, kept alive
	}
	d.dump.Point(m, p)
}

func (d *rawDump) PointRaw(m *otlpwire.Metric, p *otlpwire.Point) bool {
	if len(p.Attrs) != 0 {
		panic("attributes decoded before PointRaw")
	}
	if len(d.run) == 0 || d.run[0] != encodings(p) {
		panic("PointRaw of a point not prepared in this order")
	}
	d.run = d.run[1:]
	attrs, ok := d.seen[encodings(p)]
	if ok {
		d.taken++
		q := *p
		q.Attrs = attrs
		d.dump.Point(m, &q)
	}
	return ok
}

// TestRawPointHandler: a RawPointHandler gets every point before its
// attributes are decoded, with their encodings; the points it takes are
// not decoded further, the others are and go to Point, so that a request
// reads the same either way. Attributes that do not decode fail the
// request when the handler does not take the point.
func TestRawPointHandler(t *testing.T) {
	// A metric of more points than a run: runs of RawRun and the rest.
	long := &metricspb.Metric{Name: "long", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{}}}
	for i := range 2*otlpwire.RawRun + 76 {
		long.GetGauge().DataPoints = append(long.GetGauge().DataPoints, &metricspb.NumberDataPoint{
			Attributes: []*commonpb.KeyValue{str("i", fmt.Sprint(i))}, Value: &metricspb.NumberDataPoint_AsInt{AsInt: int64(i)}})
	}
	longReq := sample()
	longReq.ResourceMetrics[0].ScopeMetrics[0].Metrics = append(longReq.ResourceMetrics[0].ScopeMetrics[0].Metrics, long)
	d := &otlpwire.Decoder{}
	for _, sent := range []*colmetricspb.ExportMetricsServiceRequest{sample(), longReq} {
		b, _ := proto.Marshal(sent)
		var req colmetricspb.ExportMetricsServiceRequest
		proto.Unmarshal(b, &req)
		want := dumpProto(&req)
		h := &rawDump{seen: map[string][]otlpwire.KeyValue{}}
		for round := range 2 {
			h.dump.Reset()
			h.taken = 0
			if err := d.DecodeMetrics(b, h); err != nil {
				t.Fatal(err)
			}
			if got := h.dump.String(); got != want {
				t.Fatalf("round %d decoded\n%s\nproto.Unmarshal\n%s", round, got, want)
			}
			// The first time, only points whose encodings came before.
			if points, want := protoPoints(&req), []int{protoPoints(&req) - len(h.seen), protoPoints(&req)}[round]; h.taken != want {
				t.Errorf("round %d: %d of %d points taken raw, want %d", round, h.taken, points, want)
			}
		}
	}
	h := &rawDump{seen: map[string][]otlpwire.KeyValue{}}
	bad := &colmetricspb.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{ScopeMetrics: []*metricspb.ScopeMetrics{{Metrics: []*metricspb.Metric{{
		Name: "g", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{DataPoints: []*metricspb.NumberDataPoint{{Attributes: []*commonpb.KeyValue{str("k", "<bad>")}}}}}}}}}}}}
	bb, _ := proto.Marshal(bad)
	bb = bytes.Replace(bb, []byte("<bad>"), []byte("\xff\xfe\xfd\xfc\xfb"), 1)
	if err := d.DecodeMetrics(bb, h); !errors.Is(err, otlpwire.ErrMalformed) {
		t.Errorf("an attribute with invalid UTF-8: error %v, want ErrMalformed", err)
	}
}
