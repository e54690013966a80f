package upstream

import (
	"math"
	"testing"

	"github.com/DataDog/sketches-go/ddsketch"

	"github.com/aggd/aggd/internal/window"
)

func TestAgentKeyRoundTrip(t *testing.T) {
	if k := agentKey(agentMinMag); k != 1 {
		t.Fatalf("key of the smallest magnitude is %d, want 1", k)
	}
	for _, v := range []float64{1e-9, 1e-6, 0.5, 1, 3.3, 1000, 1e12, -7, -1e-3} {
		k := agentKey(v)
		got := AgentKeyValue(k)
		if math.Abs(got-v) > v*0.0079*math.Copysign(1, v) {
			t.Errorf("%v: key %d maps back to %v, beyond 0.78%%", v, k, got)
		}
	}
	for _, v := range []float64{0, 1e-12, -1e-12} {
		if k := agentKey(v); k != 0 {
			t.Errorf("%v: key %d, want 0", v, k)
		}
	}
	// Past the largest finite key, pkg/quantile's Config.key returns
	// InfKey(1), 32767.
	if k := agentKey(math.MaxFloat64); k != 32767 {
		t.Errorf("huge value: key %d, want 32767", k)
	}
}

func TestAgentCountsKeepTheTotal(t *testing.T) {
	s, _ := ddsketch.LogCollapsingLowestDenseDDSketch(0.01, 2048)
	for i := 1; i <= 300; i++ {
		s.AddWithCount(float64(i), 1/0.3) // sample rate 0.3
	}
	s.AddWithCount(5, 200_000)
	ks, ns, total := agentCounts(agentBins(&window.Metric{Sketch: s}, nil), nil, nil)
	if want := int64(math.Round(s.GetCount())); total != want {
		t.Fatalf("total %d, want %d", total, want)
	}
	var sum int64
	for i, n := range ns {
		if n == 0 || n > math.MaxUint16 || (i > 0 && ks[i] < ks[i-1]) {
			t.Fatalf("bin %d: key %d count %d", i, ks[i], n)
		}
		sum += int64(n)
	}
	if sum != total {
		t.Fatalf("bins sum to %d, total %d", sum, total)
	}
}
