package window

import (
	"math"
	"sync/atomic"
	"unsafe"
)

// A shard keeps its contexts by number (a context ID, below
// maxShardContexts) in chunks that never move, rather than one heap object
// each: a bucket's slot and the shard's index name a context by its 4-byte
// ID, and a context costs no allocation of its own but its key.

const (
	chunkBits = 10
	chunkLen  = 1 << chunkBits
	// maxShardContexts bounds the contexts of one shard, so that a
	// bucket's slot numbers and extension indexes fit in 24 bits (see
	// slot and slotIndex). Past it, new contexts fold into their tenant's
	// overflow series.
	maxShardContexts = 1<<24 - 1
)

// context is one aggregation context: (tenant, name, host, sorted tags),
// 40 bytes. Its key and tenant are set when the context is made and kept
// until its ID is taken again, which is not before the drain after the
// one that forgot it: a drained bucket may read them without the shard's
// lock until the next drain. The other fields belong to the shard.
type context struct {
	// tenant is nil before the ID is first taken.
	tenant *Tenant
	// key is where the context's key (see AppendKey) is in the shard's
	// key arena (see keyArena).
	key uint32
	// expires is when the context may be forgotten, in Unix seconds
	// rounded up (see unixSeconds): the later of its last arrival plus the
	// TTL and the tick until which a kept bucket holds it (it is not
	// forgotten before, so that late samples find it).
	expires uint32
	// A COUNT context is flushed with 0 in the interval buckets that start
	// in [zeroFrom, zeroUntil), in Unix seconds (intervals are whole
	// seconds): from its first sample's bucket to its last sample plus the
	// counter expiry, rounded up. A non-zero zeroUntil says it is in
	// Shard.counters.
	zeroFrom, zeroUntil uint32
	// last is one plus the index in Shard.lasts of the last sample seen,
	// kept across buckets for RATE and MONOTONIC_COUNT; 0 before the
	// first. Other types never need it, so it lives outside the context.
	last uint32
	// slot is the index of the context's slot in the bucket it was last
	// written in: a hint that spares the bucket's index when the next
	// sample goes to the same bucket.
	slot uint32
	// samples counts the samples of the context, saturating.
	samples uint32
	// gen is even while the context is live and odd once it is forgotten:
	// each change moves it on, so that a Handle made for an earlier
	// context of the same ID does not match.
	gen uint32
}

// live reports whether the context is in use (made and not forgotten).
func (c *context) live() bool { return c.gen&1 == 0 && c.tenant != nil }

// seeded reports whether the context was made by a seed and has taken no
// sample since (Shard.Seed).
func (c *context) seeded() bool { return c.samples == 0 }

// counting reports whether the context is in Shard.counters.
func (c *context) counting() bool { return c.zeroUntil != 0 }

// touch records an arrival at now.
func (c *context) touch(now, ttl int64) {
	if e := unixSeconds(now+ttl, true); e > c.expires {
		c.expires = e
	}
}

// expired reports whether the context may be forgotten at now.
func (c *context) expired(now int64) bool { return now > int64(c.expires)*1e9 }

// keyArena holds a shard's context keys, each after its length as a
// uvarint, in chunks of keyChunkLen bytes (a longer key has a chunk of its
// own): a context names its key by a 4-byte offset, the chunk's number
// above keyChunkBits bits of place in it, and a key costs its length plus
// one or two, not an allocation of its own rounded up to a size class.
// Chunks are written once, at places no reader names yet. Forgotten keys
// are dead bytes; once they outweigh the live ones, the shard copies the
// live keys into new chunks (Shard.compactKeys), and the old chunks go
// when nothing names them.
type keyArena struct {
	chunks     [][]byte
	used       int // bytes taken in the last chunk
	live, dead int // bytes of live and of forgotten keys
}

const (
	keyChunkBits = 16
	keyChunkLen  = 1 << keyChunkBits
	maxKeyChunks = 1 << (32 - keyChunkBits)
)

// add stores key and returns its offset, or false when the arena is full
// (4 GiB).
func (a *keyArena) add(key []byte) (uint32, bool) {
	var pre [10]byte
	w := putUvarint(pre[:], uint64(len(key)))
	n := w + len(key)
	if len(a.chunks) == 0 || a.used+n > len(a.chunks[len(a.chunks)-1]) {
		if len(a.chunks) == maxKeyChunks {
			return 0, false
		}
		a.chunks = append(a.chunks, make([]byte, max(keyChunkLen, n)))
		a.used = 0
	}
	last := len(a.chunks) - 1
	off := uint32(last)<<keyChunkBits | uint32(a.used)
	copy(a.chunks[last][a.used:], pre[:w])
	copy(a.chunks[last][a.used+w:], key)
	a.used += n
	a.live += n
	return off, true
}

// forget counts a key of n bytes (see keySize) forgotten.
func (a *keyArena) forget(n int) { a.live, a.dead = a.live-n, a.dead+n }

