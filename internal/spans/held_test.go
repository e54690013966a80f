package spans

import (
	"reflect"
	"strings"
	"testing"
)

func TestHeldTraceKeepsSpans(t *testing.T) {
	id := [16]byte{7, 1}
	wire := &Wire{Resource: []byte("res"), Scope: []byte("scope"), Span: []byte("span")}
	other := &Wire{Resource: []byte("res"), Scope: []byte("scope"), Span: []byte("other")}
	tests := []struct {
		name  string
		spans []Span
	}{
		{"a root", []Span{{SpanID: [8]byte{1}, Service: "api", Name: "op", Resource: "/r", Start: 1e18, Duration: 5, Kind: KindServer}}},
		{"every field", []Span{{SpanID: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}, ParentID: [8]byte{9, 9}, HasParent: true, Error: true,
			Service: "db", Name: "query", Resource: strings.Repeat("x", 300), Start: -1, Duration: 1 << 62, HTTPStatus: 1 << 31,
			Kind: KindConsumer, Attrs: []Attr{{"k", "v"}, {"", ""}, {"long", strings.Repeat("é", 100)}}}}},
		{"empty strings", []Span{{SpanID: [8]byte{1}}}},
		{"spans with and without attributes and wires", []Span{
			{SpanID: [8]byte{1}, Name: "a", Attrs: []Attr{{"x", "1"}}, Wire: wire},
			{SpanID: [8]byte{2}, Name: "b"},
			{SpanID: [8]byte{3}, Name: "c", Attrs: []Attr{{"y", "2"}, {"z", "3"}}, Wire: other},
			{SpanID: [8]byte{4}, Name: "d", Wire: wire},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr heldTrace
			size := 0
			for i := range tt.spans {
				tr.add(&tt.spans[i], 0)
				size += recordSize(&tt.spans[i])
			}
			// Each wire index here takes one byte.
			if want := size + len(tr.wires); len(tr.recs) != want {
				t.Errorf("records of %d bytes, want %d", len(tr.recs), want)
			}
			got := tr.spans(id)
			if len(got) != len(tt.spans) {
				t.Fatalf("%d spans back, want %d", len(got), len(tt.spans))
			}
			for i := range got {
				want := tt.spans[i]
				want.TraceID = id
				if !reflect.DeepEqual(got[i], want) {
					t.Errorf("span %d back as\n%+v, want\n%+v", i, got[i], want)
				}
			}
		})
	}
}

func TestCloneSpansOwnsSlices(t *testing.T) {
	var tr heldTrace
	for _, s := range []Span{{Name: "a", Attrs: []Attr{{"k", "1"}}}, {Name: "b"}, {Name: "c", Attrs: []Attr{{"k", "2"}, {"k", "3"}}}} {
		tr.add(&s, 0)
	}
	sp, attrs := decodeRecords(nil, nil, [16]byte{1}, tr.recs, nil, tr.n)
	out := cloneSpans(sp, attrs)
	clear(sp)
	clear(attrs)
	if out[0].Attrs[0].Value != "1" || out[1].Attrs != nil || out[2].Attrs[0].Value != "2" || out[2].Attrs[1].Value != "3" || out[2].Name != "c" {
		t.Errorf("cloned spans %+v", out)
	}
}
