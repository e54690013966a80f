package flush_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/window"
)

// LastSamples hands the last samples out in slices of at most n, with no
// shard's lock held while fn runs: fn may send them over the network, and
// the aggregator takes samples meanwhile (fn itself ingests here, which
// would deadlock under the lock).
func TestLastSamplesHoldsNoLockOverFn(t *testing.T) {
	for _, n := range []int{1, 3, 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 4})
			tn := window.NewTenant("t")
			now := time.Now().UnixNano()
			sample := func(name string, typ window.MetricType, v float64) *window.Batch {
				b := &window.Batch{Tenant: tn, Now: now}
				s := window.Sample{Name: name, Type: typ, Value: v, SampleRate: 1}
				s.Prepare(tn, nil)
				b.Samples, b.Results = append(b.Samples, s), append(b.Results, window.Accepted)
				return b
			}
			want := map[string]float64{}
			for i := range 50 {
				name := fmt.Sprintf("r%d", i)
				agg.Ingest(sample(name, window.TypeRate, float64(i)))
				agg.Ingest(sample("g"+name, window.TypeGauge, 1))
				want[name] = float64(i)
			}
			got := map[string]float64{}
			agg.LastSamples(n, func(ls []window.Last) bool {
				if len(ls) > n {
					t.Errorf("%d last samples in one slice, want at most %d", len(ls), n)
				}
				for i := range agg.Shards() {
					if agg.ShardLocked(i) {
						t.Errorf("shard %d locked while fn runs", i)
					}
				}
				for _, l := range ls {
					name, _, _ := window.SplitKey(l.Key, nil)
					got[name] = l.Value
					agg.Ingest(sample(name, window.TypeRate, 100))
				}
				return true
			})
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("last samples %v\nwant %v", got, want)
			}
		})
	}
}
