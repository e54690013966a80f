package window

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
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
	if c := sh.at(0); sh.keyOf(c) != string(AppendKey(nil, "taker", "", nil)) {
		t.Fatalf("ID 0 holds %q after the next drain, want the new context", sh.keyOf(c))
	}
}

// TestKeysCompactAfterExpiry forgets most contexts of a shard and checks
// that the drain after the one that forgot them copies the live keys into
// new chunks, and that every live context is still found by its key and
// its Handle, flushed under its own name, and listed with it.
func TestKeysCompactAfterExpiry(t *testing.T) {
	cfg := testConfig()
	ttl := int64(cfg.ContextTTL)
	sh := NewShard(cfg)
	tn := NewTenant("t")
	long := strings.Repeat("x", 60)
	const gone, kept = 3000, 300
	for i := range gone {
		add(t, sh, tn, in{name: fmt.Sprintf("gone.%d", i), tags: []string{"pad:" + long}, typ: TypeCount, v: 1})
	}
	now := t0 + ttl // the kept ones arrive later and outlive the sweep
	handles := make([]Handle, kept)
	samples := make([]Sample, kept)
	for i := range kept {
		samples[i] = Sample{Name: fmt.Sprintf("kept.%d", i), Tags: []string{"pad:" + long}, Type: TypeRate, Value: float64(i), SampleRate: 1, Handle: &handles[i]}
		samples[i].Prepare(tn, nil)
		if r := sh.Add(tn, &samples[i], now); r != Accepted {
			t.Fatal(r)
		}
	}
	chunksBefore := len(sh.keys.chunks)
	collect(sh.Drain(now+20*sec, false, nil)) // forgets the gone ones
	if sh.Contexts() != kept || sh.keys.dead == 0 {
		t.Fatalf("%d contexts, %d dead key bytes after the sweep; want %d, some", sh.Contexts(), sh.keys.dead, kept)
	}
	collect(sh.Drain(now+30*sec, false, nil)) // compacts as it begins
	if sh.keys.dead != 0 || len(sh.keys.chunks) >= chunksBefore || len(*sh.store.keys.Load()) != len(sh.keys.chunks) {
		t.Fatalf("after compaction: %d dead bytes, %d chunks (%d before, %d shown)", sh.keys.dead, len(sh.keys.chunks), chunksBefore, len(*sh.store.keys.Load()))
	}
	ls, _ := sh.LastSamples(nil, -1, 1<<20)
	if len(ls) != kept {
		t.Fatalf("%d last samples, want %d", len(ls), kept)
	}
	for _, l := range ls {
		name, _, tags := SplitKey(l.Key, nil)
		var i int
		if _, err := fmt.Sscanf(name, "kept.%d", &i); err != nil || l.Value != float64(i) || len(tags) != 1 {
			t.Fatalf("last sample %q %v of value %v after compaction", name, tags, l.Value)
		}
	}
	later := now + 40*sec
	for i := range kept {
		id := handles[i].id
		samples[i].Value += 10
		if r := sh.Add(tn, &samples[i], later); r != Accepted || handles[i].id != id {
			t.Fatalf("kept.%d by its Handle: %v, ID %d then %d", i, r, id, handles[i].id)
		}
		plain := Sample{Name: fmt.Sprintf("kept.%d", i), Tags: []string{"pad:" + long}, Type: TypeRate, Value: samples[i].Value + 10, SampleRate: 1}
		plain.Prepare(tn, nil)
		if r := sh.Add(tn, &plain, later+sec); r != Accepted {
			t.Fatal(r)
		}
	}
	if sh.Contexts() != kept {
		t.Fatalf("%d contexts after adding by key, want %d: a key was not found", sh.Contexts(), kept)
	}
	n := 0
	for _, b := range sh.Drain(later+time.Minute.Nanoseconds(), false, nil) {
		for m := range b.Metrics() {
			var i int
			if _, err := fmt.Sscanf(m.Name, "kept.%d", &i); err != nil || len(m.Tags) != 1 || m.Tags[0] != "pad:"+long {
				t.Fatalf("flushed %q %v", m.Name, m.Tags)
			}
			n++
		}
		b.Release()
	}
	if n != kept {
		t.Fatalf("flushed %d rates, want %d", n, kept)
	}
}
