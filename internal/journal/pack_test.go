package journal_test

import (
	"bytes"
	"math"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/journal"
)

// packFrames are StreamRequests whose records pack, or not, with what
// makes them interesting.
func packFrames() []struct {
	name   string
	req    *aggdv1.StreamRequest
	packed bool
} {
	refs := func(n int, value func(i int) float64) []*aggdv1.Sample {
		s := make([]*aggdv1.Sample, n)
		for i := range s {
			s[i] = &aggdv1.Sample{SeriesRef: uint32(i*7919%100_000 + 1), Value: value(i)}
		}
		return s
	}
	mixed := refs(6, func(i int) float64 { return float64(i) })
	mixed[2] = &aggdv1.Sample{Name: "hits", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, Tags: []string{"env:a"}}
	mixed[4] = &aggdv1.Sample{SeriesRef: 9, Value: 2, TimestampUnixNano: 1_700_000_000_000_000_000}
	return []struct {
		name   string
		req    *aggdv1.StreamRequest
		packed bool
	}{
		{"integral values", &aggdv1.StreamRequest{Sequence: 3, Batch: &aggdv1.Batch{Samples: refs(500, func(i int) float64 { return float64(i%1000 - 300) })}}, true},
		{"values that are not integers", &aggdv1.StreamRequest{Sequence: 4, Batch: &aggdv1.Batch{Samples: refs(50, func(i int) float64 {
			return []float64{0.5, math.Copysign(0, -1), math.NaN(), math.Inf(1), 1 << 60, -(1 << 53), 1e-300}[i%7]
		})}}, true},
		{"value 0, left out", &aggdv1.StreamRequest{Batch: &aggdv1.Batch{Samples: refs(20, func(int) float64 { return 0 })}}, true},
		{"largest reference", &aggdv1.StreamRequest{Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
			{SeriesRef: math.MaxUint32, Value: 1}, {SeriesRef: 1, Value: 1}, {SeriesRef: math.MaxUint32, Value: 3}}}}, true},
		{"full names and timestamps between references", &aggdv1.StreamRequest{Sequence: 9, Batch: &aggdv1.Batch{Samples: mixed,
			Events: []*aggdv1.Event{{Title: "deploy"}}}}, true},
		{"declarations only", &aggdv1.StreamRequest{Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
			{Name: "r", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, SeriesRef: 1, Value: 1}}}}, false},
		{"no batch", &aggdv1.StreamRequest{Sequence: 1}, false},
	}
}

// TestPackedFramesReadBackExactly: a stream's record packs the samples by
// reference of its frame, and replay reads back the frame byte for byte.
func TestPackedFramesReadBackExactly(t *testing.T) {
	for _, tc := range packFrames() {
		t.Run(tc.name, func(t *testing.T) {
			frame, err := proto.Marshal(tc.req)
			if err != nil {
				t.Fatal(err)
			}
			r := journal.Record{Kind: journal.Stream, Tenant: "acme", Now: 7, Stream: 1 << 40, Drained: 5, Frame: frame}
			rec := journal.AppendRecord([]byte("prefix"), r)
			if !bytes.HasPrefix(rec, []byte("prefix")) {
				t.Fatal("AppendRecord overwrote what b held")
			}
			got, err := journal.ParseRecord(rec[len("prefix"):])
			if err != nil {
				t.Fatal(err)
			}
			if got.Packed != tc.packed || got.Kind != journal.Stream || got.Tenant != "acme" || got.Now != 7 || got.Stream != 1<<40 || got.Drained != 5 {
				t.Fatalf("record %+v, want packed %v", got, tc.packed)
			}
			if got.Packed {
				if len(got.Frame) >= len(frame) {
					t.Fatalf("packed frame of %d bytes, the frame %d", len(got.Frame), len(frame))
				}
				if got.Frame, err = journal.UnpackFrame([]byte("x"), &got); err != nil {
					t.Fatal(err)
				}
				got.Frame = got.Frame[1:]
			}
			if !bytes.Equal(got.Frame, frame) {
				t.Fatalf("frame read back\n%x\nwant\n%x", got.Frame, frame)
			}
			// A packed record written again stays as it is.
			if got.Packed {
				p, _ := journal.ParseRecord(rec[len("prefix"):])
				if again := journal.AppendRecord(nil, p); !bytes.Equal(again, rec[len("prefix"):]) {
					t.Fatal("a packed record written again changed")
				}
			}
		})
	}
}

