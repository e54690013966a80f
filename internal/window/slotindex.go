package window

// slotIndex finds a context's slot in a bucket: an open-addressing table
// with linear probing over slot numbers plus one (0 marks a free entry),
// placed by the context's ID. At 4 bytes an entry and at most three
// quarters full, it holds a context in 5 to 11 bytes, where a
// map[uint32]uint32 takes about 20.
type slotIndex struct {
	tab  []uint32
	n    int
	bits uint8 // len(tab) == 1<<bits once tab is made
}

// minIndexBits sizes the first table: 16 entries.
const minIndexBits = 4

func (x *slotIndex) pos(id uint32) uint64 {
	return uint64(id+1) * 0x9e3779b97f4a7c15 >> (64 - x.bits)
}

// find returns the slot of context id among slots, which the index covers.
func (x *slotIndex) find(id uint32, slots []slot) (uint32, bool) {
	if x.n == 0 {
		return 0, false
	}
	mask := uint64(len(x.tab) - 1)
	for i := x.pos(id); ; i = (i + 1) & mask {
		e := x.tab[i]
		if e == 0 {
			return 0, false
		}
		if slots[e-1].ctx == id {
			return e - 1, true
		}
	}
}

// add records that slots[i], the last slot, holds its context, which the
// index does not hold yet.
func (x *slotIndex) add(i uint32, slots []slot) {
	if (x.n+1)*4 > len(x.tab)*3 {
		x.grow(slots[:i])
	}
	x.put(slots[i].ctx, i)
	x.n++
}

func (x *slotIndex) put(id, i uint32) {
	mask := uint64(len(x.tab) - 1)
	j := x.pos(id)
	for x.tab[j] != 0 {
		j = (j + 1) & mask
	}
	x.tab[j] = i + 1
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
	if n*4 <= len(x.tab)*3 {
		return
	}
	bits := uint8(minIndexBits)
	for n*4 > 3<<bits {
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
