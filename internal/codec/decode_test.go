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
	"github.com/aggd/aggd/internal/window"
)

// referenceSample converts a generated Sample the slow, obvious way: the
// oracle for the protowire decoder.
func referenceSample(pb *aggdv1.Sample) window.Sample {
	s := window.Sample{
		Name: pb.Name, Host: pb.Host, Tags: slices.Clone(pb.Tags), Value: pb.Value,
		SetMember: pb.SetMember, SampleRate: pb.SampleRate, Timestamp: pb.TimestampUnixNano,
	}
	if t := int32(pb.Type); t >= 0 && t < 255 {
		s.Type = window.MetricType(t)
	} else {
		s.Type = 255
	}
	if len(pb.Values) > 0 {
		s.Values = slices.Clone(pb.Values)
	}
	return s
}

func sameFloat(a, b float64) bool { return a == b || math.IsNaN(a) && math.IsNaN(b) }

func sameFloats(a, b []float64) bool {
	return slices.EqualFunc(a, b, sameFloat)
}

func checkDecode(t *testing.T, data []byte) {
	var pb aggdv1.StreamRequest
	d := NewDecoder(DefaultLimits())
	d.Series = new(Series)
	var b window.Batch
	b.Tenant = window.NewTenant("t")
	seq, err := d.DecodeStream(data, &b)
	if perr := proto.Unmarshal(data, &pb); perr != nil {
		return // the reference refuses it; the decoder need only not panic
	}
	if err != nil {
		t.Fatalf("decoder failed where proto.Unmarshal succeeded: %v", err)
	}
	if seq != pb.Sequence {
		t.Fatalf("sequence: got %d, want %d", seq, pb.Sequence)
	}
	want := pb.GetBatch().GetSamples()
	if len(b.Samples) != len(want) {
		t.Fatalf("got %d samples, want %d", len(b.Samples), len(want))
	}
	declared := map[uint32]window.Sample{} // the series references, the obvious way
	for i, w := range want {
		ref := referenceSample(w)
		var wantR window.Reason
		switch id := w.SeriesRef; {
		case w.Histogram != nil || w.RulesOnly: // a peer's only; d.Histograms is off
			wantR = window.ReasonUnsupported
			if id != 0 && w.Name != "" {
				delete(declared, id)
			}
		case id > MaxSeriesRef:
			wantR = window.ReasonInvalidSeriesRef
		case id != 0 && w.Name == "":
			def, ok := declared[id]
			switch {
			case w.Host != "" || len(w.Tags) > 0:
				wantR = window.ReasonInvalidSeriesRef
			case !ok:
				wantR = window.ReasonUnknownSeries
			case ref.Type != 0 && ref.Type != def.Type:
				wantR = window.ReasonTypeConflict
			default:
				ref.Name, ref.Host, ref.Tags, ref.Type, ref.Key, ref.Hash = def.Name, def.Host, def.Tags, def.Type, def.Key, def.Hash
				wantR, _ = d.lim.CheckValues(&ref)
			}
		default:
			if wantR, _ = d.validate(&ref); wantR == window.Accepted {
				ref.Prepare(b.Tenant, nil)
			}
			if id != 0 && wantR == window.Accepted {
				declared[id] = ref
			} else if id != 0 {
				delete(declared, id)
			}
		}
		got := b.Samples[i]
		if b.Results[i] != wantR {
			t.Fatalf("sample %d: result %v, want %v", i, b.Results[i], wantR)
		}
		if got.Name != ref.Name || got.Host != ref.Host || got.Type != ref.Type || !sameFloat(got.Value, ref.Value) ||
			got.SetMember != ref.SetMember || !sameFloat(got.SampleRate, ref.SampleRate) || got.Timestamp != ref.Timestamp ||
			!slices.Equal(got.Tags, ref.Tags) || !sameFloats(got.Values, ref.Values) {
			t.Fatalf("sample %d:\n got %+v\nwant %+v", i, got, ref)
		}
		if wantR == window.Accepted && (string(got.Key) != string(ref.Key) || got.Hash != ref.Hash) {
			t.Fatalf("sample %d: key differs", i)
		}
	}
	if n := len(pb.GetBatch().GetEvents()) + len(pb.GetBatch().GetServiceChecks()); d.NEvents+d.NChecks != n {
		t.Fatalf("got %d events and checks, want %d", d.NEvents+d.NChecks, n)
	}
	checkHistograms(t, data, want, b.Results)
}

