package wal

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/s2"
)

// oldFrame is a record as Append laid it out before frames said how
// their record is stored: an s2 block right after the checksum.
func oldFrame(rec []byte) []byte {
	enc := s2.Encode(nil, rec)
	body := binary.LittleEndian.AppendUint32(nil, crc32.Checksum(enc, castagnoli))
	body = append(body, enc...)
	return append(binary.AppendUvarint(nil, uint64(len(body))), body...)
}

// frame is a record as Append lays it out now, stored with c.
func frame(rec []byte, c Compression) []byte {
	b, off := appendFrame(nil, rec, c)
	return b[off:]
}

// FuzzScanSegment feeds segments of intact frames, of the earlier
// format or of the current one with either storage, with any bytes around
// and between them: scanning never panics, every intact frame that no
// damage touches is found, and the damaged stretches and the frames
// cover the segment exactly.
func FuzzScanSegment(f *testing.F) {
	f.Add([]byte{}, []byte("first record"), []byte{}, byte(0))
	f.Add([]byte{0x05, 1, 2}, []byte("a"), []byte{0xff, 0xff}, byte(1))
	f.Add(oldFrame([]byte("before")), bytes.Repeat([]byte("tag:value,"), 30), []byte{0x80}, byte(2))
	f.Add(frame([]byte("before"), CompressNone), bytes.Repeat([]byte("tag:value,"), 30), frame([]byte("after"), CompressS2), byte(1))
	f.Fuzz(func(t *testing.T, pre, rec, post []byte, format byte) {
		var fr []byte
		switch format % 3 {
		case 0:
			if len(rec) < 2 {
				// Earlier releases wrote no record of 0 or 1 bytes (every
				// journal record is longer), whose s2 block would start
				// with the byte that marks a body's kind (decodeBody).
				return
			}
			fr = oldFrame(rec)
		case 1:
			fr = frame(rec, CompressNone)
		default:
			fr = frame(rec, CompressS2)
		}
		data := append(append(append([]byte(nil), pre...), fr...), post...)
		covered, found := 0, false
		err := scanSegment(data, func(body []byte) error {
			got, err := decodeBody(nil, body)
			if err != nil {
				return err
			}
			covered += len(binary.AppendUvarint(nil, uint64(len(body)+4))) + 4 + len(body)
			found = found || bytes.Equal(got, rec)
			return nil
		}, func(off, n int, torn bool) {
			if off < 0 || n <= 0 || off+n > len(data) {
				t.Fatalf("damage at %d+%d in %d bytes", off, n, len(data))
			}
			covered += n
		})
		if err != nil {
			t.Fatal(err)
		}
		if covered != len(data) {
			t.Fatalf("frames and damage cover %d of %d bytes", covered, len(data))
		}
		if len(pre) == 0 && !found {
			t.Fatal("the intact first frame was not found")
		}
	})
}

// TestRotateHoldsBatchesOutUntilDrained: between ending a generation and
// the end of the drain Rotate is given, no batch may enter. One that
// entered there would have its record in the next generation while the
// flush carried it: the checkpoint would not cover it and replay would
// take it again, a second time for an untimed sample.
func TestRotateHoldsBatchesOutUntilDrained(t *testing.T) {
	l, err := Open(t.TempDir(), Options{Sync: SyncNever})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, records := range []int{0, 1} { // an empty generation is not ended, but drained the same
		for range records {
			tk := l.Enter(true)
			if _, err := l.Append([]byte("record"), 0); err != nil {
				t.Fatal(err)
			}
			l.Leave(tk)
		}
		drained := false
		if _, err := l.Rotate(func() {
			drained = true
			if !l.gate.held() {
				t.Errorf("%d records: a batch could enter while the flush drained", records)
			}
		}); err != nil {
			t.Fatal(err)
		}
		if !drained {
			t.Fatalf("%d records: Rotate did not drain", records)
		}
		if l.gate.held() {
			t.Fatalf("%d records: batches are still held out after Rotate", records)
		}
	}
}

