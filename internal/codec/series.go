package codec

import (
	"fmt"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/aggd/aggd/internal/window"
)

// MaxSeriesRef is the highest series reference a stream may use.
const MaxSeriesRef = 1 << 20

// seriesPage is how many references one page of a Series holds.
const seriesPage = 1024

// Series is one stream's table of series references: what each reference
// its client declared names, with the canonical key and hash computed once
// at declaration and the context cached for the shard. A sample by
// reference is resolved by indexing the table: no parsing of names or
// tags, no hashing, no map probe.
//
// A Series belongs to the goroutine serving its stream and is not safe for
// concurrent use. Its zero value is an empty table.
type Series struct {
	pages []*[seriesPage]seriesDef // by ref / seriesPage; pointers stay put
	tags  []string                 // scratch for SplitKey
	// The batch decoded last: the samples it took by reference, and the
	// references it declared, in order, for the write-ahead log.
	used     []refUse
	declared []uint32
	// log and marked are LogDefinitions' output and the references whose
	// logged generation it set.
	log    []byte
	marked []uint32
	// refs are the samples of the frame DecodeStream read last that the
	// write-ahead log packs, and frame and frameLen identify that frame
	// (0: none).
	refs     []RefSample
	frame    uintptr
	frameLen int
}

// RefSample is a sample by reference of a StreamRequest that holds a
// value (or none), a set member (or none) and its reference in range, in
// that order, in the encoding proto.Marshal writes: tags and lengths of
// one byte, the reference in its shortest varint. The write-ahead log
// packs it from what the decoder read, without parsing it again.
type RefSample struct {
	Bits  uint64 // the value's bits; 0 without a value
	Off   uint32 // the offset of the sample's field (Batch.samples) in the frame
	Ref   uint32
	Len   uint8 // the field's length, its tag and length included
	Value bool  // the sample has a value field
	// Member is the length of the set_member field, its tag and length
	// included, which follows the value field; 0 without one.
	Member uint8
}

// refUse is one sample taken by reference: its index in the batch, and
// the generation that held its definition when the sample resolved it.
type refUse struct {
	ref    uint32
	sample int32
	logged uint64
}

// seriesDef is what one reference names.
type seriesDef struct {
	key        string // canonical key (window.AppendKey), owned
	name, host string // views into key
	tags       []string
	hash       uint64
	typ        window.MetricType
	handle     window.Handle
	logged     uint64 // write-ahead log generation last holding the definition
	// declaredAt is 1 + the index of the sample of the batch decoded last
	// that first declared the reference; 0 when none did.
	declaredAt int32
}

// Reset forgets every reference, keeping the table's memory unless it
// grew large.
func (t *Series) Reset() {
	if len(t.pages) > 64 {
		t.pages = nil
	}
	for _, p := range t.pages {
		if p != nil { // pages below the lowest reference used are nil
			clear(p[:])
		}
	}
	t.beginBatch()
}

// beginBatch forgets what the last batch used and declared.
func (t *Series) beginBatch() {
	for _, ref := range t.declared {
		if def := t.def(ref); def != nil {
			def.declaredAt = 0
		}
	}
	t.used, t.declared, t.log, t.marked = t.used[:0], t.declared[:0], t.log[:0], t.marked[:0]
	t.refs, t.frame, t.frameLen = t.refs[:0], 0, 0
}

// beginFrame forgets the samples noted of another frame: those of frame,
// which DecodeStream reads, follow.
func (t *Series) beginFrame(frame []byte) {
	t.refs, t.frame, t.frameLen = t.refs[:0], uintptr(unsafe.Pointer(unsafe.SliceData(frame))), len(frame)
}

// RefSamples returns the samples of frame that the write-ahead log packs
// as RefSample describes, in the order of the frame, and true, when frame
// is the buffer DecodeStream read last into t's decoder (whose bytes the
// caller has left as they were); nil and false for any other frame,
// whose samples the log must find by itself. The slice is valid until
// the next batch is decoded.
func (t *Series) RefSamples(frame []byte) ([]RefSample, bool) {
	if t.frameLen == 0 || len(frame) != t.frameLen || uintptr(unsafe.Pointer(unsafe.SliceData(frame))) != t.frame {
		return nil, false
	}
	return t.refs, true
}

// Len returns the number of pages in use times their size: a bound on the
// references the table can hold without growing.
func (t *Series) Len() int { return len(t.pages) * seriesPage }

func (t *Series) def(ref uint32) *seriesDef {
	p := ref / seriesPage
	if int(p) >= len(t.pages) || t.pages[p] == nil {
		return nil
	}
	return &t.pages[p][ref%seriesPage]
}

func (t *Series) slot(ref uint32) *seriesDef {
	p := int(ref / seriesPage)
	if p >= len(t.pages) {
		t.pages = append(t.pages, make([]*[seriesPage]seriesDef, p+1-len(t.pages))...)
	}
	if t.pages[p] == nil {
		t.pages[p] = new([seriesPage]seriesDef)
	}
	return &t.pages[p][ref%seriesPage]
}

