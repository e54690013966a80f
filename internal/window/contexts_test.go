package window

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestContextIndexRemoves inserts and removes IDs in random order, with
// hashes that share their high bits (as the hashes of one shard do) and
// with hashes that share everything the index keeps, and checks after
// every step that each ID held is found by its hash and no removed one is.
func TestContextIndexRemoves(t *testing.T) {
	tests := []struct {
		name string
		hash func(r *rand.Rand, id uint32) uint64
	}{
		{"random", func(r *rand.Rand, _ uint32) uint64 { return r.Uint64() }},
		{"one shard of 256", func(r *rand.Rand, _ uint32) uint64 { return 0xab<<56 | r.Uint64()>>8 }},
		{"colliding tags", func(r *rand.Rand, id uint32) uint64 { return uint64(id%7)<<40 | r.Uint64()&idMask }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			var x ctxIndex
			held := map[uint32]uint64{}
			removed := map[uint32]uint64{}
			next := uint32(0)
			for step := range 6000 {
				if len(held) == 0 || r.IntN(3) > 0 {
					h := tt.hash(r, next)
					x.insert(h, next)
					held[next] = h
					next++
				} else {
					for id, h := range held {
						x.remove(h, id)
						delete(held, id)
						removed[id] = h
						break
					}
				}
				if step%97 != 0 && step != 5999 {
					continue
				}
				if x.n != len(held) {
					t.Fatalf("step %d: index holds %d, want %d", step, x.n, len(held))
				}
				for id, h := range held {
					if !indexHas(&x, h, id) {
						t.Fatalf("step %d: ID %d not found by its hash", step, id)
					}
				}
				for id, h := range removed {
					if indexHas(&x, h, id) {
						t.Fatalf("step %d: removed ID %d found", step, id)
					}
				}
			}
		})
	}
}

// indexHas walks hash h's probe sequence for id, as Shard.find does.
func indexHas(x *ctxIndex, h uint64, id uint32) bool {
	if x.n == 0 {
		return false
	}
	mask := uint64(len(x.tab) - 1)
	i, tag := x.start(h)
	for ; x.tab[i] != 0; i = (i + 1) & mask {
		if e := x.tab[i]; e&^idMask == tag && uint32(e&idMask)-1 == id {
			return true
		}
	}
	return false
}

// TestForgottenIDWaitsForTheNextDrain: a context forgotten by a drain
// keeps its key and tenant for the buckets that drain hands out (their
// readers run without the shard's lock, until the next drain), and its ID
// is taken again only after the next drain began.
func TestForgottenIDWaitsForTheNextDrain(t *testing.T) {
	cfg := testConfig()
	ttl := int64(cfg.ContextTTL)
	const later = 100 * sec
	sh := NewShard(cfg)
	tn := NewTenant("t")
	add(t, sh, tn, in{name: "old", typ: TypeCount, v: 1, now: t0})
	// One drain both hands out the bucket of "old" and forgets it.
	out := sh.Drain(t0+ttl+later, false, nil)
	if sh.Contexts() != 0 {
		t.Fatalf("%d contexts, want the one forgotten", sh.Contexts())
	}
	for i := range 50 {
		add(t, sh, tn, in{name: fmt.Sprintf("new%d", i), typ: TypeCount, v: 1, now: t0 + ttl + later})
	}
	var names []string
	for _, b := range out {
		for m := range b.Metrics() {
			names = append(names, m.Name)
		}
	}
	if len(names) != 1 || names[0] != "old" {
		t.Fatalf("the drained bucket yields %q, want [old]", names)
	}
	collect(out)
	collect(sh.Drain(t0+ttl+2*later, false, nil))
	add(t, sh, tn, in{name: "taker", typ: TypeCount, v: 1, now: t0 + ttl + 2*later})
	if c := sh.at(0); c.keyString() != string(AppendKey(nil, "taker", "", nil)) {
		t.Fatalf("ID 0 holds %q after the next drain, want the new context", c.keyString())
	}
}
