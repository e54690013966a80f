package journal_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/cputime"
	"github.com/aggd/aggd/internal/journal"
	"github.com/aggd/aggd/internal/window"
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
	members := refs(8, func(i int) float64 { return []float64{0, 3, -0.25, 1 << 60}[i%4] })
	for i, m := range []string{"user-1", "", "ü", "u", strings.Repeat("m", 100), strings.Repeat("m", 125-13), strings.Repeat("m", 125-12)} {
		members[i].SetMember = m
	}
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
		// The last two members: a sample of 127 bytes, packed, and one of
		// 128, kept.
		{"set members", &aggdv1.StreamRequest{Batch: &aggdv1.Batch{Samples: members}}, true},
		{"declarations only", &aggdv1.StreamRequest{Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
			{Name: "r", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, SeriesRef: 1, Value: 1}}}}, false},
		{"no batch", &aggdv1.StreamRequest{Sequence: 1}, false},
	}
}

// decodedSeries returns the series references of a decoder that read
// frame, a StreamRequest, last, and whether it read it without error.
func decodedSeries(frame []byte) (*codec.Series, bool) {
	d := codec.NewDecoder(codec.DefaultLimits())
	d.Series = new(codec.Series)
	var b window.Batch
	b.Tenant = window.NewTenant("t")
	_, err := d.DecodeStream(frame, &b)
	return d.Series, err == nil
}

// maxPackedRef returns the largest reference among the samples of a
// packed frame (an encoded record's Frame), 0 when there is none.
func maxPackedRef(t testing.TB, packed []byte) uint64 {
	var most uint64
	for len(packed) > 0 {
		l, n := protowire.ConsumeVarint(packed)
		packed = packed[n+int(l):]
		count, n := protowire.ConsumeVarint(packed)
		packed = packed[n:]
		var prev uint64
		for range count {
			head, n := protowire.ConsumeVarint(packed)
			if n < 0 {
				t.Fatal("packed frame cut short")
			}
			packed = packed[n:]
			prev += uint64(protowire.DecodeZigZag(head >> 2))
			most = max(most, prev)
			kind, member := head&3, uint64(0)
			if kind == 3 {
				v, n := protowire.ConsumeVarint(packed)
				packed = packed[n:]
				kind, member = v&3, v>>2
			}
			switch kind {
			case 1:
				_, n = protowire.ConsumeVarint(packed)
				packed = packed[n:]
			case 2:
				packed = packed[8:]
			}
			packed = packed[member:]
		}
	}
	return most
}

// TestPackedFramesReadBackExactly: a stream's record packs the samples by
// reference of its frame, found in the frame or noted by the decoder that
// read it, and replay reads back the frame byte for byte.
func TestPackedFramesReadBackExactly(t *testing.T) {
	for _, tc := range packFrames() {
		for _, decoded := range []bool{false, true} {
			name := tc.name
			if decoded {
				name += ", decoded"
			}
			t.Run(name, func(t *testing.T) { checkPackedFrame(t, tc.req, tc.packed, decoded) })
		}
	}
}

