package spans

import (
	"encoding/binary"
	"math"
	"slices"
)

// A held trace keeps its spans as records in one byte slice, not as Span
// values: the garbage collector marks the slice without reading it, where
// every held Span would have had it follow five pointers, and adding a
// span allocates nothing but the slice's growth.
//
// A record is the span's ids, times, status, kind and flags at fixed
// offsets, then, each length-prefixed (uvarint): the index of its Wire
// among the trace's (with flagWire), service, name, resource, and the
// attribute count followed by each key and value.
const (
	recSpanID   = 0
	recParentID = recSpanID + 8
	recStart    = recParentID + 8
	recDuration = recStart + 8
	recHTTP     = recDuration + 8
	recKind     = recHTTP + 4
	recFlags    = recKind + 1
	recFixed    = recFlags + 1

	flagParent = 1 << 0
	flagError  = 1 << 1
	flagWire   = 1 << 2
)

// heldSpanOverhead is the memory of a held span beyond its record: its
// share of the trace's entry, map slot and slice growth. Measured by
// TestMemoryPerHeldSpan with 5-span traces.
const heldSpanOverhead = 72

// appendRecord appends s's record to b; wire is the index of s.Wire among
// the trace's wires.
func appendRecord(b []byte, s *Span, wire int) []byte {
	b = append(b, s.SpanID[:]...)
	b = append(b, s.ParentID[:]...)
	b = binary.LittleEndian.AppendUint64(b, uint64(s.Start))
	b = binary.LittleEndian.AppendUint64(b, uint64(s.Duration))
	b = binary.LittleEndian.AppendUint32(b, s.HTTPStatus)
	var flags byte
	if s.HasParent {
		flags |= flagParent
	}
	if s.Error {
		flags |= flagError
	}
	if s.Wire != nil {
		flags |= flagWire
	}
	b = append(b, byte(s.Kind), flags)
	if s.Wire != nil {
		b = binary.AppendUvarint(b, uint64(wire))
	}
	b = appendField(b, s.Service)
	b = appendField(b, s.Name)
	b = appendField(b, s.Resource)
	b = binary.AppendUvarint(b, uint64(len(s.Attrs)))
	for _, a := range s.Attrs {
		b = appendField(b, a.Key)
		b = appendField(b, a.Value)
	}
	return b
}

