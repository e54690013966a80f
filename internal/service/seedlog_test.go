package service_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/flush/flushtest"
)

// TestSeedsSurviveARestart: a replica takes a context's last sample as a
// seed from its former owner (a hand-over, or with a sample of another
// context), acks it, and is killed with -9 before the context's first
// sample reaches it. After the restart the log gives the seed back, so
// the context's next point has its delta, as on a replica that was not
// restarted. The seed's record is kept until the bucket open when it
// came is flushed and past its late window (journal.SeedDue), and a
// checkpoint after that removes it; a flush before does not.
func TestSeedsSurviveARestart(t *testing.T) {
	// Everything happens in the past, within max lateness (1 h), so that
	// flushes may run past the seed's retention: base is the peer's
	// arrival time, the seed was taken 30 s before it, and the context's
	// next sample comes 3 min 5 s after it.
	base := time.Now().Truncate(10 * time.Second).Add(-10 * time.Minute)
	seedTS, nextTS := base.Add(-30*time.Second), base.Add(3*time.Minute+5*time.Second)
	for _, typ := range []aggdv1.MetricType{aggdv1.MetricType_METRIC_TYPE_MONOTONIC_COUNT, aggdv1.MetricType_METRIC_TYPE_RATE} {
		want := 30.0 // the monotonic count's delta, 130 - 100
		if typ == aggdv1.MetricType_METRIC_TYPE_RATE {
			want = 30 / nextTS.Sub(seedTS).Seconds() // per second between the samples
		}
		for _, tc := range []struct {
			name      string
			withBatch bool          // the seed rides with a sample of another context
			flushAt   time.Duration // a flush with a checkpoint at base+flushAt before the kill; 0: none
			kept      bool
		}{
			{name: "hand-over", kept: true},
			{name: "with a sample", withBatch: true, kept: true},
			{name: "hand-over, flushed in the late window", flushAt: time.Minute, kept: true},
			{name: "with a sample, flushed in the late window", withBatch: true, flushAt: time.Minute, kept: true},
			{name: "hand-over, flushed past the late window", flushAt: 3 * time.Minute, kept: false},
		} {
			t.Run(typ.String()+"/"+tc.name, func(t *testing.T) {
				dir := t.TempDir()
				j := startJournaled(t, dir, false, nil)
				peer := aggdv1.NewPeerServiceClient(j.conn)
				ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+peerToken, codec.PeerProtocolKey, codec.PeerProtocol)
				req := &aggdv1.ForwardRequest{Tenant: "acme", ArrivalUnixNano: base.UnixNano(),
					Seeds: &aggdv1.Batch{Samples: []*aggdv1.Sample{{Name: "m", Type: typ, Value: 100, TimestampUnixNano: seedTS.UnixNano()}}}}
				if tc.withBatch {
					req.Batch = &aggdv1.Batch{Samples: counts("other", 1, base.UnixNano())}
				} else {
					req.SeedsHandedOver = true
				}
				resp, err := peer.Forward(ctx, req)
				if err != nil {
					t.Fatal(err)
				}
				if resp.SeedsRefused != 0 || resp.Ack.GetRejected() != 0 {
					t.Fatalf("forward answered %v", resp)
				}
				if tc.flushAt != 0 {
					fl, err := flush.NewFlusher(j.agg, &flushtest.Exporter{}, noTenants{}, flush.Config{Interval: 10 * time.Second, WAL: j.jnl}, slog.New(slog.DiscardHandler))
					if err != nil {
						t.Fatal(err)
					}
					fl.Flush(base.Add(tc.flushAt), false)
				}

				// kill -9: the log is left as it is; state starts empty.
				k := startJournaled(t, dir, false, nil)
				if err := k.jnl.Replay(); err != nil {
					t.Fatal(err)
				}
				next := &aggdv1.Batch{Samples: []*aggdv1.Sample{{Name: "m", Type: typ, Value: 130, TimestampUnixNano: nextTS.UnixNano()}}}
				if ack := k.submit(t, next); ack.Accepted != 1 {
					t.Fatalf("next sample: %v", ack)
				}
				exp := &flushtest.Exporter{}
				fl, err := flush.NewFlusher(k.agg, exp, noTenants{}, flush.Config{Interval: 10 * time.Second}, slog.New(slog.DiscardHandler))
				if err != nil {
					t.Fatal(err)
				}
				fl.Flush(time.Now(), true)
				var got []flushtest.Point
				for _, p := range exp.Points() {
					if p.Name == "m" {
						got = append(got, p)
					}
				}
				switch {
				case tc.kept && (len(got) != 1 || got[0].Value != want):
					t.Fatalf("after the restart m flushed %+v, want one point of %v", got, want)
				case !tc.kept && len(got) != 0:
					t.Fatalf("after the restart m flushed %+v, want none: the seed's record was past its retention", got)
				}
			})
		}
	}
}
