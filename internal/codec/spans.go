package codec

import (
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// Bounds of one span.
const (
	maxResourceLength = 5000
	maxSpanAttrs      = 128
	maxAttrLength     = 4096
)

// addSpan decodes and validates one Span.
func (d *Decoder) addSpan(buf []byte) {
	d.NSpans++
	d.Spans = append(d.Spans, spans.Span{})
	s := &d.Spans[len(d.Spans)-1]
	r, detail := d.decodeSpan(buf, s)
	if r == window.Accepted {
		r, detail = d.validateSpan(s)
	}
	d.SpanResults = append(d.SpanResults, r)
	d.SpanDetail = append(d.SpanDetail, detail)
}

func (d *Decoder) decodeSpan(buf []byte, s *spans.Span) (window.Reason, string) {
	attrStart := len(d.attrs)
	badUTF8 := ""
	var tid, sid, pid []byte
	rulesOnly, handedOver := false, false
	for len(buf) > 0 {
		num, typ, n := protowire.ConsumeTag(buf)
		if n < 0 {
			return window.ReasonMalformed, "span is not a valid Span message"
		}
		buf = buf[n:]
		switch {
		case typ == protowire.BytesType && num >= 1 && num <= 6:
			var v []byte
			v, n = protowire.ConsumeBytes(buf)
			if n < 0 {
				break
			}
			switch num {
			case 1:
				tid = v
			case 2:
				sid = v
			case 3:
				pid = v
			default:
				if badUTF8 == "" && !utf8.Valid(v) {
					badUTF8 = [...]string{4: "service", 5: "name", 6: "resource"}[num]
				}
				switch num {
				case 4:
					s.Service = view(v)
				case 5:
					s.Name = view(v)
				case 6:
					s.Resource = view(v)
				}
			}
		case typ == protowire.VarintType && num == 13:
			var v uint64
			v, n = protowire.ConsumeVarint(buf)
			rulesOnly = v != 0
		case typ == protowire.VarintType && num == 14:
			var v uint64
			v, n = protowire.ConsumeVarint(buf)
			handedOver = v != 0
		case typ == protowire.VarintType && num >= 7 && num <= 11:
			var v uint64
			v, n = protowire.ConsumeVarint(buf)
			switch num {
			case 7:
				s.Kind = spans.Kind(min(v, 255))
				if int32(v) < 0 || int32(v) > int32(spans.KindConsumer) {
					s.Kind = 255
				}
			case 8:
				s.Start = int64(v)
			case 9:
				s.Duration = int64(v)
			case 10:
				s.Error = v != 0
			case 11:
				s.HTTPStatus = uint32(v)
			}
		case typ == protowire.BytesType && num == 12: // map<string, string> entry
			var v []byte
			v, n = protowire.ConsumeBytes(buf)
			if n < 0 {
				break
			}
			k, val, ok := decodeMapEntry(v)
			if !ok {
				return window.ReasonMalformed, "span attribute is not a valid map entry"
			}
			if badUTF8 == "" && (!utf8.ValidString(k) || !utf8.ValidString(val)) {
				badUTF8 = "attribute"
			}
			d.attrs = append(d.attrs, spans.Attr{Key: k, Value: val})
		default:
			n = protowire.ConsumeFieldValue(num, typ, buf)
		}
		if n < 0 {
			return window.ReasonMalformed, "span is not a valid Span message"
		}
		buf = buf[n:]
	}
	if len(d.attrs) > attrStart {
		s.Attrs = d.attrs[attrStart:len(d.attrs):len(d.attrs)]
	}
	if badUTF8 != "" {
		return window.ReasonInvalidUTF8, badUTF8 + " is not valid UTF-8"
	}
	if rulesOnly {
		if !d.Histograms {
			return window.ReasonUnsupported, "rules_only is taken from the replicas of a cluster only"
		}
		s.RulesOnly = true
	}
	if handedOver {
		if !d.Histograms {
			return window.ReasonUnsupported, "handed_over is taken from the replicas of a cluster only"
		}
		s.HandedOver = true
	}
	switch {
	case len(tid) != 16 || isZero(tid):
		return window.ReasonInvalidValue, fmt.Sprintf("trace_id must be 16 bytes, not all zero (got %d)", len(tid))
	case len(sid) != 8 || isZero(sid):
		return window.ReasonInvalidValue, fmt.Sprintf("span_id must be 8 bytes, not all zero (got %d)", len(sid))
	case len(pid) != 0 && len(pid) != 8:
		return window.ReasonInvalidValue, fmt.Sprintf("parent_span_id must be empty or 8 bytes (got %d)", len(pid))
	}
	copy(s.TraceID[:], tid)
	copy(s.SpanID[:], sid)
	if len(pid) == 8 && !isZero(pid) {
		copy(s.ParentID[:], pid)
		s.HasParent = true
	}
	return window.Accepted, ""
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// decodeMapEntry reads a map<string, string> entry: key = 1, value = 2.
func decodeMapEntry(b []byte) (k, v string, ok bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", "", false
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == 1 || num == 2) {
			var s []byte
			s, n = protowire.ConsumeBytes(b)
			if n < 0 {
				return "", "", false
			}
			if num == 1 {
				k = view(s)
			} else {
				v = view(s)
			}
		} else if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return "", "", false
		}
		b = b[n:]
	}
	return k, v, true
}

func (d *Decoder) validateSpan(s *spans.Span) (window.Reason, string) { return d.lim.CheckSpan(s) }

// CheckSpan validates a decoded span against the API's rules and l; an
// empty service becomes unknown_service.
func (l Limits) CheckSpan(s *spans.Span) (window.Reason, string) {
	d := struct{ lim Limits }{l}
	switch {
	case s.Name == "":
		return window.ReasonInvalidName, "span name is empty"
	case len(s.Name) > d.lim.MaxNameLength || len(s.Service) > d.lim.MaxNameLength:
		return window.ReasonInvalidName, fmt.Sprintf("span name or service longer than %d bytes", d.lim.MaxNameLength)
	case len(s.Resource) > maxResourceLength:
		return window.ReasonInvalidValue, fmt.Sprintf("resource is %d bytes long, limit %d", len(s.Resource), maxResourceLength)
	case s.Kind > spans.KindConsumer:
		return window.ReasonInvalidValue, "span kind is not a known SpanKind"
	case s.Start <= 0:
		return window.ReasonInvalidValue, "start_unix_nano is required"
	case s.Duration < 0:
		return window.ReasonInvalidValue, "duration_nano is negative"
	case len(s.Attrs) > maxSpanAttrs:
		return window.ReasonTooManyTags, fmt.Sprintf("%d attributes, limit %d", len(s.Attrs), maxSpanAttrs)
	}
	for _, a := range s.Attrs {
		if len(a.Key)+len(a.Value) > maxAttrLength {
			return window.ReasonTagTooLong, fmt.Sprintf("attribute %.32q… is longer than %d bytes", a.Key, maxAttrLength)
		}
	}
	if s.Service == "" {
		s.Service = "unknown_service"
	}
	return window.Accepted, ""
}
