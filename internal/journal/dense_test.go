package journal

import (
	"fmt"
	"testing"

	"github.com/klauspost/compress/s2"
	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/window"
)

// TestDenseRecords: a record that is mostly packed samples is dense (the
// log stores it without trying to compress it), and s2 would not have
// shrunk it enough to store it compressed; one whose frame keeps mostly
// full-name samples as they came, or that does not pack, is not.
func TestDenseRecords(t *testing.T) {
	refs := make([]*aggdv1.Sample, 500)
	for i := range refs {
		refs[i] = &aggdv1.Sample{SeriesRef: uint32(i*7919%100_000 + 1), Value: float64(i % 1000)}
	}
	names := make([]*aggdv1.Sample, 50)
	for i := range names {
		names[i] = &aggdv1.Sample{Name: "http.requests", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1,
			Tags: []string{"env:prod", "service:checkout", "region:eu-west-1"}}
	}
	// aggload's mix: one sample in ten is of a set, its member a string.
	sets := append([]*aggdv1.Sample(nil), refs...)
	for i := 0; i < len(sets); i += 10 {
		sets[i] = &aggdv1.Sample{SeriesRef: sets[i].SeriesRef, SetMember: fmt.Sprintf("user-%d", i*7919%100_000)}
	}
	for _, tc := range []struct {
		name  string
		batch *aggdv1.Batch
		dense bool
	}{
		{"samples by reference", &aggdv1.Batch{Samples: refs}, true},
		{"a few full names among them", &aggdv1.Batch{Samples: append(append([]*aggdv1.Sample(nil), refs...), names[:5]...)}, true},
		{"one in ten a set member", &aggdv1.Batch{Samples: sets}, true},
		{"as many bytes of full names", &aggdv1.Batch{Samples: append(append([]*aggdv1.Sample(nil), refs[:100]...), names...)}, false},
		{"full names only", &aggdv1.Batch{Samples: names}, false},
	} {
		frame, err := proto.Marshal(&aggdv1.StreamRequest{Sequence: 1, Batch: tc.batch})
		if err != nil {
			t.Fatal(err)
		}
		rec, dense := appendRecord(nil, Record{Kind: Stream, Tenant: "acme", Frame: frame}, nil)
		if dense != tc.dense {
			t.Errorf("%s: dense %v, want %v", tc.name, dense, tc.dense)
		}
		// The same from the samples the decoder noted.
		d := codec.NewDecoder(codec.DefaultLimits())
		d.Series = new(codec.Series)
		b := window.Batch{Tenant: window.NewTenant("acme")}
		if _, err := d.DecodeStream(frame, &b); err != nil {
			t.Fatal(err)
		}
		if _, dense := appendRecord(nil, Record{Kind: Stream, Tenant: "acme", Frame: frame}, d.Series); dense != tc.dense {
			t.Errorf("%s, decoded: dense %v, want %v", tc.name, dense, tc.dense)
		}
		// What is dense, s2 would not shrink to the 45 % that makes the
		// log compress a record.
		if n := len(s2.Encode(nil, rec)); dense && n*20 < len(rec)*9 {
			t.Errorf("%s: dense, yet s2 shrinks its %d bytes to %d", tc.name, len(rec), n)
		}
	}
}
