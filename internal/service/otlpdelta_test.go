package service

import (
	"math"
	"testing"
	"time"
	"unsafe"
)

// TestDeltaTrackerForgetsStaleStreams: once the streams fill up, those
// without a point for StaleCumulative make room; fresh ones do not.
func TestDeltaTrackerForgetsStaleStreams(t *testing.T) {
	tr := newDeltaTracker(0, deltaShards) // room for one stream per shard
	a := []byte("a")
	var b []byte // a key of a's shard
	for i := 0; b == nil; i++ {
		if k := []byte{'b', byte(i), byte(i >> 8)}; idOf(k)[0]%deltaShards == idOf(a)[0]%deltaShards {
			b = k
		}
	}
	hour, minute := uint64(time.Hour), uint64(time.Minute)
	steps := []struct {
		key  []byte
		ts   uint64
		full bool
	}{
		{a, 10 * hour, false},          // takes the shard
		{b, 10*hour + minute, true},    // a is fresh: no room
		{b, 12 * hour, false},          // a is stale: forgotten
		{a, 12*hour + minute, true},    // b is fresh: no room
		{b, 12*hour + 2*minute, false}, // a tracked stream always goes on
	}
	for i, s := range steps {
		if res := tr.sum(idOf(s.key), 1, s.ts, 1).res; (res == deltaFull) != s.full {
			t.Errorf("step %d: full %v, want %v", i, res == deltaFull, s.full)
		}
	}
}

// TestStreamTable: every stream put is found again, through growth,
// probing past ids that share their slot and wrapping around the end,
// and filter drops exactly the streams it refuses.
func TestStreamTable(t *testing.T) {
	tests := []struct {
		name string
		id   func(i int) streamID
	}{
		{"spread ids", func(i int) streamID { return idOf([]byte{byte(i), byte(i >> 8)}) }},
		{"ids sharing a slot", func(i int) streamID { return streamID{uint64(i), 1 << 40} }},
		{"ids at the table's end", func(i int) streamID { return streamID{uint64(i), 1<<20 - 1} }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tb streamTable[sumStream]
			const n = 1000
			for i := range n {
				tb.put(tc.id(i), &sumStream{value: float64(i)})
			}
			if tb.n != n || tb.n*4 > len(tb.slots)*3 {
				t.Fatalf("%d streams in %d slots, want %d at most 3/4 full", tb.n, len(tb.slots), n)
			}
			tb.filter(func(st *sumStream) bool { return int(st.value)%3 != 0 })
			kept := 0
			for i := range n {
				st := tb.get(tc.id(i))
				switch {
				case i%3 == 0 && st != nil:
					t.Errorf("stream %d is kept, want it dropped", i)
				case i%3 != 0 && (st == nil || st.value != float64(i)):
					t.Errorf("stream %d: got %v, want its own", i, st)
				case st != nil:
					kept++
				}
			}
			if tb.n != kept {
				t.Errorf("n = %d, %d streams found", tb.n, kept)
			}
		})
	}
}

