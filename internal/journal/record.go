package journal

import (
	"errors"

	"google.golang.org/protobuf/encoding/protowire"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
)

// Kind is which aggd.v1 request message a record's frame is.
type Kind byte

// Record kinds.
const (
	Stream Kind = 1 // a StreamRequest
	Submit Kind = 2 // a SubmitRequest
	// packedStream marks, in a record, a StreamRequest whose frame is
	// packed (see appendPacked); ParseRecord reads it as a Stream record
	// with Packed set.
	packedStream Kind = 3
)

// The first byte of every record is its version. Version 2 adds the
// stream and the series definitions, version 3 the tick of the last
// drain; records of versions 1 and 2 are still read.
const (
	version1 byte = 1
	version2 byte = 2
	version  byte = 3
)

// Record is one batch as the log keeps it: the request frame as it came,
// with what replaying it needs and cannot tell from the frame.
type Record struct {
	Kind   Kind
	Tenant string
	// Now is the arrival time, Unix nanoseconds.
	Now int64
	// Refused are the items refused after decoding.
	Refused []Item
	// Stream identifies the stream of a Stream record, for its series
	// references: unique within and across runs, 0 when unknown.
	Stream uint64
	// Defs are the series definitions the frame's references need that
	// earlier records of the same generation do not hold: an aggd.v1
	// Batch of declaring Samples (see codec.Series).
	Defs []byte
	// Drained is the tick of the last drain of the windows when the batch
	// was taken in (Ingester.Drained), 0 when unknown: samples without a
	// timestamp stamped before it went to the bucket open after it.
	Drained int64
	// Frame is the request message, or, when Packed is set, its packed
	// form (UnpackFrame).
	Frame  []byte
	Packed bool
}

// Item names one item of a batch: its kind and its index among the items
// of that kind.
type Item struct {
	Kind  aggdv1.ItemKind
	Index uint64
}

// AppendRecord appends the encoding of r to b. A Stream record's frame is
// packed where that saves bytes.
func AppendRecord(b []byte, r Record) []byte {
	b, _ = appendRecord(b, r, nil)
	return b
}

// appendRecord is AppendRecord, and reports whether the record is dense:
// its frame packed, and little of it kept as it came, so that compressing
// the record would not pay. series, if set, are the series references of
// the decoder that read the frame: the samples it noted pack without
// parsing the frame again.
func appendRecord(b []byte, r Record, series *codec.Series) (_ []byte, dense bool) {
	kind := len(b) + 1
	b = append(b, version, byte(r.Kind))
	b = protowire.AppendString(b, r.Tenant)
	b = protowire.AppendVarint(b, uint64(r.Now))
	b = protowire.AppendVarint(b, uint64(len(r.Refused)))
	for _, rj := range r.Refused {
		b = protowire.AppendVarint(b, uint64(rj.Kind))
		b = protowire.AppendVarint(b, rj.Index)
	}
	b = protowire.AppendVarint(b, r.Stream)
	b = protowire.AppendBytes(b, r.Defs)
	b = protowire.AppendVarint(b, uint64(r.Drained))
	if r.Kind == Stream {
		if r.Packed {
			b[kind] = byte(packedStream)
		} else if p, ok, dense := appendPackedFrame(b, r.Frame, series); ok {
			p[kind] = byte(packedStream)
			return p, dense
		} else {
			b = p
		}
	}
	return append(b, r.Frame...), false
}

// appendPackedFrame is appendPacked, from the samples series noted when
// they are frame's.
func appendPackedFrame(b, frame []byte, series *codec.Series) (_ []byte, ok, dense bool) {
	if series != nil {
		if refs, noted := series.RefSamples(frame); noted {
			return appendPackedRefs(b, frame, refs)
		}
	}
	return appendPacked(b, frame)
}

// UnpackFrame appends the frame of r, a Stream record whose Frame is
// packed, to b.
func UnpackFrame(b []byte, r *Record) ([]byte, error) { return appendUnpacked(b, r.Frame) }

// AppendSubmit appends batch, an aggd.v1 Batch message, to b as the frame of a
// Submit record of tenant at now, taken in after the drain at drained,
// with nothing refused: how items that came in another protocol are
// logged.
func AppendSubmit(b []byte, tenant string, now, drained int64, batch []byte) []byte {
	b = AppendSubmitFrame(b, tenant, now, drained, nil)
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	return protowire.AppendBytes(b, batch)
}

// AppendSubmitFrame appends frame, the fields of a SubmitRequest (or of a
// ForwardRequest, which shares its batch field), to b as the frame of a
// Submit record of tenant at now, taken in after the drain at drained,
// with nothing refused.
func AppendSubmitFrame(b []byte, tenant string, now, drained int64, frame []byte) []byte {
	b = append(b, version, byte(Submit))
	b = protowire.AppendString(b, tenant)
	b = protowire.AppendVarint(b, uint64(now))
	b = protowire.AppendVarint(b, 0) // nothing refused
	b = protowire.AppendVarint(b, 0) // no stream
	b = protowire.AppendBytes(b, nil)
	b = protowire.AppendVarint(b, uint64(drained))
	return append(b, frame...)
}

var errRecord = codec.MalformedError{What: "write-ahead log record"}

// ParseRecord reads a record. Its Frame is a view into rec.
func ParseRecord(rec []byte) (Record, error) {
	if len(rec) < 2 || rec[0] < version1 || rec[0] > version || Kind(rec[1]) < Stream || Kind(rec[1]) > packedStream ||
		(Kind(rec[1]) == packedStream && rec[0] < version) {
		return Record{}, errors.New("journal: write-ahead log record of an unknown version or kind")
	}
	r := Record{Kind: Kind(rec[1])}
	if r.Kind == packedStream {
		r.Kind, r.Packed = Stream, true
	}
	p := rec[2:]
	id, n := protowire.ConsumeString(p)
	if n < 0 {
		return Record{}, errRecord
	}
	p = p[n:]
	now, n := protowire.ConsumeVarint(p)
	if n < 0 {
		return Record{}, errRecord
	}
	p = p[n:]
	nrej, n := protowire.ConsumeVarint(p)
	if n < 0 || nrej > uint64(len(p)) {
		return Record{}, errRecord
	}
	p = p[n:]
	r.Tenant, r.Now = id, int64(now)
	if nrej > 0 {
		r.Refused = make([]Item, 0, nrej)
	}
	for range nrej {
		k, n1 := protowire.ConsumeVarint(p)
		if n1 < 0 {
			return Record{}, errRecord
		}
		i, n2 := protowire.ConsumeVarint(p[n1:])
		if n2 < 0 {
			return Record{}, errRecord
		}
		p = p[n1+n2:]
		r.Refused = append(r.Refused, Item{Kind: aggdv1.ItemKind(k), Index: i})
	}
	if rec[0] >= version2 {
		st, n := protowire.ConsumeVarint(p)
		if n < 0 {
			return Record{}, errRecord
		}
		p = p[n:]
		defs, n := protowire.ConsumeBytes(p)
		if n < 0 {
			return Record{}, errRecord
		}
		p = p[n:]
		r.Stream = st
		if len(defs) > 0 {
			r.Defs = defs
		}
	}
	if rec[0] >= version {
		drained, n := protowire.ConsumeVarint(p)
		if n < 0 {
			return Record{}, errRecord
		}
		p = p[n:]
		r.Drained = int64(drained)
	}
	r.Frame = p
	return r, nil
}