// declare makes ref name the series of s, sample i of the batch, which
// is validated and keyed.
func (t *Series) declare(ref uint32, i int, s *window.Sample) {
	t.declared = append(t.declared, ref)
	def := t.slot(ref)
	if def.declaredAt == 0 {
		def.declaredAt = int32(i) + 1
	}
	if def.key == string(s.Key) && def.typ == s.Type && def.key != "" {
		s.Handle = &def.handle
		return
	}
	at := def.declaredAt
	key := string(s.Key)
	name, host, tags := window.SplitKey(key, t.tags[:0])
	t.tags = tags[:0]
	*def = seriesDef{key: key, name: name, host: host, hash: s.Hash, typ: s.Type, declaredAt: at}
	if len(tags) > 0 {
		def.tags = append([]string(nil), tags...)
	}
	s.Handle = &def.handle
}

// forget makes ref undeclared.
func (t *Series) forget(ref uint32) {
	if def := t.def(ref); def != nil {
		*def = seriesDef{}
	}
}

// resolve fills s, sample i of the batch, a sample by reference, from
// what ref names.
func (t *Series) resolve(ref uint32, i int, s *window.Sample) (window.Reason, string) {
	def := t.def(ref)
	if def == nil || def.key == "" {
		return window.ReasonUnknownSeries, fmt.Sprintf("series_ref %d is not declared on this stream; send it again with name, type, host and tags", ref)
	}
	if s.Type != window.TypeUnspecified && s.Type != def.typ {
		return window.ReasonTypeConflict, fmt.Sprintf("series_ref %d is declared %s; this sample says %s", ref, def.typ, s.Type)
	}
	s.Name, s.Host, s.Tags, s.Type = def.name, def.host, def.tags, def.typ
	s.Key = keyBytes(def.key)
	s.Hash = def.hash
	s.Handle = &def.handle
	t.used = append(t.used, refUse{ref, int32(i), def.logged})
	return window.Accepted, ""
}

// LogDefinitions returns what the record of the batch decoded last, of
// samples, needs beside its frame to replay within write-ahead log
// generation gen, which may hold no earlier record: the definitions of
// the references it took samples by that gen does not hold yet, as an
// aggd.v1 Batch of declaring Samples. It marks them, and the references
// the batch declared itself, as held by gen (Unlog undoes it).
//
// A definition is written as the sample that used it resolved it, so a
// reference declared anew later in the same batch is right on both
// sides: before, from the definitions; after, from the frame.
func (t *Series) LogDefinitions(gen uint64, samples []window.Sample) []byte {
	t.log, t.marked = t.log[:0], t.marked[:0]
	for _, u := range t.used {
		if u.logged == gen {
			continue // held by gen as the sample resolved it: no second look at the table
		}
		def := t.def(u.ref)
		if def == nil || def.logged == gen || def.declaredAt != 0 && int(def.declaredAt-1) < int(u.sample) {
			continue // gone since, or held: by gen, by this record, or by its frame before u
		}
		t.mark(u.ref, def, gen)
		s := &samples[u.sample]
		t.log = protowire.AppendTag(t.log, 1, protowire.BytesType)
		t.log = protowire.AppendVarint(t.log, uint64(definitionSize(u.ref, s)))
		t.log = appendDefinition(t.log, u.ref, s)
	}
	for _, ref := range t.declared {
		if def := t.def(ref); def != nil && def.key != "" && def.logged != gen {
			t.mark(ref, def, gen)
		}
	}
	return t.log
}

func (t *Series) mark(ref uint32, def *seriesDef, gen uint64) {
	t.marked = append(t.marked, ref)
	def.logged = gen
}

// Unlog undoes the marks of the last LogDefinitions, whose record was not
// written: the definitions go with the next record that needs them.
func (t *Series) Unlog() {
	for _, ref := range t.marked {
		if def := t.def(ref); def != nil {
			def.logged = 0
		}
	}
	t.marked = t.marked[:0]
}

// definitionSize is the size of appendDefinition's message.
func definitionSize(ref uint32, s *window.Sample) int {
	n := 1 + protowire.SizeBytes(len(s.Name)) + 1 + protowire.SizeVarint(uint64(s.Type)) + 1 + protowire.SizeVarint(uint64(ref))
	for _, tag := range s.Tags {
		n += 1 + protowire.SizeBytes(len(tag))
	}
	if s.Host != "" {
		n += 1 + protowire.SizeBytes(len(s.Host))
	}
	return n
}

// appendDefinition appends the declaring Sample of ref as s names it,
// without a value.
func appendDefinition(b []byte, ref uint32, s *window.Sample) []byte {
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, s.Name)
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(s.Type))
	for _, tag := range s.Tags {
		b = protowire.AppendTag(b, 6, protowire.BytesType)
		b = protowire.AppendString(b, tag)
	}
	if s.Host != "" {
		b = protowire.AppendTag(b, 7, protowire.BytesType)
		b = protowire.AppendString(b, s.Host)
	}
	b = protowire.AppendTag(b, 10, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(ref))
}

// keyBytes returns key as bytes without copying; they must not be written.
func keyBytes(key string) []byte { return unsafe.Slice(unsafe.StringData(key), len(key)) }