// checkPackedFrame checks the record of req, packed or not as packed
// says, from the samples its decoder noted when decoded is set.
func checkPackedFrame(t *testing.T, req *aggdv1.StreamRequest, packed, decoded bool) {
	frame, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	r := journal.Record{Kind: journal.Stream, Tenant: "acme", Now: 7, Stream: 1 << 40, Drained: 5, Frame: frame}
	rec := journal.AppendRecord([]byte("prefix"), r)
	if decoded {
		series, ok := decodedSeries(frame)
		if !ok {
			t.Fatal("frame does not decode")
		}
		// The decoder notes the samples the frame packs, except those
		// of references past codec.MaxSeriesRef, which it refuses.
		parsed, _ := journal.ParseRecord(rec[len("prefix"):])
		rec = journal.AppendRecordDecoded([]byte("prefix"), r, series)
		if (!parsed.Packed || maxPackedRef(t, parsed.Frame) <= codec.MaxSeriesRef) && !bytes.Equal(rec[len("prefix"):], journal.AppendRecord(nil, r)) {
			t.Fatal("the record from the decoder's samples differs from the one of the frame's")
		}
	}
	if !bytes.HasPrefix(rec, []byte("prefix")) {
		t.Fatal("AppendRecord overwrote what b held")
	}
	got, err := journal.ParseRecord(rec[len("prefix"):])
	if err != nil {
		t.Fatal(err)
	}
	if got.Packed != packed || got.Kind != journal.Stream || got.Tenant != "acme" || got.Now != 7 || got.Stream != 1<<40 || got.Drained != 5 {
		t.Fatalf("record %+v, want packed %v", got, packed)
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
}

// TestPackedFromAnotherFrame: samples a decoder noted are not taken for
// those of another frame, even one of the same bytes: the frame is
// packed from its own.
func TestPackedFromAnotherFrame(t *testing.T) {
	frame, _ := proto.Marshal(packFrames()[0].req)
	for _, tc := range []struct {
		name  string
		frame func(frame []byte, series *codec.Series) []byte
	}{
		{"a copy of the frame read", func(frame []byte, _ *codec.Series) []byte { return bytes.Clone(frame) }},
		{"the frame, the series reset since", func(frame []byte, series *codec.Series) []byte { series.Reset(); return frame }},
		{"the frame cut short", func(frame []byte, _ *codec.Series) []byte { return frame[:len(frame)-15] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			series, _ := decodedSeries(frame)
			f := tc.frame(frame, series)
			if _, noted := series.RefSamples(f); noted {
				t.Fatal("samples noted for another frame")
			}
			r := journal.Record{Kind: journal.Stream, Tenant: "acme", Frame: f}
			if got, want := journal.AppendRecordDecoded(nil, r, series), journal.AppendRecord(nil, r); !bytes.Equal(got, want) {
				t.Fatalf("record\n%x\nwant\n%x", got, want)
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

// TestPackedSetSamplesAreSmall: samples of sets by reference pack too,
// from the frame and from the decoder's notes: with one in ten of them,
// as in aggload's mix, under 4 bytes a sample (4.3 with them kept as
// they came).
func TestPackedSetSamplesAreSmall(t *testing.T) {
	declare, use := refFrames(500, 500, true)
	series, ok := decodedSeries(declare[0])
	if !ok {
		t.Fatal("declarations do not decode")
	}
	d := codec.NewDecoder(codec.DefaultLimits())
	d.Series = series
	var b window.Batch
	b.Tenant = window.NewTenant("t")
	if _, err := d.DecodeStream(use[0], &b); err != nil {
		t.Fatal(err)
	}
	r := journal.Record{Kind: journal.Stream, Frame: use[0]}
	for name, rec := range map[string][]byte{"frame": journal.AppendRecord(nil, r), "notes": journal.AppendRecordDecoded(nil, r, series)} {
		p, err := journal.ParseRecord(rec)
		if err != nil {
			t.Fatal(err)
		}
		if per := float64(len(p.Frame)) / 500; per >= 4 {
			t.Errorf("from the %s: %.2f bytes a sample packed", name, per)
		}
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
		{"unknown value kind", sample(1<<3|3, 3)},
		{"member past the end", sample(1<<3|3, 5<<2, 'a', 'b')},
		{"member of 128 bytes", sample(1<<3|3, append(protowire.AppendVarint(nil, 128<<2), make([]byte, 128)...)...)},
		{"sample with a member of 128 bytes", sample(1<<3|3, append(protowire.AppendVarint(nil, 124<<2), make([]byte, 124)...)...)},
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
	// Samples the decoder takes that do not pack: a reference not in its
	// shortest form, the value after the reference, a tag in two bytes,
	// a length in two bytes, a reference past codec.MaxSeriesRef; and
	// samples that pack in two batches.
	value := binary.LittleEndian.AppendUint64([]byte{0x19}, math.Float64bits(3))
	for _, batches := range [][][]byte{
		{{0x0a, 0x04, 0x50, 0x81, 0x80, 0x00}, {0x0a, 0x02, 0x50, 0x05}},
		{append([]byte{0x0a, 0x0b, 0x50, 0x05}, value...), append([]byte{0x0a, 0x0b}, append(value, 0x50, 0x05)...)},
		{{0x8a, 0x00, 0x02, 0x50, 0x05}, {0x0a, 0x82, 0x00, 0x50, 0x05}, {0x0a, 0x03, 0x50, 0x81, 0x80, 0x40}},
		{{0x0a, 0x02, 0x50, 0x07}},
		{{0x0a, 0x02, 0x50, 0x07}, append([]byte{0x0a, 0x0b}, append(value, 0x50, 0x06)...)},
		// Set members: with a value and without, empty, not UTF-8,
		// before the value, and a member's length in two bytes.
		{append([]byte{0x0a, 0x0e}, append(value, 0x2a, 0x01, 'u', 0x50, 0x05)...), {0x0a, 0x05, 0x2a, 0x01, 'v', 0x50, 0x06}},
		{{0x0a, 0x04, 0x2a, 0x00, 0x50, 0x05}, {0x0a, 0x05, 0x2a, 0x01, 0xff, 0x50, 0x06}},
		{append([]byte{0x0a, 0x0e, 0x2a, 0x01, 'u'}, append(value, 0x50, 0x05)...), {0x0a, 0x06, 0x2a, 0x81, 0x00, 'v', 0x50, 0x06}},
	} {
		frame := []byte{0x08, 0x01}
		for _, batch := range batches {
			frame = protowire.AppendBytes(append(frame, 0x12), batch)
		}
		f.Add(frame)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		rec := journal.AppendRecord(nil, journal.Record{Kind: journal.Stream, Tenant: "t", Frame: frame})
		checkReadBack(t, rec, frame)
		// Packed from the samples a decoder noted, the record reads back
		// the same, and is the same but for the samples whose
		// references the decoder refuses.
		if series, ok := decodedSeries(frame); ok {
			decoded := journal.AppendRecordDecoded(nil, journal.Record{Kind: journal.Stream, Tenant: "t", Frame: frame}, series)
			checkReadBack(t, decoded, frame)
			if r, _ := journal.ParseRecord(rec); (!r.Packed || maxPackedRef(t, r.Frame) <= codec.MaxSeriesRef) && !bytes.Equal(decoded, rec) {
				t.Fatalf("record from the decoder's samples\n%x\nwant\n%x", decoded, rec)
			}
		}
		journal.UnpackFrame(nil, &journal.Record{Kind: journal.Stream, Packed: true, Frame: frame})
	})
}

// checkReadBack checks that rec, a stream's record, reads back frame.
func checkReadBack(t *testing.T, rec, frame []byte) {
	r, err := journal.ParseRecord(rec)
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

// refFrames returns StreamRequests of batch samples by reference over
// contexts series, and the ones declaring them: with sets, one sample in
// ten is of a set, its member a string, as in aggload's mix.
func refFrames(contexts, batch int, sets bool) (declare, use [][]byte) {
	for start := 0; start < contexts; start += batch {
		var decl, by aggdv1.Batch
		for c := start; c < start+batch; c++ {
			s := &aggdv1.Sample{Name: fmt.Sprintf("load.metric.%d", c%500), Type: aggdv1.MetricType_METRIC_TYPE_COUNT,
				Host: fmt.Sprintf("host-%d", c%50), Tags: []string{fmt.Sprintf("ctx:%d", c/500), "env:prod"}, SeriesRef: uint32(c + 1)}
			u := &aggdv1.Sample{SeriesRef: uint32(c + 1), Value: float64(c * 7919 % 1000)}
			if sets && c%10 == 0 {
				s.Type, s.SetMember = aggdv1.MetricType_METRIC_TYPE_SET, "user-0"
				u.Value, u.SetMember = 0, fmt.Sprintf("user-%d", c%100)
			}
			decl.Samples, by.Samples = append(decl.Samples, s), append(by.Samples, u)
		}
		d, _ := proto.Marshal(&aggdv1.StreamRequest{Sequence: 1, Batch: &decl})
		u, _ := proto.Marshal(&aggdv1.StreamRequest{Sequence: 2, Batch: &by})
		declare, use = append(declare, d), append(use, u)
	}
	return declare, use
}

// BenchmarkDecodePack: the CPU a logged stream spends per sample to
// decode a batch of samples by reference (decode), to encode its record,
// packed, from what the decoder noted (pack), and both (decode+pack),
// over 10k series in 500-sample batches.
func BenchmarkDecodePack(b *testing.B) {
	for _, mix := range []struct {
		name string
		sets bool
	}{{"refs", false}, {"sets", true}} {
		for _, mode := range []struct {
			name           string
			decode, encode bool
		}{{"decode+pack", true, true}, {"decode", true, false}, {"pack", false, true}} {
			b.Run(mix.name+"/"+mode.name, func(b *testing.B) {
				const contexts, batch = 10_000, 500
				declare, use := refFrames(contexts, batch, mix.sets)
				d := codec.NewDecoder(codec.DefaultLimits())
				d.Series = new(codec.Series)
				tn := window.NewTenant("t")
				var bt window.Batch
				decode := func(frame []byte) {
					d.Reset(&bt)
					bt.Tenant = tn
					if _, err := d.DecodeStream(frame, &bt); err != nil {
						b.Fatal(err)
					}
					for i, r := range bt.Results {
						if r != window.Accepted {
							b.Fatalf("sample %d: %v: %s", i, r, d.Detail[i])
						}
					}
				}
				for _, frame := range declare {
					decode(frame)
				}
				if !mode.decode {
					use = use[:1] // packed again and again, as its decoder left it
					decode(use[0])
				}
				var rec []byte
				b.ReportAllocs()
				i := 0
				cpu := cputime.Process()
				for b.Loop() {
					frame := use[i%len(use)]
					i++
					if mode.decode {
						decode(frame)
					}
					if mode.encode {
						rec = journal.AppendRecordDecoded(rec[:0], journal.Record{Kind: journal.Stream, Tenant: "acme", Now: 7, Frame: frame}, d.Series)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/sample")
				b.ReportMetric(float64(cputime.Process()-cpu)/float64(b.N*batch), "cpu-ns/sample")
				if mode.encode {
					b.ReportMetric(float64(len(rec))/batch, "bytes/sample")
				}
			})
		}
	}
}
