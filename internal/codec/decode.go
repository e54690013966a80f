package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// Limits bounds what one sample may carry.
type Limits struct {
	MaxNameLength int
	MaxTags       int
	MaxTagLength  int
	MaxHostLength int
}

// DefaultLimits returns the documented per-sample limits.
func DefaultLimits() Limits {
	return Limits{MaxNameLength: 200, MaxTags: 100, MaxTagLength: 200, MaxHostLength: 255}
}

// Validate reports a limit out of range.
func (l Limits) Validate() error {
	if l.MaxNameLength < 1 || l.MaxTags < 0 || l.MaxTagLength < 1 || l.MaxHostLength < 1 {
		return errors.New("codec: name, tag and host length limits must be positive, max tags not negative")
	}
	return nil
}

// Rejection is one refused item of a batch.
type Rejection struct {
	Kind   aggdv1.ItemKind
	Index  int
	Reason window.Reason
	Detail string
}

// Decoder turns request bytes into a window.Batch. Its scratch space is
// reused from batch to batch; a Decoder is not safe for concurrent use.
type Decoder struct {
	lim    Limits // in force for the batch: the server's, or the tenant's
	server Limits
	tags   []string
	values []float64
	arena  []byte
	Rej    []Rejection // events, checks and spans
	// detail explains each refused sample, by index; "" where accepted.
	Detail []string
	// EventIndex is the batch index of each event in the window.Batch.
	EventIndex []int
	// spans decoded, with their results and details, and their attributes.
	Spans       []spans.Span
	SpanResults []window.Reason
	SpanDetail  []string
	attrs       []spans.Attr
	// samples decoded, by index, including refused ones.
	NSamples, NEvents, NChecks, NSpans int
	// Series resolves series references; without it they are refused.
	Series *Series
	// Histograms makes the decoder take Sample.histogram and the
	// rules_only of samples, events and spans, which only cluster peers
	// send (and the write-ahead log keeps); otherwise an item with one is
	// refused as unsupported.
	Histograms bool
	hists      []window.HistPoint
}

func NewDecoder(lim Limits) *Decoder { return &Decoder{lim: lim, server: lim} }

// ForTenant applies tenant t's own limits, where it has them.
func (d *Decoder) ForTenant(t *window.Tenant) {
	d.lim = d.server
	tl := t.Limits
	if tl.MaxTags > 0 {
		d.lim.MaxTags = tl.MaxTags
	}
	if tl.MaxNameLength > 0 {
		d.lim.MaxNameLength = tl.MaxNameLength
	}
	if tl.MaxTagLength > 0 {
		d.lim.MaxTagLength = tl.MaxTagLength
	}
}

func (d *Decoder) Reset(b *window.Batch) {
	b.Reset()
	d.tags = d.tags[:0]
	d.values = d.values[:0]
	d.arena = d.arena[:0]
	clear(d.Rej)
	d.Rej = d.Rej[:0]
	clear(d.Detail)
	d.Detail = d.Detail[:0]
	d.EventIndex = d.EventIndex[:0]
	clear(d.Spans)
	d.Spans = d.Spans[:0]
	d.SpanResults = d.SpanResults[:0]
	clear(d.SpanDetail)
	d.SpanDetail = d.SpanDetail[:0]
	clear(d.attrs)
	d.attrs = d.attrs[:0]
	d.NSamples, d.NEvents, d.NChecks, d.NSpans = 0, 0, 0, 0
	d.hists = d.hists[:0]
	if d.Series != nil {
		d.Series.beginBatch()
	}
}

// MalformedError reports bytes that are not a valid message of the expected
// type at the framing level, where no item can be told from the next.
type MalformedError struct{ What string }

func (e MalformedError) Error() string { return "malformed " + e.What }

