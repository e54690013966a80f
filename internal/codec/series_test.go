package codec

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/cputime"
	"github.com/aggd/aggd/internal/window"
)

// loadBatches encodes StreamRequests of batch samples covering contexts
// counters and gauges once. With refs, series i is reference i+1: the
// declaring requests name every series, the others refer to them.
func loadBatches(contexts, batch int, refs bool) (declare, use [][]byte) {
	for start := 0; start < contexts; start += batch {
		var decl, by aggdv1.Batch
		for c := start; c < start+batch; c++ {
			s := &aggdv1.Sample{
				Name: fmt.Sprintf("load.metric.%d", c%500), Type: aggdv1.MetricType(1 + c%2), Value: float64(c % 97),
				Host: fmt.Sprintf("host-%d", c%50), Tags: []string{fmt.Sprintf("ctx:%d", c/500), "env:prod", "service:api", fmt.Sprintf("az:%d", c%3)},
			}
			if refs {
				s.SeriesRef = uint32(c + 1)
				by.Samples = append(by.Samples, &aggdv1.Sample{SeriesRef: uint32(c + 1), Value: float64(c % 89)})
			} else {
				by.Samples = append(by.Samples, s)
			}
			decl.Samples = append(decl.Samples, s)
		}
		d, _ := proto.Marshal(&aggdv1.StreamRequest{Sequence: 1, Batch: &decl})
		u, _ := proto.Marshal(&aggdv1.StreamRequest{Sequence: 1, Batch: &by})
		declare, use = append(declare, d), append(use, u)
	}
	return declare, use
}

