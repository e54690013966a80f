package codec

import (
	"strings"
	"testing"

	"google.golang.org/grpc/mem"
)

// countingPool is a mem.BufferPool that counts the buffers given back.
type countingPool struct{ puts int }

func (p *countingPool) Get(size int) *[]byte { b := make([]byte, size); return &b }
func (p *countingPool) Put(*[]byte)          { p.puts++ }

// TestFrameBorrows checks what a Frame receives: with Borrow, a request in
// one buffer is gRPC's buffer itself, held until the next request or
// Release; a request in several buffers, or any request without Borrow, is
// copied into the frame's own buffer, which gRPC may reuse at once.
func TestFrameBorrows(t *testing.T) {
	c := GRPC()
	// gRPC pools buffers over 1 KiB only.
	a, b := strings.Repeat("a", 2000), strings.Repeat("b", 2000)
	tests := []struct {
		name     string
		borrow   bool
		parts    []string
		wantHeld bool
	}{
		{"borrowed, one buffer", true, []string{a + b}, true},
		{"borrowed, two buffers", true, []string{a, b}, false},
		{"copied", false, []string{a + b}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool := new(countingPool)
			var data mem.BufferSlice
			for _, p := range tt.parts {
				buf := []byte(p)
				data = append(data, mem.NewBuffer(&buf, pool))
			}
			first := data[0].ReadOnlyData()
			f := &Frame{Borrow: tt.borrow}
			if err := c.Unmarshal(data, f); err != nil {
				t.Fatal(err)
			}
			data.Free() // as gRPC does once Unmarshal returns
			if got := string(f.Buf); got != a+b {
				t.Fatalf("Buf %.20q…, want %.20q…", got, a+b)
			}
			held := &f.Buf[0] == &first[0]
			if want := len(tt.parts); !tt.wantHeld && pool.puts != want {
				t.Fatalf("%d buffers given back after Unmarshal, want %d", pool.puts, want)
			}
			if tt.wantHeld {
				if pool.puts != 0 || !held {
					t.Fatalf("after Unmarshal: %d buffers given back, Buf is gRPC's: %v; want 0 and true", pool.puts, held)
				}
				// The next request releases the one before.
				next := []byte(strings.Repeat("c", 2000))
				nextData := mem.BufferSlice{mem.NewBuffer(&next, pool)}
				if err := c.Unmarshal(nextData, f); err != nil {
					t.Fatal(err)
				}
				nextData.Free()
				if pool.puts != 1 || string(f.Buf) != string(next) {
					t.Fatalf("after the next request: %d buffers given back, Buf %.20q…; want 1 and %.20q…", pool.puts, f.Buf, next)
				}
				f.Release()
				if pool.puts != 2 || f.Buf != nil {
					t.Fatalf("after Release: %d buffers given back, Buf %.20q…; want 2 and empty", pool.puts, f.Buf)
				}
			}
			f.Release() // idempotent
		})
	}
}

// TestBufferPoolTiers checks the capacities BufferPool hands out: the
// power of two at or above the size, at least 256 bytes; past 1 MiB the
// size itself. A buffer of a capacity no tier has is not taken back.
func TestBufferPoolTiers(t *testing.T) {
	p := BufferPool()
	for _, tt := range []struct{ size, wantCap int }{
		{0, 256}, {1, 256}, {256, 256}, {257, 512}, {4096, 4096}, {7000, 8192},
		{16 << 10, 16 << 10}, {1 << 20, 1 << 20}, {1<<20 + 1, 1<<20 + 1},
	} {
		bp := p.Get(tt.size)
		if len(*bp) != tt.size || cap(*bp) != tt.wantCap {
			t.Errorf("Get(%d): len %d cap %d, want len %d cap %d", tt.size, len(*bp), cap(*bp), tt.size, tt.wantCap)
		}
		p.Put(bp)
	}
	odd := make([]byte, 300)
	p.Put(&odd) // not a tier's capacity: dropped, not handed out as one
	for range 10 {
		if bp := p.Get(300); cap(*bp) != 512 {
			t.Fatalf("Get(300) after Put of a 300-byte buffer: cap %d, want 512", cap(*bp))
		}
	}
}
