package cluster

import (
	"slices"
	"sync"
	"sync/atomic"
)

// Version is a member list and the bucket time from which it owns
// contexts.
type Version struct {
	// N numbers versions from 1, in the order they were scheduled.
	N uint64
	// Since is the start (unix nanoseconds) of the first bucket this
	// version owns; buckets before it keep their earlier owners.
	Since int64
	Ring  *Ring
	// was, when set, is this replica's former peer address, a member of
	// Ring restored from a schedule saved before a restart that changed
	// the address (a new pod IP); owner names this replica in its place,
	// which holds what the former address took (its write-ahead log).
	was, self string
}

// owner returns the member of v owning hash h.
func (v *Version) owner(h uint64) string {
	o := v.Ring.Owner(h)
	if v.was != "" && o == v.was {
		return v.self
	}
	return o
}

// Membership is the schedule of member lists: each takes effect at an
// aligned bucket boundary in the future, so that every replica routing a
// bucket by the same schedule picks the same owner, and a bucket opened
// under one list is never split with the next. It is safe for concurrent
// use; Owner does not lock.
type Membership struct {
	interval int64 // buckets align on multiples of it
	keep     int64 // how long a replaced version still owns its old buckets

	mu       sync.Mutex // serialises changes
	versions atomic.Pointer[[]Version]
}

// NewMembership returns a schedule that starts with members from the
// beginning of time. Changes align on interval (the flush interval), and a
// version replaced by a later one is forgotten keep after the later one
// took effect (the maximum lateness of a sample, plus the grace).
func NewMembership(members []string, interval, keep int64) *Membership {
	m := &Membership{interval: interval, keep: keep}
	vs := []Version{{N: 1, Since: minTime, Ring: NewRing(members)}}
	m.versions.Store(&vs)
	return m
}

const minTime = -1 << 63

// Versions returns the current schedule, oldest first.
func (m *Membership) Versions() []Version { return *m.versions.Load() }

// Latest returns the last version scheduled.
func (m *Membership) Latest() Version {
	vs := m.Versions()
	return vs[len(vs)-1]
}

// Schedule makes members own every bucket from the first aligned boundary
// at or after at, unless they own it already; a version that would have
// taken effect at or after that boundary is dropped. Scheduling the same
// list for the same time again changes nothing, so a source may be read
// again and again. Schedule forgets the versions whose buckets are all
// older than keep at now. It returns the version in force from the
// boundary on.
func (m *Membership) Schedule(members []string, at, now int64) Version {
	r := NewRing(members)
	since := alignUp(at, m.interval)
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.Versions()
	if v := inForce(old, since); v.Ring.Equal(r) {
		return v
	}
	vs := make([]Version, 0, len(old)+1)
	for i, v := range old {
		if v.Since >= since {
			break
		}
		// v owns nothing that may still take samples once its successor
		// has been in force for keep.
		if i+1 < len(old) && old[i+1].Since+m.keep < now {
			continue
		}
		vs = append(vs, v)
	}
	v := Version{N: old[len(old)-1].N + 1, Since: since, Ring: r}
	vs = append(vs, v)
	m.versions.Store(&vs)
	return v
}

// inForce returns the version of vs owning the bucket starting at t.
func inForce(vs []Version, t int64) Version {
	i := len(vs) - 1
	for i > 0 && vs[i].Since > t {
		i--
	}
	return vs[i]
}

// Owner returns the member owning hash h in the bucket starting at bucket,
// and the number of the version that decided it.
func (m *Membership) Owner(h uint64, bucket int64) (string, uint64) {
	v := inForce(*m.versions.Load(), bucket)
	return v.owner(h), v.N
}

// Heirs appends to dst the members that own hash h under the versions
// scheduled after the one in force at bucket, other than owner (its owner
// there), each once. They are the replicas a RATE or MONOTONIC_COUNT
// context moves to: each takes its previous sample from the samples of
// earlier buckets. Without a later version, it appends nothing.
func (m *Membership) Heirs(dst []string, h uint64, bucket int64, owner string) []string {
	vs := *m.versions.Load()
	i := len(vs) - 1
	for i > 0 && vs[i].Since > bucket {
		i--
	}
	for _, v := range vs[i+1:] {
		if o := v.owner(h); o != owner && o != "" && !slices.Contains(dst, o) {
			dst = append(dst, o)
		}
	}
	return dst
}

// Held reports whether self owns hash h in some bucket from the one
// starting at from up to until (excluded): under the version in force at
// from, or under one taking effect after it and before until. Those
// replicas may hold the context's latest sample: the owner of that
// sample's bucket, and the later owners that took it as a seed before
// taking a sample of their own.
func (m *Membership) Held(self string, h uint64, from, until int64) bool {
	vs := *m.versions.Load()
	for i, v := range vs {
		if v.Since >= until {
			break
		}
		if i+1 < len(vs) && vs[i+1].Since <= from {
			continue // replaced before from
		}
		if v.owner(h) == self {
			return true
		}
	}
	return false
}

// Departed reports whether member has left: neither the version in force
// at now nor any scheduled after it names it. A departed member may still
// own the buckets of an earlier version (late samples go to it) while it
// runs; once it has stopped, nothing answers at its address.
func (m *Membership) Departed(member string, now int64) bool {
	vs := *m.versions.Load()
	i := len(vs) - 1
	for i > 0 && vs[i].Since > now {
		i--
	}
	for _, v := range vs[i:] {
		if slices.Contains(v.Ring.members, member) || v.was != "" && member == v.self {
			return false
		}
	}
	return true
}

// Single reports whether every bucket is owned by self alone: the schedule
// has one version, of self only (or of nobody).
func (m *Membership) Single(self string) bool {
	vs := *m.versions.Load()
	if len(vs) != 1 {
		return false
	}
	mem := vs[0].Ring.members
	return len(mem) == 0 || (len(mem) == 1 && mem[0] == self)
}

// alignUp rounds t up to a multiple of d.
func alignUp(t, d int64) int64 {
	if d <= 0 {
		return t
	}
	r := t % d
	switch {
	case r == 0:
		return t
	case r < 0:
		return t - r
	}
	return t - r + d
}
