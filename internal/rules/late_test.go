package rules

import (
	"math"
	"testing"

	"github.com/aggd/aggd/internal/window"
)

// TestLateItemsCorrectKeptWindow: a window drained (t0, t0+20] is kept,
// merged across shards, for the late window after its due tick (t0+22);
// late items in that time make the next drain send every output of the
// window again, over all its items, at the window's start and marked
// Late. Past the late window an item is not observed and is counted; with
// the originals dropped it is refused too_old.
func TestLateItemsCorrectKeptWindow(t *testing.T) {
	const rulesText = xSum20s + `[aggregate_rules.algorithms."x_q"]
method = "quantiles"
source_field = "x"
[aggregate_rules.algorithms."x_q".quantile_opts]
percentiles = [0.5]
`
	type step struct {
		now    int64             // seconds after t0
		values map[int64]float64 // sample timestamp (seconds after t0) → value
		drain  int64             // then drain at this tick (seconds after t0), if set
	}
	cases := []struct {
		name     string
		action   string
		steps    []step
		want     []map[string]float64 // outputs of each drain, by name
		wantLate []bool               // whether each drain's outputs are marked Late
		refused  window.Reason        // what the last step's sample gets
		tooLate  int64
	}{{
		name: "late items within the late window",
		steps: []step{
			{now: 3, values: map[int64]float64{1: 10, 2: 20}, drain: 22},
			{now: 23, values: map[int64]float64{5: 5, 6: 40}, drain: 32},
			{now: 33, values: map[int64]float64{7: 50}, drain: 42},
		},
		want: []map[string]float64{
			{"x_sum": 30, "x_sum_count": 2, "x_q_P50": 15, "x_q_count": 2},
			{"x_sum": 75, "x_sum_count": 4, "x_q_P50": 15, "x_q_count": 4},
			{"x_sum": 125, "x_sum_count": 5, "x_q_P50": 20, "x_q_count": 5},
		},
		wantLate: []bool{false, true, true},
	}, {
		name: "past the late window, originals kept",
		steps: []step{
			{now: 3, values: map[int64]float64{1: 10}, drain: 22},
			{drain: 152}, // t0+22 + 2m is the window's last correctable tick, so 152 drops it
			{now: 153, values: map[int64]float64{5: 5}, drain: 162},
		},
		want:     []map[string]float64{{"x_sum": 10, "x_sum_count": 1, "x_q_P50": 10, "x_q_count": 1}, {}, {}},
		wantLate: []bool{false, false, false},
		tooLate:  1,
	}, {
		name:   "past the late window, originals dropped",
		action: "drop",
		steps: []step{
			{now: 3, values: map[int64]float64{1: 10}, drain: 22},
			{drain: 152},
			{now: 153, values: map[int64]float64{5: 5}, drain: 162},
		},
		want:     []map[string]float64{{"x_sum": 10, "x_sum_count": 1, "x_q_P50": 10, "x_q_count": 1}, {}, {}},
		wantLate: []bool{false, false, false},
		refused:  window.ReasonTooOld,
		tooLate:  1,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := engine(t, "action = \""+tc.action+"\"\n"+rulesText, 2)
			tn := window.NewTenant("t")
			shard := 0
			var last window.Reason
			for i, st := range tc.steps {
				for ts, v := range st.values {
					s := sample("x", v)
					s.Timestamp = t0 + ts*sec
					shard = 1 - shard // spread over both shards
					_, last = e.ObserveSample(shard, tn, s, t0+st.now*sec, 0)
				}
				got := map[string]float64{}
				for _, m := range e.Drain(t0+st.drain*sec, false, func(_ int, f func()) { f() }, nil) {
					if m.Timestamp != t0 || m.Interval != 20*sec || m.Late != tc.wantLate[i] {
						t.Errorf("drain %d: %s at +%ds over %ds, late %v; want at +0s over 20s, late %v",
							i, m.Name, (m.Timestamp-t0)/sec, m.Interval/sec, m.Late, tc.wantLate[i])
					}
					got[m.Name] = m.Value
				}
				if len(got) != len(tc.want[i]) {
					t.Errorf("drain %d: %v, want %v", i, got, tc.want[i])
				}
				for k, w := range tc.want[i] {
					if g, ok := got[k]; !ok || math.Abs(g-w) > 1e-9 {
						t.Errorf("drain %d: %s = %v (present %v), want %v", i, k, g, ok, w)
					}
				}
			}
			if last != tc.refused {
				t.Errorf("last sample: %v, want %v", last, tc.refused)
			}
			if n := e.Counters("r").TooLate.Load(); n != tc.tooLate {
				t.Errorf("too late: %d, want %d", n, tc.tooLate)
			}
			if len(e.kept) != 0 && tc.tooLate > 0 {
				t.Errorf("%d windows kept past their late window", len(e.kept))
			}
		})
	}
}

