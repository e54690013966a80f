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

// TestLastTraceIsForgottenOnceDecided checks that a span of the trace the
// sampler held a span of last, once that trace is decided (gone quiet, at
// its span bound, or moved), is taken as a late span of the decision, not
// into the decided trace.
func TestLastTraceIsForgottenOnceDecided(t *testing.T) {
	const sec = int64(time.Second)
	p := mustPolicy(t, "[trace]\ndata_ttl = \"5s\"\n[[trace.sampling_pipeline]]\nname = \"all\"\ntype = \"probabilistic\"\nrate = 1\n")
	tn := window.NewTenant("t")
	id := traceID(3)
	for _, tc := range []struct {
		name   string
		decide func(s *Sampler)
	}{
		{"quiet", func(s *Sampler) { s.Advance(5*sec, false) }},
		{"moved", func(s *Sampler) {
			s.Move(func(*window.Tenant, [16]byte) bool { return true })
			s.Remember(tn, id, true, 5*sec)
		}},
		{"span bound", func(s *Sampler) {
			for i := range s.lim.MaxSpansPerTrace {
				span := sp(id, byte(10+i), nil)
				s.Add(tn, &span, sec)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lim := DefaultLimits()
			lim.MaxSpansPerTrace = 4
			s := NewSampler(p, lim)
			first := sp(id, 1, nil)
			s.Add(tn, &first, 0)
			tc.decide(s)
			s.Advance(5*sec, false) // takes what is kept so far
			late := sp(id, 2, nil)
			s.Add(tn, &late, 6*sec)
			if got := s.C.HeldTraces.Load(); got != 0 {
				t.Errorf("%d traces held after the decision, want 0", got)
			}
			if got := s.C.LateKept.Load(); got < 1 {
				t.Errorf("the span after the decision was not taken as late (late kept %d)", got)
			}
			if out := s.Advance(7*sec, false); len(out) != 1 || len(out[0].Spans) != 1 || out[0].Spans[0].SpanID != late.SpanID {
				t.Errorf("exported %+v, want the late span alone", out)
			}
		})
	}
}

// TestRecordsStartWithRoomForTracesAlike checks that a new trace's records
// start with room for as many spans as the traces decided before it held,
// within bounds, so that a trace like them never grows its records.
func TestRecordsStartWithRoomForTracesAlike(t *testing.T) {
	const sec = int64(time.Second)
	p := mustPolicy(t, "[trace]\ndata_ttl = \"5s\"\n[[trace.sampling_pipeline]]\nname = \"all\"\ntype = \"probabilistic\"\nrate = 1\n")
	tn := window.NewTenant("t")
	n := recordSize(new(sp(traceID(0), 1, nil)))
	for _, tc := range []struct {
		name     string
		before   int // spans per trace decided before; 0: none
		spans    int // spans of the new trace
		min, max int // its records' capacity at its first span, in records
		grows    bool
	}{
		{"no trace before", 0, 6, 4, 4, true},
		{"traces of one span", 1, 1, 1, 2, false},
		{"traces of six spans", 6, 6, 6, 8, false},
		{"traces of a hundred spans", 100, 1, 8, 8, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lim := DefaultLimits()
			lim.MaxSpansPerTrace = 1000
			s := NewSampler(p, lim)
			if tc.before > 0 {
				for i := range nShards * 64 {
					for j := range tc.before {
						span := sp(traceID(uint64(i)), byte(j), nil)
						s.Add(tn, &span, 0)
					}
				}
				s.Advance(5*sec, false)
			}
			id := traceID(1 << 40)
			first := sp(id, 1, nil)
			s.Add(tn, &first, 6*sec)
			tr := s.shard(id).traces[key{tn, id}]
			if c := cap(tr.recs); c < tc.min*n || c > tc.max*n+n-1 {
				t.Fatalf("records' capacity %d at the first span, want %d to %d records of %d bytes", c, tc.min, tc.max, n)
			}
			start := &tr.recs[0]
			for j := 1; j < tc.spans; j++ {
				span := sp(id, byte(j+1), nil)
				s.Add(tn, &span, 6*sec)
			}
			if moved := &tr.recs[0] != start; moved != tc.grows {
				t.Errorf("records moved: %v after %d spans, want %v (capacity %d, %d bytes held)", moved, tc.spans, tc.grows, cap(tr.recs), len(tr.recs))
			}
		})
	}
}
