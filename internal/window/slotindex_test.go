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
