// Package filter implements DataKit's filter (condition) language, shared
// by tail sampling and aggregation rules, with DataKit's meaning:
//
//	{ status = "error", duration > 1000000 }
//	{ resource IN ["/health", "/ready"] }; { service = re('api-.*') }
//	{ host NOTMATCH ['^test-'] AND (code = "500" OR code = "503") }
//	{ error = nil }
//
// A condition is a list of braced conditions separated by ';', ORed; inside
// braces, ',' separates conditions that are ANDed, and AND, OR (also &&,
// ||) and parentheses combine comparisons (=, !=, <, <=, >, >=), list tests
// (IN, NOTIN or NOT_IN, MATCH, NOTMATCH) and re('…'). Keywords are case
// insensitive. Names are letters, digits and '_'; `backquotes` or
// identifier('…') name any field. Strings take single or double quotes and
// Go's escapes; '#' starts a comment.
//
// Evaluation follows DataKit's evaluator (cliutils filter, BinaryExpr.Eval):
//
//   - Comparisons are typed: an integer literal (1) compares only with
//     integer fields, a float literal (1.0) with float fields, a string with
//     strings; a comparison of two kinds is false, with != as well. Floats
//     are equal within 1e-9.
//   - nil and NULL stand for absence: { x = nil } holds when x is missing,
//     { x != nil } when it is present. A missing field makes =, <, <=, >, >=,
//     MATCH and NOTMATCH false and != true. x IN [...] on a missing x holds
//     only when the list's first element is nil; x NOTIN [...] on a missing
//     x holds unless the list holds nil.
//   - x != re('…') holds for every string x, and NOTMATCH holds when x
//     fails at least one of the expressions.
//   - What DataKit parses but does not evaluate is false: a name with dots
//     or a hyphen (a.b, a-b: write `a.b`), arithmetic, function calls, a
//     field on the right of a comparison, and a parenthesised condition
//     standing alone in a brace list, { (a = 1) }.
//
// aggd also takes what DataKit refuses to parse, so no DataKit condition
// changes meaning: a condition without braces, NOT or ! before a condition
// or a parenthesised one, ==, NOT IN and NOT MATCH, and names starting
// with '$' (trace-level fields in tail sampling).
//
// Compiled once, a condition is evaluated against a Record without
// allocating.
package filter

import (
	"fmt"
	"math"
	"regexp"
)

// Kind is the kind of a Value.
type Kind uint8

// The value kinds. Nil is only a literal (nil, NULL).
const (
	Missing Kind = iota
	String
	Int
	Float
	Bool
	Nil
)

// Value is a field's value.
type Value struct {
	Kind Kind
	Str  string
	I    int64
	Num  float64
	Bool bool
}

// Str, IntValue, Num and BoolValue make values: a string, an integer, a
// float and a boolean.
func Str(s string) Value     { return Value{Kind: String, Str: s} }
func IntValue(i int64) Value { return Value{Kind: Int, I: i} }
func Num(f float64) Value    { return Value{Kind: Float, Num: f} }
func BoolValue(b bool) Value { return Value{Kind: Bool, Bool: b} }
func nilValue() Value        { return Value{Kind: Nil} }
func (v Value) isNil() bool  { return v.Kind == Nil }

// Record gives a condition the fields of the item it tests.
type Record interface {
	// Field returns the value of the named field; ok is false when the
	// item has no such field.
	Field(name string) (v Value, ok bool)
}

// Condition is a compiled condition. It is safe for concurrent use.
type Condition struct {
	src string
	// alts are ORed. A nil alternative is an empty one (a condition of
	// only blanks): reaching it ends the evaluation with no match, as in
	// DataKit.
	alts [][]node
}

// String returns the source the condition was compiled from.
func (c *Condition) String() string { return c.src }

