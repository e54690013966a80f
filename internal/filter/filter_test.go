package filter

import (
	"bufio"
	"math"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"
)

type rec map[string]Value

func (r rec) Field(name string) (Value, bool) { v, ok := r[name]; return v, ok }

// probe is the point the conformance vectors below were evaluated on with
// DataKit's filter package: {a: int64 1, f: 1.5, s: "500", st: "error",
// b: true, http.method: "GET"}.
var probe = rec{"a": IntValue(1), "f": Num(1.5), "s": Str("500"), "st": Str("error"), "b": BoolValue(true),
	"http.method": Str("GET")}

// TestDataKitVectors holds conditions evaluated by DataKit's
// filter.GetConds and WhereConditions.Eval (cliutils filter/parse.go,
// filter/eval.go: BinaryExpr.singleEval, binEval) on probe, with DataKit's
// result: matched, not matched, or refused.
func TestDataKitVectors(t *testing.T) {
	tests := []struct {
		cond string
		want string // "match", "no", "error"
	}{
		{`{ a = 1 }`, "match"},
		{`{ a = 1.0 }`, "no"},             // binEval: int64 field, float literal: type conflict
		{`{ f = 1.5000000001 }`, "match"}, // binEval: almostEqual within 1e-9
		{`{ s = 500 }`, "no"},             // a string tag does not equal a number
		{`{ s != 500 }`, "no"},            // nor differ from it
		{`{ x = nil }`, "match"},          // singleEval: missing field compared with nil
		{`{ x IN [nil, "a"] }`, "match"},  // singleEval IN: a missing field looks at the first element
		{`{ x IN ["a", nil] }`, "no"},
		{`{ x NOTIN ["a"] }`, "match"},
		{`{ x NOTIN ["a", nil] }`, "no"},
		{`{ (a = 1) }`, "no"}, // WhereCondition.Eval evaluates only BinaryExpr
		{`{ a = 1, st = "error" }`, "match"},
		{`{ a = 2 }; { st = "error" }`, "match"},
		{`{ http.method = "GET" }`, "no"}, // an AttrExpr on the left
		{"{ `http.method` = \"GET\" }", "match"},
		{`{ s != re('5.*') }`, "match"},        // a string != a *Regex
		{`{ s NOTMATCH ['5', 'x'] }`, "match"}, // fails one of them
		{`{ a + 1 > 1 }`, "no"},                // arithmetic
		{`{ a = 1 AND (st = "error" OR b = false) }`, "match"},
		{`{ 1 = 1 }`, "match"},
		{`{}`, "match"},
		{` `, "no"}, // WhereConditions{nil}
		{`{ a > -5 }`, "match"},
		{`{ a = 0x1 }`, "match"},
		{`{ a = 01 }`, "match"},
		{`{ f > inf }`, "no"},
		{`{ identifier('a') = 1 }`, "match"},
		{`{ a = 1 } # c`, "match"},
		{`{ f > .5 }`, "error"},      // the lexer reads a dot, then 5
		{`{ a IN [s, 1] }`, "match"}, // names in lists are skipped
		{`{ s MATCH ['('] }`, "no"},  // an expression that does not compile is dropped
		{`{ a = b }`, "no"},          // a field on the right
		{`{ nil = nil }`, "match"},
		{`{ nil != 1 }`, "no"},
		{`{ s IN [] }`, "no"},
		{`{ s NOTIN [] }`, "match"},
	}
	for _, tt := range tests {
		c, err := Compile(tt.cond)
		got := "error"
		if err == nil {
			got = map[bool]string{true: "match", false: "no"}[c.Match(probe)]
		}
		if got != tt.want {
			t.Errorf("%s: got %s, want %s (%v)", tt.cond, got, tt.want, err)
		}
	}
}

// gramRecords are the points the grammar corpus was evaluated on with
// DataKit; they mix integer, float, string and boolean fields.
var gramRecords = []rec{
	{"a": IntValue(1), "f": Num(1.5), "s": Str("500"), "st": Str("error"), "b": BoolValue(true), "n": IntValue(-3), "e": Str("")},
	{"a": IntValue(0), "f": Num(2.0), "s": Str("ok"), "st": Str("ok"), "b": BoolValue(false), "n": IntValue(2), "e": Str("x")},
	{},
	{"a": Num(1.0), "f": IntValue(1), "s": Str(`e"`), "st": Str("error")},
	{"a": IntValue(-1), "s": Str(""), "b": BoolValue(true), "f": Num(math.Inf(1))},
}

// TestDataKitGrammarCorpus replays testdata/datakit-grammar.txt and
// datakit-grammar-plain.txt: conditions generated from DataKit's grammar
// (grammar_test.go; seed 1, and seed 2 keeping to what DataKit evaluates),
// with what DataKit's filter.GetConds and WhereConditions.Eval made of each
// on gramRecords ("E": refused; else one 0 or 1 per record). aggd must
// refuse the same conditions and match the same records.
func TestDataKitGrammarCorpus(t *testing.T) {
	for _, c := range []struct {
		file string
		g    *grammar
	}{
		{"testdata/datakit-grammar.txt", &grammar{r: rand.New(rand.NewSource(1))}},
		{"testdata/datakit-grammar-plain.txt", &grammar{r: rand.New(rand.NewSource(2)), plain: true}},
	} {
		t.Run(c.file, func(t *testing.T) { replayCorpus(t, c.file, c.g) })
	}
}