// BenchmarkDecodeAdd is the per-sample cost of the ingest path after the
// transport: decode (validate, canonicalise and hash a full name, or
// resolve a series reference) and add into an existing context of a
// shard, over 100k counters and gauges in 500-sample batches.
func BenchmarkDecodeAdd(b *testing.B) {
	for _, mode := range []struct {
		name string
		refs bool
	}{{"full-name", false}, {"series-ref", true}} {
		b.Run(mode.name, func(b *testing.B) {
			const contexts, batch = 100_000, 500
			declare, use := loadBatches(contexts, batch, mode.refs)
			d := NewDecoder(DefaultLimits())
			d.Series = new(Series)
			sh := window.NewShard(window.DefaultConfig())
			tn := window.NewTenant("t")
			var bt window.Batch
			now := int64(1_700_000_000_000_000_000)
			run := func(data []byte) {
				d.Reset(&bt)
				bt.Tenant = tn
				if _, err := d.DecodeStream(data, &bt); err != nil {
					b.Fatal(err)
				}
				for i := range bt.Samples {
					if bt.Results[i] != window.Accepted {
						b.Fatalf("sample %d: %v: %s", i, bt.Results[i], d.Detail[i])
					}
					if r := sh.Add(tn, &bt.Samples[i], now); r != window.Accepted {
						b.Fatal(r)
					}
				}
			}
			for _, data := range declare {
				run(data)
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu := cputime.Process()
			for i := 0; i < b.N; i++ {
				run(use[i%len(use)])
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/sample")
			b.ReportMetric(float64(cputime.Process()-cpu)/float64(b.N*batch), "cpu-ns/sample")
			b.ReportMetric(float64(len(use[0]))/batch, "bytes/sample")
		})
	}
}

// TestLogDefinitionsOncePerGeneration checks which definitions a batch's
// record carries: none that its frame declares before use, those of the
// references it uses that its generation lacks, once per generation,
// and, for a reference declared anew within the batch, the definition
// its earlier samples used; after a record that was not written, the
// next record of the generation carries them.
func TestLogDefinitionsOncePerGeneration(t *testing.T) {
	d := NewDecoder(DefaultLimits())
	d.Series = new(Series)
	tn := window.NewTenant("t")
	var b window.Batch
	decl := func(name string, ref uint32) *aggdv1.Sample {
		return &aggdv1.Sample{Name: name, Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, SeriesRef: ref}
	}
	use := func(ref uint32) *aggdv1.Sample { return &aggdv1.Sample{SeriesRef: ref, Value: 1} }
	for i, c := range []struct {
		gen     uint64
		samples []*aggdv1.Sample
		want    string // names of the definitions logged
		unlog   bool   // the record is not written: Unlog after
	}{
		{1, []*aggdv1.Sample{decl("a", 1), use(1), decl("b", 2)}, "", false},
		{1, []*aggdv1.Sample{use(1), use(2)}, "", false},
		{2, []*aggdv1.Sample{use(2), use(1), use(2)}, "b a", false},
		{3, []*aggdv1.Sample{use(1), decl("c", 1), use(1)}, "a", false},
		{3, []*aggdv1.Sample{use(1)}, "", false},
		{4, []*aggdv1.Sample{decl("c", 1), use(1)}, "", false},
		// A record not written leaves its definitions to the next one of
		// the generation, and only to it.
		{5, []*aggdv1.Sample{use(1)}, "c", true},
		{5, []*aggdv1.Sample{use(1), use(1)}, "c", false},
		{5, []*aggdv1.Sample{use(1)}, "", false},
	} {
		data, _ := proto.Marshal(&aggdv1.StreamRequest{Batch: &aggdv1.Batch{Samples: c.samples}})
		d.Reset(&b)
		b.Tenant = tn
		if _, err := d.DecodeStream(data, &b); err != nil {
			t.Fatal(err)
		}
		var defs aggdv1.Batch
		if err := proto.Unmarshal(d.Series.LogDefinitions(c.gen, b.Samples), &defs); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range defs.Samples {
			names = append(names, s.Name)
		}
		if got := strings.Join(names, " "); got != c.want {
			t.Errorf("batch %d: definitions %q, want %q", i, got, c.want)
		}
		if c.unlog {
			d.Series.Unlog()
		}
	}
}

// TestSeriesResetWithUnusedPages resets, as a new stream on a reused call
// state does, a table whose references left lower pages unused: nothing
// declared before survives, and Reset does not fail on the missing pages.
func TestSeriesResetWithUnusedPages(t *testing.T) {
	d := NewDecoder(DefaultLimits())
	d.Series = new(Series)
	tn := window.NewTenant("t")
	var b window.Batch
	decode := func(samples ...*aggdv1.Sample) []window.Reason {
		t.Helper()
		data, _ := proto.Marshal(&aggdv1.StreamRequest{Batch: &aggdv1.Batch{Samples: samples}})
		d.Reset(&b)
		b.Tenant = tn
		if _, err := d.DecodeStream(data, &b); err != nil {
			t.Fatal(err)
		}
		return b.Results
	}
	const ref = 3*seriesPage + 5 // pages 0 to 2 stay unused
	decode(&aggdv1.Sample{Name: "a", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, SeriesRef: ref})
	for range 2 {
		d.Series.Reset()
		if r := decode(&aggdv1.Sample{SeriesRef: ref, Value: 1}); r[0] != window.ReasonUnknownSeries {
			t.Fatalf("after Reset: %v, want unknown_series", r[0])
		}
	}
}

// TestRedeclaredRefInOneBatchKeepsContexts declares a reference, declares
// it again for another series in the same batch and then samples by it:
// the samples before the second declaration go to the first series, the
// others to the second, even though the reference's cached context
// (Handle) is shared by all of them and the two series share a shard.
func TestRedeclaredRefInOneBatchKeepsContexts(t *testing.T) {
	d := NewDecoder(DefaultLimits())
	d.Series = new(Series)
	sh := window.NewShard(window.DefaultConfig())
	tn := window.NewTenant("t")
	now := int64(1_700_000_000_000_000_000)
	data, err := proto.Marshal(&aggdv1.StreamRequest{Sequence: 1, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
		{SeriesRef: 1, Name: "first", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1},
		{SeriesRef: 1, Value: 1},
		{SeriesRef: 1, Name: "second", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1},
		{SeriesRef: 1, Value: 1},
		{SeriesRef: 1, Value: 1},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	var bt window.Batch
	d.Reset(&bt)
	bt.Tenant = tn
	if _, err := d.DecodeStream(data, &bt); err != nil {
		t.Fatal(err)
	}
	for i := range bt.Samples {
		if bt.Results[i] != window.Accepted {
			t.Fatalf("sample %d: %v: %s", i, bt.Results[i], d.Detail[i])
		}
		if r := sh.Add(tn, &bt.Samples[i], now); r != window.Accepted {
			t.Fatalf("sample %d: %v", i, r)
		}
	}
	got := map[string]uint64{}
	for _, c := range sh.Top(nil, 10, nil) {
		name, _, _ := window.SplitKey(c.Key, nil)
		got[name] = c.Samples
	}
	if want := map[string]uint64{"first": 2, "second": 3}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("samples by series %v, want %v", got, want)
	}
}

// TestRefSamples: DecodeStream notes, for the write-ahead log, the
// samples by reference that hold a value (or none) and a reference in
// range in the encoding proto.Marshal writes, where they are in the
// frame, and no other sample; and only for the frame it read last.
func TestRefSamples(t *testing.T) {
	value := binary.LittleEndian.AppendUint64([]byte{0x19}, math.Float64bits(-2.5))
	zero := binary.LittleEndian.AppendUint64([]byte{0x19}, 0)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name    string
		batches [][][]byte // the samples of each batch, as they are encoded
		want    []RefSample
	}{
		{"a value and a reference", [][][]byte{{cat(value, []byte{0x50, 5})}},
			[]RefSample{{Bits: math.Float64bits(-2.5), Ref: 5, Len: 13, Value: true}}},
		{"a reference alone", [][][]byte{{{0x50, 5}}}, []RefSample{{Ref: 5, Len: 4}}},
		{"a value of 0 written", [][][]byte{{cat(zero, []byte{0x50, 5})}}, []RefSample{{Ref: 5, Len: 13, Value: true}}},
		{"references of two and three bytes", [][][]byte{{{0x50, 0x80, 0x01}, cat(value, []byte{0x50, 0x80, 0x80, 0x40})}},
			[]RefSample{{Ref: 128, Len: 5}, {Off: 5, Bits: math.Float64bits(-2.5), Ref: MaxSeriesRef, Len: 15, Value: true}}},
		{"samples in two batches", [][][]byte{{{0x50, 5}}, {{0x50, 6}, {0x50, 7}}},
			[]RefSample{{Ref: 5, Len: 4}, {Off: 6, Ref: 6, Len: 4}, {Off: 10, Ref: 7, Len: 4}}},
		{"a reference past MaxSeriesRef", [][][]byte{{{0x50, 0x81, 0x80, 0x40}}}, nil},
		{"a reference of 0", [][][]byte{{{0x50, 0}}}, nil},
		{"a reference not in its shortest form", [][][]byte{{{0x50, 0x85, 0x00}, {0x50, 0x85, 0x80, 0x00}}}, nil},
		{"the reference before the value", [][][]byte{{cat([]byte{0x50, 5}, value)}}, nil},
		{"a timestamp", [][][]byte{{{0x50, 5, 0x48, 1}}}, nil},
		{"a declaration", [][][]byte{{{0x0a, 1, 'a', 0x10, 1, 0x50, 5}}}, nil},
		{"set members", [][][]byte{{cat(value, []byte{0x2a, 2, 'u', 'v', 0x50, 5}), {0x2a, 0, 0x50, 6}}},
			[]RefSample{{Bits: math.Float64bits(-2.5), Ref: 5, Len: 17, Value: true, Member: 4}, {Off: 17, Ref: 6, Len: 6, Member: 2}}},
		{"a set member of a sample of 127 bytes", [][][]byte{{cat([]byte{0x2a, 123}, bytes.Repeat([]byte{'m'}, 123), []byte{0x50, 5})}},
			[]RefSample{{Off: 1, Ref: 5, Len: 129, Member: 125}}}, // the batch's length takes two bytes
		{"a set member of a sample of 128 bytes", [][][]byte{{cat([]byte{0x2a, 124}, bytes.Repeat([]byte{'m'}, 124), []byte{0x50, 5})}}, nil},
		{"a set member not UTF-8", [][][]byte{{{0x2a, 1, 0xff, 0x50, 5}}}, nil},
		{"a set member before the value", [][][]byte{{cat([]byte{0x2a, 1, 'u'}, value, []byte{0x50, 5})}}, nil},
		{"a set member and a timestamp", [][][]byte{{{0x2a, 1, 'u', 0x48, 1, 0x50, 5}}}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			frame := []byte{0x08, 0x01} // sequence 1
			for _, samples := range tc.batches {
				var batch []byte
				for _, s := range samples {
					batch = protowire.AppendBytes(append(batch, 0x0a), s)
				}
				frame = protowire.AppendBytes(append(frame, 0x12), batch)
			}
			d := NewDecoder(DefaultLimits())
			d.Series = new(Series)
			var b window.Batch
			d.Reset(&b)
			b.Tenant = window.NewTenant("t")
			if _, err := d.DecodeStream(frame, &b); err != nil {
				t.Fatal(err)
			}
			got, ok := d.Series.RefSamples(frame)
			if !ok {
				t.Fatal("no samples noted for the frame read")
			}
			// The first batch's first sample is at 4, after the sequence
			// and the batch's tag and length.
			for i := range tc.want {
				tc.want[i].Off += 4
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			if _, ok := d.Series.RefSamples(bytes.Clone(frame)); ok {
				t.Fatal("samples noted for a copy of the frame")
			}
			d.Reset(&b)
			if err := d.DecodeSubmit(frame[2:], &b); err != nil {
				t.Fatal(err)
			}
			if _, ok := d.Series.RefSamples(frame); ok {
				t.Fatal("samples noted for the frame after the next batch")
			}
		})
	}
}
