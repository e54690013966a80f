package filter

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

type tokKind uint8

const (
	tEOF tokKind = iota
	tIdent
	tQuoted // `name`
	tString
	tNumber
	tOp    // = != < <= > >=
	tArith // + - * / % ^
	tLParen
	tRParen
	tLBrack
	tRBrack
	tLBrace
	tRBrace
	tComma
	tSemi
	tDot
	tAnd // AND &&
	tOr  // OR ||
	tBang
	tKeyword // DataKit's other keywords, lower-cased in text
)

type token struct {
	kind tokKind
	text string // identifier, operator, keyword (lower case), string value
	lit  Value  // tNumber
	pos  int
}

// keywords are DataKit's reserved words besides AND and OR, which are
// tokens of their own; none names a field.
var keywords = map[string]bool{
	"as": true, "asc": true, "auto": true, "by": true, "desc": true, "match": true, "notmatch": true,
	"false": true, "filter": true, "identifier": true, "in": true, "notin": true, "not_in": true,
	"limit": true, "link": true, "nil": true, "null": true, "offset": true, "with": true, "order": true,
	"re": true, "int": true, "float": true, "slimit": true, "soffset": true, "true": true, "tz": true,
}

// maxLen bounds a condition's source, and maxDepth its nesting, so that a
// hostile file cannot exhaust the parser.
const (
	maxLen   = 64 << 10
	maxDepth = 100
)

type lexer struct {
	src string
	pos int
}

func (l *lexer) errf(pos int, format string, args ...any) *Error {
	return &Error{Src: l.src, Pos: pos, Msg: fmt.Sprintf(format, args...)}
}

