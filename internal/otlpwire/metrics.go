package otlpwire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
)

// Kind is an attribute value's type.
type Kind uint8

// The attribute value kinds, as AnyValue's oneof names them.
const (
	KindEmpty Kind = iota
	KindString
	KindBool
	KindInt
	KindDouble
	KindArray
	KindKVList
	KindBytes
)

// Value is an attribute value. Str holds a string's or bytes' contents,
// Int an int's or a bool's (0 or 1), Raw an array's or key-value list's
// encoding (opentelemetry.proto.common.v1.ArrayValue or KeyValueList).
type Value struct {
	Kind   Kind
	Str    string
	Int    int64
	Double float64
	Raw    []byte
}

// KeyValue is one attribute.
type KeyValue struct {
	Key   string
	Value Value
}

// Resource is a resource's attributes.
type Resource struct{ Attrs []KeyValue }

// Scope is an instrumentation scope.
type Scope struct {
	Name, Version string
	Attrs         []KeyValue
}

// MetricKind is the kind of a metric's data.
type MetricKind uint8

// The metric kinds, in the order of Metric's oneof.
const (
	MetricNone MetricKind = iota
	MetricGauge
	MetricSum
	MetricHistogram
	MetricExponentialHistogram
	MetricSummary
)

// Temporalities, as AggregationTemporality numbers them.
const (
	TemporalityDelta      = 1
	TemporalityCumulative = 2
)

// Metric is a metric's header: what applies to all its points.
type Metric struct {
	Name, Unit  string
	Kind        MetricKind
	Temporality int32
	Monotonic   bool
}

// Buckets are an exponential histogram's buckets of one sign.
type Buckets struct {
	Offset int32
	Counts []uint64
}

// Quantile is a summary's value at a quantile.
type Quantile struct{ Quantile, Value float64 }

// Point is a data point of any kind; which fields are set depends on the
// metric's kind.
type Point struct {
	// Attrs are the point's attributes; AttrFields their encodings
	// (each a KeyValue message), in order. A RawPointHandler may take the
	// point before Attrs are decoded: they are empty then.
	Attrs      []KeyValue
	AttrFields [][]byte
	// AttrSpan, for a sum's point handed to a RawPointHandler, is the part
	// of the point's encoding that holds its attributes' fields, tags
	// included, when no other field lies between them; else, when there
	// are none and for other points, it is nil.
	AttrSpan    []byte
	Start, Time uint64
	Flags       uint32
	// Value is a gauge's or sum's value; IsInt tells as_int from
	// as_double, HasValue whether either was set.
	Value           float64
	IsInt, HasValue bool
	// wide records that a kind with more fields than a gauge's or sum's
	// decoded into the point since its last full reset.
	wide bool
	// Count, Sum, Min and Max describe histograms and summaries.
	Count                  uint64
	Sum, Min, Max          float64
	HasSum, HasMin, HasMax bool
	// Counts and Bounds are an explicit-bucket histogram's.
	Counts []uint64
	Bounds []float64
	// Scale to Negative are an exponential histogram's.
	Scale         int32
	ZeroCount     uint64
	ZeroThreshold float64
	Positive      Buckets
	Negative      Buckets
	// Quantiles are a summary's.
	Quantiles []Quantile
}

// reset empties p for a point of kind k. A gauge's or sum's point sets
// only the fields before Count: while p held nothing else, only those are
// cleared, which leaves the memory of the rest untouched.
func (p *Point) reset(k MetricKind) {
	if p.wide {
		*p = Point{Attrs: p.Attrs, Counts: p.Counts[:0], Bounds: p.Bounds[:0],
			Positive: Buckets{Counts: p.Positive.Counts[:0]}, Negative: Buckets{Counts: p.Negative.Counts[:0]},
			Quantiles: p.Quantiles[:0], AttrFields: p.AttrFields}
	}
	p.Attrs, p.AttrFields, p.AttrSpan = p.Attrs[:0], p.AttrFields[:0], nil
	p.Start, p.Time, p.Flags, p.Value, p.IsInt, p.HasValue = 0, 0, 0, 0, false, false
	p.wide = k != MetricGauge && k != MetricSum
}

