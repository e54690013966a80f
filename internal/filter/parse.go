package filter

import (
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

type tokKind uint8

const (
	tEOF tokKind = iota
	tIdent
	tString
	tNumber
	tOp     // = == != < <= > >=
	tLParen // (
	tRParen
	tLBrack // [
	tRBrack
	tLBrace // {
	tRBrace
	tComma
	tAnd // AND &&
	tOr  // OR ||
	tNot // NOT !
)

type token struct {
	kind tokKind
	text string // identifier (keywords upper-cased in kw), operator, string value
	kw   string // upper-cased identifier, for keywords
	num  float64
	pos  int
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
	return &Error{Src: l.src, Pos: pos, Msg: sprintf(format, args...)}
}

func isIdentStart(c byte) bool {
	return c == '_' || c == '$' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

func isIdentPart(c byte) bool {
	return isIdentStart(c) || c >= '0' && c <= '9' || c == '.' || c == '-'
}

func (l *lexer) next() (token, error) {
	s := l.src
	for l.pos < len(s) && (s[l.pos] == ' ' || s[l.pos] == '\t' || s[l.pos] == '\n' || s[l.pos] == '\r') {
		l.pos++
	}
	start := l.pos
	if l.pos >= len(s) {
		return token{kind: tEOF, pos: start}, nil
	}
	c := s[l.pos]
	two := ""
	if l.pos+1 < len(s) {
		two = s[l.pos : l.pos+2]
	}
	switch {
	case two == "==" || two == "!=" || two == "<=" || two == ">=":
		l.pos += 2
		t := two
		if t == "==" {
			t = "="
		}
		return token{kind: tOp, text: t, pos: start}, nil
	case two == "&&":
		l.pos += 2
		return token{kind: tAnd, pos: start}, nil
	case two == "||":
		l.pos += 2
		return token{kind: tOr, pos: start}, nil
	case c == '=' || c == '<' || c == '>':
		l.pos++
		return token{kind: tOp, text: string(c), pos: start}, nil
	case c == '!':
		l.pos++
		return token{kind: tNot, pos: start}, nil
	}
	single := map[byte]tokKind{'(': tLParen, ')': tRParen, '[': tLBrack, ']': tRBrack, '{': tLBrace, '}': tRBrace, ',': tComma}
	if k, ok := single[c]; ok {
		l.pos++
		return token{kind: k, pos: start}, nil
	}
	switch {
	case c == '"' || c == '\'':
		return l.str(c)
	case c == '`':
		end := strings.IndexByte(s[l.pos+1:], '`')
		if end < 0 {
			return token{}, l.errf(start, "unterminated `name`")
		}
		l.pos += end + 2
		return token{kind: tIdent, text: s[start+1 : start+1+end], pos: start}, nil
	case c >= '0' && c <= '9' || (c == '-' || c == '+' || c == '.') && l.pos+1 < len(s) && (s[l.pos+1] >= '0' && s[l.pos+1] <= '9' || s[l.pos+1] == '.'):
		l.pos++
		for l.pos < len(s) && (isIdentPart(s[l.pos]) || (s[l.pos] == '+' || s[l.pos] == '-') && (s[l.pos-1] == 'e' || s[l.pos-1] == 'E')) {
			l.pos++
		}
		text := s[start:l.pos]
		f, err := strconv.ParseFloat(strings.ReplaceAll(text, "_", ""), 64)
		if err != nil {
			if i, ierr := strconv.ParseInt(text, 0, 64); ierr == nil {
				f = float64(i)
			} else {
				return token{}, l.errf(start, "bad number %q", text)
			}
		}
		return token{kind: tNumber, num: f, text: text, pos: start}, nil
	case isIdentStart(c):
		for l.pos < len(s) && isIdentPart(s[l.pos]) {
			l.pos++
		}
		text := s[start:l.pos]
		if !utf8.ValidString(text) {
			return token{}, l.errf(start, "name is not valid UTF-8")
		}
		kw := strings.ToUpper(text)
		switch kw {
		case "AND":
			return token{kind: tAnd, pos: start}, nil
		case "OR":
			return token{kind: tOr, pos: start}, nil
		case "NOT":
			return token{kind: tNot, pos: start}, nil
		}
		return token{kind: tIdent, text: text, kw: kw, pos: start}, nil
	}
	return token{}, l.errf(start, "unexpected character %q", c)
}

func (l *lexer) str(q byte) (token, error) {
	start := l.pos
	s := l.src
	var b strings.Builder
	for i := l.pos + 1; i < len(s); i++ {
		switch s[i] {
		case q:
			l.pos = i + 1
			return token{kind: tString, text: b.String(), pos: start}, nil
		case '\\':
			if i+1 >= len(s) {
				return token{}, l.errf(i, "unterminated string")
			}
			i++
			switch s[i] {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			default: // \\, \", \', and any other escaped byte as itself
				b.WriteByte(s[i])
			}
		default:
			b.WriteByte(s[i])
		}
	}
	return token{}, l.errf(start, "unterminated string")
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

// Compile parses a condition. An empty condition, or empty braces, matches
// everything.
func Compile(src string) (*Condition, error) {
	if len(src) > maxLen {
		return nil, &Error{Src: src[:64] + "…", Msg: sprintf("condition longer than %d bytes", maxLen)}
	}
	p := &parser{lex: lexer{src: src}}
	if err := p.advance(); err != nil {
		return nil, err
	}
	braced := p.tok.kind == tLBrace
	if braced {
		if err := p.advance(); err != nil {
			return nil, err
		}
	}
	c := &Condition{src: src}
	if !(braced && p.tok.kind == tRBrace) && p.tok.kind != tEOF {
		n, err := p.or()
		if err != nil {
			return nil, err
		}
		c.root = n
	}
	if braced {
		if p.tok.kind != tRBrace {
			return nil, p.lex.errf(p.tok.pos, "expected }")
		}
		if err := p.advance(); err != nil {
			return nil, err
		}
	}
	if p.tok.kind != tEOF {
		return nil, p.lex.errf(p.tok.pos, "unexpected text after the condition")
	}
	return c, nil
}

func (p *parser) or() (node, error) {
	l, err := p.and()
	if err != nil {
		return nil, err
	}
	for p.tok.kind == tOr {
		if err := p.advance(); err != nil {
			return nil, err
		}
		r, err := p.and()
		if err != nil {
			return nil, err
		}
		l = &or{l, r}
	}
	return l, nil
}

func (p *parser) and() (node, error) {
	l, err := p.not()
	if err != nil {
		return nil, err
	}
	for p.tok.kind == tAnd {
		if err := p.advance(); err != nil {
			return nil, err
		}
		r, err := p.not()
		if err != nil {
			return nil, err
		}
		l = &and{l, r}
	}
	return l, nil
}

func (p *parser) not() (node, error) {
	p.depth++
	defer func() { p.depth-- }()
	if p.depth > maxDepth {
		return nil, p.lex.errf(p.tok.pos, "nested more than %d deep", maxDepth)
	}
	switch p.tok.kind {
	case tNot:
		if err := p.advance(); err != nil {
			return nil, err
		}
		x, err := p.not()
		if err != nil {
			return nil, err
		}
		return &not{x}, nil
	case tLParen:
		if err := p.advance(); err != nil {
			return nil, err
		}
		x, err := p.or()
		if err != nil {
			return nil, err
		}
		if p.tok.kind != tRParen {
			return nil, p.lex.errf(p.tok.pos, "expected )")
		}
		return x, p.advance()
	}
	return p.comparison()
}

// operand reads a name or a literal.
func (p *parser) operand() (operand, error) {
	t := p.tok
	var o operand
	switch t.kind {
	case tIdent:
		switch t.kw {
		case "TRUE", "FALSE":
			o.lit = BoolValue(t.kw == "TRUE")
		default:
			o.field = t.text
		}
	case tString:
		o.lit = Str(t.text)
	case tNumber:
		o.lit = Num(t.num)
	default:
		return o, p.lex.errf(t.pos, "expected a name or a value")
	}
	return o, p.advance()
}

func (p *parser) comparison() (node, error) {
	l, err := p.operand()
	if err != nil {
		return nil, err
	}
	t := p.tok
	c := &cmp{l: l}
	switch {
	case t.kind == tOp:
		c.op = map[string]op{"=": opEq, "!=": opNe, "<": opLt, "<=": opLe, ">": opGt, ">=": opGe}[t.text]
		if err := p.advance(); err != nil {
			return nil, err
		}
		if p.tok.kind == tIdent && p.tok.kw == "RE" && (c.op == opEq || c.op == opNe) {
			re, err := p.reCall()
			if err != nil {
				return nil, err
			}
			c.res = []*regexp.Regexp{re}
			return c, nil
		}
		if c.r, err = p.operand(); err != nil {
			return nil, err
		}
		return c, nil
	case t.kind == tIdent && (t.kw == "IN" || t.kw == "NOTIN" || t.kw == "MATCH" || t.kw == "NOTMATCH"):
		c.op = map[string]op{"IN": opIn, "NOTIN": opNotIn, "MATCH": opMatch, "NOTMATCH": opNotMatch}[t.kw]
	case t.kind == tNot: // NOT IN, NOT MATCH
		if err := p.advance(); err != nil {
			return nil, err
		}
		switch {
		case p.tok.kind == tIdent && p.tok.kw == "IN":
			c.op = opNotIn
		case p.tok.kind == tIdent && p.tok.kw == "MATCH":
			c.op = opNotMatch
		default:
			return nil, p.lex.errf(p.tok.pos, "expected IN or MATCH after NOT")
		}
	default:
		return nil, p.lex.errf(t.pos, "expected a comparison operator, IN or MATCH")
	}
	if err := p.advance(); err != nil {
		return nil, err
	}
	list, err := p.list()
	if err != nil {
		return nil, err
	}
	if c.op == opMatch || c.op == opNotMatch {
		for _, v := range list {
			if v.Kind != String {
				return nil, p.lex.errf(t.pos, "MATCH takes regular expressions as strings")
			}
			re, err := regexp.Compile(v.Str)
			if err != nil {
				return nil, p.lex.errf(t.pos, "bad regular expression: %v", err)
			}
			c.res = append(c.res, re)
		}
		return c, nil
	}
	c.list = list
	return c, nil
}

func (p *parser) reCall() (*regexp.Regexp, error) {
	pos := p.tok.pos
	if err := p.advance(); err != nil {
		return nil, err
	}
	if p.tok.kind != tLParen {
		return nil, p.lex.errf(p.tok.pos, "expected ( after re")
	}
	if err := p.advance(); err != nil {
		return nil, err
	}
	if p.tok.kind != tString {
		return nil, p.lex.errf(p.tok.pos, "re takes a string")
	}
	re, err := regexp.Compile(p.tok.text)
	if err != nil {
		return nil, p.lex.errf(pos, "bad regular expression: %v", err)
	}
	if err := p.advance(); err != nil {
		return nil, err
	}
	if p.tok.kind != tRParen {
		return nil, p.lex.errf(p.tok.pos, "expected )")
	}
	return re, p.advance()
}

func (p *parser) list() ([]Value, error) {
	if p.tok.kind != tLBrack {
		return nil, p.lex.errf(p.tok.pos, "expected [")
	}
	if err := p.advance(); err != nil {
		return nil, err
	}
	var out []Value
	for p.tok.kind != tRBrack {
		o, err := p.operand()
		if err != nil {
			return nil, err
		}
		if o.field != "" {
			return nil, p.lex.errf(p.tok.pos, "lists hold values, not names (quote %q)", o.field)
		}
		out = append(out, o.lit)
		if p.tok.kind == tComma {
			if err := p.advance(); err != nil {
				return nil, err
			}
		} else if p.tok.kind != tRBrack {
			return nil, p.lex.errf(p.tok.pos, "expected , or ]")
		}
	}
	return out, p.advance()
}
