package window

import "testing"

// TestBucketFindsEverySlot fills buckets of several sizes across the
// index's growth and reuse, and checks that every context finds its own
// slot and that a context without one finds none.
func TestBucketFindsEverySlot(t *testing.T) {
	tn := NewTenant("t")
	absent := &context{tenant: tn}
	for _, n := range []int{0, 1, 12, 13, 100, 5000} {
		b := getBucket(0, 10*sec, false)
		for round := range 2 { // the second round reuses the table
			cs := make([]*context, n)
			for i := range cs {
				cs[i] = &context{tenant: tn}
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
	tn := NewTenant("t")
	for _, n := range []int{1, 12, 13, 1000} {
		b := getBucket(0, 10*sec, false)
		first := &context{tenant: tn}
		b.newSlot(first, TypeCount) // held before the reservation
		b.reserve(n)
		slots, tab := &b.slots[:1][0], &b.index.tab[0]
		cs := []*context{first}
		for len(cs) < n {
			c := &context{tenant: tn}
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
