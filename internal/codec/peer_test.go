package codec

import (
	"testing"

	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
)

// FuzzParseForward checks ParseForward against the generated code: what
// proto.Unmarshal reads as a ForwardRequest with an arrival time,
// ParseForward reads the same; and AppendForward's encoding reads back.
func FuzzParseForward(f *testing.F) {
	batch, _ := proto.Marshal(&aggdv1.Batch{Samples: []*aggdv1.Sample{{Name: "a", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1}}})
	f.Add(AppendForward(nil, batch, Forward{Tenant: "acme", Now: 1_700_000_000_000_000_000, Call: CallID{Replica: 0xfeed, Sequence: 7}}, 3))
	f.Add(AppendForward(nil, nil, Forward{Now: 1}, 0))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		fw, err := ParseForward(data)
		var pb aggdv1.ForwardRequest
		if perr := proto.Unmarshal(data, &pb); perr != nil {
			return // the reference refuses it; the parser need only not panic
		}
		if pb.ArrivalUnixNano == 0 {
			if err == nil {
				t.Fatalf("no arrival time, yet parsed as %+v", fw)
			}
			return
		}
		if err != nil {
			t.Fatalf("ParseForward failed where proto.Unmarshal succeeded: %v", err)
		}
		want := Forward{Tenant: pb.Tenant, Now: pb.ArrivalUnixNano, Call: CallID{Replica: pb.ReplicaId, Sequence: pb.Sequence}}
		if fw != want {
			t.Fatalf("parsed %+v, want %+v", fw, want)
		}
		b, _ := proto.Marshal(pb.GetBatch())
		again, err := ParseForward(AppendForward(nil, b, fw, pb.MembershipVersion))
		if err != nil || again != fw {
			t.Fatalf("AppendForward's encoding reads as %+v (%v), want %+v", again, err, fw)
		}
	})
}