// checkHistograms decodes data again as a peer's (Histograms on): a sample
// without a histogram is judged as before, and one taken with it holds
// the histogram the reference reads.
func checkHistograms(t *testing.T, data []byte, want []*aggdv1.Sample, before []window.Reason) {
	d := NewDecoder(DefaultLimits())
	d.Series = new(Series)
	d.Histograms = true
	var b window.Batch
	b.Tenant = window.NewTenant("t")
	if _, err := d.DecodeStream(data, &b); err != nil {
		t.Fatalf("with histograms: %v", err)
	}
	for i, w := range want {
		h, got := w.GetHistogram(), b.Samples[i].Hist
		switch {
		case h == nil && !w.RulesOnly && b.Results[i] != before[i] && w.SeriesRef == 0:
			t.Fatalf("sample %d without a histogram: %v, %v without histograms taken", i, b.Results[i], before[i])
		case w.RulesOnly && b.Results[i] == window.Accepted && !b.Samples[i].RulesOnly:
			t.Fatalf("sample %d: rules_only taken from a peer but not kept", i)
		case h != nil && b.Results[i] == window.Accepted && (got == nil || !sameFloats(got.Values, h.Values) ||
			!sameFloats(got.Counts, h.Counts) || got.Count != h.Count || got.Sum != h.Sum || got.Min != h.Min || got.Max != h.Max):
			t.Fatalf("sample %d: histogram %+v, want %v", i, got, h)
		}
	}
}

func seedRequests() []*aggdv1.StreamRequest {
	return []*aggdv1.StreamRequest{
		{Sequence: 7, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
			{Name: "a.b", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 2, Tags: []string{"z:1", "a:2", "z:1"}, Host: "h", SampleRate: 0.5, TimestampUnixNano: 1e18},
			{Name: "d", Type: aggdv1.MetricType_METRIC_TYPE_DISTRIBUTION, Values: []float64{1, 2, math.Inf(1)}},
			{Name: "s", Type: aggdv1.MetricType_METRIC_TYPE_SET, SetMember: "u1"},
			{Name: "bad name", Type: aggdv1.MetricType_METRIC_TYPE_GAUGE},
			{Name: "t", Type: 99},
			{Name: "long", Type: 1, Tags: []string{strings.Repeat("x", 300)}},
			{Name: "h", Type: aggdv1.MetricType_METRIC_TYPE_DISTRIBUTION, Histogram: &aggdv1.HistogramPoint{Values: []float64{1}, Counts: []float64{2}, Count: 2, Sum: 2, Min: 1, Max: 1}},
		}, Events: []*aggdv1.Event{{Title: "e"}}, ServiceChecks: []*aggdv1.ServiceCheck{{Name: "c", Status: 1}}}},
		{Sequence: 8, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
			{Name: "r.a", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, Tags: []string{"b:1", "a:2"}, Host: "h", SeriesRef: 1},
			{SeriesRef: 1, Value: 2, SampleRate: 0.5},
			{SeriesRef: 1, Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Values: []float64{3, 4}, TimestampUnixNano: 1e18},
			{SeriesRef: 2, Value: 1},
			{SeriesRef: 1, Type: aggdv1.MetricType_METRIC_TYPE_GAUGE, Value: 1},
			{SeriesRef: 1, Tags: []string{"x"}, Value: 1},
			{Name: "r.s", Type: aggdv1.MetricType_METRIC_TYPE_SET, SetMember: "m", SeriesRef: 3},
			{SeriesRef: 3, SetMember: "n"},
			{SeriesRef: 3},
			{Name: "bad name", Type: 1, SeriesRef: 1},
			{SeriesRef: 1, Value: 5},
			{Name: "big", Type: 1, SeriesRef: MaxSeriesRef + 1},
			{Name: "edge", Type: 1, SeriesRef: MaxSeriesRef},
			{SeriesRef: MaxSeriesRef, Value: math.NaN()},
			{Name: "plain", Type: 1, Value: 1},
		}}},
		{},
	}
}

func FuzzDecodeStream(f *testing.F) {
	for _, r := range seedRequests() {
		data, _ := proto.Marshal(r)
		f.Add(data)
	}
	for _, data := range byRefWireForms() {
		f.Add(data)
	}
	f.Fuzz(checkDecode)
}

