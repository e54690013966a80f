package upstream

import (
	"math"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/aggd/aggd/internal/window"
)

// The OTLP metrics request is written field by field (protowire) into
// buffers kept from flush to flush, instead of as a tree of generated
// messages: a tree costs about forty objects per aggregate, which a large
// flush leaves to the garbage collector. Field numbers are those of
// opentelemetry/proto/metrics/v1/metrics.proto and common/v1/common.proto.

// otlpHost is one host's ScopeMetrics.metrics entries (field 2) of a
// request being built.
type otlpHost struct {
	host    string
	metrics []byte
}

// otlpEncoder holds the scratch buffers of one metric.
type otlpEncoder struct {
	point, data, metric, buckets []byte
	exp                          expScratch
}

// appendStringKV appends a KeyValue{key, value: AnyValue{string_value}} as
// field num of b.
func appendStringKV(b []byte, num protowire.Number, k, v string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(1+protowire.SizeBytes(len(k))+1+protowire.SizeBytes(1+protowire.SizeBytes(len(v)))))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, k)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(1+protowire.SizeBytes(len(v))))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	return protowire.AppendString(b, v)
}

// appendTagAttrs appends tags as attributes (field num), as tagAttrs makes
// them: "key:value", a bare tag a key with an empty value, and the values
// of a key tagged more than once one array value, at its first place.
func appendTagAttrs(b []byte, num protowire.Number, tags []string) []byte {
	for i, t := range tags {
		k, v, _ := strings.Cut(t, ":")
		dup, again := false, 0 // a key seen before; later tags of this key
		for _, u := range tags[:i] {
			if uk, _, _ := strings.Cut(u, ":"); uk == k {
				dup = true
				break
			}
		}
		if dup {
			continue
		}
		values := 0 // ArrayValue.values, each AnyValue{string_value}
		for _, u := range tags[i+1:] {
			if uk, uv, _ := strings.Cut(u, ":"); uk == k {
				again++
				values += 1 + protowire.SizeBytes(1+protowire.SizeBytes(len(uv)))
			}
		}
		if again == 0 {
			b = appendStringKV(b, num, k, v)
			continue
		}
		values += 1 + protowire.SizeBytes(1+protowire.SizeBytes(len(v)))
		any := 1 + protowire.SizeBytes(values) // AnyValue{array_value: 5}
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(1+protowire.SizeBytes(len(k))+1+protowire.SizeBytes(any)))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, k)
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(any))
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(values))
		b = appendStringValue(b, v)
		for _, u := range tags[i+1:] {
			if uk, uv, _ := strings.Cut(u, ":"); uk == k {
				b = appendStringValue(b, uv)
			}
		}
	}
	return b
}

// appendStringValue appends ArrayValue.values (field 1): an
// AnyValue{string_value: v}.
func appendStringValue(b []byte, v string) []byte {
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(1+protowire.SizeBytes(len(v))))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	return protowire.AppendString(b, v)
}

// appendMessage appends msg as field num of b.
func appendMessage(b []byte, num protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

func appendFixed64(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.Fixed64Type)
	return protowire.AppendFixed64(b, v)
}

// aggregationDelta is AGGREGATION_TEMPORALITY_DELTA.
const aggregationDelta = 1

// encode returns one Metric message of m, as OTLP.metric would build it,
// in e's scratch, valid until the next call.
func (e *otlpEncoder) encode(m *window.Metric) []byte {
	start := uint64(m.Timestamp)
	end := uint64(m.Timestamp + m.Interval)
	var unit string
	var dataField protowire.Number
	p := e.point[:0]
	d := e.data[:0]
	switch m.Type {
	case window.TypeHistogram, window.TypeTiming, window.TypeDistribution:
		p = e.appendExpPoint(p, m, start, end)
		d = appendMessage(d, 1, p)
		d = protowire.AppendTag(d, 2, protowire.VarintType)
		d = protowire.AppendVarint(d, aggregationDelta)
		dataField = 10 // exponential_histogram
	default:
		// NumberDataPoint{attributes 7, start 2, time 3, as_double 4}.
		p = appendTagAttrs(p, 7, m.Tags)
		v := m.Value
		if m.Type == window.TypeCount || m.Type == window.TypeMonotonicCount {
			p = appendFixed64(p, 2, start)
			p = appendFixed64(p, 3, end)
		} else {
			p = appendFixed64(p, 3, start)
		}
		p = appendFixed64(p, 4, math.Float64bits(v))
		d = appendMessage(d, 1, p)
		switch m.Type {
		case window.TypeCount, window.TypeMonotonicCount:
			d = protowire.AppendTag(d, 2, protowire.VarintType)
			d = protowire.AppendVarint(d, aggregationDelta)
			if m.Type == window.TypeMonotonicCount {
				d = protowire.AppendTag(d, 3, protowire.VarintType)
				d = protowire.AppendVarint(d, 1)
			}
			dataField = 7 // sum
		case window.TypeRate:
			unit, dataField = "1/s", 5 // gauge
		default: // GAUGE, SET
			dataField = 5
		}
	}
	e.point, e.data = p, d
	b := e.metric[:0]
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, m.Name)
	if unit != "" {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendString(b, unit)
	}
	b = appendMessage(b, dataField, d)
	e.metric = b
	return b
}