// TestReplayRestoresKeptWindows restarts an engine as replay does after a
// kill -9 or a clean stop: Resume with the tick of the last flush the log
// checkpointed, then the logged items, those that flush carried with its
// cutoff. The windows it drained come back as flushed: nothing is sent
// for them until a late item arrives, and then every output of the window
// over all its items, replayed and late. A window past its late window at
// the restart takes nothing.
func TestReplayRestoresKeptWindows(t *testing.T) {
	const rulesText = xSum20s + `[aggregate_rules.algorithms."x_q"]
method = "quantiles"
source_field = "x"
[aggregate_rules.algorithms."x_q".quantile_opts]
percentiles = [0.5]
`
	type item struct {
		ts     int64 // seconds after t0
		v      float64
		cutoff int64 // seconds after t0 of the flush that carried it; 0: none
	}
	final := int64(math.MaxInt64 / sec) // a clean stop's flush carried everything
	cases := []struct {
		name   string
		resume int64  // seconds after t0
		replay []item // logged before the restart; arrived at t0+3
		now    int64  // the late item after the restart arrives then
		late   item
		drains []int64              // seconds after t0
		want   []map[string]float64 // outputs of each drain
		tooLat int64
	}{{
		// The window (t0, t0+20] was drained at +22 and corrected at +32
		// by the item at +5; aggd was killed after the checkpoint of +32.
		name:   "kill -9 after a correction",
		resume: 32,
		replay: []item{{1, 10, 32}, {2, 20, 32}, {5, 5, 32}},
		now:    33, late: item{ts: 6, v: 40},
		drains: []int64{42, 52},
		want:   []map[string]float64{{"x_sum": 75, "x_sum_count": 4, "x_q_P50": 15, "x_q_count": 4}, {}},
	}, {
		// The last item was logged after the checkpoint of +22: replay
		// takes it as new, a late item for the kept window.
		name:   "kill -9 with an item logged after the checkpoint",
		resume: 22,
		replay: []item{{1, 10, 22}, {2, 20, 22}, {5, 5, 0}},
		now:    23, late: item{ts: 6, v: 40},
		drains: []int64{32, 42},
		want:   []map[string]float64{{"x_sum": 75, "x_sum_count": 4, "x_q_P50": 15, "x_q_count": 4}, {}},
	}, {
		// A clean stop at +10 drained the open window (due at +22).
		name:   "clean stop before the window was due",
		resume: 10,
		replay: []item{{1, 10, final}, {2, 20, final}},
		now:    11, late: item{ts: 6, v: 40},
		drains: []int64{12, 22, 32},
		want:   []map[string]float64{{}, {"x_sum": 70, "x_sum_count": 3, "x_q_P50": 20, "x_q_count": 3}, {}},
	}, {
		name:   "clean stop after the window was due",
		resume: 25,
		replay: []item{{1, 10, final}, {2, 20, final}},
		now:    26, late: item{ts: 6, v: 40},
		drains: []int64{32},
		want:   []map[string]float64{{"x_sum": 70, "x_sum_count": 3, "x_q_P50": 20, "x_q_count": 3}},
	}, {
		// The window was correctable until +22 + 2m.
		name:   "past the late window at the restart",
		resume: 150,
		replay: []item{{1, 10, 150}},
		now:    151, late: item{ts: 6, v: 40},
		drains: []int64{152},
		want:   []map[string]float64{{}},
		tooLat: 1,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := engine(t, rulesText, 2)
			tn := window.NewTenant("t")
			e.Resume(t0 + tc.resume*sec)
			for i, it := range tc.replay {
				s := sample("x", it.v)
				s.Timestamp = t0 + it.ts*sec
				cutoff := it.cutoff * sec
				if it.cutoff == final {
					cutoff = math.MaxInt64
				} else if cutoff != 0 {
					cutoff += t0
				}
				if _, r := e.ObserveSample(i%2, tn, s, t0+3*sec, cutoff); r != window.Accepted {
					t.Fatalf("replayed item %d: %v", i, r)
				}
			}
			s := sample("x", tc.late.v)
			s.Timestamp = t0 + tc.late.ts*sec
			if _, r := e.ObserveSample(1, tn, s, t0+tc.now*sec, 0); r != window.Accepted {
				t.Fatalf("late item: %v", r)
			}
			for i, d := range tc.drains {
				got := map[string]float64{}
				for _, m := range e.Drain(t0+d*sec, false, func(_ int, f func()) { f() }, nil) {
					if m.Timestamp != t0 || !m.Late {
						t.Errorf("drain at +%ds: %s at +%ds, late %v; want the window's correction at +0s", d, m.Name, (m.Timestamp-t0)/sec, m.Late)
					}
					got[m.Name] = m.Value
				}
				if len(got) != len(tc.want[i]) {
					t.Errorf("drain at +%ds: %v, want %v", d, got, tc.want[i])
				}
				for k, w := range tc.want[i] {
					if g, ok := got[k]; !ok || math.Abs(g-w) > 1e-9 {
						t.Errorf("drain at +%ds: %s = %v (present %v), want %v", d, k, g, ok, w)
					}
				}
			}
			if n := e.Counters("r").TooLate.Load(); n != tc.tooLat {
				t.Errorf("too late: %d, want %d", n, tc.tooLat)
			}
		})
	}
}
