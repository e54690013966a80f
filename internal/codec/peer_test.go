package codec

import (
	"bytes"
	"slices"
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
	withSeeds, _ := proto.Marshal(&aggdv1.ForwardRequest{Tenant: "acme", ArrivalUnixNano: 1, SeedsHandedOver: true,
		Seeds: &aggdv1.Batch{Samples: []*aggdv1.Sample{{Name: "r", Type: aggdv1.MetricType_METRIC_TYPE_RATE, Value: 3}}}})
	f.Add(withSeeds)
	f.Add(AppendForwardDecision(AppendForwardDecision(AppendForward(nil, nil, Forward{Now: 1}, 0), [16]byte{1}, true), [16]byte{2}, false))
	f.Fuzz(func(t *testing.T, data []byte) {
		fw, err := ParseForward(data)
		seeds, handedOver := ForwardSeeds(data)
		var kept, dropped [][]byte
		ForwardDecisions(data, func(id [16]byte, keep bool) {
			if keep {
				kept = append(kept, id[:])
			} else {
				dropped = append(dropped, id[:])
			}
		})
		var pb aggdv1.ForwardRequest
		if perr := proto.Unmarshal(data, &pb); perr != nil {
			return // the reference refuses it; the parser need only not panic
		}
		// ForwardDecisions reads the ids of 16 bytes, in order.
		sixteen := func(ids [][]byte) (out [][]byte) {
			for _, id := range ids {
				if len(id) == 16 {
					out = append(out, id)
				}
			}
			return out
		}
		if !slices.EqualFunc(kept, sixteen(pb.TracesKept), bytes.Equal) || !slices.EqualFunc(dropped, sixteen(pb.TracesDropped), bytes.Equal) {
			t.Fatalf("decisions kept %x dropped %x, want %x and %x", kept, dropped, pb.TracesKept, pb.TracesDropped)
		}
		// ForwardSeeds reads the last seeds field, where the reference
		// merges them all: their presence and the flag agree.
		if (seeds != nil) != (pb.Seeds != nil) || handedOver != pb.SeedsHandedOver {
			t.Fatalf("seeds %x handed over %v, want seeds %v handed over %v", seeds, handedOver, pb.Seeds, pb.SeedsHandedOver)
		}
		var last aggdv1.Batch
		if err := proto.Unmarshal(seeds, &last); err != nil {
			t.Fatalf("seeds %x do not read as a Batch: %v", seeds, err)
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
