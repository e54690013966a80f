// Package filter implements DataKit's filter (condition) language, shared
// by tail sampling and aggregation rules:
//
//	{ status = "error" AND duration > 1000000000 }
//	{ resource IN ["/health", "/ready"] OR NOT (kind != 'server') }
//	{ service = re('api-.*') AND host NOTMATCH ['^test-'] }
//	{ 1 = 1 }
//
// A condition is one braced expression (the braces are optional). It
// combines comparisons (=, ==, !=, <, <=, >, >=), list tests (IN, NOTIN or
// NOT IN, MATCH or NOTMATCH against regular expressions) and re('…') with
// AND, OR, NOT (also &&, ||, !) and parentheses. Keywords are case
// insensitive; names and values are not. Names may hold letters, digits,
// '_', '.', '-' and may start with '$'; `backquotes` quote any name.
// Strings take single or double quotes.
//
// Compiled once, a condition is evaluated against a Record without
// allocating. A comparison with a field the record lacks is false, and its
// negation (!=, NOTIN, NOTMATCH) true. Numbers compare numerically; a
// string compares with a number as a number when it parses as one.
package filter

import (
	"fmt"
	"regexp"
	"strconv"
)

// Kind is the kind of a Value.
type Kind uint8

// The value kinds.
const (
	Missing Kind = iota
	String
	Number
	Bool
)

// Value is a field's value.
type Value struct {
	Kind Kind
	Str  string
	Num  float64
	Bool bool
}

// Str, Num and BoolValue make values.
func Str(s string) Value     { return Value{Kind: String, Str: s} }
func Num(f float64) Value    { return Value{Kind: Number, Num: f} }
func BoolValue(b bool) Value { return Value{Kind: Bool, Bool: b} }

// Record gives a condition the fields of the item it tests.
type Record interface {
	// Field returns the value of the named field; ok is false when the
	// item has no such field.
	Field(name string) (v Value, ok bool)
}

// Condition is a compiled condition. It is safe for concurrent use.
type Condition struct {
	src  string
	root node
}

// String returns the source the condition was compiled from.
func (c *Condition) String() string { return c.src }

// Match reports whether r satisfies the condition. An empty condition
// matches everything.
func (c *Condition) Match(r Record) bool {
	if c == nil || c.root == nil {
		return true
	}
	return c.root.eval(r)
}

// Fields returns the field names the condition reads, once each.
func (c *Condition) Fields() []string {
	seen := map[string]bool{}
	var out []string
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
			for _, o := range []operand{n.l, n.r} {
				if o.field != "" && !seen[o.field] {
					seen[o.field] = true
					out = append(out, o.field)
				}
			}
		}
	}
	if c != nil && c.root != nil {
		walk(c.root)
	}
	return out
}

type node interface{ eval(r Record) bool }

type and struct{ l, r node }
type or struct{ l, r node }
type not struct{ x node }

func (n *and) eval(r Record) bool { return n.l.eval(r) && n.r.eval(r) }
func (n *or) eval(r Record) bool  { return n.l.eval(r) || n.r.eval(r) }
func (n *not) eval(r Record) bool { return !n.x.eval(r) }

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

var opNames = [...]string{"=", "!=", "<", "<=", ">", ">=", "IN", "NOTIN", "MATCH", "NOTMATCH"}

// operand is a field or a literal.
type operand struct {
	field string // set for a field
	lit   Value
}

func (o operand) value(r Record) (Value, bool) {
	if o.field == "" {
		return o.lit, true
	}
	return r.Field(o.field)
}

type cmp struct {
	op   op
	l, r operand
	list []Value          // IN, NOTIN
	res  []*regexp.Regexp // MATCH, NOTMATCH, re()
}

func (c *cmp) negated() bool { return c.op == opNe || c.op == opNotIn || c.op == opNotMatch }

func (c *cmp) eval(r Record) bool {
	lv, ok := c.l.value(r)
	if !ok || lv.Kind == Missing {
		return c.negated()
	}
	switch c.op {
	case opIn, opNotIn:
		in := false
		for _, v := range c.list {
			if equal(lv, v) {
				in = true
				break
			}
		}
		return in == (c.op == opIn)
	case opMatch, opNotMatch:
		m := false
		if lv.Kind == String {
			for _, re := range c.res {
				if re.MatchString(lv.Str) {
					m = true
					break
				}
			}
		}
		return m == (c.op == opMatch)
	}
	if c.res != nil { // = re('…'), != re('…')
		m := lv.Kind == String && c.res[0].MatchString(lv.Str)
		return m == (c.op == opEq)
	}
	rv, ok := c.r.value(r)
	if !ok || rv.Kind == Missing {
		return c.negated()
	}
	switch c.op {
	case opEq:
		return equal(lv, rv)
	case opNe:
		return !equal(lv, rv)
	}
	d, ok := compare(lv, rv)
	if !ok {
		return false
	}
	switch c.op {
	case opLt:
		return d < 0
	case opLe:
		return d <= 0
	case opGt:
		return d > 0
	}
	return d >= 0
}

// number returns v as a number, parsing strings.
func number(v Value) (float64, bool) {
	switch v.Kind {
	case Number:
		return v.Num, true
	case String:
		f, err := strconv.ParseFloat(v.Str, 64)
		return f, err == nil
	}
	return 0, false
}

func equal(a, b Value) bool {
	if a.Kind == b.Kind {
		switch a.Kind {
		case String:
			return a.Str == b.Str
		case Number:
			return a.Num == b.Num
		case Bool:
			return a.Bool == b.Bool
		}
		return false
	}
	if a.Kind == Bool || b.Kind == Bool { // true = "true"
		s := a
		if a.Kind == Bool {
			s = b
		}
		bv := a.Bool || b.Bool
		return s.Kind == String && s.Str == strconv.FormatBool(bv)
	}
	x, ok1 := number(a)
	y, ok2 := number(b)
	return ok1 && ok2 && x == y
}

// compare orders a and b: numerically when both are numbers (or numeric
// strings), else as strings when both are strings.
func compare(a, b Value) (int, bool) {
	if x, ok := number(a); ok {
		if y, ok := number(b); ok {
			switch {
			case x < y:
				return -1, true
			case x > y:
				return 1, true
			case x == y:
				return 0, true
			}
			return 0, false // NaN
		}
	}
	if a.Kind == String && b.Kind == String {
		switch {
		case a.Str < b.Str:
			return -1, true
		case a.Str > b.Str:
			return 1, true
		}
		return 0, true
	}
	return 0, false
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

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }
