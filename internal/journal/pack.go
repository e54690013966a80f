package journal

import (
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/aggd/aggd/internal/codec"
)

// A stream's record may hold its frame packed: the samples by series
// reference that carry nothing but a reference and a value, most of a
// stream's samples once its series are declared, take 14 or 15 bytes each
// in the request (a tag and a length, a tag and an 8-byte double, a tag
// and the reference) and 3 to 5 packed; those of sets, a set member
// besides, take 11 bytes fewer packed than in the request. Every byte
// written to the log costs the copy into the page cache and, for a log
// that grows, the zeroing of a new page: packing a frame costs less CPU
// than the bytes it saves. Packing is exact: unpacking gives back the frame byte for byte,
// so replay decodes what came.
//
// A packed frame is a sequence of runs, each the uvarint length of bytes
// kept as they are, those bytes, the uvarint count of packed samples that
// follow them, and the samples. A packed sample is a uvarint head, the
// zigzag difference between its reference and that of the sample before
// it in its run (0 for the first) shifted left by two, with how its value
// is stored in the two low bits, and the value:
//
//	valueAbsent   the sample has no value field (the value is 0)
//	valueIntegral a zigzag varint: the value is that integer
//	valueBits     the double's 8 bytes, little-endian
//
// or, for a sample with a set member, withMember in the two low bits, a
// uvarint of the member's length shifted left by two with how the value
// is stored in the two low bits, the value, and the member's bytes.
// (Records written before withMember existed hold none; a release
// without it refuses a record that does, as damaged.)
//
// Only a sample whose encoding is exactly what unpacking writes is packed
// (the fields in field-number order, lengths and varints in their shortest
// form, the sample under 128 bytes, its member valid UTF-8): any other is
// kept as it is, as is everything that is not a sample of the frame's
// batch.
//
// The stream's decoder notes those samples as it reads them
// (codec.Series.RefSamples): a record is packed from the notes when they
// are its frame's (appendPackedRefs), and otherwise from the frame,
// parsed again (appendPacked).
const (
	valueAbsent   = 0
	valueIntegral = 1
	valueBits     = 2
	withMember    = 3
)

// The tags of a packed sample's encoding (in a StreamRequest's batch,
// field 2).
const (
	tagSample byte = 1<<3 | byte(protowire.BytesType)   // Batch.samples
	tagValue  byte = 3<<3 | byte(protowire.Fixed64Type) // Sample.value
	tagMember byte = 5<<3 | byte(protowire.BytesType)   // Sample.set_member
	tagRef    byte = 10<<3 | byte(protowire.VarintType) // Sample.series_ref
)

// maxIntegral bounds the integral values packed as varints: every integer
// of smaller magnitude is a double exactly.
const maxIntegral = 1 << 53

// appendPacked appends frame, a StreamRequest, packed to b, and reports
// whether packing saved anything, and whether what it wrote is dense:
// under three quarters of it kept as it was. s2 shrinks packed samples
// hardly at all, and the samples kept (full names, set members) to a
// third at best, so a dense record never shrinks to the 45 % compressing
// needs to pay (see wal's encodeIfPays). When packing saved nothing, b is
// returned as it came.
func appendPacked(b, frame []byte) (_ []byte, ok, dense bool) {
	start := len(b)
	// The batch field's samples are looked for; the rest is kept.
	raw, packed, kept := 0, 0, 0 // where the bytes kept as they are begin; samples packed; bytes kept
	p := 0
	for p < len(frame) {
		num, typ, n := protowire.ConsumeTag(frame[p:])
		if n < 0 {
			break
		}
		if num != 2 || typ != protowire.BytesType {
			m := protowire.ConsumeFieldValue(num, typ, frame[p+n:])
			if m < 0 {
				break
			}
			p += n + m
			continue
		}
		l, m := protowire.ConsumeVarint(frame[p+n:])
		if m < 0 || l > uint64(len(frame)-p-n-m) {
			break
		}
		batch := p + n + m
		end := batch + int(l)
		b, raw, packed = packSamples(b, frame, raw, batch, end, packed, &kept)
		p = end
	}
	return endPacked(b, frame, start, raw, kept, packed > 0)
}