// TestDeltaTrackerAliases: an encoding's alias finds its sum stream only
// once the stream's samples have their context key, goes on with the
// stream's deltas, and stops finding it once the stream is forgotten; a
// full alias shard makes room by dropping aliases of forgotten streams.
func TestDeltaTrackerAliases(t *testing.T) {
	tr := newDeltaTracker(0, deltaShards) // one stream and one alias per shard
	hour := uint64(time.Hour)
	a, raw := idOf([]byte("a")), idOf([]byte("a as sent"))
	var b streamID // a stream of a's shard
	for i := 0; b == (streamID{}); i++ {
		if id := idOf([]byte{'b', byte(i), byte(i >> 8)}); id[0]%deltaShards == a[0]%deltaShards {
			b = id
		}
	}
	var raw2 streamID // another encoding of raw's alias shard
	for i := 0; raw2 == (streamID{}); i++ {
		if id := idOf([]byte{'r', byte(i), byte(i >> 8)}); id[0]%deltaShards == raw[0]%deltaShards {
			raw2 = id
		}
	}
	find := func(id streamID) *sumStream {
		run := []rawAlias{{id: id}}
		tr.lookup(run, nil)
		return run[0].st
	}
	known := func(step string, id streamID, ts uint64, v, wantDelta float64, want bool) {
		t.Helper()
		p, ok := tr.sumRaw(find(id), 1, ts, v, false)
		if ok != want || (ok && (p.res != deltaOK || p.delta != wantDelta)) {
			t.Errorf("%s: known %v delta %v (%v), want known %v delta %v", step, ok, p.delta, p.res, want, wantDelta)
		}
	}
	sp := tr.sum(a, 1, 10*hour, 100)
	tr.alias(raw, sp.st)
	known("before the key", raw, 10*hour, 100, 0, false)
	tr.keepKey(a, sp.st, []byte("key"), 7)
	known("with the key", raw, 10*hour, 110, 10, true)
	if p := tr.sum(a, 1, 10*hour, 115); p.delta != 5 {
		t.Errorf("by its identity after the alias: delta %v, want 5", p.delta)
	}
	if _, ok := tr.sumRaw(find(raw), 1, 10*hour, math.NaN(), true); !ok {
		t.Error("skip: the stream is not known")
	}
	known("unknown encoding", raw2, 10*hour, 1, 0, false)
	tr.sum(b, 1, 12*hour, 1) // a is stale: forgotten
	known("forgotten stream", raw, 12*hour, 130, 0, false)
	sp = tr.sum(b, 1, 12*hour, 2)
	tr.keepKey(b, sp.st, []byte("key b"), 8)
	tr.alias(raw2, sp.st) // the shard is full of a forgotten stream's alias
	known("alias in a full shard", raw2, 12*hour, 5, 3, true)
	known("dropped alias", raw, 12*hour, 130, 0, false)
}

// TestDeltaTrackerLookup: a run of aliases looked up at once, over every
// shard, finds each known alias's own stream and nothing for the others,
// in the run's order.
func TestDeltaTrackerLookup(t *testing.T) {
	tr := newDeltaTracker(0, MaxCumulativeStreams)
	const n = 1000
	id := func(kind byte, i int) streamID { return idOf([]byte{kind, byte(i), byte(i >> 8)}) }
	streams := map[int]*sumStream{}
	for i := range n {
		if i%3 != 0 {
			streams[i] = tr.sum(id('s', i), 1, 1, 1).st
			tr.alias(id('r', i), streams[i])
		}
	}
	run := make([]rawAlias, 0, n)
	for i := n - 1; i >= 0; i-- {
		run = append(run, rawAlias{id: id('r', i)})
	}
	groups := tr.lookup(run, nil)
	for k, a := range run {
		if i := n - 1 - k; a.st != streams[i] {
			t.Fatalf("alias %d: stream %p, want %p", i, a.st, streams[i])
		}
	}
	tr.lookup(run[:10], groups)
	if run[0].st != streams[n-1] {
		t.Error("a shorter run in reused scratch space finds another stream")
	}
}

// TestSumStreamSize: the lengths of keyParts parts fill a sum stream up
// to a size class.
func TestSumStreamSize(t *testing.T) {
	if n := unsafe.Sizeof(sumStream{}); n != 96 {
		t.Errorf("a sum stream takes %d bytes, want 96 (keyParts fills a size class)", n)
	}
}

// TestSpanIDOfSwappedParts: two points whose attributes' spans and head
// bytes are each other's get different alias ids, as do points that
// differ in one part only.
func TestSpanIDOfSwappedParts(t *testing.T) {
	a, b := []byte("head bytes of one stream"), []byte("\x3a\x08attr=one")
	ids := map[streamID]string{}
	for name, id := range map[string]streamID{
		"a head, b span":  spanID(spanHead(a), b),
		"b head, a span":  spanID(spanHead(b), a),
		"a head, a span":  spanID(spanHead(a), a),
		"b head, b span":  spanID(spanHead(b), b),
		"a head, no span": spanID(spanHead(a), nil),
	} {
		if other, ok := ids[id]; ok {
			t.Errorf("%s and %s have one id", name, other)
		}
		ids[id] = name
	}
}
