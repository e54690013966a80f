package window

import (
	"encoding/binary"
	"hash/maphash"
	"slices"
)

// seed keys every context hash of the process. Hashes are never persisted or
// compared across processes, so a random seed costs nothing and keeps
// adversarial tag sets from piling into one probe sequence.
var seed = maphash.MakeSeed()

// tenantHash returns the hash mixed into every context key of tenant t.
func tenantHash(id string) uint64 {
	return maphash.String(seed, id) * 0x9e3779b97f4a7c15
}

// Prepare canonicalises s's tags (sorted, duplicates and empty tags removed,
// in place) and appends its context key to arena, setting s.Key and s.Hash.
// It returns the grown arena. It does not allocate once arena has room.
func (s *Sample) Prepare(t *Tenant, arena []byte) []byte {
	s.Tags = canonicalTags(s.Tags)
	start := len(arena)
	arena = AppendKey(arena, s.Name, s.Host, s.Tags)
	s.Key = arena[start:len(arena):len(arena)]
	s.Hash = maphash.Bytes(seed, s.Key) ^ t.hash()
	return arena
}

// canonicalTags sorts tags and drops empty and repeated ones, in place.
func canonicalTags(tags []string) []string {
	if len(tags) > 1 {
		if len(tags) <= 12 {
			// Insertion sort: the usual tag list is short and often sorted.
			for i := 1; i < len(tags); i++ {
				for j := i; j > 0 && tags[j] < tags[j-1]; j-- {
					tags[j], tags[j-1] = tags[j-1], tags[j]
				}
			}
		} else {
			slices.Sort(tags)
		}
		tags = slices.Compact(tags)
	}
	if len(tags) > 0 && tags[0] == "" {
		tags = tags[1:]
	}
	return tags
}

// AppendKey appends the canonical key of (name, host, tags) to b. Tags must
// already be canonical. Each part is length-prefixed, so no choice of bytes
// in a part can make two different contexts share a key.
func AppendKey(b []byte, name, host string, tags []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(name)))
	b = append(b, name...)
	b = binary.AppendUvarint(b, uint64(len(host)))
	b = append(b, host...)
	for _, t := range tags {
		b = binary.AppendUvarint(b, uint64(len(t)))
		b = append(b, t...)
	}
	return b
}

// SplitKey returns the parts of a key made by AppendKey, appending the tags
// to tags. The strings are views into key.
func SplitKey(key string, tags []string) (name, host string, _ []string) {
	name, key = nextPart(key)
	host, key = nextPart(key)
	for len(key) > 0 {
		var t string
		t, key = nextPart(key)
		tags = append(tags, t)
	}
	return name, host, tags
}

// PartLengths writes to lengths the count of the parts of key, a key made
// by AppendKey, and their lengths after it, when there are at most
// len(lengths)-1 parts and each is under 128 bytes (its length one byte);
// else a count of 0. With them, SplitKeyLengths makes the parts' views
// without reading the key.
func PartLengths(key []byte, lengths []uint8) {
	clear(lengths)
	for n := 0; len(key) > 0; n++ {
		l := int(key[0])
		if 1+n == len(lengths) || l >= 0x80 || 1+l > len(key) {
			clear(lengths)
			return
		}
		lengths[0], lengths[1+n] = uint8(n+1), uint8(l)
		key = key[1+l:]
	}
}

// SplitKeyLengths is SplitKey for a key whose parts' lengths PartLengths
// wrote: the views are made from the lengths, without reading the key.
// With a count of 0 it is SplitKey.
func SplitKeyLengths(key string, lengths []uint8, tags []string) (name, host string, _ []string) {
	n := int(lengths[0])
	if n < 2 {
		return SplitKey(key, tags)
	}
	at := 0
	part := func(l uint8) string {
		at += 1 + int(l)
		return key[at-int(l) : at]
	}
	name, host = part(lengths[1]), part(lengths[2])
	for _, l := range lengths[3 : 1+n] {
		tags = append(tags, part(l))
	}
	return name, host, tags
}

func nextPart(key string) (part, rest string) {
	var n uint64
	var shift uint
	i := 0
	for ; i < len(key); i++ {
		c := key[i]
		n |= uint64(c&0x7f) << shift
		if c < 0x80 {
			i++
			break
		}
		shift += 7
	}
	end := i + int(n)
	if end > len(key) || end < i {
		return key[i:], ""
	}
	return key[i:end], key[end:]
}