// endPacked writes the last run of the packed frame begun at b[start:]
// (the bytes of frame from raw on, and no samples), and returns it as
// appendPacked does: packed says some sample was, kept counts the bytes
// kept as they came until raw.
func endPacked(b, frame []byte, start, raw, kept int, packed bool) (_ []byte, ok, dense bool) {
	b = appendUvarint(b, uint64(len(frame)-raw))
	b = append(b, frame[raw:]...)
	b = append(b, 0)
	kept += len(frame) - raw
	if !packed || len(b)-start >= len(frame) {
		return b[:start], false, false
	}
	return b, true, kept*4 < (len(b)-start)*3
}

// packSamples packs the samples of the batch at frame[p:end] that it can,
// writing runs to b from raw, where the bytes not yet written begin, and
// returns b, where the bytes not yet written now begin, and the count of
// samples packed so far; kept counts the bytes kept as they were.
func packSamples(b, frame []byte, raw, p, end, packed int, kept *int) ([]byte, int, int) {
	var prev uint64
	count := -1 // the run's count of samples, -1 before its first
	countAt := 0
	for p < end {
		ref, value, kind, member, n := packable(frame[p:end])
		if n == 0 {
			if count >= 0 {
				b = closeRun(b, countAt, count)
				count = -1
				raw = p
			}
			num, typ, t := protowire.ConsumeTag(frame[p:end])
			if t < 0 {
				break
			}
			m := protowire.ConsumeFieldValue(num, typ, frame[p+t:end])
			if m < 0 {
				break
			}
			p += t + m
			continue
		}
		if count < 0 {
			// A run begins: the bytes kept since raw, and room for the
			// count of its samples (closeRun writes it).
			b = protowire.AppendVarint(b, uint64(p-raw))
			b = append(b, frame[raw:p]...)
			*kept += p - raw
			countAt = len(b)
			b = append(b, 0, 0, 0, 0, 0)
			count = 0
			prev = 0
		}
		head := protowire.EncodeZigZag(int64(ref-prev)) << 2
		if member == nil {
			b = appendUvarint(b, head|kind)
		} else {
			b = appendUvarint(b, head|withMember)
			b = appendUvarint(b, uint64(len(member))<<2|kind)
		}
		switch kind {
		case valueIntegral:
			b = appendUvarint(b, value)
		case valueBits:
			b = protowire.AppendFixed64(b, value)
		}
		b = append(b, member...)
		prev = ref
		count++
		packed++
		p += n
	}
	if count >= 0 {
		b = closeRun(b, countAt, count)
		raw = p
	}
	return b, raw, packed
}

// appendUvarint is protowire.AppendVarint for the short varints of packed
// samples, small enough to be inlined.
func appendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// closeRun writes a run's count of samples in the room left for it at
// b[at:at+5], moving its samples back over the room the count did not
// take.
func closeRun(b []byte, at, count int) []byte {
	var cb [5]byte
	c := protowire.AppendVarint(cb[:0], uint64(count))
	copy(b[at:], c)
	if gap := 5 - len(c); gap > 0 {
		copy(b[at+len(c):], b[at+5:])
		b = b[:len(b)-gap]
	}
	return b
}