// byRefWireForms are StreamRequests whose samples by reference take the
// decoder's plain-sample path (addByRef) or leave it for the general one
// in ways proto.Marshal does not write: a declaration, then uses with
// unpacked and repeated values, a reference over 32 bits (its low 32
// bits count), a type in two bytes, rules_only, a field unknown, and set
// members.
func byRefWireForms() [][]byte {
	decl, _ := proto.Marshal(&aggdv1.Sample{Name: "w", Type: aggdv1.MetricType_METRIC_TYPE_DISTRIBUTION, SeriesRef: 2})
	set, _ := proto.Marshal(&aggdv1.Sample{Name: "ws", Type: aggdv1.MetricType_METRIC_TYPE_SET, SetMember: "a", SeriesRef: 3})
	f64 := func(tag byte, v float64) []byte {
		return binary.LittleEndian.AppendUint64([]byte{tag}, math.Float64bits(v))
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	ref2 := []byte{0x50, 2}
	samples := [][]byte{
		decl, set,
		cat(ref2, f64(0x19, 1), f64(0x19, 2)),                                               // value twice: the last counts
		cat(f64(0x21, 1), ref2, f64(0x21, 2)),                                               // values, unpacked
		cat(ref2, []byte{0x22, 8}, f64(0x19, 7)[1:]),                                        // values, packed
		cat([]byte{0x50, 0x82, 0x80, 0x80, 0x80, 0x10}, f64(0x19, 3)),                       // ref 2 + 1<<32
		cat(ref2, []byte{0x10, 0x85, 0x00}),                                                 // type 5 in two bytes
		cat(ref2, []byte{0x10, 0x06}),                                                       // type conflict
		cat(ref2, []byte{0x60, 1}),                                                          // rules_only, a peer's only
		cat(ref2, []byte{0x68, 1}),                                                          // field 13, unknown
		cat(ref2, []byte{0x48, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}), // timestamp past 63 bits
		cat([]byte{0x50, 3, 0x2a, 1, 'b'}),                                                  // set member
		cat([]byte{0x50, 3, 0x2a, 1, 0xff}),                                                 // set member not UTF-8
		cat([]byte{0x50, 3, 0x2a, 5, 'b'}),                                                  // set member cut short
		cat(ref2, f64(0x41, 0.5), []byte{0x48, 9}),                                          // rate and timestamp
		{0x50, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01},            // ref too long
		{0x50}, // ref cut short
	}
	var out [][]byte
	for i := range samples {
		var batch []byte
		for _, smp := range samples[:i+1] {
			batch = protowire.AppendBytes(append(batch, 0x0a), smp)
		}
		out = append(out, protowire.AppendBytes([]byte{0x12}, batch))
	}
	return out
}

func TestDecodeSeeds(t *testing.T) {
	for _, r := range seedRequests() {
		data, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		checkDecode(t, data)
	}
	for _, data := range byRefWireForms() {
		checkDecode(t, data)
	}
}

func TestDecodeRejectsPerSample(t *testing.T) {
	d := NewDecoder(DefaultLimits())
	var b window.Batch
	b.Tenant = window.NewTenant("t")
	data, _ := proto.Marshal(seedRequests()[0])
	if _, err := d.DecodeStream(data, &b); err != nil {
		t.Fatal(err)
	}
	want := []window.Reason{window.Accepted, window.ReasonInvalidValue, window.Accepted, window.ReasonInvalidName, window.ReasonInvalidType, window.ReasonTagTooLong, window.ReasonUnsupported}
	if !slices.Equal(b.Results, want) {
		t.Fatalf("got %v, want %v", b.Results, want)
	}
	// Series references, without a table (Decoder.Series nil), and with
	// one: declarations, uses, and every refusal.
	data, _ = proto.Marshal(seedRequests()[1])
	d.Reset(&b)
	b.Tenant = window.NewTenant("t")
	if _, err := d.DecodeStream(data, &b); err != nil {
		t.Fatal(err)
	}
	for i, r := range b.Results[:14] {
		if r != window.ReasonUnsupported {
			t.Fatalf("sample %d without a table: %v, want unsupported", i, r)
		}
	}
	d.Series = new(Series)
	d.Reset(&b)
	b.Tenant = window.NewTenant("t")
	if _, err := d.DecodeStream(data, &b); err != nil {
		t.Fatal(err)
	}
	want = []window.Reason{window.Accepted, window.Accepted, window.Accepted, window.ReasonUnknownSeries,
		window.ReasonTypeConflict, window.ReasonInvalidSeriesRef, window.Accepted, window.Accepted, window.ReasonInvalidValue,
		window.ReasonInvalidName, window.ReasonUnknownSeries, window.ReasonInvalidSeriesRef, window.Accepted, window.ReasonInvalidValue, window.Accepted}
	if !slices.Equal(b.Results, want) {
		t.Fatalf("got %v, want %v", b.Results, want)
	}
	if s := b.Samples[2]; s.Name != "r.a" || s.Host != "h" || !slices.Equal(s.Tags, []string{"a:2", "b:1"}) || s.Type != window.TypeCount ||
		string(s.Key) != string(b.Samples[0].Key) || s.Hash != b.Samples[0].Hash || s.Handle == nil || s.Handle != b.Samples[0].Handle {
		t.Fatalf("sample by reference: %+v, declared as %+v", s, b.Samples[0])
	}
	// Invalid UTF-8 in one sample, which proto.Unmarshal refuses for the
	// whole message, rejects only that sample here.
	good, _ := proto.Marshal(&aggdv1.Sample{Name: "ok", Type: 1})
	bad, _ := proto.Marshal(&aggdv1.Sample{Name: "ok", Type: 1})
	bad = append(bad, 0x32, 2, 0xff, 0xfe) // tags (field 6) = "\xff\xfe"
	var batch []byte
	for _, s := range [][]byte{good, bad} {
		batch = append(batch, 0x0a, byte(len(s)))
		batch = append(batch, s...)
	}
	req := append([]byte{0x12, byte(len(batch))}, batch...)
	d.Reset(&b)
	b.Tenant = window.NewTenant("t")
	if _, err := d.DecodeStream(req, &b); err != nil {
		t.Fatal(err)
	}
	if want := []window.Reason{window.Accepted, window.ReasonInvalidUTF8}; !slices.Equal(b.Results, want) {
		t.Fatalf("got %v, want %v", b.Results, want)
	}
}

// BenchmarkDecodeStream decodes a 500-sample batch of 100k contexts' worth
// of names and tags: the per-sample cost of decode, validate, canonicalise
// and hash.
func BenchmarkDecodeStream(b *testing.B) {
	req := &aggdv1.StreamRequest{Sequence: 1, Batch: &aggdv1.Batch{}}
	for i := range 500 {
		req.Batch.Samples = append(req.Batch.Samples, &aggdv1.Sample{
			Name: "svc.http.requests", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: float64(i),
			Tags: []string{"service:api", "endpoint:/v1/items/" + string(rune('a'+i%26)), "env:prod", "az:us-east-1a"},
			Host: "host-17",
		})
	}
	data, _ := proto.Marshal(req)
	d := NewDecoder(DefaultLimits())
	var batch window.Batch
	tn := window.NewTenant("t")
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d.Reset(&batch)
		batch.Tenant = tn
		if _, err := d.DecodeStream(data, &batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*500), "ns/sample")
}

