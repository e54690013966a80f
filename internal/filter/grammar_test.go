package filter

import (
	"math/rand"
	"strconv"
	"strings"
)

// grammar generates conditions from the productions of DataKit's filter
// grammar (cliutils filter/gram.y): stmts of where_conditions separated by
// ';', filter_list of filter_elem separated by ',', binary_expr over
// array_elem, regex, paren_expr, function_expr and attr_expr operands.
type grammar struct {
	r     *rand.Rand
	depth int
	// plain keeps to what DataKit evaluates (no arithmetic, calls, a.b,
	// fields on the right, lone parentheses, empty lists), so that most
	// conditions hold on some points and not on others.
	plain bool
}

// Names the generated conditions read; gramRecords give them values.
var gramNames = []string{"a", "f", "s", "st", "b", "n", "e", "x"}

func (g *grammar) pick(xs ...string) string { return xs[g.r.Intn(len(xs))] }

// stmts: where_conditions | stmts ';' where_conditions.
func (g *grammar) stmts() string {
	var parts []string
	for n := 1 + g.r.Intn(3); n > 0; n-- {
		if !g.plain && g.r.Intn(12) == 0 {
			parts = append(parts, "") // empty where_conditions
			continue
		}
		parts = append(parts, g.whereConditions())
	}
	return strings.Join(parts, g.pick(";", " ; ", ";\n"))
}

// where_conditions: '{' filter_list '}'.
func (g *grammar) whereConditions() string {
	var elems []string
	n := g.r.Intn(4)
	if g.plain {
		n = 1 + g.r.Intn(2)
	}
	for ; n > 0; n-- {
		elems = append(elems, g.filterElem())
	}
	s := strings.Join(elems, g.pick(",", ", ", " ,\n"))
	if len(elems) > 0 && g.r.Intn(10) == 0 {
		s += "," // filter_list ','
	}
	return "{" + g.pick("", " ") + s + g.pick("", " ") + "}"
}

// filter_elem: binary_expr | paren_expr.
func (g *grammar) filterElem() string {
	if !g.plain && g.r.Intn(10) == 0 {
		return "(" + g.binaryExpr() + ")"
	}
	return g.binaryExpr()
}

func (g *grammar) binaryExpr() string {
	g.depth++
	defer func() { g.depth-- }()
	switch k := g.r.Intn(20); {
	case k < 9:
		return g.operandLeft() + " " + g.pick("=", "!=", "<", "<=", ">", ">=") + " " + g.operandRight()
	case k < 13:
		return g.columnref() + " " + g.pick("IN", "in", "NOTIN", "not_in") + " [" + g.arrayList() + "]"
	case k < 15:
		return g.columnref() + " " + g.pick("MATCH", "NOTMATCH", "match", "notmatch") + " [" + g.regexList() + "]"
	case k < 19 && g.depth < 4, g.plain && g.depth < 3:
		l, r := g.logicOperand(), g.logicOperand()
		return l + " " + g.pick("AND", "OR", "and", "or", "&&", "||") + " " + r
	case g.plain:
		return g.columnref() + " " + g.pick("=", "!=", "<", ">=") + " " + g.literal()
	}
	// Arithmetic, which DataKit parses and evaluates as false.
	return g.operandLeft() + " " + g.pick("+", "-", "*", "^") + " " + g.numberLiteral() + g.pick("", " > 1")
}

func (g *grammar) logicOperand() string {
	if g.r.Intn(3) == 0 {
		return "(" + g.binaryExpr() + ")"
	}
	return g.binaryExpr()
}

func (g *grammar) operandLeft() string {
	if g.plain {
		return g.columnref()
	}
	switch k := g.r.Intn(20); {
	case k < 12:
		return g.columnref()
	case k < 17:
		return g.literal()
	case k < 18:
		return g.pick("a.b", "st.x")
	case k < 19:
		return g.pick("f(a)", "lower(s)", "f()")
	}
	return "re('5')"
}

func (g *grammar) operandRight() string {
	if g.plain && g.r.Intn(6) == 0 {
		return "re(" + g.stringLiteral(g.pick("5.*", "^e", "x|o", "")) + ")"
	} else if g.plain {
		return g.literal()
	}
	switch k := g.r.Intn(20); {
	case k < 14:
		return g.literal()
	case k < 17:
		return "re(" + g.stringLiteral(g.pick("5.*", "^e", "x|o", "")) + ")"
	case k < 19:
		return g.columnref()
	}
	return "*"
}

func (g *grammar) columnref() string {
	n := g.pick(gramNames...)
	switch g.r.Intn(12) {
	case 0:
		return "`" + n + "`"
	case 1:
		return "identifier(" + g.stringLiteral(n) + ")"
	}
	return n
}

func (g *grammar) literal() string {
	switch g.r.Intn(10) {
	case 0, 1, 2:
		return g.numberLiteral()
	case 3, 4, 5:
		return g.stringLiteral(g.pick("500", "error", "ok", "x", "", "e\\\"", "1.5"))
	case 6, 7:
		return g.pick("nil", "NULL", "null", "Nil")
	}
	return g.pick("true", "false", "TRUE")
}

func (g *grammar) numberLiteral() string {
	switch g.r.Intn(12) {
	case 0:
		return "-" + strconv.Itoa(g.r.Intn(5))
	case 1:
		return "0x" + strconv.FormatInt(int64(g.r.Intn(4)), 16)
	case 2:
		return "0" + strconv.Itoa(g.r.Intn(3))
	case 3:
		return g.pick("1.5", "2.0", "1.0", "-3.0", "1.5000000001", "0.5", "1e0", "inf", "-inf", "nan")
	case 4:
		return "+" + strconv.Itoa(g.r.Intn(3))
	}
	return strconv.Itoa(g.r.Intn(4) - 1)
}

func (g *grammar) stringLiteral(s string) string {
	if g.r.Intn(2) == 0 {
		return "'" + strings.ReplaceAll(s, `\"`, `"`) + "'"
	}
	return `"` + s + `"`
}

// array_list: array_elem (',' array_elem)*, array_elem being a number,
// string, columnref, nil, bool or '*'.
func (g *grammar) arrayList() string {
	var elems []string
	n := g.r.Intn(4)
	if g.plain {
		n = 1 + g.r.Intn(3)
	}
	for ; n > 0; n-- {
		switch g.r.Intn(12) {
		case 0:
			elems = append(elems, g.columnref())
		case 1:
			elems = append(elems, "*")
		default:
			elems = append(elems, g.literal())
		}
	}
	return strings.Join(elems, g.pick(",", ", "))
}

func (g *grammar) regexList() string {
	var elems []string
	for n := g.r.Intn(3); n > 0; n-- {
		elems = append(elems, g.stringLiteral(g.pick("^5", "rr", "x", "^$", ".*", "(")))
	}
	return strings.Join(elems, ", ")
}
