package window

import (
	"fmt"
	"runtime"
	"testing"
)

// TestBucketFindsEverySlot fills buckets of several sizes across the
// index's growth and reuse, and checks that every context finds its own
// slot and that a context without one finds none.
func TestBucketFindsEverySlot(t *testing.T) {
	sh := NewShard(testConfig())
	const absent = 1 << 23
	for _, n := range []int{0, 1, 12, 13, 100, 5000} {
		b := sh.getBucket(0, 10*sec, false)
		for round := range 2 { // the second round reuses the table
			cs := make([]uint32, n)
			for i := range cs {
				cs[i] = uint32(i*7919+round) % absent // spread, not in order
				if j := b.newSlot(cs[i], TypeCount); int(j) != i {
					t.Fatalf("n=%d: slot %d for context %d", n, j, i)
				}
			}
			for i, c := range cs {
				if j, ok := b.find(c); !ok || int(j) != i {
					t.Fatalf("n=%d round %d: context %d found at %d, %v", n, round, i, j, ok)
				}
			}
			if j, ok := b.find(absent); ok {
				t.Fatalf("n=%d round %d: a context without a slot found slot %d", n, round, j)
			}
			b.index.reset()
			b.slots = b.slots[:0]
			for _, c := range cs {
				if _, ok := b.find(c); ok {
					t.Fatalf("n=%d round %d: found after reset", n, round)
				}
			}
		}
		b.release()
	}
}

// TestReservedBucketDoesNotGrow reserves room for n contexts and checks
// that filling the bucket then keeps its slots and index tables, and that
// every context still finds its slot.
func TestReservedBucketDoesNotGrow(t *testing.T) {
	sh := NewShard(testConfig())
	for _, n := range []int{1, 12, 13, 1000} {
		b := sh.getBucket(0, 10*sec, false)
		first := uint32(0)
		b.newSlot(first, TypeCount) // held before the reservation
		b.reserve(n)
		slots, tab := &b.slots[:1][0], &b.index.tab[0]
		cs := []uint32{first}
		for len(cs) < n {
			c := uint32(len(cs))
			b.newSlot(c, TypeCount)
			cs = append(cs, c)
		}
		if &b.slots[0] != slots || &b.index.tab[0] != tab {
			t.Errorf("n=%d: the bucket grew after reserving room", n)
		}
		for i, c := range cs {
			if j, ok := b.find(c); !ok || int(j) != i {
				t.Fatalf("n=%d: context %d found at %d, %v", n, i, j, ok)
			}
		}
		b.release()
	}
}

// TestNewBucketIsSizedLikeTheLastDrained opens the bucket of the next
// interval with room for as many contexts as the last one drained held.
func TestNewBucketIsSizedLikeTheLastDrained(t *testing.T) {
	sh := NewShard(testConfig())
	tn := NewTenant("t")
	for i := range 300 {
		add(t, sh, tn, in{name: "g", tags: []string{"i:" + string(rune('a'+i%26)) + string(rune('a'+i/26))}, typ: TypeGauge, v: 1})
	}
	collect(sh.Drain(t0+20*sec, false, nil))
	add(t, sh, tn, in{name: "g", typ: TypeGauge, v: 1, now: t0 + 21*sec})
	b := sh.buckets[bucketKey{t0 + 20*sec, 10 * sec}]
	if b == nil {
		t.Fatal("no bucket open for the next interval")
	}
	if cap(b.slots) < 300 || len(b.index.tab)*3 < 300*4 {
		t.Fatalf("the next bucket holds room for %d slots, want 300", cap(b.slots))
	}
}

// TestOnlyTheOpenBucketIsMadeLarge: a new interval bucket is made with
// room for the contexts of the last one drained, but only the bucket open
// at the sample's arrival: a timestamped sample ahead of it (within
// MaxFuture) opens a bucket as small as what it holds, so that a few such
// samples do not make as many buckets the size of the whole shard.
func TestOnlyTheOpenBucketIsMadeLarge(t *testing.T) {
	const n = 5000
	sh := NewShard(testConfig())
	tn := NewTenant("t")
	gauge := func(i int, ts int64) *Sample {
		s := &Sample{Name: fmt.Sprintf("m%d", i), Type: TypeGauge, Value: 1, SampleRate: 1, Timestamp: ts}
		s.Prepare(tn, nil)
		return s
	}
	for i := range n {
		sh.Add(tn, gauge(i, 0), t0)
	}
	now := t0 + 20*sec
	for _, b := range sh.Drain(now, false, nil) {
		b.Release()
	}
	// Samples made before measuring, so that only the buckets count.
	ahead := make([]*Sample, 5)
	for k := range ahead {
		ahead[k] = gauge(0, now+int64(k+1)*10*sec)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for k, s := range ahead {
		if r := sh.Add(tn, s, now); r != Accepted {
			t.Fatalf("sample %d intervals ahead: %v", k+1, r)
		}
	}
	runtime.ReadMemStats(&after)
	// Made for n contexts, each bucket would take n slots of 32 bytes
	// and an index of 4 bytes an entry: about a megabyte for the five.
	if got := after.TotalAlloc - before.TotalAlloc; got > 100<<10 {
		t.Fatalf("5 samples ahead of the open bucket allocated %d bytes, want buckets of their size", got)
	}
	sh.Add(tn, gauge(1, 0), now)
	if b := sh.buckets[bucketKey{Start(now, 10*sec), 10 * sec}]; b == nil || cap(b.slots) < n {
		t.Fatalf("the bucket open now was not made for the %d contexts of the last", n)
	}
}