// MetricsHandler receives a decoded ExportMetricsServiceRequest: each
// resource, then each of its scopes, then each point of the scope's
// metrics. What it is handed is valid only during the call.
type MetricsHandler interface {
	Resource(*Resource)
	Scope(*Scope)
	// Point receives a point of m; a metric without data gets one call
	// with m.Kind MetricNone and p nil.
	Point(m *Metric, p *Point)
}

// RawPointHandler is a MetricsHandler that may take a point from its
// fields and the encodings of its attributes alone (Point.AttrFields),
// before they are decoded: PointRaw reports whether it took p. If it did
// not, the decoder decodes the attributes, which may fail the request, and
// calls Point. A handler may only take a point whose attribute encodings
// it has seen decode before.
//
// The points of a metric come in runs of up to RawRun: PrepareRaw gets
// each run first, so that the handler can look its points up together,
// then each of its points goes to PointRaw (and Point) in order.
type RawPointHandler interface {
	MetricsHandler
	PrepareRaw(m *Metric, run []Point)
	PointRaw(m *Metric, p *Point) bool
}

// RawRun is the most points PrepareRaw gets at once.
const RawRun = 512

// ErrMalformed is wrapped by the errors of a request that does not decode.
var ErrMalformed = errors.New("malformed OTLP request")

func malformed(what string) error { return fmt.Errorf("%w: %s", ErrMalformed, what) }

// Decoder decodes requests; its memory is reused from call to call. A
// Decoder is not safe for concurrent use.
type Decoder struct {
	res    Resource
	scope  Scope
	m      Metric
	point  Point
	data   [][]byte
	scopes [][]byte
	parts  [][]byte
	raw    []byte
	sp     Span
	rawH   RawPointHandler // the handler of DecodeMetrics, if one
	run    []Point         // its run of points
}

