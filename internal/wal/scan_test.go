package wal

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"testing"

	"github.com/klauspost/compress/s2"
)

// frame is a record as Append lays it out in a tidwall segment.
func frame(rec []byte) []byte {
	enc := s2.Encode(nil, rec)
	body := binary.LittleEndian.AppendUint32(nil, crc32.Checksum(enc, castagnoli))
	body = append(body, enc...)
	return append(binary.AppendUvarint(nil, uint64(len(body))), body...)
}

// FuzzScanSegment feeds segments of intact frames with any bytes around
// and between them: scanning never panics, every intact frame that no
// damage touches is found, and the damaged stretches and the frames
// cover the segment exactly.
func FuzzScanSegment(f *testing.F) {
	f.Add([]byte{}, []byte("first record"), []byte{})
	f.Add([]byte{0x05, 1, 2}, []byte("a"), []byte{0xff, 0xff})
	f.Add(frame([]byte("before")), bytes.Repeat([]byte("tag:value,"), 30), []byte{0x80})
	f.Fuzz(func(t *testing.T, pre, rec, post []byte) {
		data := append(append(append([]byte(nil), pre...), frame(rec)...), post...)
		covered, found := 0, false
		err := scanSegment(data, func(body []byte) error {
			got, err := s2.Decode(nil, body)
			if err != nil {
				return errUndecodable
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
			l.Enter()
			if _, err := l.Append([]byte("record"), 0); err != nil {
				t.Fatal(err)
			}
			l.Leave()
		}
		drained := false
		if _, err := l.Rotate(func() {
			drained = true
			if l.gate.TryRLock() {
				l.gate.RUnlock()
				t.Errorf("%d records: a batch could enter while the flush drained", records)
			}
		}); err != nil {
			t.Fatal(err)
		}
		if !drained {
			t.Fatalf("%d records: Rotate did not drain", records)
		}
		if !l.gate.TryRLock() {
			t.Fatalf("%d records: batches are still held out after Rotate", records)
		}
		l.gate.RUnlock()
	}
}