// TestPackedSamplesAreSmall: 500 samples by reference with integral
// values, as a client sends them once its series are declared, take
// under 5 bytes each packed, against 14 or 15 in the request.
func TestPackedSamplesAreSmall(t *testing.T) {
	frame, _ := proto.Marshal(packFrames()[0].req)
	r, err := journal.ParseRecord(journal.AppendRecord(nil, journal.Record{Kind: journal.Stream, Frame: frame}))
	if err != nil {
		t.Fatal(err)
	}
	if per := float64(len(r.Frame)) / 500; per >= 5 || len(frame) < 500*14 {
		t.Fatalf("%.1f bytes a sample packed, %d bytes the frame", per, len(frame))
	}
}

// TestMalformedPackedFrames: a packed frame that does not read is an
// error, never a panic or a frame made up.
func TestMalformedPackedFrames(t *testing.T) {
	sample := func(head uint64, value ...byte) []byte {
		b := protowire.AppendVarint(nil, 0)      // no bytes kept
		b = protowire.AppendVarint(b, 1)         // one sample
		b = protowire.AppendVarint(b, head)      // its head
		return append(append(b, value...), 0, 0) // its value; the last run
	}
	for _, tc := range []struct {
		name   string
		packed []byte
	}{
		{"kept bytes past the end", []byte{5, 1, 2}},
		{"more samples than bytes", []byte{0, 9, 4}},
		{"reference 0", sample(0)},
		{"reference past 32 bits", sample(protowire.EncodeZigZag(1<<32) << 2)},
		{"unknown value kind", sample(1<<3 | 3)},
		{"integral value too large", sample(1<<3|1, protowire.AppendVarint(nil, protowire.EncodeZigZag(1<<53))...)},
		{"value bits cut short", sample(1<<3|2, 1, 2, 3)},
		{"head cut short", []byte{0, 1, 0x80}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := journal.UnpackFrame(nil, &journal.Record{Kind: journal.Stream, Packed: true, Frame: tc.packed}); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

// FuzzPackFrame: whatever a stream's frame holds, its record reads back
// the same frame; whatever a packed frame holds, unpacking it does not
// panic.
func FuzzPackFrame(f *testing.F) {
	for _, tc := range packFrames() {
		frame, _ := proto.Marshal(tc.req)
		f.Add(frame)
	}
	f.Add([]byte{0x12, 0x05, 0x0a, 0x03, 0x50, 0x80, 0x01})
	f.Fuzz(func(t *testing.T, frame []byte) {
		r, err := journal.ParseRecord(journal.AppendRecord(nil, journal.Record{Kind: journal.Stream, Tenant: "t", Frame: frame}))
		if err != nil {
			t.Fatal(err)
		}
		if r.Packed {
			if r.Frame, err = journal.UnpackFrame(nil, &r); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(r.Frame, frame) {
			t.Fatalf("frame read back\n%x\nwant\n%x", r.Frame, frame)
		}
		journal.UnpackFrame(nil, &journal.Record{Kind: journal.Stream, Packed: true, Frame: frame})
	})
}

// BenchmarkPackFrame: the CPU a stream's record spends packing 500
// samples by reference, before the ack, per sample; and unpacking them at
// replay.
func BenchmarkPackFrame(b *testing.B) {
	frame, _ := proto.Marshal(packFrames()[0].req)
	r := journal.Record{Kind: journal.Stream, Tenant: "acme", Now: 7, Frame: frame}
	rec := journal.AppendRecord(nil, r)
	b.Run("pack", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, len(rec))
		for b.Loop() {
			buf = journal.AppendRecord(buf[:0], r)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/500, "ns/sample")
		b.ReportMetric(float64(len(buf))/500, "bytes/sample")
	})
	b.Run("unpack", func(b *testing.B) {
		b.ReportAllocs()
		p, _ := journal.ParseRecord(rec)
		buf := make([]byte, 0, len(frame))
		for b.Loop() {
			buf, _ = journal.UnpackFrame(buf[:0], &p)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/500, "ns/sample")
	})
}