func appendField(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// firstRecordsCap is the capacity of a trace's records at its first span,
// whose record is n bytes long, when the traces decided lately held hint
// bytes of records each: room for as much, so that a trace like them
// never grows its records (growing them, once per trace of 5 spans,
// moving and clearing them, took 8 % of aggd's CPU at 600 k spans/s);
// room for 4 spans like this one while there is no hint. At most 8 spans
// like this one, so that a trace of one span among traces of hundreds
// holds at most 8 times its record.
func firstRecordsCap(n, hint int) int {
	if hint <= 0 {
		return 4 * n
	}
	return min(max(hint+hint/8, n), 8*n)
}

// recordsHint moves hint, the record bytes of the traces decided lately,
// towards held, those of a trace just decided: an average weighing the
// last trace an eighth.
func recordsHint(hint, held int) int {
	return hint + (held-hint)/8
}

// recordSize is the length of s's record, wire index aside.
func recordSize(s *Span) int {
	n := recFixed + fieldSize(s.Service) + fieldSize(s.Name) + fieldSize(s.Resource) + uvarintSize(len(s.Attrs))
	for _, a := range s.Attrs {
		n += fieldSize(a.Key) + fieldSize(a.Value)
	}
	return n
}

func fieldSize(s string) int { return uvarintSize(len(s)) + len(s) }

func uvarintSize(n int) int {
	size := 1
	for ; n >= 0x80; n >>= 7 {
		size++
	}
	return size
}

// heldSize is what a held span counts against the sampler's memory bound.
func heldSize(s *Span) int64 {
	n := int64(recordSize(s) + heldSpanOverhead)
	if s.Wire != nil {
		n += 64 + int64(len(s.Wire.Span)) // resource and scope are shared
	}
	return n
}

// decodeRecords appends to sp the n spans of trace id recorded in buf,
// their attributes appended to attrs; the spans' strings are views into
// buf, their attributes into the returned attrs (each span's Attrs is
// set only once all are decoded: attrs may move while it grows).
func decodeRecords(sp []Span, attrs []Attr, id [16]byte, buf []byte, wires []*Wire, n int) ([]Span, []Attr) {
	first := len(sp)
	counts := make([]int32, 0, 8)
	for range n {
		s := Span{TraceID: id}
		copy(s.SpanID[:], buf[recSpanID:])
		copy(s.ParentID[:], buf[recParentID:])
		s.Start = int64(binary.LittleEndian.Uint64(buf[recStart:]))
		s.Duration = int64(binary.LittleEndian.Uint64(buf[recDuration:]))
		s.HTTPStatus = binary.LittleEndian.Uint32(buf[recHTTP:])
		s.Kind = Kind(buf[recKind])
		flags := buf[recFlags]
		s.HasParent, s.Error = flags&flagParent != 0, flags&flagError != 0
		buf = buf[recFixed:]
		if flags&flagWire != 0 {
			var w uint64
			w, buf = uvarint(buf)
			s.Wire = wires[w]
		}
		s.Service, buf = field(buf)
		s.Name, buf = field(buf)
		s.Resource, buf = field(buf)
		var na uint64
		na, buf = uvarint(buf)
		for range na {
			var a Attr
			a.Key, buf = field(buf)
			a.Value, buf = field(buf)
			attrs = append(attrs, a)
		}
		counts = append(counts, int32(min(na, math.MaxInt32)))
		sp = append(sp, s)
	}
	off := len(attrs)
	for i := len(counts) - 1; i >= 0; i-- {
		if c := int(counts[i]); c > 0 {
			off -= c
			sp[first+i].Attrs = attrs[off : off+c : off+c]
		}
	}
	return sp, attrs
}

func uvarint(b []byte) (uint64, []byte) {
	v, n := binary.Uvarint(b)
	return v, b[n:]
}

func field(b []byte) (string, []byte) {
	n, b := uvarint(b)
	return unsafeString(b[:n:n]), b[n:]
}

// heldTrace is a trace waiting for its decision.
type heldTrace struct {
	recs     []byte  // the spans' records
	wires    []*Wire // the Wires of spans received over OTLP
	n        int     // spans
	last     int64   // arrival of the last span
	bytes    int64
	released bool // decided, moved or handed over: no longer held
}

// add records s, owning what it needs of it. hint is the record bytes a
// trace has held lately (recordsHint), for the first span's allocation.
func (tr *heldTrace) add(s *Span, hint int) {
	if tr.recs == nil {
		tr.recs = make([]byte, 0, firstRecordsCap(recordSize(s), hint))
	}
	w := 0
	if s.Wire != nil {
		w = len(tr.wires)
		tr.wires = append(tr.wires, s.Wire)
	}
	tr.recs = appendRecord(tr.recs, s, w)
	tr.n++
}

// hasSpan reports whether the trace holds a span of id.
func (tr *heldTrace) hasSpan(id [8]byte) bool {
	buf := tr.recs
	for range tr.n {
		if [8]byte(buf[recSpanID:recSpanID+8]) == id {
			return true
		}
		flags := buf[recFlags]
		buf = buf[recFixed:]
		if flags&flagWire != 0 {
			_, buf = uvarint(buf)
		}
		for range 3 { // service, name, resource
			_, buf = field(buf)
		}
		var na uint64
		na, buf = uvarint(buf)
		for range 2 * na {
			_, buf = field(buf)
		}
	}
	return false
}

// spans returns the trace's spans, their strings views into its records,
// in a new slice the caller keeps.
func (tr *heldTrace) spans(id [16]byte) []Span {
	sp, _ := decodeRecords(make([]Span, 0, tr.n), nil, id, tr.recs, tr.wires, tr.n)
	return sp
}

// cloneSpans returns a copy of sp and of their attributes, for a caller
// that keeps them while sp's backing arrays are reused.
func cloneSpans(sp []Span, attrs []Attr) []Span {
	out := slices.Clone(sp)
	if len(attrs) == 0 {
		return out
	}
	own := slices.Clone(attrs)
	off := 0
	for i := range out {
		if n := len(out[i].Attrs); n > 0 {
			out[i].Attrs = own[off : off+n : off+n]
			off += n
		}
	}
	return out
}