// DecodeStream decodes a StreamRequest. With d.Series set, the series
// records which of buf's samples by reference the write-ahead log packs
// (Series.RefSamples).
func (d *Decoder) DecodeStream(buf []byte, b *window.Batch) (seq uint64, err error) {
	at := -1 // the offset of a batch in buf, whose samples are noted; -1: none are
	if d.Series != nil {
		d.Series.beginFrame(buf)
		at = 0
	}
	size := len(buf)
	for len(buf) > 0 {
		num, typ, n := protowire.ConsumeTag(buf)
		if n < 0 {
			return 0, MalformedError{"StreamRequest"}
		}
		buf = buf[n:]
		switch {
		case num == 1 && typ == protowire.VarintType:
			seq, n = protowire.ConsumeVarint(buf)
		case num == 2 && typ == protowire.BytesType:
			var v []byte
			v, n = protowire.ConsumeBytes(buf)
			if n >= 0 {
				if at >= 0 {
					at = size - len(buf) + n - len(v) // v's offset in the frame
				}
				if err := d.decodeBatch(v, b, at); err != nil {
					return 0, err
				}
			}
		default:
			n = protowire.ConsumeFieldValue(num, typ, buf)
		}
		if n < 0 {
			return 0, MalformedError{"StreamRequest"}
		}
		buf = buf[n:]
	}
	return seq, nil
}

// DecodeDefinitions declares in d.Series the series references of defs, an
// aggd.v1 Batch of declaring Samples (name, type, host, tags and
// series_ref; values are ignored), as the write-ahead log keeps them
// beside a batch that uses them. A definition that does not validate
// leaves its reference undeclared; only broken framing is an error.
func (d *Decoder) DecodeDefinitions(defs []byte, t *window.Tenant) error {
	for len(defs) > 0 {
		num, typ, n := protowire.ConsumeTag(defs)
		if n < 0 {
			return MalformedError{"series definitions"}
		}
		defs = defs[n:]
		if num != 1 || typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, defs); n < 0 {
				return MalformedError{"series definitions"}
			}
			defs = defs[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(defs)
		if n < 0 {
			return MalformedError{"series definitions"}
		}
		defs = defs[n:]
		var s window.Sample
		r, _, ref := d.decodeSample(v, &s)
		if ref == 0 || ref > MaxSeriesRef || d.Series == nil {
			continue
		}
		if r == window.Accepted && s.Name != "" {
			r, _ = d.lim.checkSeries(&s)
		}
		if r != window.Accepted || s.Name == "" {
			d.Series.forget(ref)
			continue
		}
		d.arena = s.Prepare(t, d.arena)
		d.Series.declare(ref, 0, &s)
	}
	return nil
}

// DecodeSubmit decodes a SubmitRequest.
func (d *Decoder) DecodeSubmit(buf []byte, b *window.Batch) error {
	for len(buf) > 0 {
		num, typ, n := protowire.ConsumeTag(buf)
		if n < 0 {
			return MalformedError{"SubmitRequest"}
		}
		buf = buf[n:]
		if num == 1 && typ == protowire.BytesType {
			var v []byte
			v, n = protowire.ConsumeBytes(buf)
			if n >= 0 {
				if err := d.decodeBatch(v, b, -1); err != nil {
					return err
				}
			}
		} else {
			n = protowire.ConsumeFieldValue(num, typ, buf)
		}
		if n < 0 {
			return MalformedError{"SubmitRequest"}
		}
		buf = buf[n:]
	}
	return nil
}

// DecodeSeeds decodes seeds, the seeds of a ForwardRequest (an aggd.v1
// Batch: see ForwardSeeds), as DecodeSubmit decodes a batch.
func (d *Decoder) DecodeSeeds(seeds []byte, b *window.Batch) error {
	return d.decodeBatch(seeds, b, -1)
}

