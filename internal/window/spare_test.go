package window

import (
	"cmp"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
)

// intervalSamples returns the samples of one interval of a mix whose
// distribution contexts take 40 samples each, half of them weighted in
// interval 0 only, so that a bucket reused from interval 0 carries weights
// and sets members the next interval must not see.
func intervalSamples(interval int) []in {
	now := t0 + int64(interval)*10*sec
	var ss []in
	for c := range 50 {
		name := fmt.Sprintf("d%d", c)
		for j := range 40 {
			s := in{name: name, typ: TypeDistribution, v: float64(j*(interval+1) + c), now: now}
			if interval == 0 && j%2 == 0 {
				s.rate = 0.25
			}
			ss = append(ss, s)
		}
		ss = append(ss,
			in{name: fmt.Sprintf("s%d", c), typ: TypeSet, set: fmt.Sprintf("m%d-%d", interval, c%3), now: now},
			in{name: fmt.Sprintf("g%d", c), typ: TypeGauge, v: float64(interval*100 + c), now: now},
			in{name: fmt.Sprintf("c%d", c), typ: TypeCount, v: float64(interval + 1), now: now},
		)
	}
	return ss
}

type distOut struct {
	out
	exact, weights []float64
}

func collectDists(buckets []*Bucket) []distOut {
	var got []distOut
	for _, b := range buckets {
		for m := range b.Metrics() {
			o := distOut{out: out{key: m.Name, ts: m.Timestamp / sec, value: m.Value, count: m.Count, sum: m.Sum, min: m.Min, max: m.Max}}
			o.exact, o.weights = slices.Clone(m.Exact), slices.Clone(m.ExactWeights)
			got = append(got, o)
		}
		b.Release()
	}
	slices.SortFunc(got, func(a, b distOut) int { return cmp.Or(cmp.Compare(a.key, b.key), cmp.Compare(a.ts, b.ts)) })
	return got
}

// TestSpareBucketKeepsItsMemory checks that the bucket an interval drains
// is its shard's spare once released, so that a later interval's bucket
// takes its slots and sample slices even after garbage collections have
// emptied sync.Pool, and that what the reused bucket yields is what a new
// one yields.
func TestSpareBucketKeepsItsMemory(t *testing.T) {
	// A pooled bucket another test grew past this one's use would go back
	// to the pool (as a burst's does), not become the spare.
	bucketPool = sync.Pool{New: bucketPool.New}
	sh := NewShard(testConfig())
	tn := NewTenant("t")
	for _, s := range intervalSamples(0) {
		add(t, sh, tn, s)
	}
	for _, b := range sh.Drain(t0+20*sec, false, nil) {
		b.Release()
	}
	if sh.spare.Load() == nil {
		t.Fatal("the drained bucket did not become the shard's spare")
	}
	runtime.GC()
	runtime.GC() // sync.Pool is empty after two

	ss := intervalSamples(2)
	smps := make([]Sample, len(ss))
	for i, s := range ss {
		smps[i] = Sample{Name: s.name, Type: s.typ, Value: s.v, SampleRate: 1, SetMember: s.set}
		smps[i].Prepare(tn, nil)
	}
	// The contexts exist: what the adds allocate is the bucket's.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range smps {
		if r := sh.Add(tn, &smps[i], ss[i].now); r != Accepted {
			t.Fatalf("sample %d refused: %v", i, r)
		}
	}
	runtime.ReadMemStats(&after)
	// The set members are strings the map keeps (50); a bucket made anew
	// grows 50 distributions' slices from nothing (over 600 allocations).
	if n := after.Mallocs - before.Mallocs; n > 100 {
		t.Errorf("an interval's bucket allocated %d times with a spare to reuse, want at most 100", n)
	}
	got := collectDists(sh.Drain(t0+40*sec, false, nil))

	fresh := NewShard(testConfig())
	for _, s := range ss {
		add(t, fresh, tn, s)
	}
	want := collectDists(fresh.Drain(t0+40*sec, false, nil))
	if len(got) != len(want) || len(got) != 200 {
		t.Fatalf("%d aggregates from the reused bucket, %d from a new one, want 200", len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.out != w.out || !slices.Equal(g.exact, w.exact) || !slices.Equal(g.weights, w.weights) {
			t.Errorf("reused bucket gives %+v, a new one %+v", g, w)
		}
	}
}

// TestSpareBucketLetsABurstGo checks that a bucket whose slots grew far
// past its last use (the interval after a burst, made as large as the
// burst's) goes to sync.Pool, not to the shard, so that the burst's memory
// is held for at most two intervals.
func TestSpareBucketLetsABurstGo(t *testing.T) {
	bucketPool = sync.Pool{New: bucketPool.New} // as above
	sh := NewShard(testConfig())
	tn := NewTenant("t")
	const burst = 3 * spareSlack
	for i := range burst {
		add(t, sh, tn, in{name: fmt.Sprintf("c%d", i), typ: TypeCount, v: 1})
	}
	for _, b := range sh.Drain(t0+20*sec, false, nil) {
		b.Release()
	}
	if b := sh.spare.Load(); b == nil || cap(b.slots) < burst {
		t.Fatal("the burst's bucket is not the spare")
	}
	add(t, sh, tn, in{name: "c0", typ: TypeCount, v: 1, now: t0 + 20*sec})
	if sh.spare.Load() != nil {
		t.Fatal("the next bucket did not take the spare")
	}
	for _, b := range sh.Drain(t0+40*sec, false, nil) {
		b.Release()
	}
	if b := sh.spare.Load(); b != nil {
		t.Errorf("a bucket of %d slots used by 1 context is the spare", cap(b.slots))
	}
}
