package window

// slotIndex finds a context's slot in a bucket: an open-addressing table
// with linear probing, placed by the context's ID. An entry is the slot
// number plus one in its low 24 bits (0 marks a free entry) under 8 bits
// of the ID's hash, so that a probe reads a slot only when those match.
// At 4 bytes an entry and at most 13/16 full, it holds a context in 5 to
// 10 bytes, where a map[uint32]uint32 takes about 20.
type slotIndex struct {
	tab  []uint32
	n    int
	bits uint8 // len(tab) == 1<<bits once tab is made
}

const (
	// minIndexBits sizes the first table: 16 entries.
	minIndexBits = 4
	slotMask     = 1<<24 - 1
)

// place returns the home position of context id and its entry's tag.
func (x *slotIndex) place(id uint32) (pos uint64, tag uint32) {
	h := uint64(id+1) * 0x9e3779b97f4a7c15
	return h >> (64 - x.bits), uint32(h>>8) << 24
}

// fits reports whether the table holds n entries without growing.
func (x *slotIndex) fits(n int) bool { return n*16 <= len(x.tab)*13 }

// find returns the slot of context id among slots, which the index covers.
func (x *slotIndex) find(id uint32, slots []slot) (uint32, bool) {
	if x.n == 0 {
		return 0, false
	}
	mask := uint64(len(x.tab) - 1)
	i, tag := x.place(id)
	for ; ; i = (i + 1) & mask {
		e := x.tab[i]
		if e == 0 {
			return 0, false
		}
		if e&^slotMask == tag && slots[e&slotMask-1].ctx == id {
			return e&slotMask - 1, true
		}
	}
}

// add records that slots[i], the last slot, holds its context, which the
// index does not hold yet.
func (x *slotIndex) add(i uint32, slots []slot) {
	if !x.fits(x.n + 1) {
		x.grow(slots[:i])
	}
	x.put(slots[i].ctx, i)
	x.n++
}

func (x *slotIndex) put(id, i uint32) {
	mask := uint64(len(x.tab) - 1)
	j, tag := x.place(id)
	for x.tab[j] != 0 {
		j = (j + 1) & mask
	}
	x.tab[j] = tag | (i + 1)
}

// grow doubles the table and places slots, every slot held so far, again.
func (x *slotIndex) grow(slots []slot) {
	x.bits = max(x.bits+1, minIndexBits)
	x.tab = make([]uint32, 1<<x.bits)
	for i := range slots {
		x.put(slots[i].ctx, uint32(i))
	}
}

// reserve makes room for n contexts without growing, over slots, every
// slot held so far.
func (x *slotIndex) reserve(n int, slots []slot) {
	if x.fits(n) {
		return
	}
	bits := uint8(minIndexBits)
	for n*16 > 13<<bits {
		bits++
	}
	x.bits = bits - 1 // grow doubles it
	x.grow(slots)
}

// reset empties the index, keeping its table.
func (x *slotIndex) reset() {
	if x.n > 0 {
		clear(x.tab)
	}
	x.n = 0
}