// packable reports whether the field at the start of p is a sample that
// packs: its reference, its value as stored (the double's bits, or the
// zigzag encoding of the integer it is), how the value is stored, its set
// member (nil without one) and the length of the field; a length of 0
// when it does not pack.
func packable(p []byte) (ref, value, kind uint64, member []byte, n int) {
	if len(p) < 4 || p[0] != tagSample || p[1] >= 0x80 {
		return 0, 0, 0, nil, 0
	}
	l := int(p[1])
	if l > len(p)-2 {
		return 0, 0, 0, nil, 0
	}
	s := p[2 : 2+l]
	kind = valueAbsent
	if len(s) > 0 && s[0] == tagValue {
		if len(s) < 9 {
			return 0, 0, 0, nil, 0
		}
		value, kind = packedValue(binary.LittleEndian.Uint64(s[1:9]))
		s = s[9:]
	}
	if len(s) > 0 && s[0] == tagMember {
		// A length of one byte: the sample is under 128.
		if len(s) < 2 || int(s[1]) > len(s)-2 || !utf8.Valid(s[2:2+s[1]]) {
			return 0, 0, 0, nil, 0
		}
		member = s[2 : 2+s[1] : 2+s[1]]
		s = s[2+s[1]:]
	}
	// The reference, a varint of 1 to 5 bytes in its shortest form (its
	// last byte not 0), the sample's last field.
	if len(s) < 2 || len(s) > 6 || s[0] != tagRef || s[len(s)-1] >= 0x80 || (len(s) > 2 && s[len(s)-1] == 0) {
		return 0, 0, 0, nil, 0
	}
	for i, c := range s[1:] {
		if i < len(s)-2 && c < 0x80 {
			return 0, 0, 0, nil, 0
		}
		ref |= uint64(c&0x7f) << (7 * i)
	}
	if ref == 0 || ref > math.MaxUint32 {
		return 0, 0, 0, nil, 0
	}
	return ref, value, kind, member, 2 + l
}

// packedValue returns how a value field of the given bits is packed:
// the zigzag encoding of the integer it is and valueIntegral, or the
// bits and valueBits.
func packedValue(bits uint64) (value, kind uint64) {
	// An integer of less than 53 bits is a double exactly; the conversion
	// back tells -0, NaN and fractions apart.
	if i := int64(math.Float64frombits(bits)); i > -maxIntegral && i < maxIntegral && math.Float64bits(float64(i)) == bits {
		return protowire.EncodeZigZag(i), valueIntegral
	}
	return bits, valueBits
}

// appendPackedRefs is appendPacked for a frame whose samples that pack
// its decoder noted as it read them (codec.Series.RefSamples): it writes
// the runs from them without parsing the frame again. It writes what
// appendPacked writes, except that a sample whose reference is past
// codec.MaxSeriesRef, which the decoder refuses, is kept as it came.
// Samples noted out of the frame's order or past its end make it pack
// as appendPacked does.
func appendPackedRefs(b, frame []byte, refs []codec.RefSample) (_ []byte, ok, dense bool) {
	if len(refs) == 0 {
		return b, false, false
	}
	start := len(b)
	raw, kept := 0, 0 // where the bytes kept as they are begin; bytes kept
	for i := 0; i < len(refs); {
		// A run: the kept bytes, and the samples that follow one another
		// in the frame.
		at := int(refs[i].Off)
		if at < raw {
			return appendPacked(b[:start], frame)
		}
		end, j := at+int(refs[i].Len), i+1
		for j < len(refs) && int(refs[j].Off) == end {
			end += int(refs[j].Len)
			j++
		}
		if end > len(frame) {
			return appendPacked(b[:start], frame)
		}
		b = appendUvarint(b, uint64(at-raw))
		b = append(b, frame[raw:at]...)
		kept += at - raw
		b = appendUvarint(b, uint64(j-i))
		b = appendRun(b, frame, refs[i:j])
		raw, i = end, j
	}
	return endPacked(b, frame, start, raw, kept, true)
}

