package filter

import (
	"strings"
	"testing"
)

type rec map[string]Value

func (r rec) Field(name string) (Value, bool) { v, ok := r[name]; return v, ok }

var span = rec{
	"status": Str("error"), "duration": Num(1.5e9), "resource": Str("/health"), "service": Str("api-gateway"),
	"http_status_code": Num(304), "error": BoolValue(true), "kind": Str("server"), "parent_id": Str("0"),
	"fields.user_id": Str("u-1"), "$trace_duration": Num(6e6),
}

func TestMatch(t *testing.T) {
	tests := []struct {
		cond string
		want bool
	}{
		{`{ status = "error" }`, true},
		{`{ status = 'ok' }`, false},
		{`{ duration > 1000000000 }`, true},
		{`{ duration >= 1500000000 AND duration <= 1.5e9 }`, true},
		{`{ duration < 1000000000 }`, false},
		{`{ resource IN ["/health", "/ready"] }`, true},
		{`{ resource in ['/x'] }`, false},
		{`{ resource NOT IN ["/health"] }`, false},
		{`{ resource NOTIN ["/x", 3] }`, true},
		{`{ http_status_code = "304" }`, true}, // numeric field, numeric string
		{`{ http_status_code IN [200, "304"] }`, true},
		{`{ http_status_code != 304 }`, false},
		{`{ error = true }`, true},
		{`{error=true}`, true},
		{`{ error = "true" }`, true},
		{`{ error != false }`, true},
		{`{ 1 = 1 }`, true},
		{`{ 1 = 2 }`, false},
		{`{ }`, true},
		{``, true},
		{`status = "error"`, true},
		{`{ service = re('api-.*') }`, true},
		{`{ service != re('^web') }`, true},
		{`{ service MATCH ['^web', 'gate'] }`, true},
		{`{ service NOTMATCH ['gate'] }`, false},
		{`{ service NOT MATCH ['^zzz'] }`, true},
		{`{ status = "error" AND (resource = "/x" OR kind = 'server') }`, true},
		{`{ status = "error" AND resource = "/x" OR kind = 'server' }`, true},
		{`{ status = "ok" OR resource = "/x" AND kind = 'server' }`, false},
		{`{ NOT (status = 'error') }`, false},
		{`{ !(status = 'ok') && kind == 'server' || 0 = 1 }`, true},
		{`{ not status = 'ok' }`, true},
		{`{ missing = "x" }`, false},
		{`{ missing != "x" }`, true},
		{`{ missing IN ["x"] }`, false},
		{`{ missing NOTIN ["x"] }`, true},
		{`{ missing > 1 }`, false},
		{`{ parent_id = "0" }`, true},
		{`{ fields.user_id = 'u-1' }`, true},
		{`{ $trace_duration > 5000000 }`, true},
		{"{ `service` = 'api-gateway' }", true},
		{`{ service > 'api' }`, true},
		{`{ status > 1 }`, false}, // a string and a number do not order
		{`{ service = "api-\"gateway" }`, false},
	}
	for _, tt := range tests {
		c, err := Compile(tt.cond)
		if err != nil {
			t.Errorf("%s: %v", tt.cond, err)
			continue
		}
		if got := c.Match(span); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.cond, got, tt.want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, src := range []string{
		`{ status = }`, `{ status "x" }`, `{ status = 'x'`, `status = 'x' }`, `{ (a = 1 }`, `{ a IN 1 }`,
		`{ a IN [b] }`, `{ a MATCH [1] }`, `{ a MATCH ['('] }`, `{ a = re('(') }`, `{ a = 'unterminated }`,
		`{ a = 1 AND }`, `{ a NOT = 1 }`, `{ a = 1 } x`, `{ # }`, strings.Repeat("(", 200) + "a = 1" + strings.Repeat(")", 200),
	} {
		_, err := Compile(src)
		if err == nil {
			t.Errorf("%q compiled", src)
			continue
		}
		if e, ok := err.(*Error); !ok || e.Pos < 0 {
			t.Errorf("%q: error %v has no position", src, err)
		}
	}
}

func TestFields(t *testing.T) {
	c, _ := Compile(`{ a = 1 AND (b IN [1] OR NOT a = c) }`)
	if got := strings.Join(c.Fields(), ","); got != "a,b,c" {
		t.Fatalf("got %s", got)
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	c, _ := Compile(`{ status = "error" AND resource IN ["/a", "/health"] OR service MATCH ['^x'] }`)
	var r Record = span
	if n := testing.AllocsPerRun(100, func() { c.Match(r) }); n != 0 {
		t.Fatalf("%v allocations per Match", n)
	}
}

func BenchmarkMatch(b *testing.B) {
	c, _ := Compile(`{ status = "error" AND resource IN ["/a", "/health"] OR duration > 1000000000 }`)
	var r Record = span
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c.Match(r)
	}
}

func FuzzCompile(f *testing.F) {
	for _, s := range []string{`{ status = "error" }`, `{ a IN [1, 'x'] AND NOT (b MATCH ['.*']) }`, `{ 1 = 1 }`, `{ x = re('a') || y >= -1.5e3 }`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		c, err := Compile(src)
		if err != nil {
			return
		}
		c.Match(span)
		c.Fields()
		// A compiled condition compiles again from its own source.
		if _, err := Compile(c.String()); err != nil {
			t.Fatalf("recompiling %q: %v", src, err)
		}
	})
}
