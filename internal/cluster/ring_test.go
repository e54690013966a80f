package cluster

import (
	"fmt"
	"testing"
)

func TestRingOwnerIsStableAndBalanced(t *testing.T) {
	tests := []struct {
		name    string
		members []string
	}{
		{"three", []string{"10.0.0.1:8129", "10.0.0.2:8129", "10.0.0.3:8129"}},
		{"ten", []string{"a:1", "b:1", "c:1", "d:1", "e:1", "f:1", "g:1", "h:1", "i:1", "j:1"}},
	}
	const keys = 30000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRing(tt.members)
			shuffled := NewRing(append([]string{tt.members[len(tt.members)-1]}, tt.members...))
			n := map[string]int{}
			for i := range keys {
				h := ContextHash("tenant", fmt.Appendf(nil, "ctx-%d", i))
				o := r.Owner(h)
				if got := shuffled.Owner(h); got != o {
					t.Fatalf("key %d: owner %s with members reordered and repeated, want %s", i, got, o)
				}
				n[o]++
			}
			want := keys / len(tt.members)
			for _, m := range tt.members {
				if n[m] < want*8/10 || n[m] > want*12/10 {
					t.Errorf("member %s owns %d keys, want about %d", m, n[m], want)
				}
			}
		})
	}
}

// Adding a member moves only the keys it takes; removing one moves only
// the keys it held.
func TestRingMovesOnlyWhatChanges(t *testing.T) {
	before := NewRing([]string{"a:1", "b:1", "c:1"})
	added := NewRing([]string{"a:1", "b:1", "c:1", "d:1"})
	removed := NewRing([]string{"a:1", "c:1"})
	moved := 0
	const keys = 20000
	for i := range keys {
		h := TraceHash("t", [16]byte{byte(i), byte(i >> 8), byte(i >> 16), 7})
		o := before.Owner(h)
		if a := added.Owner(h); a != o {
			moved++
			if a != "d:1" {
				t.Fatalf("key %d moved from %s to %s, not to the new member", i, o, a)
			}
		}
		if r := removed.Owner(h); r != o && o != "b:1" {
			t.Fatalf("key %d moved from %s to %s though its owner stayed", i, o, r)
		}
	}
	if moved < keys/4*8/10 || moved > keys/4*12/10 {
		t.Errorf("%d of %d keys moved to the fourth member, want about a quarter", moved, keys)
	}
}

func TestContextHashSeparatesTenants(t *testing.T) {
	if ContextHash("a", []byte("bc")) == ContextHash("ab", []byte("c")) {
		t.Error("tenant and key run together")
	}
	if ContextHash("a", []byte("x")) == ContextHash("a", []byte("y")) {
		t.Error("two keys share a hash")
	}
}

func TestRingEmpty(t *testing.T) {
	if got := NewRing(nil).Owner(1); got != "" {
		t.Errorf("empty ring owner %q, want none", got)
	}
}