// appendRun appends the packed samples of a run of frame.
func appendRun(b, frame []byte, run []codec.RefSample) []byte {
	// A sample packs in at most 13 bytes (a head of up to 5, a value of
	// up to 8) besides its member, which is shorter packed than in the
	// frame (it takes a byte of the length's, and its own).
	room := 13 * len(run)
	if len(run) > 0 {
		room += int(run[len(run)-1].Off) + int(run[len(run)-1].Len) - int(run[0].Off)
	}
	b = slices.Grow(b, room)
	n, p := len(b), b[:cap(b)]
	var prev uint32
	for _, r := range run {
		head := protowire.EncodeZigZag(int64(r.Ref)-int64(prev)) << 2
		prev = r.Ref
		var value, kind uint64
		if r.Value {
			value, kind = packedValue(r.Bits)
		}
		if r.Member == 0 {
			n = putUvarint(p, n, head|kind)
		} else {
			n = putUvarint(p, n, head|withMember)
			n = putUvarint(p, n, uint64(r.Member-2)<<2|kind)
		}
		switch kind {
		case valueIntegral:
			n = putUvarint(p, n, value)
		case valueBits:
			binary.LittleEndian.PutUint64(p[n:], value)
			n += 8
		}
		if r.Member > 0 {
			at := int(r.Off) + 2 // past the sample's tag and length
			if r.Value {
				at += 9
			}
			n += copy(p[n:], frame[at+2:at+int(r.Member)])
		}
	}
	return b[:n]
}

// putUvarint writes v as a varint at p[n:], and returns where it ends.
// binary.PutUvarint on p[n:], the same loop on a slice made for each
// varint, was slower: BenchmarkDecodePack/refs/pack took 2.90–2.99 µs a
// batch of 500 with it against 2.45–2.51 (three alternating runs).
func putUvarint(p []byte, n int, v uint64) int {
	for v >= 0x80 {
		p[n] = byte(v) | 0x80
		v >>= 7
		n++
	}
	p[n] = byte(v)
	return n + 1
}

var errPacked = errors.New("journal: write-ahead log record's packed frame is malformed")

// appendUnpacked appends the frame packed holds to b.
func appendUnpacked(b, packed []byte) ([]byte, error) {
	for len(packed) > 0 {
		l, n := protowire.ConsumeVarint(packed)
		if n < 0 || l > uint64(len(packed)-n) {
			return b, errPacked
		}
		b = append(b, packed[n:n+int(l)]...)
		packed = packed[n+int(l):]
		count, n := protowire.ConsumeVarint(packed)
		if n < 0 || count > uint64(len(packed)) {
			return b, errPacked
		}
		packed = packed[n:]
		var prev uint64
		for range count {
			head, n := protowire.ConsumeVarint(packed)
			if n < 0 {
				return b, errPacked
			}
			packed = packed[n:]
			ref := prev + uint64(protowire.DecodeZigZag(head>>2))
			prev = ref
			if ref == 0 || ref > math.MaxUint32 {
				return b, errPacked
			}
			var bits uint64
			kind := head & 3
			mlen := -1 // the set member's length; -1 without one
			if kind == withMember {
				v, n := protowire.ConsumeVarint(packed)
				if n < 0 || v>>2 >= 0x80 {
					return b, errPacked
				}
				packed = packed[n:]
				mlen, kind = int(v>>2), v&3
			}
			switch kind {
			case valueAbsent:
			case valueIntegral:
				v, n := protowire.ConsumeVarint(packed)
				if n < 0 {
					return b, errPacked
				}
				packed = packed[n:]
				i := protowire.DecodeZigZag(v)
				if i <= -maxIntegral || i >= maxIntegral {
					return b, errPacked
				}
				bits = math.Float64bits(float64(i))
			case valueBits:
				if len(packed) < 8 {
					return b, errPacked
				}
				bits = binary.LittleEndian.Uint64(packed[:8])
				packed = packed[8:]
			default:
				return b, errPacked
			}
			l := 1 + protowire.SizeVarint(ref)
			if kind != valueAbsent {
				l += 9
			}
			if mlen >= 0 {
				if mlen > len(packed) {
					return b, errPacked
				}
				l += 2 + mlen
			}
			if l >= 0x80 {
				return b, errPacked // packing keeps such a sample as it is
			}
			b = append(b, tagSample, byte(l))
			if kind != valueAbsent {
				b = append(b, tagValue)
				b = protowire.AppendFixed64(b, bits)
			}
			if mlen >= 0 {
				b = append(b, tagMember, byte(mlen))
				b = append(b, packed[:mlen]...)
				packed = packed[mlen:]
			}
			b = append(b, tagRef)
			b = protowire.AppendVarint(b, ref)
		}
	}
	return b, nil
}