// A histogram point (an OTLP point a peer forwards, or the log keeps)
// decodes with its exact count, sum, minimum and maximum; one that cannot
// be a distribution is refused by itself, with its reason.
func TestDecodeHistogram(t *testing.T) {
	dist := aggdv1.MetricType_METRIC_TYPE_DISTRIBUTION
	good := func() *aggdv1.HistogramPoint {
		return &aggdv1.HistogramPoint{Values: []float64{3, 7, 30, 80, 300}, Counts: []float64{1, 2, 1, 1, 1}, Count: 6, Sum: 427, Min: 3, Max: 300}
	}
	tests := []struct {
		name   string
		typ    aggdv1.MetricType
		edit   func(h *aggdv1.HistogramPoint)
		want   window.Reason
		detail string
	}{
		{name: "distribution", typ: dist, want: window.Accepted},
		{name: "histogram", typ: aggdv1.MetricType_METRIC_TYPE_HISTOGRAM, want: window.Accepted},
		{name: "timing", typ: aggdv1.MetricType_METRIC_TYPE_TIMING, want: window.Accepted},
		{name: "gauge", typ: aggdv1.MetricType_METRIC_TYPE_GAUGE, want: window.ReasonInvalidType, detail: "not a gauge one"},
		{name: "bins unpaired", typ: dist, edit: func(h *aggdv1.HistogramPoint) { h.Counts = h.Counts[1:] }, want: window.ReasonMalformed, detail: "5 values and 4 counts"},
		{name: "counts short of count", typ: dist, edit: func(h *aggdv1.HistogramPoint) { h.Count = 7 }, want: window.ReasonInvalidValue, detail: "add up to 6, count is 7"},
		{name: "no count", typ: dist, edit: func(h *aggdv1.HistogramPoint) { h.Values, h.Counts, h.Count = nil, nil, 0 }, want: window.ReasonInvalidValue, detail: "count is 0"},
		{name: "zero bin", typ: dist, edit: func(h *aggdv1.HistogramPoint) { h.Counts[0] = 0 }, want: window.ReasonInvalidValue, detail: "bin 0"},
		{name: "NaN value", typ: dist, edit: func(h *aggdv1.HistogramPoint) { h.Values[2] = math.NaN() }, want: window.ReasonInvalidValue, detail: "bin 2"},
		{name: "infinite sum", typ: dist, edit: func(h *aggdv1.HistogramPoint) { h.Sum = math.Inf(1) }, want: window.ReasonInvalidValue, detail: "finite"},
		{name: "min over max", typ: dist, edit: func(h *aggdv1.HistogramPoint) { h.Min = 301 }, want: window.ReasonInvalidValue, detail: "min at most max"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := good()
			if tt.edit != nil {
				tt.edit(h)
			}
			// The histogram between two plain samples: only it is refused.
			data, err := proto.Marshal(&aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
				{Name: "before", Type: dist, Values: []float64{1, 2}},
				{Name: "h", Type: tt.typ, Value: 99, Histogram: h},
				{Name: "after", Type: dist, Value: 5},
			}}})
			if err != nil {
				t.Fatal(err)
			}
			d := NewDecoder(DefaultLimits())
			d.Histograms = true
			var b window.Batch
			b.Tenant = window.NewTenant("t")
			if err := d.DecodeSubmit(data, &b); err != nil {
				t.Fatal(err)
			}
			if want := []window.Reason{window.Accepted, tt.want, window.Accepted}; !slices.Equal(b.Results, want) {
				t.Fatalf("results %v, want %v (%q)", b.Results, want, d.Detail)
			}
			if !strings.Contains(d.Detail[1], tt.detail) {
				t.Errorf("detail %q, want it to say %q", d.Detail[1], tt.detail)
			}
			if !sameFloats(b.Samples[0].Values, []float64{1, 2}) || b.Samples[2].Value != 5 {
				t.Errorf("the plain samples around it: %+v %+v", b.Samples[0], b.Samples[2])
			}
			if tt.want != window.Accepted {
				return
			}
			got := b.Samples[1].Hist
			if got == nil || !slices.Equal(got.Values, h.Values) || !slices.Equal(got.Counts, h.Counts) ||
				got.Count != 6 || got.Sum != 427 || got.Min != 3 || got.Max != 300 {
				t.Fatalf("histogram %+v, want %+v", got, h)
			}
			// What the forwarder and the log encode decodes to the same.
			batch, _ := AppendBatchSample(nil, nil, &b.Samples[1])
			var again window.Batch
			d.Reset(&again)
			again.Tenant = b.Tenant
			if err := d.DecodeSubmit(protowire.AppendBytes([]byte{0x0a}, batch), &again); err != nil {
				t.Fatal(err)
			}
			if r := again.Results[0]; r != window.Accepted || fmt.Sprint(*again.Samples[0].Hist) != fmt.Sprint(*got) {
				t.Fatalf("re-encoded: %v %+v, want %+v", r, again.Samples[0].Hist, got)
			}
			var pb aggdv1.Batch
			if err := proto.Unmarshal(batch, &pb); err != nil || !proto.Equal(pb.Samples[0].Histogram, h) {
				t.Fatalf("AppendBatchSample's encoding reads as %v (%v), want %v", pb.Samples[0].GetHistogram(), err, h)
			}
		})
	}
}

// TestUvarint checks the inline varint reader against protowire's on
// values at each length's edges, in minimal and padded encodings, and
// on varints cut short.
func TestUvarint(t *testing.T) {
	var cases [][]byte
	for _, v := range []uint64{0, 1, 127, 128, 300, 16383, 16384, 1 << 20, 2097151, 2097152, 1<<32 + 2, math.MaxUint64} {
		cases = append(cases, protowire.AppendVarint(nil, v))
	}
	cases = append(cases,
		[]byte{0x80, 0x00}, []byte{0x81, 0x80, 0x00}, // padded: 0 and 1
		[]byte{0x80}, []byte{0xff, 0xff}, // cut short
		[]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, // too long
	)
	for _, b := range cases {
		gotV, gotN := uvarint(b)
		wantV, wantN := protowire.ConsumeVarint(b)
		if gotN != wantN || (wantN >= 0 && gotV != wantV) {
			t.Errorf("% x: got %d (%d bytes), want %d (%d bytes)", b, gotV, gotN, wantV, wantN)
		}
	}
}
