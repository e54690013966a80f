package service

import (
	"log/slog"
	"math"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/window"
)

// replaySeeds are the requests whose records seed FuzzReplay: every item
// kind, refused items among them, and an empty request.
func replaySeeds() []*aggdv1.StreamRequest {
	return []*aggdv1.StreamRequest{
		{Sequence: 7, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
			{Name: "a.b", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 2, Tags: []string{"z:1", "a:2", "z:1"}, Host: "h", SampleRate: 0.5, TimestampUnixNano: 1e18},
			{Name: "d", Type: aggdv1.MetricType_METRIC_TYPE_DISTRIBUTION, Values: []float64{1, 2, math.Inf(1)}},
			{Name: "s", Type: aggdv1.MetricType_METRIC_TYPE_SET, SetMember: "u1"},
			{Name: "bad name", Type: aggdv1.MetricType_METRIC_TYPE_GAUGE},
		}, Events: []*aggdv1.Event{{Title: "e"}}, ServiceChecks: []*aggdv1.ServiceCheck{{Name: "c", Status: 1}},
			Spans: []*aggdv1.Span{{TraceId: make([]byte, 16), SpanId: []byte{1, 2, 3, 4, 5, 6, 7, 8}, Name: "GET", StartUnixNano: 1e18}}}},
		{},
	}
}

// FuzzReplay feeds write-ahead log records, real ones and whatever the
// fuzzer makes of them, to a server's replay: a record it cannot read is
// an error, never a panic.
func FuzzReplay(f *testing.F) {
	tenants, err := NewTenants(nil, false, 1000)
	if err != nil {
		f.Fatal(err)
	}
	srv := New(ingestNothing{}, tenants, codec.DefaultLimits(), slog.New(slog.DiscardHandler))
	srv.SetJournal(nil, func(ts, now int64) int64 { return max(ts, now) + 10 }, 0, time.Minute)
	for _, r := range replaySeeds() {
		data, _ := proto.Marshal(r)
		st := &callState{dec: codec.NewDecoder(codec.DefaultLimits()), frame: codec.Frame{Buf: data}}
		st.batch.Tenant, st.batch.Now = window.NewTenant("acme"), 1_700_000_000_000_000_000
		st.ack.Rejections = []*aggdv1.Rejection{{Kind: aggdv1.ItemKind_ITEM_KIND_SAMPLE, Index: 1}, {Kind: aggdv1.ItemKind_ITEM_KIND_EVENT, Index: 0}}
		f.Add(encodeRecord(nil, st, recordStream), true, int64(1_700_000_000_000_000_000))
	}
	f.Fuzz(func(t *testing.T, rec []byte, flushed bool, tick int64) {
		srv.Replay(rec, flushed, tick)
	})
}

type ingestNothing struct{}

func (ingestNothing) Ingest(*window.Batch) {}
