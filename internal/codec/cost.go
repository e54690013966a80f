package codec

import (
	"slices"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// Counts is how many items of each kind a request holds.
type Counts struct {
	Samples, Events, Checks, Spans int
}

// Count counts the items of a StreamRequest (stream) or SubmitRequest
// without decoding them: a walk over the framing that allocates nothing.
// Framing it cannot follow ends the count there; decoding reports it.
func Count(buf []byte, stream bool) Counts {
	batchField := protowire.Number(1)
	if stream {
		batchField = 2
	}
	var c Counts
	walk(buf, func(num protowire.Number, v []byte) {
		if num != batchField {
			return
		}
		walk(v, func(num protowire.Number, _ []byte) {
			switch num {
			case 1:
				c.Samples++
			case 2:
				c.Events++
			case 3:
				c.Checks++
			case 4:
				c.Spans++
			}
		})
	})
	return c
}

// walk calls fn with every length-delimited field of buf.
func walk(buf []byte, fn func(num protowire.Number, v []byte)) {
	for len(buf) > 0 {
		num, typ, n := protowire.ConsumeTag(buf)
		if n < 0 {
			return
		}
		buf = buf[n:]
		if typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(buf)
			if m < 0 {
				return
			}
			fn(num, v)
			n = m
		} else if n = protowire.ConsumeFieldValue(num, typ, buf); n < 0 {
			return
		}
		buf = buf[n:]
	}
}

// Per-item memory of a decoded request, beyond its bytes: the item itself,
// its result and the string that explains a refusal.
const (
	sampleCost = int64(unsafe.Sizeof(window.Sample{}) + unsafe.Sizeof(window.Reason(0)) + unsafe.Sizeof(""))
	eventCost  = int64(unsafe.Sizeof(window.Event{}) + unsafe.Sizeof(0))
	checkCost  = int64(unsafe.Sizeof(window.ServiceCheck{}))
	spanCost   = int64(unsafe.Sizeof(spans.Span{}) + unsafe.Sizeof(window.Reason(0)) + unsafe.Sizeof(""))
)

// DecodeCost is the memory decoding a request of size bytes holding c
// takes, once Grow has sized the decoder's slices: the items, and the
// context keys and tags built from the request's bytes (at most as many).
func DecodeCost(size int, c Counts) int64 {
	return int64(c.Samples)*sampleCost + int64(c.Events)*eventCost + int64(c.Checks)*checkCost +
		int64(c.Spans)*spanCost + int64(size)
}

// Grow sizes the slices that decoding a request holding c fills, so that
// they are allocated once, at their size, rather than grown by doubling.
// Call it after Reset.
func (d *Decoder) Grow(b *window.Batch, c Counts) {
	b.Samples = slices.Grow(b.Samples, c.Samples)
	b.Results = slices.Grow(b.Results, c.Samples)
	d.Detail = slices.Grow(d.Detail, c.Samples)
	b.Events = slices.Grow(b.Events, c.Events)
	d.EventIndex = slices.Grow(d.EventIndex, c.Events)
	b.Checks = slices.Grow(b.Checks, c.Checks)
	d.Spans = slices.Grow(d.Spans, c.Spans)
	d.SpanResults = slices.Grow(d.SpanResults, c.Spans)
	d.SpanDetail = slices.Grow(d.SpanDetail, c.Spans)
}
