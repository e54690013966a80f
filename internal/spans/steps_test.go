package spans

import (
	"testing"
	"time"

	"github.com/aggd/aggd/internal/window"
)

// TestAdvanceDecidesInSteps checks that Advance lets go of a shard's lock
// between steps of advanceStep traces, that spans taken meanwhile count
// (a span of a due trace not yet examined keeps it held; a new trace is
// held), and that every other due trace is decided once.
func TestAdvanceDecidesInSteps(t *testing.T) {
	const sec = int64(time.Second)
	p := mustPolicy(t, "[trace]\ndata_ttl = \"5s\"\n[[trace.sampling_pipeline]]\nname = \"all\"\ntype = \"probabilistic\"\nrate = 1\n")
	s := NewSampler(p, DefaultLimits())
	tn := window.NewTenant("t")
	const n = nShards * 3 * advanceStep
	for i := range n {
		span := sp(traceID(uint64(i)), 1, nil)
		s.Add(tn, &span, 0)
	}
	steps, extended, fresh := 0, map[[16]byte]bool{}, uint64(n)
	stepHook = func(sh *samplerShard) {
		steps++
		if !sh.mu.TryLock() {
			t.Error("the shard's lock is held between steps")
			return
		}
		if sh.dueNext == len(sh.due) {
			sh.mu.Unlock()
			return // a step of forgetting decisions
		}
		last := sh.due[len(sh.due)-1] // the last to be examined
		sh.mu.Unlock()
		if !extended[last.k.id] {
			extended[last.k.id] = true
			late := sp(last.k.id, 2, nil)
			s.Add(tn, &late, 5*sec)
		}
		span := sp(traceID(fresh), 1, nil)
		fresh++
		s.Add(tn, &span, 5*sec)
	}
	t.Cleanup(func() { stepHook = nil })
	out := s.Advance(5*sec, false)
	if steps < nShards*2 {
		t.Fatalf("%d steps; %d traces over %d shards need at least %d", steps, n, nShards, nShards*2)
	}
	if len(extended) == 0 {
		t.Fatal("no span came between steps")
	}
	seen := map[[16]byte]bool{}
	for _, tr := range out {
		if seen[tr.TraceID] {
			t.Errorf("trace %x kept twice", tr.TraceID)
		}
		seen[tr.TraceID] = true
		if extended[tr.TraceID] {
			t.Errorf("trace %x decided though a span came before its turn", tr.TraceID)
		}
	}
	if want := n - len(extended); len(out) != want {
		t.Errorf("%d traces kept, want %d", len(out), want)
	}
	held := int64(len(extended)) + int64(fresh-n)
	if got := s.C.HeldTraces.Load(); got != held {
		t.Errorf("%d traces held, want %d (extended %d, new %d)", got, held, len(extended), fresh-n)
	}
	stepHook = nil
	if out := s.Advance(10*sec, false); len(out) != int(held) {
		t.Errorf("the next Advance kept %d traces, want %d", len(out), held)
	}
}
