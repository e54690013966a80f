package codec

import (
	"math"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// AppendSample appends s as an aggd.v1 Sample message.
func AppendSample(b []byte, s *window.Sample) []byte {
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, s.Name)
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(s.Type))
	if s.Values != nil {
		packed := make([]byte, 0, 8*len(s.Values))
		for _, v := range s.Values {
			packed = protowire.AppendFixed64(packed, math.Float64bits(v))
		}
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendBytes(b, packed)
	} else {
		b = protowire.AppendTag(b, 3, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, math.Float64bits(s.Value))
	}
	if s.SetMember != "" {
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendString(b, s.SetMember)
	}
	for _, t := range s.Tags {
		b = protowire.AppendTag(b, 6, protowire.BytesType)
		b = protowire.AppendString(b, t)
	}
	if s.Host != "" {
		b = protowire.AppendTag(b, 7, protowire.BytesType)
		b = protowire.AppendString(b, s.Host)
	}
	if s.SampleRate != 0 && s.SampleRate != 1 {
		b = protowire.AppendTag(b, 8, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, math.Float64bits(s.SampleRate))
	}
	if s.Timestamp != 0 {
		b = protowire.AppendTag(b, 9, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(s.Timestamp))
	}
	if h := s.Hist; h != nil {
		b = protowire.AppendTag(b, 11, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(histSize(h)))
		b = appendPacked(b, 1, h.Values)
		b = appendPacked(b, 2, h.Counts)
		for i, v := range [...]float64{h.Count, h.Sum, h.Min, h.Max} {
			b = protowire.AppendTag(b, protowire.Number(3+i), protowire.Fixed64Type)
			b = protowire.AppendFixed64(b, math.Float64bits(v))
		}
	}
	if s.RulesOnly {
		b = protowire.AppendTag(b, 12, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	return b
}

// histSize is the size of h's HistogramPoint message.
func histSize(h *window.HistPoint) int {
	n := 4 * (1 + 8) // count, sum, min, max
	for _, vs := range [2][]float64{h.Values, h.Counts} {
		if len(vs) > 0 {
			n += 1 + protowire.SizeBytes(8*len(vs))
		}
	}
	return n
}

// appendPacked appends vs as the packed repeated double field num.
func appendPacked(b []byte, num protowire.Number, vs []float64) []byte {
	if len(vs) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(8*len(vs)))
	for _, v := range vs {
		b = protowire.AppendFixed64(b, math.Float64bits(v))
	}
	return b
}

// AppendSpan appends sp as an aggd.v1 Span message.
func AppendSpan(b []byte, sp *spans.Span) []byte {
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, sp.TraceID[:])
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, sp.SpanID[:])
	if sp.HasParent {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendBytes(b, sp.ParentID[:])
	}
	for _, f := range [...]struct {
		num protowire.Number
		v   string
	}{{4, sp.Service}, {5, sp.Name}, {6, sp.Resource}} {
		b = protowire.AppendTag(b, f.num, protowire.BytesType)
		b = protowire.AppendString(b, f.v)
	}
	b = protowire.AppendTag(b, 7, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(sp.Kind))
	b = protowire.AppendTag(b, 8, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(sp.Start))
	b = protowire.AppendTag(b, 9, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(sp.Duration))
	if sp.Error {
		b = protowire.AppendTag(b, 10, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	if sp.HTTPStatus != 0 {
		b = protowire.AppendTag(b, 11, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(sp.HTTPStatus))
	}
	for _, a := range sp.Attrs {
		entry := protowire.AppendTag(nil, 1, protowire.BytesType)
		entry = protowire.AppendString(entry, a.Key)
		entry = protowire.AppendTag(entry, 2, protowire.BytesType)
		entry = protowire.AppendString(entry, a.Value)
		b = protowire.AppendTag(b, 12, protowire.BytesType)
		b = protowire.AppendBytes(b, entry)
	}
	if sp.RulesOnly {
		b = protowire.AppendTag(b, 13, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	if sp.HandedOver {
		b = protowire.AppendTag(b, 14, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	return b
}

// AppendBatchSample appends s to an aggd.v1 Batch as its field 1, using
// item as scratch. A histogram sample (Hist set) keeps its bins and its
// exact count, sum, minimum and maximum (Sample.histogram).
func AppendBatchSample(batch, item []byte, s *window.Sample) ([]byte, []byte) {
	item = AppendSample(item[:0], s)
	batch = protowire.AppendTag(batch, 1, protowire.BytesType)
	return protowire.AppendBytes(batch, item), item
}