// appendExpPoint appends m's ExponentialHistogramDataPoint: attributes
// 1, start_time_unix_nano 2, time_unix_nano 3, count 4, sum 5, scale 6,
// zero_count 7, positive 8, negative 9, min 12, max 13.
func (e *otlpEncoder) appendExpPoint(p []byte, m *window.Metric, start, end uint64) []byte {
	x := expHistogramOf(m, &e.exp)
	p = appendTagAttrs(p, 1, m.Tags)
	p = appendFixed64(p, 2, start)
	p = appendFixed64(p, 3, end)
	if x.count != 0 {
		p = appendFixed64(p, 4, x.count)
	}
	p = appendFixed64(p, 5, math.Float64bits(m.Sum))
	if x.scale != 0 {
		p = protowire.AppendTag(p, 6, protowire.VarintType)
		p = protowire.AppendVarint(p, protowire.EncodeZigZag(int64(int32(x.scale))))
	}
	if x.zero != 0 {
		p = appendFixed64(p, 7, x.zero)
	}
	for _, b := range [...]struct {
		field  protowire.Number
		off    int
		counts []uint64
	}{{8, x.posOff, x.pos}, {9, x.negOff, x.neg}} {
		if len(b.counts) == 0 {
			continue
		}
		bk := e.buckets[:0] // Buckets{offset 1, bucket_counts 2}
		if b.off != 0 {
			bk = protowire.AppendTag(bk, 1, protowire.VarintType)
			bk = protowire.AppendVarint(bk, protowire.EncodeZigZag(int64(int32(b.off))))
		}
		packed := 0
		for _, c := range b.counts {
			packed += protowire.SizeVarint(c)
		}
		bk = protowire.AppendTag(bk, 2, protowire.BytesType)
		bk = protowire.AppendVarint(bk, uint64(packed))
		for _, c := range b.counts {
			bk = protowire.AppendVarint(bk, c)
		}
		e.buckets = bk
		p = appendMessage(p, b.field, bk)
	}
	p = appendFixed64(p, 12, math.Float64bits(m.Min))
	return appendFixed64(p, 13, math.Float64bits(m.Max))
}

// appendRequest appends an ExportMetricsServiceRequest of hosts to b: one
// ResourceMetrics per host, whose resource carries resource's attributes
// of the host, and one ScopeMetrics named aggd.
func appendRequest(b []byte, hosts []otlpHost, resource func(b []byte, host string) []byte, scratch []byte) ([]byte, []byte) {
	for i := range hosts {
		h := &hosts[i]
		res := resource(scratch[:0], h.host) // Resource.attributes (field 1)
		scratch = res
		scope := 1 + protowire.SizeBytes(1+protowire.SizeBytes(len("aggd"))) // scope: {name}
		sm := scope + len(h.metrics)
		rm := 1 + protowire.SizeBytes(len(res)) + 1 + protowire.SizeBytes(sm)
		b = protowire.AppendTag(b, 1, protowire.BytesType) // resource_metrics
		b = protowire.AppendVarint(b, uint64(rm))
		b = appendMessage(b, 1, res)                       // resource
		b = protowire.AppendTag(b, 2, protowire.BytesType) // scope_metrics
		b = protowire.AppendVarint(b, uint64(sm))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(1+protowire.SizeBytes(len("aggd"))))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, "aggd")
		b = append(b, h.metrics...)
	}
	return b, scratch
}