func isAlpha(c byte) bool   { return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool   { return c >= '0' && c <= '9' }
func isAlnum(c byte) bool   { return isAlpha(c) || isDigit(c) }
func isHex(c byte) bool     { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }
func (l *lexer) peek() byte { return l.at(l.pos) }

func (l *lexer) at(i int) byte {
	if i < len(l.src) {
		return l.src[i]
	}
	return 0
}

func (l *lexer) next() (token, error) {
	s := l.src
	for l.pos < len(s) {
		c := s[l.pos]
		if c == ' ' || c == '\t' || c == '\n' || c == '\r' {
			l.pos++
		} else if c == '#' { // a comment, to the end of the line
			for l.pos < len(s) && s[l.pos] != '\n' && s[l.pos] != '\r' {
				l.pos++
			}
		} else {
			break
		}
	}
	start := l.pos
	if l.pos >= len(s) {
		return token{kind: tEOF, pos: start}, nil
	}
	c := s[l.pos]
	n := l.at(l.pos + 1)
	tok := func(k tokKind, width int) (token, error) {
		l.pos += width
		return token{kind: k, text: s[start:l.pos], pos: start}, nil
	}
	switch {
	case c == '=' && n == '=': // aggd's ==
		l.pos += 2
		return token{kind: tOp, text: "=", pos: start}, nil
	case c == '!' && n == '=', c == '<' && n == '=', c == '>' && n == '=':
		return tok(tOp, 2)
	case c == '=' || c == '<' || c == '>':
		return tok(tOp, 1)
	case c == '!':
		return tok(tBang, 1)
	case c == '&' && n == '&':
		return tok(tAnd, 2)
	case c == '|' && n == '|':
		return tok(tOr, 2)
	case isDigit(c): // DataKit reads .5 as a dot and 5
		return l.number()
	case c == '+' || c == '-' || c == '*' || c == '/' || c == '%' || c == '^':
		return tok(tArith, 1)
	case c == '"' || c == '\'':
		return l.str(c)
	case c == '`':
		end := strings.IndexByte(s[l.pos+1:], '`')
		if end < 0 {
			return token{}, l.errf(start, "unterminated `name`")
		}
		name := s[start+1 : start+1+end]
		if !utf8.ValidString(name) {
			return token{}, l.errf(start, "name is not valid UTF-8")
		}
		l.pos += end + 2
		return token{kind: tQuoted, text: name, pos: start}, nil
	case isAlpha(c) || c == '$' && isAlpha(n):
		l.pos++
		for l.pos < len(s) && isAlnum(s[l.pos]) {
			l.pos++
		}
		text := s[start:l.pos]
		switch kw := strings.ToLower(text); {
		case kw == "and":
			return token{kind: tAnd, pos: start}, nil
		case kw == "or":
			return token{kind: tOr, pos: start}, nil
		case kw == "inf" || kw == "nan":
			f, _ := strconv.ParseFloat(kw, 64)
			return token{kind: tNumber, text: text, lit: Num(f), pos: start}, nil
		case keywords[kw]:
			return token{kind: tKeyword, text: kw, pos: start}, nil
		}
		return token{kind: tIdent, text: text, pos: start}, nil
	}
	single := map[byte]tokKind{'(': tLParen, ')': tRParen, '[': tLBrack, ']': tRBrack, '{': tLBrace,
		'}': tRBrace, ',': tComma, ';': tSemi, '.': tDot}
	if k, ok := single[c]; ok {
		return tok(k, 1)
	}
	return token{}, l.errf(start, "unexpected character %q", c)
}

// number reads a number as DataKit's lexer does, and types it as DataKit's
// parser does: an integer when strconv.ParseInt(text, 0, 64) takes it (so
// 0x1f is hexadecimal and 017 octal), else a float.
func (l *lexer) number() (token, error) {
	s, start := l.src, l.pos
	hex := false
	if l.peek() == '0' && (l.at(l.pos+1) == 'x' || l.at(l.pos+1) == 'X') {
		hex = true
		l.pos += 2
	}
	digits := func() {
		for l.pos < len(s) && (isDigit(s[l.pos]) || hex && isHex(s[l.pos])) {
			l.pos++
		}
	}
	digits()
	if l.peek() == '.' {
		l.pos++
		digits()
	}
	if c := l.peek(); c == 'e' || c == 'E' {
		l.pos++
		if c := l.peek(); c == '+' || c == '-' {
			l.pos++
		}
		for l.pos < len(s) && isDigit(s[l.pos]) {
			l.pos++
		}
	}
	text := s[start:l.pos]
	if isAlnum(l.peek()) {
		return token{}, l.errf(start, "bad number %q", text+string(l.peek()))
	}
	if i, err := strconv.ParseInt(text, 0, 64); err == nil {
		return token{kind: tNumber, text: text, lit: IntValue(i), pos: start}, nil
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil {
		return token{}, l.errf(start, "bad number %q", text)
	}
	return token{kind: tNumber, text: text, lit: Num(f), pos: start}, nil
}

// str reads a quoted string with Go's escapes (a quote escapes only
// itself); like DataKit's, it may not span lines.
func (l *lexer) str(q byte) (token, error) {
	start := l.pos
	var b strings.Builder
	rest := l.src[l.pos+1:]
	for {
		if rest == "" || rest[0] == '\n' {
			return token{}, l.errf(start, "unterminated string")
		}
		if rest[0] == q {
			l.pos = len(l.src) - len(rest) + 1
			return token{kind: tString, text: b.String(), pos: start}, nil
		}
		if rest[0] != '\\' {
			r, size := utf8.DecodeRuneInString(rest)
			if r == utf8.RuneError && size <= 1 {
				return token{}, l.errf(len(l.src)-len(rest), "string is not valid UTF-8")
			}
			b.WriteString(rest[:size])
			rest = rest[size:]
			continue
		}
		r, multibyte, tail, err := strconv.UnquoteChar(rest, q)
		if err != nil {
			return token{}, l.errf(len(l.src)-len(rest), "bad escape in string")
		}
		if r < utf8.RuneSelf || !multibyte {
			b.WriteByte(byte(r))
		} else {
			b.WriteRune(r)
		}
		rest = tail
	}
}

type parser struct {
	lex   lexer
	tok   token
	depth int
}

func (p *parser) advance() error {
	t, err := p.lex.next()
	if err != nil {
		return err
	}
	p.tok = t
	return nil
}

// namedList reports whether a function argument name = [...] starts here.
func (p *parser) namedList() bool {
	if p.tok.kind != tIdent && p.tok.kind != tQuoted {
		return false
	}
	l := p.lex
	t1, err1 := l.next()
	t2, err2 := l.next()
	return err1 == nil && err2 == nil && t1.kind == tOp && t1.text == "=" && t2.kind == tLBrack
}

// peekTok returns the token after the current one.
func (p *parser) peekTok() token {
	l := p.lex
	t, err := l.next()
	if err != nil {
		return token{kind: tEOF}
	}
	return t
}

func (p *parser) expect(k tokKind, what string) error {
	if p.tok.kind != k {
		return p.lex.errf(p.tok.pos, "expected %s", what)
	}
	return p.advance()
}

// Compile parses a condition. A condition of only blanks never matches, as
// in DataKit; callers treat an absent condition as matching everything.
func Compile(src string) (*Condition, error) {
	if len(src) > maxLen {
		return nil, &Error{Src: src[:64] + "…", Msg: fmt.Sprintf("condition longer than %d bytes", maxLen)}
	}
	p := &parser{lex: lexer{src: src}}
	if err := p.advance(); err != nil {
		return nil, err
	}
	c := &Condition{src: src}
	switch p.tok.kind {
	case tLBrace, tSemi, tEOF: // DataKit's list of braced conditions
		alt, err := p.braced()
		if err != nil {
			return nil, err
		}
		c.alts = append(c.alts, alt)
		for p.tok.kind == tSemi {
			if err := p.advance(); err != nil {
				return nil, err
			}
			if p.tok.kind == tLBrace {
				if alt, err = p.braced(); err != nil {
					return nil, err
				}
				c.alts = append(c.alts, alt)
			}
		}
	default: // aggd: one condition without braces
		e, err := p.expr(0)
		if err != nil {
			return nil, err
		}
		n, err := p.condition(e, true)
		if err != nil {
			return nil, err
		}
		c.alts = [][]node{{n}}
	}
	if p.tok.kind != tEOF {
		return nil, p.lex.errf(p.tok.pos, "unexpected text after the condition")
	}
	return c, nil
}

// braced reads { cond, cond, ... } into its ANDed conditions, or nothing
// into nil.
func (p *parser) braced() ([]node, error) {
	if p.tok.kind != tLBrace {
		return nil, nil
	}
	if err := p.advance(); err != nil {
		return nil, err
	}
	alt := []node{}
	for p.tok.kind != tRBrace {
		if p.tok.kind == tComma {
			if err := p.advance(); err != nil {
				return nil, err
			}
			continue
		}
		e, err := p.expr(0)
		if err != nil {
			return nil, err
		}
		n, err := p.condition(e, false)
		if err != nil {
			return nil, err
		}
		alt = append(alt, n)
		if p.tok.kind != tComma && p.tok.kind != tRBrace {
			return nil, p.lex.errf(p.tok.pos, "expected , or }")
		}
	}
	return alt, p.advance()
}

// condition turns an expression standing for a condition into its node.
// A parenthesised expression standing alone in a brace list is false, as
// in DataKit; a bare condition (aggd's) is evaluated.
func (p *parser) condition(e expr, bare bool) (node, error) {
	switch e.kind {
	case eBin:
		return e.n, nil
	case eParen:
		if bare {
			return e.n, nil
		}
		return never{}, nil
	}
	return nil, p.lex.errf(e.pos, "expected a condition")
}

type exprKind uint8

const (
	eTerm  exprKind = iota // a literal, field or regular expression
	eOther                 // what DataKit parses and cannot evaluate: a.b, f(x), *
	eBin                   // a binary expression: a condition, or arithmetic (false)
	eParen                 // ( expr )
)

type expr struct {
	kind exprKind
	o    operand
	n    node // eBin, eParen: the condition
	pos  int
}

func (e expr) evaluable() bool { return e.kind == eBin || e.kind == eParen }

// Binding powers, as DataKit's grammar declares them.
const (
	precOr = iota + 1
	precAnd
	precCmp
	precAdd
	precMul
	precPow
)

func (p *parser) binPrec() (int, bool) {
	switch t := p.tok; t.kind {
	case tOr:
		return precOr, false
	case tAnd:
		return precAnd, false
	case tOp:
		return precCmp, false
	case tArith:
		switch t.text {
		case "+", "-":
			return precAdd, false
		case "^":
			return precPow, true
		}
		return precMul, false
	}
	return 0, false
}

// expr reads an expression whose operators bind tighter than min.
func (p *parser) expr(min int) (expr, error) {
	p.depth++
	defer func() { p.depth-- }()
	if p.depth > maxDepth {
		return expr{}, p.lex.errf(p.tok.pos, "nested more than %d deep", maxDepth)
	}
	l, err := p.unary()
	if err != nil {
		return expr{}, err
	}
	for {
		prec, right := p.binPrec()
		if prec == 0 || prec <= min {
			return l, nil
		}
		t := p.tok
		if err := p.advance(); err != nil {
			return expr{}, err
		}
		next := prec
		if right {
			next = prec - 1
		}
		r, err := p.expr(next)
		if err != nil {
			return expr{}, err
		}
		if l, err = p.binary(t, l, r); err != nil {
			return expr{}, err
		}
	}
}

var cmpOps = map[string]op{"=": opEq, "!=": opNe, "<": opLt, "<=": opLe, ">": opGt, ">=": opGe}

func (p *parser) binary(t token, l, r expr) (expr, error) {
	out := expr{kind: eBin, n: never{}, pos: l.pos}
	switch t.kind {
	case tAnd, tOr:
		if l.evaluable() && r.evaluable() {
			if t.kind == tAnd {
				out.n = &and{l.n, r.n}
			} else {
				out.n = &or{l.n, r.n}
			}
		}
	case tOp:
		// DataKit evaluates a literal or a field against a literal or re().
		if l.kind == eTerm && l.o.re == nil && r.kind == eTerm && r.o.field == "" {
			out.n = &cmp{op: cmpOps[t.text], l: l.o, r: r.o}
		}
	case tArith:
		if (t.text == "/" || t.text == "%") && r.kind == eTerm && r.o.field == "" && r.o.re == nil &&
			(r.o.lit.Kind == Int && r.o.lit.I == 0 || r.o.lit.Kind == Float && r.o.lit.Num == 0) {
			return expr{}, p.lex.errf(t.pos, "division or modulo by zero")
		}
	}
	return out, nil
}

// unary reads aggd's NOT or ! before a condition, or a primary.
func (p *parser) unary() (expr, error) {
	t := p.tok
	isNot := t.kind == tBang || t.kind == tIdent && strings.EqualFold(t.text, "not") && p.startsOperand(p.peekTok())
	if !isNot {
		return p.primary()
	}
	if err := p.advance(); err != nil {
		return expr{}, err
	}
	x, err := p.expr(precAnd)
	if err != nil {
		return expr{}, err
	}
	if !x.evaluable() {
		return expr{}, p.lex.errf(t.pos, "NOT takes a condition")
	}
	return expr{kind: eBin, n: &not{x.n}, pos: t.pos}, nil
}

// startsOperand reports whether t can follow aggd's NOT: a NOT followed by
// anything else is a field named not.
func (p *parser) startsOperand(t token) bool {
	switch t.kind {
	case tIdent, tQuoted, tString, tNumber, tLParen, tBang:
		return true
	case tKeyword:
		return t.text == "nil" || t.text == "null" || t.text == "true" || t.text == "false" || t.text == "identifier" || t.text == "re"
	}
	return false
}

func (p *parser) primary() (expr, error) {
	t := p.tok
	e := expr{kind: eTerm, pos: t.pos}
	switch t.kind {
	case tNumber:
		e.o.lit = t.lit
		return e, p.advance()
	case tArith: // a sign before a number
		if t.text != "+" && t.text != "-" {
			break
		}
		if err := p.advance(); err != nil {
			return expr{}, err
		}
		if p.tok.kind != tNumber {
			return expr{}, p.lex.errf(p.tok.pos, "expected a number after %s", t.text)
		}
		e.o.lit = p.tok.lit
		if t.text == "-" {
			e.o.lit.I, e.o.lit.Num = -e.o.lit.I, -e.o.lit.Num
		}
		return e, p.advance()
	case tString:
		e.o.lit = Str(t.text)
		return e, p.advance()
	case tLParen:
		if err := p.advance(); err != nil {
			return expr{}, err
		}
		x, err := p.expr(0)
		if err != nil {
			return expr{}, err
		}
		if err := p.expect(tRParen, ")"); err != nil {
			return expr{}, err
		}
		e.kind, e.n = eParen, never{}
		if x.evaluable() {
			e.n = x.n
		}
		return e, nil
	case tKeyword:
		switch t.text {
		case "nil", "null":
			e.o.lit = nilValue()
			return e, p.advance()
		case "true", "false":
			e.o.lit = BoolValue(t.text == "true")
			return e, p.advance()
		case "re":
			return p.reCall()
		case "identifier":
			return p.column()
		}
	case tIdent, tQuoted:
		return p.column()
	}
	if t.kind == tArith && t.text == "*" {
		return expr{kind: eOther, pos: t.pos}, p.advance()
	}
	return expr{}, p.lex.errf(t.pos, "expected a name or a value")
}

// name reads a name: an identifier, `quoted`, or identifier('…').
func (p *parser) name() (string, error) {
	t := p.tok
	switch t.kind {
	case tIdent, tQuoted:
		return t.text, p.advance()
	case tKeyword:
		if t.text == "identifier" {
			if err := p.advance(); err != nil {
				return "", err
			}
			if err := p.expect(tLParen, "( after identifier"); err != nil {
				return "", err
			}
			s := p.tok
			if s.kind != tString {
				return "", p.lex.errf(s.pos, "identifier takes a string")
			}
			if err := p.advance(); err != nil {
				return "", err
			}
			return s.text, p.expect(tRParen, ")")
		}
	}
	return "", p.lex.errf(t.pos, "expected a name")
}

// column reads a name and what may follow it: .attr (false in DataKit), a
// function call (false), or a list test.
func (p *parser) column() (expr, error) {
	pos := p.tok.pos
	name, err := p.name()
	if err != nil {
		return expr{}, err
	}
	e := expr{kind: eTerm, o: operand{field: name}, pos: pos}
	for p.tok.kind == tDot {
		if err := p.advance(); err != nil {
			return expr{}, err
		}
		if _, err := p.name(); err != nil {
			return expr{}, err
		}
		e = expr{kind: eOther, pos: pos}
	}
	if p.tok.kind == tLParen {
		return p.call(pos)
	}
	t := p.tok
	var o op
	switch {
	case t.kind == tKeyword && t.text == "in":
		o = opIn
	case t.kind == tKeyword && (t.text == "notin" || t.text == "not_in"):
		o = opNotIn
	case t.kind == tKeyword && t.text == "match":
		o = opMatch
	case t.kind == tKeyword && t.text == "notmatch":
		o = opNotMatch
	case t.kind == tIdent && strings.EqualFold(t.text, "not"): // aggd's NOT IN, NOT MATCH
		nt := p.peekTok()
		switch {
		case nt.kind == tKeyword && nt.text == "in":
			o = opNotIn
		case nt.kind == tKeyword && nt.text == "match":
			o = opNotMatch
		default:
			return e, nil
		}
		if err := p.advance(); err != nil {
			return expr{}, err
		}
	default:
		return e, nil
	}
	if err := p.advance(); err != nil {
		return expr{}, err
	}
	vals, err := p.list()
	if err != nil {
		return expr{}, err
	}
	n := &list{op: o, field: e.o.field}
	if o == opMatch || o == opNotMatch {
		for _, v := range vals {
			if v.Kind != String {
				return expr{}, p.lex.errf(t.pos, "MATCH takes regular expressions as strings")
			}
			// DataKit drops an expression it cannot compile.
			if re, err := regexp.Compile(v.Str); err == nil {
				n.res = append(n.res, re)
			}
		}
	} else {
		for _, v := range vals {
			if v.Kind != Missing { // DataKit skips names and * in lists
				n.vals = append(n.vals, v)
			}
		}
	}
	out := expr{kind: eBin, n: n, pos: pos}
	if e.kind != eTerm {
		out.n = never{}
	}
	return out, nil
}

// call reads a function call's arguments, and cascaded calls; DataKit
// evaluates none.
func (p *parser) call(pos int) (expr, error) {
	for {
		if err := p.advance(); err != nil { // (
			return expr{}, err
		}
		for p.tok.kind != tRParen {
			switch {
			case p.tok.kind == tComma:
				if err := p.advance(); err != nil {
					return expr{}, err
				}
				continue
			case p.tok.kind == tLBrack:
				if _, err := p.list(); err != nil {
					return expr{}, err
				}
			case p.namedList():
				if err := p.advance(); err != nil { // the name
					return expr{}, err
				}
				if err := p.advance(); err != nil { // =
					return expr{}, err
				}
				if _, err := p.list(); err != nil {
					return expr{}, err
				}
			default:
				if _, err := p.expr(0); err != nil {
					return expr{}, err
				}
			}
			if p.tok.kind != tComma && p.tok.kind != tRParen {
				return expr{}, p.lex.errf(p.tok.pos, "expected , or )")
			}
		}
		if err := p.advance(); err != nil {
			return expr{}, err
		}
		if p.tok.kind != tDot {
			return expr{kind: eOther, pos: pos}, nil
		}
		if err := p.advance(); err != nil {
			return expr{}, err
		}
		if _, err := p.name(); err != nil {
			return expr{}, err
		}
		for p.tok.kind == tDot {
			if err := p.advance(); err != nil {
				return expr{}, err
			}
			if _, err := p.name(); err != nil {
				return expr{}, err
			}
		}
		if p.tok.kind != tLParen {
			return expr{}, p.lex.errf(p.tok.pos, "expected ( of a cascaded call")
		}
	}
}

func (p *parser) reCall() (expr, error) {
	pos := p.tok.pos
	if err := p.advance(); err != nil {
		return expr{}, err
	}
	if err := p.expect(tLParen, "( after re"); err != nil {
		return expr{}, err
	}
	if p.tok.kind != tString && p.tok.kind != tQuoted {
		return expr{}, p.lex.errf(p.tok.pos, "re takes a string")
	}
	re, err := regexp.Compile(p.tok.text)
	if err != nil {
		return expr{}, p.lex.errf(pos, "bad regular expression: %v", err)
	}
	if err := p.advance(); err != nil {
		return expr{}, err
	}
	return expr{kind: eTerm, o: operand{re: re}, pos: pos}, p.expect(tRParen, ")")
}

// list reads [v, v, ...] as DataKit's array_list: values, and Missing for
// the names and * DataKit skips. Like DataKit, it takes a comma before the
// first element but none after the last.
func (p *parser) list() ([]Value, error) {
	if err := p.expect(tLBrack, "["); err != nil {
		return nil, err
	}
	var out []Value
	first := true
	for p.tok.kind != tRBrack {
		if !first || p.tok.kind == tComma {
			if err := p.expect(tComma, ", or ]"); err != nil {
				return nil, err
			}
		}
		first = false
		switch t := p.tok; {
		case t.kind == tArith && t.text == "*":
			out = append(out, Value{})
			if err := p.advance(); err != nil {
				return nil, err
			}
			continue
		case t.kind == tIdent, t.kind == tQuoted, t.kind == tKeyword && t.text == "identifier":
			e, err := p.column()
			if err != nil {
				return nil, err
			}
			if e.kind != eTerm && e.kind != eOther {
				return nil, p.lex.errf(t.pos, "expected a value in the list")
			}
			out = append(out, Value{})
			continue
		case t.kind == tKeyword && t.text == "re", t.kind == tLParen:
			return nil, p.lex.errf(t.pos, "expected a value in the list")
		}
		e, err := p.primary()
		if err != nil {
			return nil, err
		}
		out = append(out, e.o.lit)
	}
	return out, p.advance()
}