// keySize returns the bytes key takes in the arena.
func keySize(key string) int {
	var pre [10]byte
	return putUvarint(pre[:], uint64(len(key))) + len(key)
}

func putUvarint(b []byte, v uint64) int {
	i := 0
	for v >= 0x80 {
		b[i] = byte(v) | 0x80
		v >>= 7
		i++
	}
	b[i] = byte(v)
	return i + 1
}

// keyIn returns the key at offset off of chunks, a view of its bytes.
func keyIn(chunks [][]byte, off uint32) string {
	b := chunks[off>>keyChunkBits][off&(keyChunkLen-1):]
	var n uint64
	var shift uint
	w := 0
	for {
		c := b[w]
		w++
		n |= uint64(c&0x7f) << shift
		if c < 0x80 {
			break
		}
		shift += 7
	}
	if n == 0 {
		return ""
	}
	return unsafe.String(&b[w], int(n))
}

// ctxChunk holds chunkLen contexts; it never moves.
type ctxChunk [chunkLen]context

// ctxStore publishes a shard's context and key chunks to the readers of
// its drained buckets, which do not hold the shard's lock: the shard
// appends a chunk by storing a new directory, and the chunks the old one
// named stay.
type ctxStore struct {
	dir  atomic.Pointer[[]*ctxChunk]
	keys atomic.Pointer[[][]byte]
}

// ctxIndex finds a context's ID by its hash: open addressing with linear
// probing over 8-byte entries, each the hash's high bits above the ID
// plus one (0 marks a free entry), placed by those bits mixed: a shard
// holds the hashes of one range of high bits (see flush.Aggregator), so
// they alone would crowd a part of the table. A probe
// compares hashes in the table before it reads a context, and an entry
// costs 8 bytes at most 13/16 full, 10 to 20 bytes a context, where a
// map[uint64]*context took about 25 and a pointer list 8 to 16 more.
type ctxIndex struct {
	tab  []uint64
	n    int
	bits uint8 // len(tab) == 1<<bits once tab is made
}

const (
	idBits        = 25 // ID plus one, below 1<<25
	idMask        = 1<<idBits - 1
	minCtxIdxBits = 6
)

// pos returns the home position of entry e, or of a hash.
func (x *ctxIndex) pos(e uint64) uint64 { return (e &^ idMask) * 0x9e3779b97f4a7c15 >> (64 - x.bits) }

// start returns the position of the first entry of hash h's probe
// sequence, and the entry's hash part to compare. The table must be made.
func (x *ctxIndex) start(h uint64) (pos, tag uint64) { return x.pos(h), h &^ idMask }

// insert records ID id of hash h, which the index does not hold.
func (x *ctxIndex) insert(h uint64, id uint32) {
	if (x.n+1)*16 > len(x.tab)*13 {
		x.grow()
	}
	x.place(h&^idMask | uint64(id+1))
	x.n++
}

func (x *ctxIndex) place(e uint64) {
	mask := uint64(len(x.tab) - 1)
	i := x.pos(e)
	for x.tab[i] != 0 {
		i = (i + 1) & mask
	}
	x.tab[i] = e
}

func (x *ctxIndex) grow() {
	old := x.tab
	x.bits = max(x.bits+1, minCtxIdxBits)
	x.tab = make([]uint64, 1<<x.bits)
	for _, e := range old {
		if e != 0 {
			x.place(e)
		}
	}
}

// remove deletes the entry of ID id and hash h, shifting the entries
// after it back so that no probe sequence breaks.
func (x *ctxIndex) remove(h uint64, id uint32) {
	if x.n == 0 {
		return
	}
	mask := uint64(len(x.tab) - 1)
	want := h&^idMask | uint64(id+1)
	i := x.pos(want)
	for x.tab[i] != want {
		if x.tab[i] == 0 {
			return
		}
		i = (i + 1) & mask
	}
	x.n--
	// Backward-shift deletion: move each later entry of the run into the
	// hole when its home position does not lie in (hole, entry].
	hole := i
	for j := (i + 1) & mask; x.tab[j] != 0; j = (j + 1) & mask {
		home := x.pos(x.tab[j])
		if (j-home)&mask >= (j-hole)&mask {
			x.tab[hole] = x.tab[j]
			hole = j
		}
	}
	x.tab[hole] = 0
}

// lastSample is the last sample of a RATE or MONOTONIC_COUNT context.
type lastSample struct {
	v   float64
	t   int64
	typ MetricType
}

// unixSeconds returns ns in whole seconds, rounded down or up, within
// [1, MaxUint32] (until the year 2106).
func unixSeconds(ns int64, up bool) uint32 {
	s := ns / 1e9
	if r := ns % 1e9; up && r > 0 {
		s++
	} else if !up && r < 0 {
		s--
	}
	return uint32(min(max(s, 1), math.MaxUint32))
}
