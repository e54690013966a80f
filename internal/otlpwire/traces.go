package otlpwire

import "google.golang.org/protobuf/encoding/protowire"

// Span is a span's fields aggd reads; Raw is its whole encoding.
type Span struct {
	TraceID, SpanID, ParentSpanID []byte
	Name                          string
	Kind                          int32
	Start, End                    uint64
	Attrs                         []KeyValue
	StatusCode                    int32
	StatusMessage                 string
}

// TracesHandler receives a decoded ExportTraceServiceRequest: each
// resource, then each of its scopes, then each of the scope's spans, each
// with its encoding (a resource's or scope's given more than once is its
// occurrences one after the other, which reads as their merge). What it is
// handed is valid only during the call, but a span's encoding, which is
// a view into the request buffer.
type TracesHandler interface {
	Resource(r *Resource, raw []byte)
	Scope(s *Scope, raw []byte)
	Span(s *Span, raw []byte)
}

// DecodeTraces decodes an ExportTraceServiceRequest, handing its
// contents to h. On error h may have been handed part of the request.
func (d *Decoder) DecodeTraces(buf []byte, h TracesHandler) error {
	return eachBytes(buf, 1, func(rs []byte) error { return d.resourceSpans(rs, h) })
}

// joined returns the occurrences of a message field as one encoding.
func (d *Decoder) joined(parts [][]byte) []byte {
	if len(parts) == 1 {
		return parts[0]
	}
	d.raw = d.raw[:0]
	for _, p := range parts {
		d.raw = append(d.raw, p...)
	}
	return d.raw
}

func (d *Decoder) resourceSpans(buf []byte, h TracesHandler) error {
	if err := d.readResource(buf); err != nil {
		return err
	}
	h.Resource(&d.res, d.joined(d.parts))
	for _, ss := range d.scopes {
		if err := d.scopeSpans(ss, h); err != nil {
			return err
		}
	}
	return nil
}

func (d *Decoder) scopeSpans(buf []byte, h TracesHandler) error {
	start := len(d.data)
	defer func() { d.data = d.data[:start] }()
	if err := d.readScope(buf); err != nil {
		return err
	}
	h.Scope(&d.scope, d.joined(d.parts))
	for _, sp := range d.data[start:] {
		if err := d.span(sp); err != nil {
			return err
		}
		h.Span(&d.sp, sp)
	}
	return nil
}

func (d *Decoder) span(buf []byte) error {
	s := &d.sp
	*s = Span{Attrs: s.Attrs[:0]}
	var f field
	var err error
	for len(buf) > 0 {
		if err := next(&buf, &f); err != nil {
			return err
		}
		switch f.typ {
		case protowire.BytesType:
			switch f.num {
			case 1:
				s.TraceID = f.b
			case 2:
				s.SpanID = f.b
			case 4:
				s.ParentSpanID = f.b
			case 5:
				s.Name, err = str(f.b)
			case 9:
				s.Attrs, err = appendKV(s.Attrs, f.b)
			case 15:
				err = d.status(f.b)
			}
		case protowire.VarintType:
			if f.num == 6 {
				s.Kind = int32(f.v)
			}
		case protowire.Fixed64Type:
			switch f.num {
			case 7:
				s.Start = f.v
			case 8:
				s.End = f.v
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (d *Decoder) status(buf []byte) error {
	var f field
	var err error
	for len(buf) > 0 {
		if err := next(&buf, &f); err != nil {
			return err
		}
		switch {
		case f.num == 2 && f.typ == protowire.BytesType:
			d.sp.StatusMessage, err = str(f.b)
		case f.num == 3 && f.typ == protowire.VarintType:
			d.sp.StatusCode = int32(f.v)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
