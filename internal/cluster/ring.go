// Package cluster makes several aggd replicas one logical aggd: every
// context and every trace has one owner among the members, chosen by
// rendezvous hashing; a replica forwards what it does not own to its owner
// over the peer service and acknowledges it only once the owner has.
//
// Member lists come from the platform (a static list, a file, or a
// headless Service's DNS name re-resolved) and take effect at an aligned
// bucket boundary, so that every bucket has one owner per context.
package cluster

import (
	"slices"

	"github.com/cespare/xxhash/v2"
)

// Ring is one member list. Owner picks, for a hash, the member with the
// highest rendezvous score: adding or removing a member moves only the
// keys that member gains or held. A Ring is immutable and safe for
// concurrent use.
type Ring struct {
	members []string
	hashes  []uint64
}

// NewRing returns the ring of members, which are peer addresses. Order and
// repeats do not matter.
func NewRing(members []string) *Ring {
	m := slices.Clone(members)
	slices.Sort(m)
	m = slices.Compact(m)
	if len(m) > 0 && m[0] == "" {
		m = m[1:]
	}
	r := &Ring{members: m, hashes: make([]uint64, len(m))}
	for i, a := range m {
		r.hashes[i] = xxhash.Sum64String(a)
	}
	return r
}

// Members returns the sorted member list. The caller must not modify it.
func (r *Ring) Members() []string { return r.members }

// Equal reports whether r and o have the same members.
func (r *Ring) Equal(o *Ring) bool { return slices.Equal(r.members, o.members) }

// Owner returns the member that owns hash h, or "" for an empty ring.
func (r *Ring) Owner(h uint64) string {
	best, owner := uint64(0), ""
	for i, mh := range r.hashes {
		if s := mix(h ^ mh); owner == "" || s > best {
			best, owner = s, r.members[i]
		}
	}
	return owner
}

// mix is the finaliser of splitmix64: every input bit reaches every output
// bit, so scores of one key under different members are independent.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// ContextHash returns the hash that places a context of tenant, key being
// its canonical key (window.AppendKey). Unlike the process-local hash that
// picks shards, it is the same in every replica.
func ContextHash(tenant string, key []byte) uint64 {
	var d xxhash.Digest
	d.Reset()
	d.WriteString(tenant)
	d.Write([]byte{0})
	d.Write(key)
	return d.Sum64()
}

// TraceHash returns the hash that places a trace of tenant.
func TraceHash(tenant string, traceID [16]byte) uint64 {
	var d xxhash.Digest
	d.Reset()
	d.WriteString(tenant)
	d.Write([]byte{1})
	d.Write(traceID[:])
	return d.Sum64()
}
