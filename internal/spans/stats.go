package spans

import (
	"encoding/binary"
	"hash/maphash"
	"sync"

	"github.com/aggd/aggd/internal/window"
)

// The span stats series, in the order a statsEntry lists them.
const (
	statHits = iota
	statDurationSum
	statDuration
	statErrors
	statTopLevelHits
	numStats
)

var (
	statNames = [numStats]string{MetricHits, MetricDurationSum, MetricDuration, MetricErrors, MetricTopLevelHits}
	statTypes = [numStats]window.MetricType{window.TypeCount, window.TypeCount, window.TypeDistribution,
		window.TypeCount, window.TypeCount}
	// statPrefixes are the series' names as their canonical keys begin
	// (window.AppendKey): length, then name.
	statPrefixes = func() (p [numStats]string) {
		for i, n := range statNames {
			p[i] = string(binary.AppendUvarint(nil, uint64(len(n)))) + n
		}
		return p
	}()
)

// Stats appends the RED samples of spans to a batch, prepared for
// ingestion. Its memory is reused from batch to batch; it is not safe for
// concurrent use, but Stats sharing one cache may run at once.
type Stats struct {
	cache   *statsCache
	arena   []byte
	scratch []byte
}

// Reset forgets the previous batch's keys.
func (st *Stats) Reset() { st.arena = st.arena[:0] }

// Add appends s's samples to b, each timestamped with the span's end and
// prepared for ingestion (key, hash and the handle of its context), and
// returns how many it appended. The keys stay valid until Reset.
//
// The samples of spans alike in service, operation, resource, kind,
// status and HTTP status share their tags, hashes and context handles
// through the cache: a span whose tag set was seen recently is neither
// sorted, nor hashed, nor looked up in the windows' context maps.
func (st *Stats) Add(b *window.Batch, s *Span) int {
	if st.cache == nil {
		st.cache = newStatsCache(statsCacheShardSize)
	}
	st.scratch = appendField(appendStatsKey(st.scratch[:0], s), b.Tenant.ID)
	e := st.cache.get(b.Tenant, st.scratch, s)
	end := s.End()
	add := func(m int, v float64) {
		start := len(st.arena)
		st.arena = append(st.arena, statPrefixes[m]...)
		st.arena = append(st.arena, e.suffix...)
		b.Samples = append(b.Samples, window.Sample{
			Name: statNames[m], Type: statTypes[m], Value: v, SampleRate: 1, Timestamp: end, Tags: e.tags,
			Key: st.arena[start:len(st.arena):len(st.arena)], Hash: e.hash[m], Handle: &e.handle[m],
		})
		b.Results = append(b.Results, window.Accepted)
	}
	secs := float64(s.Duration) / 1e9
	add(statHits, 1)
	add(statDurationSum, secs)
	add(statDuration, secs)
	count := 3
	if s.Error {
		add(statErrors, 1)
		count++
	}
	if s.TopLevel() {
		add(statTopLevelHits, 1)
		count++
	}
	return count
}

// appendStatsKey appends what tells the stats tags of s apart: service,
// operation and resource, each length-prefixed, then kind, status and
// HTTP status code.
func appendStatsKey(b []byte, s *Span) []byte {
	for _, p := range [...]string{s.Service, s.Name, s.Resource} {
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
	}
	b = append(b, byte(s.Kind), byte(b2i(s.Error)))
	return binary.AppendUvarint(b, uint64(s.HTTPStatus))
}

// statsEntry is the stats series of one tag set of one tenant: their
// shared tags and canonical key after the name, and each series' hash and
// context handle. It is immutable but for the handles, which the window
// shard a series hashes to reads and writes under its lock.
type statsEntry struct {
	suffix string   // the canonical key after the series name: host and tags
	tags   []string // canonical, views into suffix
	hash   [numStats]uint64
	handle [numStats]window.Handle
}

// newStatsEntry prepares the stats series of s's tag set for tenant t.
func newStatsEntry(t *window.Tenant, s *Span) *statsEntry {
	tags := make([]string, 5, 6)
	tags[0], tags[1], tags[2] = "service:"+s.Service, "operation:"+s.Name, "resource:"+s.Resource
	tags[3], tags[4] = kindTags[min(int(s.Kind), len(kindTags)-1)], statusTags[b2i(s.Error)]
	if s.HTTPStatus != 0 {
		tags = append(tags, statusTag(s.HTTPStatus))
	}
	e := &statsEntry{}
	var arena []byte
	for m := range numStats {
		smp := window.Sample{Name: statNames[m], Tags: append([]string(nil), tags...)}
		arena = smp.Prepare(t, arena[:0])
		e.hash[m] = smp.Hash
		if m == statHits {
			key := string(smp.Key)
			_, _, e.tags = window.SplitKey(key, nil)
			e.tags = e.tags[:len(e.tags):len(e.tags)]
			e.suffix = key[len(statPrefixes[statHits]):]
		}
	}
	return e
}

// statsCache maps (tenant, stats tag set) to its statsEntry. It is safe for
// concurrent use. Each shard holds at most size entries in its current
// generation and the previous one; an entry used from the previous
// generation moves to the current one, so what stays in use stays.
//
// An entry is found by a 128-bit hash of the tenant's id and the span's
// stats key (appendStatsKey), held in the map's slot itself: a lookup
// reads no key bytes elsewhere in memory. Two keys of 262,144 entries
// share a hash with a probability below 10⁻²⁷. The tenant's id, not the
// Tenant, keys the entry, as it keys the contexts: a context handle
// checks the Tenant itself.
type statsCache struct {
	seeds  [2]maphash.Seed
	size   int // entries per shard and generation
	shards [statsCacheShards]statsCacheShard
}

type statsCacheShard struct {
	mu       sync.Mutex
	cur, old map[[2]uint64]*statsEntry
}

const (
	statsCacheShards    = 16
	statsCacheShardSize = 8192
)

// newStatsCache returns a cache of at most 2 × statsCacheShards × size
// entries.
func newStatsCache(size int) *statsCache {
	c := &statsCache{seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}, size: size}
	for i := range c.shards {
		c.shards[i].cur = map[[2]uint64]*statsEntry{}
	}
	return c
}

// get returns the entry of tenant t and stats key k (appendStatsKey of s
// followed by t's id), making it when there is none.
func (c *statsCache) get(t *window.Tenant, k []byte, s *Span) *statsEntry {
	h := [2]uint64{maphash.Bytes(c.seeds[0], k), maphash.Bytes(c.seeds[1], k)}
	sh := &c.shards[h[0]%statsCacheShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e := sh.cur[h]; e != nil {
		return e
	}
	e := sh.old[h]
	if e == nil {
		e = newStatsEntry(t, s)
	}
	if len(sh.cur) >= c.size {
		sh.old, sh.cur = sh.cur, make(map[[2]uint64]*statsEntry, c.size)
	}
	sh.cur[h] = e
	return e
}

var kindTags = func() []string {
	t := make([]string, len(kindNames))
	for i, n := range kindNames {
		t[i] = "span.kind:" + n
	}
	return t
}()

var statusTags = [2]string{"status:ok", "status:error"}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