// view returns b as a string sharing its memory.
func view(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// field is one decoded tag and its value's bytes.
type field struct {
	num protowire.Number
	typ protowire.Type
	v   uint64 // varint, fixed32 or fixed64 value
	b   []byte // bytes value
}

// next consumes the field at the start of *buf.
func next(buf *[]byte, f *field) error {
	// Most fields of OTLP have a one-byte tag (numbers 1 to 15) and a
	// one-byte length or a fixed64 value: those skip the general path.
	if b := *buf; len(b) >= 2 && b[0] < 0x80 && b[0] >= 8 {
		switch typ := protowire.Type(b[0] & 7); {
		case typ == protowire.BytesType && b[1] < 0x80 && int(b[1]) <= len(b)-2:
			f.num, f.typ, f.b = protowire.Number(b[0]>>3), typ, b[2:2+int(b[1]):2+int(b[1])]
			*buf = b[2+int(b[1]):]
			return nil
		case typ == protowire.Fixed64Type && len(b) >= 9:
			f.num, f.typ, f.v = protowire.Number(b[0]>>3), typ, binary.LittleEndian.Uint64(b[1:9])
			*buf = b[9:]
			return nil
		case typ == protowire.VarintType && b[1] < 0x80:
			f.num, f.typ, f.v = protowire.Number(b[0]>>3), typ, uint64(b[1])
			*buf = b[2:]
			return nil
		}
	}
	num, typ, n := protowire.ConsumeTag(*buf)
	if n < 0 {
		return malformed("bad tag")
	}
	b := (*buf)[n:]
	f.num, f.typ = num, typ
	switch typ {
	case protowire.VarintType:
		f.v, n = protowire.ConsumeVarint(b)
	case protowire.Fixed64Type:
		f.v, n = protowire.ConsumeFixed64(b)
	case protowire.Fixed32Type:
		var v uint32
		v, n = protowire.ConsumeFixed32(b)
		f.v = uint64(v)
	case protowire.BytesType:
		f.b, n = protowire.ConsumeBytes(b)
	default:
		n = protowire.ConsumeFieldValue(num, typ, b)
	}
	if n < 0 {
		return malformed("truncated field")
	}
	*buf = b[n:]
	return nil
}

func str(b []byte) (string, error) {
	if !utf8.Valid(b) {
		return "", malformed("invalid UTF-8 in a string")
	}
	return view(b), nil
}

// appendKV decodes a KeyValue and appends it to kvs.
func appendKV(kvs []KeyValue, buf []byte) ([]KeyValue, error) {
	var kv KeyValue
	var f field
	for len(buf) > 0 {
		if err := next(&buf, &f); err != nil {
			return kvs, err
		}
		switch {
		case f.num == 1 && f.typ == protowire.BytesType:
			k, err := str(f.b)
			if err != nil {
				return kvs, err
			}
			kv.Key = k
		case f.num == 2 && f.typ == protowire.BytesType:
			if err := decodeValue(&kv.Value, f.b); err != nil {
				return kvs, err
			}
		}
	}
	return append(kvs, kv), nil
}

// decodeValue merges an AnyValue's encoding into v.
func decodeValue(v *Value, buf []byte) error {
	var f field
	for len(buf) > 0 {
		if err := next(&buf, &f); err != nil {
			return err
		}
		switch {
		case f.num == 1 && f.typ == protowire.BytesType:
			s, err := str(f.b)
			if err != nil {
				return err
			}
			*v = Value{Kind: KindString, Str: s}
		case f.num == 2 && f.typ == protowire.VarintType:
			*v = Value{Kind: KindBool, Int: int64(min(f.v, 1))}
		case f.num == 3 && f.typ == protowire.VarintType:
			*v = Value{Kind: KindInt, Int: int64(f.v)}
		case f.num == 4 && f.typ == protowire.Fixed64Type:
			*v = Value{Kind: KindDouble, Double: math.Float64frombits(f.v)}
		case (f.num == 5 || f.num == 6) && f.typ == protowire.BytesType:
			k := KindArray
			if f.num == 6 {
				k = KindKVList
			}
			if v.Kind == k { // a repeated message merges: its fields concatenate
				v.Raw = append(v.Raw[:len(v.Raw):len(v.Raw)], f.b...)
			} else {
				*v = Value{Kind: k, Raw: f.b}
			}
		case f.num == 7 && f.typ == protowire.BytesType:
			*v = Value{Kind: KindBytes, Str: view(f.b)}
		}
	}
	return nil
}

// DecodeMetrics decodes an ExportMetricsServiceRequest, handing its
// contents to h. On error h may have been handed part of the request.
func (d *Decoder) DecodeMetrics(buf []byte, h MetricsHandler) error {
	d.rawH, _ = h.(RawPointHandler)
	defer func() { d.rawH = nil }()
	return eachBytes(buf, 1, func(rm []byte) error { return d.resourceMetrics(rm, h) })
}

// eachBytes calls fn with each length-delimited field num of buf, in order.
func eachBytes(buf []byte, num protowire.Number, fn func([]byte) error) error {
	var f field
	for len(buf) > 0 {
		if err := next(&buf, &f); err != nil {
			return err
		}
		if f.num == num && f.typ == protowire.BytesType {
			if err := fn(f.b); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *Decoder) resourceMetrics(buf []byte, h MetricsHandler) error {
	if err := d.readResource(buf); err != nil {
		return err
	}
	h.Resource(&d.res)
	for _, sm := range d.scopes {
		if err := d.scopeMetrics(sm, h); err != nil {
			return err
		}
	}
	return nil
}

// readResource reads a ResourceMetrics or ResourceSpans message (both carry
// the resource as field 1 and their scopes as field 2): the resource's
// attributes into d.res, the occurrences of its encoding into d.parts and
// the scopes' encodings into d.scopes.
func (d *Decoder) readResource(buf []byte) error {
	d.res.Attrs = d.res.Attrs[:0]
	d.scopes = d.scopes[:0]
	d.parts = d.parts[:0]
	var f field
	for len(buf) > 0 {
		if err := next(&buf, &f); err != nil {
			return err
		}
		switch {
		case f.num == 1 && f.typ == protowire.BytesType:
			if err := d.resource(f.b); err != nil {
				return err
			}
			d.parts = append(d.parts, f.b)
		case f.num == 2 && f.typ == protowire.BytesType:
			d.scopes = append(d.scopes, f.b)
		}
	}
	return nil
}

func (d *Decoder) resource(buf []byte) error {
	var f field
	var err error
	for len(buf) > 0 {
		if err := next(&buf, &f); err != nil {
			return err
		}
		if f.num == 1 && f.typ == protowire.BytesType {
			if d.res.Attrs, err = appendKV(d.res.Attrs, f.b); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *Decoder) scopeMetrics(buf []byte, h MetricsHandler) error {
	start := len(d.data)
	defer func() { d.data = d.data[:start] }()
	if err := d.readScope(buf); err != nil {
		return err
	}
	h.Scope(&d.scope)
	metrics := d.data[start:]
	for i := range metrics {
		if err := d.metric(metrics[i], h); err != nil {
			return err
		}
	}
	return nil
}

// readScope reads a ScopeMetrics or ScopeSpans message (both carry the scope
// as field 1 and their items as field 2): the scope into d.scope, the
// occurrences of its encoding into d.parts, and appends the items'
// encodings to d.data.
func (d *Decoder) readScope(buf []byte) error {
	d.scope = Scope{Attrs: d.scope.Attrs[:0]}
	d.parts = d.parts[:0]
	var f field
	for len(buf) > 0 {
		if err := next(&buf, &f); err != nil {
			return err
		}
		switch {
		case f.num == 1 && f.typ == protowire.BytesType:
			if err := d.scopeFields(f.b); err != nil {
				return err
			}
			d.parts = append(d.parts, f.b)
		case f.num == 2 && f.typ == protowire.BytesType:
			d.data = append(d.data, f.b)
		}
	}
	return nil
}

func (d *Decoder) scopeFields(buf []byte) error {
	var f field
	var err error
	for len(buf) > 0 {
		if err := next(&buf, &f); err != nil {
			return err
		}
		if f.typ != protowire.BytesType {
			continue
		}
		switch f.num {
		case 1:
			d.scope.Name, err = str(f.b)
		case 2:
			d.scope.Version, err = str(f.b)
		case 3:
			d.scope.Attrs, err = appendKV(d.scope.Attrs, f.b)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// metricKinds maps Metric's data field numbers to kinds.
var metricKinds = [...]MetricKind{5: MetricGauge, 7: MetricSum, 9: MetricHistogram, 10: MetricExponentialHistogram, 11: MetricSummary}

func (d *Decoder) metric(buf []byte, h MetricsHandler) error {
	m := &d.m
	*m = Metric{}
	start := len(d.data)
	defer func() { d.data = d.data[:start] }()
	var f field
	var err error
	for len(buf) > 0 {
		if err := next(&buf, &f); err != nil {
			return err
		}
		if f.typ != protowire.BytesType {
			continue
		}
		switch f.num {
		case 1:
			m.Name, err = str(f.b)
		case 3:
			m.Unit, err = str(f.b)
		case 5, 7, 9, 10, 11:
			// A oneof member replaces another and merges with itself.
			if k := metricKinds[f.num]; k != m.Kind {
				m.Kind, m.Temporality, m.Monotonic = k, 0, false
				d.data = d.data[:start]
			}
			d.data = append(d.data, f.b)
		}
		if err != nil {
			return err
		}
	}
	if m.Kind == MetricNone {
		h.Point(m, nil)
		return nil
	}
	occurrences := d.data[start:]
	// The header fields (temporality, monotonic) may follow the points.
	for _, data := range occurrences {
		for b := data; len(b) > 0; {
			if err := next(&b, &f); err != nil {
				return err
			}
			if f.typ != protowire.VarintType || m.Kind == MetricGauge || m.Kind == MetricSummary {
				continue
			}
			switch {
			case f.num == 2:
				m.Temporality = int32(f.v)
			case f.num == 3 && m.Kind == MetricSum:
				m.Monotonic = f.v != 0
			}
		}
	}
	for _, data := range occurrences {
		n := 0
		for b := data; len(b) > 0; {
			if err := next(&b, &f); err != nil {
				return err
			}
			if f.num != 1 || f.typ != protowire.BytesType {
				continue
			}
			p := &d.point
			if d.rawH != nil {
				if n == len(d.run) {
					d.run = append(d.run, Point{})
				}
				p = &d.run[n]
				n++
			}
			p.reset(m.Kind)
			if err := decodePoint(m.Kind, f.b, p, d.rawH != nil && m.Kind == MetricSum); err != nil {
				return err
			}
			if d.rawH == nil {
				if err := decodeAttrs(p); err != nil {
					return err
				}
				h.Point(m, p)
			} else if n == RawRun {
				if err := d.rawRun(m, d.run[:n]); err != nil {
					return err
				}
				n = 0
			}
		}
		if err := d.rawRun(m, d.run[:n]); err != nil {
			return err
		}
	}
	return nil
}

// rawRun hands a run of points to the RawPointHandler.
func (d *Decoder) rawRun(m *Metric, run []Point) error {
	if len(run) == 0 {
		return nil
	}
	d.rawH.PrepareRaw(m, run)
	for i := range run {
		p := &run[i]
		if d.rawH.PointRaw(m, p) {
			continue
		}
		if err := decodeAttrs(p); err != nil {
			return err
		}
		d.rawH.Point(m, p)
	}
	return nil
}

// decodeAttrs decodes p's attributes from their encodings.
func decodeAttrs(p *Point) error {
	var err error
	for _, kv := range p.AttrFields {
		if p.Attrs, err = appendKV(p.Attrs, kv); err != nil {
			return err
		}
	}
	return nil
}

// Field numbers of each point kind's attributes, start, time and flags.
type pointFields struct{ attrs, flags protowire.Number }

var pointLayout = [...]pointFields{
	MetricGauge:                {7, 8},
	MetricSum:                  {7, 8},
	MetricHistogram:            {9, 10},
	MetricExponentialHistogram: {1, 10},
	MetricSummary:              {7, 8},
}

// decodePoint decodes a point of kind k into p, and its AttrSpan with
// span.
func decodePoint(k MetricKind, buf []byte, p *Point, span bool) error {
	lay := pointLayout[k]
	var f field
	spanOpen := false // the last field read is an attribute of AttrSpan
	for len(buf) > 0 {
		rest := buf
		if err := next(&buf, &f); err != nil {
			return err
		}
		isAttr := f.num == lay.attrs && f.typ == protowire.BytesType
		if span {
			switch n := len(rest) - len(buf); {
			case isAttr && len(p.AttrFields) == 0:
				p.AttrSpan, spanOpen = rest[:n], true
			case isAttr && spanOpen:
				p.AttrSpan = p.AttrSpan[:len(p.AttrSpan)+n]
			case isAttr:
				p.AttrSpan = nil
			default:
				spanOpen = false
			}
		}
		switch {
		case isAttr:
			p.AttrFields = append(p.AttrFields, f.b)
		case f.num == 2 && f.typ == protowire.Fixed64Type:
			p.Start = f.v
		case f.num == 3 && f.typ == protowire.Fixed64Type:
			p.Time = f.v
		case f.num == lay.flags && f.typ == protowire.VarintType:
			p.Flags = uint32(f.v)
		default:
			if err := pointField(k, &f, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// pointField decodes a field particular to the point's kind.
func pointField(k MetricKind, f *field, p *Point) error {
	switch k {
	case MetricGauge, MetricSum:
		switch {
		case f.num == 4 && f.typ == protowire.Fixed64Type:
			p.Value, p.IsInt, p.HasValue = math.Float64frombits(f.v), false, true
		case f.num == 6 && f.typ == protowire.Fixed64Type:
			p.Value, p.IsInt, p.HasValue = float64(int64(f.v)), true, true
		}
	case MetricHistogram:
		switch {
		case f.num == 4 && f.typ == protowire.Fixed64Type:
			p.Count = f.v
		case f.num == 5 && f.typ == protowire.Fixed64Type:
			p.Sum, p.HasSum = math.Float64frombits(f.v), true
		case f.num == 11 && f.typ == protowire.Fixed64Type:
			p.Min, p.HasMin = math.Float64frombits(f.v), true
		case f.num == 12 && f.typ == protowire.Fixed64Type:
			p.Max, p.HasMax = math.Float64frombits(f.v), true
		case f.num == 6:
			var ok bool
			if p.Counts, ok = appendFixed64(p.Counts, f); !ok {
				return malformed("bucket counts")
			}
		case f.num == 7:
			var ok bool
			if p.Bounds, ok = appendDouble(p.Bounds, f); !ok {
				return malformed("explicit bounds")
			}
		}
	case MetricExponentialHistogram:
		switch {
		case f.num == 4 && f.typ == protowire.Fixed64Type:
			p.Count = f.v
		case f.num == 5 && f.typ == protowire.Fixed64Type:
			p.Sum, p.HasSum = math.Float64frombits(f.v), true
		case f.num == 6 && f.typ == protowire.VarintType:
			p.Scale = int32(protowire.DecodeZigZag(f.v & math.MaxUint32))
		case f.num == 7 && f.typ == protowire.Fixed64Type:
			p.ZeroCount = f.v
		case (f.num == 8 || f.num == 9) && f.typ == protowire.BytesType:
			bk := &p.Positive
			if f.num == 9 {
				bk = &p.Negative
			}
			if err := decodeBuckets(bk, f.b); err != nil {
				return err
			}
		case f.num == 12 && f.typ == protowire.Fixed64Type:
			p.Min, p.HasMin = math.Float64frombits(f.v), true
		case f.num == 13 && f.typ == protowire.Fixed64Type:
			p.Max, p.HasMax = math.Float64frombits(f.v), true
		case f.num == 14 && f.typ == protowire.Fixed64Type:
			p.ZeroThreshold = math.Float64frombits(f.v)
		}
	case MetricSummary:
		switch {
		case f.num == 4 && f.typ == protowire.Fixed64Type:
			p.Count = f.v
		case f.num == 5 && f.typ == protowire.Fixed64Type:
			p.Sum = math.Float64frombits(f.v)
		case f.num == 6 && f.typ == protowire.BytesType:
			var q Quantile
			var g field
			for b := f.b; len(b) > 0; {
				if err := next(&b, &g); err != nil {
					return err
				}
				if g.typ == protowire.Fixed64Type && (g.num == 1 || g.num == 2) {
					if g.num == 1 {
						q.Quantile = math.Float64frombits(g.v)
					} else {
						q.Value = math.Float64frombits(g.v)
					}
				}
			}
			p.Quantiles = append(p.Quantiles, q)
		}
	}
	return nil
}

// appendFixed64 appends a repeated fixed64 or double field, packed or not.
func appendFixed64(dst []uint64, f *field) ([]uint64, bool) {
	switch f.typ {
	case protowire.Fixed64Type:
		return append(dst, f.v), true
	case protowire.BytesType:
		b := f.b
		if len(b)%8 != 0 {
			return dst, false
		}
		for ; len(b) > 0; b = b[8:] {
			v, _ := protowire.ConsumeFixed64(b)
			dst = append(dst, v)
		}
	}
	return dst, true
}

// appendDouble appends a repeated double field, packed or not.
func appendDouble(dst []float64, f *field) ([]float64, bool) {
	switch f.typ {
	case protowire.Fixed64Type:
		return append(dst, math.Float64frombits(f.v)), true
	case protowire.BytesType:
		b := f.b
		if len(b)%8 != 0 {
			return dst, false
		}
		for ; len(b) > 0; b = b[8:] {
			v, _ := protowire.ConsumeFixed64(b)
			dst = append(dst, math.Float64frombits(v))
		}
	}
	return dst, true
}

func decodeBuckets(bk *Buckets, buf []byte) error {
	var f field
	for len(buf) > 0 {
		if err := next(&buf, &f); err != nil {
			return err
		}
		switch {
		case f.num == 1 && f.typ == protowire.VarintType:
			bk.Offset = int32(protowire.DecodeZigZag(f.v & math.MaxUint32))
		case f.num == 2 && f.typ == protowire.VarintType:
			bk.Counts = append(bk.Counts, f.v)
		case f.num == 2 && f.typ == protowire.BytesType:
			for b := f.b; len(b) > 0; {
				v, n := protowire.ConsumeVarint(b)
				if n < 0 {
					return malformed("bucket counts")
				}
				bk.Counts = append(bk.Counts, v)
				b = b[n:]
			}
		}
	}
	return nil
}