// FuzzDecodeBody: a body appendFrame made gives back its record, stored
// either way, and any other body is decoded without panicking: a raw one
// as its bytes after the marker, a compressed one or one of the earlier
// format as s2 decodes it, or refused as undecodable.
func FuzzDecodeBody(f *testing.F) {
	f.Add([]byte("record"), []byte{})
	f.Add(bytes.Repeat([]byte("tag:value,"), 30), []byte{bodyRaw, 3, 1})
	f.Add([]byte{3, 1, 0}, []byte{bodyS2, 0x05, 0x10, 'a', 'b', 'c', 'd', 'e'})
	f.Add([]byte{}, s2.Encode(nil, []byte("an earlier format's record")))
	f.Fuzz(func(t *testing.T, rec, body []byte) {
		for _, c := range []Compression{CompressNone, CompressS2} {
			fr := frame(rec, c)
			_, m := binary.Uvarint(fr)
			got, err := decodeBody(nil, fr[m+4:])
			if err != nil || !bytes.Equal(got, rec) {
				t.Fatalf("compression %d: decodeBody = %q, %v; want %q", c, got, err, rec)
			}
		}
		// Replay decodes only bodies whose checksum held; an arbitrary one
		// may claim gigabytes decoded, which s2 would allocate for every
		// input: such claims are left out.
		if len(body) > 1 {
			blk := body
			if body[0] == bodyS2 {
				blk = body[1:]
			}
			if n, err := s2.DecodedLen(blk); err == nil && n > 1<<20 {
				return
			}
		}
		got, err := decodeBody(nil, body)
		switch {
		case len(body) == 0:
			if err == nil {
				t.Fatal("an empty body decoded")
			}
		case body[0] == bodyRaw:
			if err != nil || !bytes.Equal(got, body[1:]) {
				t.Fatalf("raw body: %q, %v", got, err)
			}
		default:
			blk := body
			if body[0] == bodyS2 {
				blk = body[1:]
			}
			if n, err := s2.DecodedLen(blk); err == nil && n > 1<<20 {
				return // a length that large is not worth the fuzzer's memory
			}
			want, werr := s2.Decode(nil, blk)
			if (err != nil) != (werr != nil) || !bytes.Equal(got, want) {
				t.Fatalf("s2 body: %q, %v; s2.Decode: %q, %v", got, err, want, werr)
			}
		}
	})
}

// TestS2StoresOnlyWhatShrinks: with CompressS2, records whose last 2 KiB
// s2 shrinks to under 45 % are stored compressed and the others as they
// are; either way the body gives back the record, and framing into a
// buffer of the right size allocates nothing.
func TestS2StoresOnlyWhatShrinks(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var names, refs []byte
	for i := range 500 {
		// Samples as full names: the same names and tags again and again.
		names = fmt.Appendf(names, "\x0a\x3a\x0a\x13http.requests.total\x12\x0bhost:web-%03d\x12\x08env:prod\x19%08x", i%50, rng.Uint32())
		// Samples by reference: a varint and a double each.
		refs = binary.AppendUvarint(refs, uint64(rng.IntN(100000)))
		refs = binary.LittleEndian.AppendUint64(refs, math.Float64bits(rng.Float64()*1000))
	}
	for _, tc := range []struct {
		name string
		rec  []byte
		c    Compression
		want byte
	}{
		{"full names", names, CompressS2, bodyS2},
		{"full names, not compressing", names, CompressNone, bodyRaw},
		{"references", refs, CompressS2, bodyRaw},
		{"a short repetitive record", bytes.Repeat([]byte("tag:value,"), 30), CompressS2, bodyS2},
		{"a short record", []byte("record 1"), CompressS2, bodyRaw},
		{"an empty record", nil, CompressS2, bodyRaw},
		// The probe is the last 2 KiB; the block's header says the whole
		// record's length, a byte longer than the rest's at these sizes.
		{"a byte more than the probe", names[:probeSize+1], CompressS2, bodyS2},
		{"127 bytes more than the probe", names[:probeSize+127], CompressS2, bodyS2},
		{"128 bytes more than the probe", names[:probeSize+128], CompressS2, bodyS2},
		{"16383 bytes more than the probe", names[:probeSize+16383], CompressS2, bodyS2},
		{"references after names", append(names[:probeSize*4:probeSize*4], refs...), CompressS2, bodyRaw},
		{"names after references", append(refs[:probeSize*2:probeSize*2], names...), CompressS2, bodyS2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fr := frame(tc.rec, tc.c)
			size, m := binary.Uvarint(fr)
			body := fr[m+4:]
			if int(size) != len(fr)-m || body[0] != tc.want {
				t.Fatalf("body of %d bytes stored as %d, want %d", len(body), body[0], tc.want)
			}
			got, err := decodeBody(nil, body)
			if err != nil || !bytes.Equal(got, tc.rec) {
				t.Fatalf("decodeBody: %v, record back: %t", err, bytes.Equal(got, tc.rec))
			}
			if tc.want == bodyS2 && len(body) >= len(tc.rec)/2 {
				t.Errorf("compressed to %d bytes of %d", len(body), len(tc.rec))
			}
			buf, _ := appendFrame(nil, tc.rec, tc.c)
			if n := testing.AllocsPerRun(20, func() { buf, _ = appendFrame(buf[:0], tc.rec, tc.c) }); n != 0 {
				t.Errorf("appendFrame allocates %v times into a buffer of its size", n)
			}
		})
	}
}

// BenchmarkAppendFrame frames a record of 500 full-name samples, as
// CompressS2 writes it: ns/op is the CPU a batch's record takes before
// its ack, besides the write.
func BenchmarkAppendFrame(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	var rec []byte
	for i := range 500 {
		rec = fmt.Appendf(rec, "\x0a\x3a\x0a\x13http.requests.total\x12\x0bhost:web-%03d\x12\x08env:prod\x19%08x", i%50, rng.Uint32())
	}
	buf, _ := appendFrame(nil, rec, CompressS2)
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = appendFrame(buf[:0], rec, CompressS2)
	}
}