// decodeBatch decodes a Batch, appending to b. A malformed item is rejected
// by itself; only broken framing of the batch is an error. at is the
// offset of buf in the StreamRequest being decoded, whose samples by
// reference d.Series notes for the write-ahead log; -1 when none is.
func (d *Decoder) decodeBatch(buf []byte, b *window.Batch, at int) error {
	size := len(buf)
	for len(buf) > 0 {
		field := len(buf) // bytes left where the field begins
		num, typ, n := consumeTag(buf)
		if n < 0 {
			return MalformedError{"Batch"}
		}
		buf = buf[n:]
		if typ != protowire.BytesType || num < 1 || num > 4 {
			n = protowire.ConsumeFieldValue(num, typ, buf)
			if n < 0 {
				return MalformedError{"Batch"}
			}
			buf = buf[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(buf)
		if n < 0 {
			return MalformedError{"Batch"}
		}
		buf = buf[n:]
		switch num {
		case 1:
			// Only a field whose tag and length take a byte each is
			// noted: the log packs no other.
			off := -1
			if at >= 0 && field-len(buf) == 2+len(v) {
				off = at + size - field
			}
			if !d.addByRef(v, b, off) {
				d.addSample(v, b)
			}
		case 2:
			d.addEvent(v, b)
		case 3:
			d.addCheck(v, b)
		case 4:
			d.addSpan(v)
		}
	}
	return nil
}

func (d *Decoder) rejectf(kind aggdv1.ItemKind, index int, r window.Reason, format string, args ...any) {
	d.Rej = append(d.Rej, Rejection{Kind: kind, Index: index, Reason: r, Detail: fmt.Sprintf(format, args...)})
}

// addSample decodes and validates one Sample and appends it to b with its
// result.
func (d *Decoder) addSample(buf []byte, b *window.Batch) {
	d.NSamples++
	b.Samples = append(b.Samples, window.Sample{})
	s := &b.Samples[len(b.Samples)-1]
	r, detail, ref := d.decodeSample(buf, s)
	switch {
	case r != window.Accepted:
		if ref != 0 && s.Name != "" && d.Series != nil {
			d.Series.forget(ref) // a refused declaration leaves ref undeclared
		}
	case ref != 0 && (d.Series == nil || ref > MaxSeriesRef):
		r, detail = window.ReasonInvalidSeriesRef, fmt.Sprintf("series_ref %d is not in [1, %d]", ref, MaxSeriesRef)
		if d.Series == nil {
			r, detail = window.ReasonUnsupported, "series references are taken on Stream and Submit only"
		}
	case ref != 0 && s.Name == "":
		if r, detail = d.bySeries(ref, len(b.Samples)-1, s); r == window.Accepted {
			r, detail = d.lim.CheckValues(s)
		}
	default:
		if r, detail = d.validate(s); r == window.Accepted {
			d.arena = s.Prepare(b.Tenant, d.arena)
			if ref != 0 {
				d.Series.declare(ref, len(b.Samples)-1, s)
			}
		} else if ref != 0 {
			d.Series.forget(ref) // a refused declaration leaves ref undeclared
		}
	}
	b.Results = append(b.Results, r)
	d.Detail = append(d.Detail, detail)
}

// addByRef takes buf, a Sample, when it is a plain sample by series
// reference: series_ref in range, and otherwise only type, value, values,
// set_member (valid UTF-8), sample_rate and timestamp_unix_nano, each with
// its usual wire type and the tags of fields 2 and 10 and type's value in
// one byte. It reads them in one pass over the bytes, without the general
// decoder's dispatch, and resolves the reference as addSample would. For
// anything else it takes nothing and reports false, and addSample decodes
// the sample.
//
// A sample of a value and a reference alone, as proto.Marshal writes it,
// is read without the loop. off, its field's offset in the frame (-1:
// not noted), notes it in d.Series for the write-ahead log, and a sample
// of a set as proto.Marshal writes it (memberAndRef) too.
func (d *Decoder) addByRef(buf []byte, b *window.Batch, off int) bool {
	if d.Series == nil {
		return false
	}
	var (
		ref       uint64
		typ       window.MetricType
		value     float64
		rate      float64
		ts        uint64
		member    []byte
		hasMember bool
	)
	valStart := len(d.values)
	whole := buf
	if r, bits, ok := valueAndRef(buf); ok {
		ref, value = uint64(r), math.Float64frombits(bits)
		if off >= 0 {
			d.Series.refs = append(d.Series.refs, RefSample{Bits: bits, Off: uint32(off), Ref: r, Len: uint8(2 + len(buf)), Value: len(buf) > 9})
		}
	} else {
		for len(buf) > 0 {
			switch c := buf[0]; {
			case c == 3<<3|1 && len(buf) >= 9: // value
				value = math.Float64frombits(binary.LittleEndian.Uint64(buf[1:]))
				buf = buf[9:]
				continue
			case c == 10<<3 && len(buf) >= 2: // series_ref
				var n int
				if ref, n = uvarint(buf[1:]); n < 0 {
					break
				}
				buf = buf[1+n:]
				continue
			case c == 2<<3 && len(buf) >= 2 && buf[1] < 0x80: // type
				typ = window.MetricType(buf[1])
				buf = buf[2:]
				continue
			case c == 8<<3|1 && len(buf) >= 9: // sample_rate
				rate = math.Float64frombits(binary.LittleEndian.Uint64(buf[1:]))
				buf = buf[9:]
				continue
			case c == 9<<3 && len(buf) >= 2: // timestamp_unix_nano
				var n int
				if ts, n = uvarint(buf[1:]); n < 0 {
					break
				}
				buf = buf[1+n:]
				continue
			case c == 5<<3|2: // set_member
				v, n := protowire.ConsumeBytes(buf[1:])
				if n < 0 || !utf8.Valid(v) {
					break
				}
				member, hasMember = v, true
				buf = buf[1+n:]
				continue
			case c == 4<<3|2: // values, packed
				v, n := protowire.ConsumeBytes(buf[1:])
				if n < 0 || len(v)%8 != 0 {
					break
				}
				for ; len(v) > 0; v = v[8:] {
					d.values = append(d.values, math.Float64frombits(binary.LittleEndian.Uint64(v)))
				}
				buf = buf[1+n:]
				continue
			case c == 4<<3|1 && len(buf) >= 9: // values, one
				d.values = append(d.values, math.Float64frombits(binary.LittleEndian.Uint64(buf[1:])))
				buf = buf[9:]
				continue
			}
			d.values = d.values[:valStart] // not a plain sample by reference
			return false
		}
		// A uint32 field keeps the low 32 bits, as decodeSample does.
		if r := uint32(ref); r == 0 || r > MaxSeriesRef {
			d.values = d.values[:valStart]
			return false
		}
		if hasMember && off >= 0 {
			if n, ok := memberAndRef(whole); ok {
				d.Series.refs = append(d.Series.refs, RefSample{
					Bits: math.Float64bits(value), Off: uint32(off), Ref: uint32(ref),
					Len: uint8(2 + len(whole)), Value: len(whole) > 9 && whole[0] == 3<<3|1, Member: uint8(n),
				})
			}
		}
	}
	d.NSamples++
	i := len(b.Samples)
	if i < cap(b.Samples) {
		b.Samples = b.Samples[:i+1]
	} else {
		b.Samples = append(b.Samples, window.Sample{})
	}
	// Written in place: an appended literal is built aside and copied.
	s := &b.Samples[i]
	*s = window.Sample{Type: typ, Value: value, SampleRate: rate, Timestamp: int64(ts)}
	if hasMember {
		s.SetMember = view(member)
	}
	if len(d.values) > valStart {
		s.Values = d.values[valStart:len(d.values):len(d.values)]
	}
	r, detail := d.Series.resolve(uint32(ref), i, s)
	if r == window.Accepted {
		r, detail = d.lim.CheckValues(s)
	}
	b.Results = append(b.Results, r)
	d.Detail = append(d.Detail, detail)
	return true
}

// valueAndRef reads buf, a Sample, when it is a value (or none: 0) and
// a series reference in range, in that order and in the shortest
// encoding: what a client's samples by reference mostly are. It returns
// the reference and the value's bits.
func valueAndRef(buf []byte) (ref uint32, bits uint64, ok bool) {
	if len(buf) >= 11 && buf[0] == 3<<3|1 {
		bits = binary.LittleEndian.Uint64(buf[1:])
		buf = buf[9:]
	}
	// A reference up to MaxSeriesRef takes one to three bytes, the last
	// not 0 in the shortest encoding.
	switch {
	case len(buf) == 2 && buf[0] == 10<<3 && buf[1]-1 < 0x7f:
		return uint32(buf[1]), bits, true
	case len(buf) == 3 && buf[0] == 10<<3 && buf[1] >= 0x80 && buf[2]-1 < 0x7f:
		return uint32(buf[1]&0x7f) | uint32(buf[2])<<7, bits, true
	case len(buf) == 4 && buf[0] == 10<<3 && buf[1] >= 0x80 && buf[2] >= 0x80 && buf[3]-1 < 0x7f:
		ref = uint32(buf[1]&0x7f) | uint32(buf[2]&0x7f)<<7 | uint32(buf[3])<<14
		return ref, bits, ref <= MaxSeriesRef
	}
	return 0, 0, false
}

// memberAndRef reports whether buf, a Sample addByRef read, is a value
// (or none), a set member and a series reference, in that order, in the
// encoding proto.Marshal writes, and of under 128 bytes, so that its
// field's tag and length take a byte each: what a client's samples of
// sets by reference are. It returns the length of the member's field,
// its tag and length included.
func memberAndRef(buf []byte) (int, bool) {
	if len(buf) >= 0x80 {
		return 0, false
	}
	if len(buf) > 0 && buf[0] == 3<<3|1 {
		buf = buf[min(9, len(buf)):]
	}
	if len(buf) < 2 || buf[0] != 5<<3|2 || int(buf[1]) > len(buf)-2 {
		return 0, false
	}
	n := 2 + int(buf[1])
	if n == len(buf) || buf[n] != 10<<3 {
		return 0, false // the rest must be the reference alone
	}
	_, _, ok := valueAndRef(buf[n:])
	return n, ok
}

// uvarint is protowire.ConsumeVarint with varints of up to three bytes,
// every series reference, read inline.
func uvarint(b []byte) (uint64, int) {
	switch {
	case b[0] < 0x80:
		return uint64(b[0]), 1
	case len(b) >= 2 && b[1] < 0x80:
		return uint64(b[0]&0x7f) | uint64(b[1])<<7, 2
	case len(b) >= 3 && b[2] < 0x80:
		return uint64(b[0]&0x7f) | uint64(b[1]&0x7f)<<7 | uint64(b[2])<<14, 3
	}
	return protowire.ConsumeVarint(b)
}

// bySeries fills s, a sample that names its series by reference, from the
// stream's table. It may carry no host or tags of its own.
func (d *Decoder) bySeries(ref uint32, i int, s *window.Sample) (window.Reason, string) {
	if s.Host != "" || len(s.Tags) > 0 {
		return window.ReasonInvalidSeriesRef, fmt.Sprintf("a sample by series_ref %d carries no host or tags; declare another reference for another series", ref)
	}
	return d.Series.resolve(ref, i, s)
}

// consumeTag is protowire.ConsumeTag with the one-byte tags of fields 1
// to 15, every field of a Batch and a Sample, read inline.
func consumeTag(b []byte) (protowire.Number, protowire.Type, int) {
	if c := b[0]; c < 0x80 && c >= 1<<3 {
		return protowire.Number(c >> 3), protowire.Type(c & 7), 1
	}
	return protowire.ConsumeTag(b)
}

// view returns b as a string without copying. The string is valid while
// the request buffer is.
func view(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

func (d *Decoder) decodeSample(buf []byte, s *window.Sample) (_ window.Reason, _ string, ref uint32) {
	tagStart, valStart := len(d.tags), len(d.values)
	badUTF8 := ""
	var hist []byte
	hasHist, rulesOnly := false, false
	for len(buf) > 0 {
		num, typ, n := consumeTag(buf)
		if n < 0 {
			return window.ReasonMalformed, "sample is not a valid Sample message", 0
		}
		buf = buf[n:]
		switch {
		case typ == protowire.BytesType && (num == 1 || num == 5 || num == 6 || num == 7):
			var v []byte
			v, n = protowire.ConsumeBytes(buf)
			if n < 0 {
				break
			}
			if badUTF8 == "" && !utf8.Valid(v) {
				badUTF8 = [...]string{1: "name", 5: "set_member", 6: "tag", 7: "host"}[num]
			}
			switch num {
			case 1:
				s.Name = view(v)
			case 5:
				s.SetMember = view(v)
			case 6:
				d.tags = append(d.tags, view(v))
			case 7:
				s.Host = view(v)
			}
		case num == 2 && typ == protowire.VarintType:
			var v uint64
			v, n = protowire.ConsumeVarint(buf)
			// An enum is an int32 on the wire: keep the low 32 bits, as
			// the protobuf runtime does, and map what window cannot hold
			// to a value no type has.
			if t := int32(v); t >= 0 && t < 255 {
				s.Type = window.MetricType(t)
			} else {
				s.Type = 255
			}
		case num == 3 && typ == protowire.Fixed64Type:
			var v uint64
			v, n = protowire.ConsumeFixed64(buf)
			s.Value = math.Float64frombits(v)
		case num == 4 && typ == protowire.Fixed64Type:
			var v uint64
			v, n = protowire.ConsumeFixed64(buf)
			d.values = append(d.values, math.Float64frombits(v))
		case num == 4 && typ == protowire.BytesType:
			var v []byte
			v, n = protowire.ConsumeBytes(buf)
			if n < 0 || len(v)%8 != 0 {
				return window.ReasonMalformed, "packed values are not a whole number of doubles", 0
			}
			for ; len(v) > 0; v = v[8:] {
				u, _ := protowire.ConsumeFixed64(v)
				d.values = append(d.values, math.Float64frombits(u))
			}
		case num == 8 && typ == protowire.Fixed64Type:
			var v uint64
			v, n = protowire.ConsumeFixed64(buf)
			s.SampleRate = math.Float64frombits(v)
		case num == 9 && typ == protowire.VarintType:
			var v uint64
			v, n = protowire.ConsumeVarint(buf)
			s.Timestamp = int64(v)
		case num == 10 && typ == protowire.VarintType:
			var v uint64
			v, n = protowire.ConsumeVarint(buf)
			ref = uint32(v) // a uint32 field keeps the low 32 bits
		case num == 11 && typ == protowire.BytesType:
			hist, n = protowire.ConsumeBytes(buf)
			hasHist = true
		case num == 12 && typ == protowire.VarintType:
			var v uint64
			v, n = protowire.ConsumeVarint(buf)
			rulesOnly = v != 0
		default:
			n = protowire.ConsumeFieldValue(num, typ, buf)
		}
		if n < 0 {
			return window.ReasonMalformed, "sample is not a valid Sample message", 0
		}
		buf = buf[n:]
	}
	if len(d.tags) > tagStart {
		s.Tags = d.tags[tagStart:len(d.tags):len(d.tags)]
	}
	if len(d.values) > valStart {
		s.Values = d.values[valStart:len(d.values):len(d.values)]
	}
	if badUTF8 != "" {
		return window.ReasonInvalidUTF8, badUTF8 + " is not valid UTF-8", ref
	}
	if rulesOnly {
		if !d.Histograms {
			return window.ReasonUnsupported, "rules_only is taken from the replicas of a cluster only", ref
		}
		s.RulesOnly = true
	}
	if hasHist {
		if !d.Histograms {
			return window.ReasonUnsupported, "histogram points are taken from the replicas of a cluster only", ref
		}
		r, detail := d.decodeHist(hist, s)
		return r, detail, ref
	}
	return window.Accepted, "", ref
}

// decodeHist decodes and checks a HistogramPoint into s.Hist.
func (d *Decoder) decodeHist(buf []byte, s *window.Sample) (window.Reason, string) {
	if s.Type != window.TypeHistogram && s.Type != window.TypeTiming && s.Type != window.TypeDistribution {
		return window.ReasonInvalidType, fmt.Sprintf("a histogram point is taken on a histogram, timing or distribution sample, not a %v one", s.Type)
	}
	d.hists = append(d.hists, window.HistPoint{})
	h := &d.hists[len(d.hists)-1]
	// The bins go to d.values, values first: a field may come in parts.
	for _, field := range [2]protowire.Number{1, 2} {
		start := len(d.values)
		var ok bool
		if d.values, ok = appendHistField(d.values, buf, field, h); !ok {
			return window.ReasonMalformed, "histogram is not a valid HistogramPoint message"
		}
		vs := d.values[start:len(d.values):len(d.values)]
		if field == 1 {
			h.Values = vs
		} else {
			h.Counts = vs
		}
	}
	if len(h.Values) != len(h.Counts) {
		return window.ReasonMalformed, fmt.Sprintf("histogram has %d values and %d counts", len(h.Values), len(h.Counts))
	}
	total := 0.0
	for i, v := range h.Values {
		c := h.Counts[i]
		if !finite(v) || !(c > 0) || !finite(c) {
			return window.ReasonInvalidValue, fmt.Sprintf("histogram bin %d: value %v count %v: values must be finite, counts positive", i, v, c)
		}
		total += c
	}
	switch {
	case !(h.Count > 0) || total != h.Count:
		return window.ReasonInvalidValue, fmt.Sprintf("histogram counts add up to %v, count is %v", total, h.Count)
	case !finite(h.Sum) || !finite(h.Min) || !finite(h.Max) || h.Min > h.Max:
		return window.ReasonInvalidValue, "histogram sum, min and max must be finite, min at most max"
	}
	s.Hist = h
	return window.Accepted, ""
}

// appendHistField appends the doubles of field num (1 values, 2 counts)
// of a HistogramPoint to vs, and on the pass for values also reads count,
// sum, min and max into h. It reports whether buf is well formed.
func appendHistField(vs []float64, buf []byte, num protowire.Number, h *window.HistPoint) ([]float64, bool) {
	for len(buf) > 0 {
		f, typ, n := protowire.ConsumeTag(buf)
		if n < 0 {
			return vs, false
		}
		buf = buf[n:]
		switch {
		case f == num && typ == protowire.BytesType:
			var v []byte
			if v, n = protowire.ConsumeBytes(buf); n < 0 || len(v)%8 != 0 {
				return vs, false
			}
			for ; len(v) > 0; v = v[8:] {
				u, _ := protowire.ConsumeFixed64(v)
				vs = append(vs, math.Float64frombits(u))
			}
		case f == num && typ == protowire.Fixed64Type:
			var u uint64
			u, n = protowire.ConsumeFixed64(buf)
			vs = append(vs, math.Float64frombits(u))
		case num == 1 && f >= 3 && f <= 6 && typ == protowire.Fixed64Type:
			var u uint64
			u, n = protowire.ConsumeFixed64(buf)
			v := math.Float64frombits(u)
			switch f {
			case 3:
				h.Count = v
			case 4:
				h.Sum = v
			case 5:
				h.Min = v
			case 6:
				h.Max = v
			}
		default:
			n = protowire.ConsumeFieldValue(f, typ, buf)
		}
		if n < 0 {
			return vs, false
		}
		buf = buf[n:]
	}
	return vs, true
}

// validate checks a decoded sample against the API's rules and d's limits.
func (d *Decoder) validate(s *window.Sample) (window.Reason, string) { return d.lim.Check(s) }

// Check validates a decoded sample against the API's rules and l: name,
// type, host, tags, sample rate (0 becomes 1) and values. Every edge
// (gRPC, DogStatsD) applies it.
func (l Limits) Check(s *window.Sample) (window.Reason, string) {
	if r, detail := l.checkSeries(s); r != window.Accepted {
		return r, detail
	}
	return l.CheckValues(s)
}

// checkSeries validates what names a sample's series: name, type, host
// and tags.
func (l Limits) checkSeries(s *window.Sample) (window.Reason, string) {
	d := struct{ lim Limits }{l}
	switch {
	case s.Name == "":
		return window.ReasonInvalidName, "name is empty"
	case len(s.Name) > d.lim.MaxNameLength:
		return window.ReasonInvalidName, fmt.Sprintf("name is %d bytes long, limit %d", len(s.Name), d.lim.MaxNameLength)
	case !printable(s.Name):
		return window.ReasonInvalidName, "name contains white space or control characters"
	case !s.Type.Valid():
		return window.ReasonInvalidType, fmt.Sprintf("type %d is not a known metric type", s.Type)
	case len(s.Host) > d.lim.MaxHostLength:
		return window.ReasonInvalidHost, fmt.Sprintf("host is %d bytes long, limit %d", len(s.Host), d.lim.MaxHostLength)
	case len(s.Tags) > d.lim.MaxTags:
		return window.ReasonTooManyTags, fmt.Sprintf("%d tags, limit %d", len(s.Tags), d.lim.MaxTags)
	}
	for _, t := range s.Tags {
		if len(t) > d.lim.MaxTagLength {
			return window.ReasonTagTooLong, fmt.Sprintf("tag %.32q… is %d bytes long, limit %d", t, len(t), d.lim.MaxTagLength)
		}
	}
	return window.Accepted, ""
}

// CheckValues validates what a sample measures: sample rate (0 becomes 1),
// set member and values. It is Check for a sample of a series that passed
// Check before, its name, type, host and tags unchanged.
func (l Limits) CheckValues(s *window.Sample) (window.Reason, string) {
	switch sr := s.SampleRate; {
	case sr == 0:
		s.SampleRate = 1
	case !(sr > 0 && sr <= 1):
		return window.ReasonInvalidSampleRate, fmt.Sprintf("sample rate %v is not in (0, 1]", sr)
	}
	if s.Type == window.TypeSet {
		if s.SetMember == "" {
			return window.ReasonInvalidValue, "a set sample needs set_member"
		}
		s.Values = nil
		return window.Accepted, ""
	}
	if s.Values == nil {
		if !finite(s.Value) {
			return window.ReasonInvalidValue, fmt.Sprintf("value %v is not finite", s.Value)
		}
	}
	for i, v := range s.Values {
		if !finite(v) {
			return window.ReasonInvalidValue, fmt.Sprintf("values[%d] %v is not finite", i, v)
		}
	}
	return window.Accepted, ""
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// printable reports whether s has no ASCII control or space characters.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

func (d *Decoder) addEvent(buf []byte, b *window.Batch) {
	ev, ok := decodeItem(d, buf, aggdv1.ItemKind_ITEM_KIND_EVENT, &d.NEvents, eventFromProto)
	if !ok {
		return
	}
	if ev.RulesOnly && !d.Histograms {
		d.Rej = append(d.Rej, Rejection{Kind: aggdv1.ItemKind_ITEM_KIND_EVENT, Index: d.NEvents - 1, Reason: window.ReasonUnsupported,
			Detail: "rules_only is taken from the replicas of a cluster only"})
		return
	}
	ev.Tenant = b.Tenant
	if ev.Timestamp == 0 {
		ev.Timestamp = b.Now
	}
	b.Events = append(b.Events, ev)
	d.EventIndex = append(d.EventIndex, d.NEvents-1)
}

func (d *Decoder) addCheck(buf []byte, b *window.Batch) {
	sc, ok := decodeItem(d, buf, aggdv1.ItemKind_ITEM_KIND_SERVICE_CHECK, &d.NChecks, checkFromProto)
	if !ok {
		return
	}
	sc.Tenant = b.Tenant
	if sc.Timestamp == 0 {
		sc.Timestamp = b.Now
	}
	b.Checks = append(b.Checks, sc)
}

// decodeItem decodes one item that is off the hot path with its generated
// type P and converts it, recording a rejection on failure. *n counts the
// items of its kind.
func decodeItem[P any, PP interface {
	*P
	proto.Message
}, D any](d *Decoder, buf []byte, kind aggdv1.ItemKind, n *int, convert func(*P, Limits) (D, window.Reason, string)) (D, bool) {
	i := *n
	*n++
	var pb P
	var zero D
	if err := proto.Unmarshal(buf, PP(&pb)); err != nil {
		d.rejectf(kind, i, reasonOf(err), "%v", err)
		return zero, false
	}
	item, r, detail := convert(&pb, d.lim)
	if r != window.Accepted {
		d.Rej = append(d.Rej, Rejection{Kind: kind, Index: i, Reason: r, Detail: detail})
		return zero, false
	}
	return item, true
}

// reasonOf classifies a proto.Unmarshal error of one item.
func reasonOf(err error) window.Reason {
	// The protobuf runtime reports invalid UTF-8 in string fields with this
	// wording; it has no exported sentinel.
	if err != nil && strings.Contains(err.Error(), "invalid UTF-8") {
		return window.ReasonInvalidUTF8
	}
	return window.ReasonMalformed
}