// Match reports whether r satisfies the condition. A nil condition matches
// everything.
func (c *Condition) Match(r Record) bool {
	if c == nil {
		return true
	}
	for _, alt := range c.alts {
		if alt == nil {
			return false
		}
		ok := true
		for _, n := range alt {
			if !n.eval(r) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// Fields returns the field names the condition reads, once each.
func (c *Condition) Fields() []string {
	seen := map[string]bool{}
	var out []string
	add := func(f string) {
		if f != "" && !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	var walk func(n node)
	walk = func(n node) {
		switch n := n.(type) {
		case *and:
			walk(n.l)
			walk(n.r)
		case *or:
			walk(n.l)
			walk(n.r)
		case *not:
			walk(n.x)
		case *cmp:
			add(n.l.field)
			add(n.r.field)
		case *list:
			add(n.field)
		}
	}
	if c != nil {
		for _, alt := range c.alts {
			for _, n := range alt {
				walk(n)
			}
		}
	}
	return out
}

type node interface{ eval(r Record) bool }

type and struct{ l, r node }
type or struct{ l, r node }
type not struct{ x node }

// never is what DataKit parses and evaluates as false.
type never struct{}

func (n *and) eval(r Record) bool { return n.l.eval(r) && n.r.eval(r) }
func (n *or) eval(r Record) bool  { return n.l.eval(r) || n.r.eval(r) }
func (n *not) eval(r Record) bool { return !n.x.eval(r) }
func (never) eval(Record) bool    { return false }

type op uint8

const (
	opEq op = iota
	opNe
	opLt
	opLe
	opGt
	opGe
	opIn
	opNotIn
	opMatch
	opNotMatch
)

// operand is a field, a literal or a regular expression.
type operand struct {
	field string // set for a field
	lit   Value
	re    *regexp.Regexp
}

// cmp is a comparison whose sides DataKit evaluates: a literal or a field
// on the left, a literal or re() on the right.
type cmp struct {
	op   op
	l, r operand
}

func (c *cmp) eval(rec Record) bool {
	if c.l.field == "" {
		return binEval(c.op, c.l, c.r)
	}
	v, ok := rec.Field(c.l.field)
	if !ok || v.Kind == Missing {
		return binEval(c.op, c.r, operand{lit: nilValue()})
	}
	return binEval(c.op, operand{lit: v}, c.r)
}

// binEval is DataKit's binEval: l op r for a literal or regular expression
// r.
func binEval(o op, l, r operand) bool {
	if r.re != nil {
		if l.re != nil || l.lit.Kind != String {
			return false
		}
		switch o {
		case opEq:
			return r.re.MatchString(l.lit.Str)
		case opNe:
			return true // a string never equals a regular expression
		}
		return false
	}
	if !r.lit.isNil() && (l.re != nil || l.lit.Kind != r.lit.Kind) {
		return false // type conflict
	}
	if l.re != nil {
		return o == opNe // a regular expression compared with nil
	}
	a, b := l.lit, r.lit
	switch o {
	case opEq:
		if a.Kind == Float {
			return b.Kind == Float && math.Abs(a.Num-b.Num) <= 1e-9
		}
		return same(a, b)
	case opNe:
		if a.isNil() && b.isNil() {
			return false
		}
		return !same(a, b)
	}
	if a.Kind != b.Kind {
		return false
	}
	var d int
	switch a.Kind {
	case Int:
		d = cmp3(a.I < b.I, a.I > b.I)
	case Float:
		if a.Num != a.Num || b.Num != b.Num { // NaN
			return false
		}
		d = cmp3(a.Num < b.Num, a.Num > b.Num)
	case String:
		d = cmp3(a.Str < b.Str, a.Str > b.Str)
	default:
		return false
	}
	switch o {
	case opLt:
		return d < 0
	case opLe:
		return d <= 0
	case opGt:
		return d > 0
	}
	return d >= 0
}

func cmp3(lt, gt bool) int {
	switch {
	case lt:
		return -1
	case gt:
		return 1
	}
	return 0
}

// same is Go's equality of the values DataKit compares: kinds and values
// equal (floats exactly).
func same(a, b Value) bool {
	if a.Kind != b.Kind {
		return false
	}
	switch a.Kind {
	case String:
		return a.Str == b.Str
	case Int:
		return a.I == b.I
	case Float:
		return a.Num == b.Num
	case Bool:
		return a.Bool == b.Bool
	}
	return true // nil
}

// list is field IN/NOTIN/MATCH/NOTMATCH [...].
type list struct {
	op    op
	field string
	vals  []Value          // IN, NOTIN
	res   []*regexp.Regexp // MATCH, NOTMATCH
}

func (n *list) eval(rec Record) bool {
	v, ok := rec.Field(n.field)
	present := ok && v.Kind != Missing
	switch n.op {
	case opIn:
		if !present {
			return len(n.vals) > 0 && n.vals[0].isNil()
		}
		for _, x := range n.vals {
			if binEval(opEq, operand{lit: v}, operand{lit: x}) {
				return true
			}
		}
		return false
	case opNotIn:
		for _, x := range n.vals {
			if present && binEval(opEq, operand{lit: v}, operand{lit: x}) || !present && x.isNil() {
				return false
			}
		}
		return true
	}
	if !present || v.Kind != String {
		return false
	}
	for _, re := range n.res {
		if re.MatchString(v.Str) == (n.op == opMatch) {
			return true
		}
	}
	return false
}

// Error is a syntax error with its position in the source.
type Error struct {
	Src string
	Pos int
	Msg string
}

func (e *Error) Error() string {
	return fmt.Sprintf("condition %q: at offset %d: %s", e.Src, e.Pos, e.Msg)
}