func replayCorpus(t *testing.T, file string, g *grammar) {
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	n, bad, matches := 0, 0, 0
	for sc.Scan() {
		want, quoted, _ := strings.Cut(sc.Text(), "\t")
		src, err := strconv.Unquote(quoted)
		if err != nil {
			t.Fatalf("line %d: %v", n+1, err)
		}
		if gen := g.stmts(); gen != src {
			t.Fatalf("line %d: the generator gives %q, the corpus %q", n+1, gen, src)
		}
		n++
		matches += strings.Count(want, "1")
		c, err := Compile(src)
		got := "E"
		if err == nil {
			b := make([]byte, len(gramRecords))
			for i, r := range gramRecords {
				b[i] = "01"[btoi(c.Match(r))]
			}
			got = string(b)
		}
		if got != want {
			bad++
			if bad <= 20 {
				t.Errorf("%q: got %s, DataKit %s (%v)", src, got, want, err)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d conditions differ from DataKit", bad, n)
	}
	if n < 3000 || matches < 1000 {
		t.Fatalf("only %d conditions, %d matches in the corpus", n, matches)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// FuzzDataKitGrammar checks that every condition the grammar generates from
// a seed (all of which DataKit's parser takes, as the corpus shows)
// compiles in aggd and evaluates without panicking.
func FuzzDataKitGrammar(f *testing.F) {
	for _, s := range []int64{1, 2, 3, 42} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, seed int64) {
		g := &grammar{r: rand.New(rand.NewSource(seed)), plain: seed%2 == 0}
		src := g.stmts()
		c, err := Compile(src)
		if err != nil {
			t.Fatalf("%q: %v", src, err)
		}
		for _, r := range gramRecords {
			c.Match(r)
		}
	})
}

// TestExtensions covers what aggd takes beyond DataKit's grammar, each a
// syntax error in DataKit, so no DataKit condition changes meaning.
func TestExtensions(t *testing.T) {
	tests := []struct {
		cond string
		want bool
	}{
		{`st = "error"`, true},
		{`(st = "error")`, true},
		{`{ NOT (st = 'error') }`, false},
		{`{ !(st = 'ok') && a == 1 }`, true},
		{`{ not st = 'ok' }`, true},
		{`{ s NOT IN ["500"] }`, false},
		{`{ s NOT MATCH ['^9'] }`, true},
		{`{ $trace_duration > 5 }`, true},
		{`{ not = 1 }`, false}, // a field named not
	}
	r := rec{"st": Str("error"), "a": IntValue(1), "s": Str("500"), "$trace_duration": IntValue(6)}
	for _, tt := range tests {
		c, err := Compile(tt.cond)
		if err != nil {
			t.Errorf("%s: %v", tt.cond, err)
			continue
		}
		if got := c.Match(r); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.cond, got, tt.want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, src := range []string{
		`{ status = }`, `{ status "x" }`, `{ status = 'x'`, `status = 'x' }`, `{ (a = 1 }`, `{ a IN 1 }`,
		`{ a MATCH [1] }`, `{ a = re('(') }`, `{ a = 'unterminated }`, `{ a = 1 / 0 }`,
		`{ a = 1 AND }`, `{ a NOT = 1 }`, `{ a = 1 } x`, `{ a = 1 b = 2 }`, `{ a IN [1,] }`, `{ a = 5s }`,
		strings.Repeat("(", 200) + "a = 1" + strings.Repeat(")", 200),
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
	c, _ := Compile(`{ a = 1 AND (b IN [1] OR NOT c = 2) }; { d = nil }`)
	if got := strings.Join(c.Fields(), ","); got != "a,b,c,d" {
		t.Fatalf("got %s", got)
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	c, _ := Compile(`{ st = "error" AND s IN ["/a", "500"] OR s MATCH ['^x'] }; { a > 0 }`)
	var r Record = probe
	if n := testing.AllocsPerRun(100, func() { c.Match(r) }); n != 0 {
		t.Fatalf("%v allocations per Match", n)
	}
}

func BenchmarkMatch(b *testing.B) {
	c, _ := Compile(`{ st = "error" AND s IN ["/a", "/health"] OR a > 1000000000 }`)
	var r Record = probe
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c.Match(r)
	}
}

func FuzzCompile(f *testing.F) {
	for _, s := range []string{`{ status = "error" }`, `{ a IN [1, 'x'] AND NOT (b MATCH ['.*']) }`, `{ 1 = 1 }`, `{ x = re('a') || y >= -1.5e3 }; {}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		c, err := Compile(src)
		if err != nil {
			return
		}
		c.Match(probe)
		c.Fields()
		// A compiled condition compiles again from its own source.
		if _, err := Compile(c.String()); err != nil {
			t.Fatalf("recompiling %q: %v", src, err)
		}
	})
}
