// Package dogstatsd receives the DogStatsD protocol (up to v1.3) over UDP
// and Unix datagram sockets and feeds the same windows, tenants, limits and
// rejection accounting as the gRPC API.
//
// A metric line is
//
//	<name>:<value>[:<value>…]|<type>[|@<rate>][|#<tag>,<tag>…][|T<unix secs>][|c:<container>]
//
// with type g, c, ms, h, d or s. Events are
// _e{<title bytes>,<text bytes>}:<title>|<text>[|d:<ts>][|h:<host>][|p:<priority>][|t:<alert>][|k:<key>][|s:<source>][|#<tags>]
// and service checks _sc|<name>|<status>[|d:<ts>][|h:<host>][|#<tags>][|m:<message>].
// Tags are enriched as the Datadog Agent's DogStatsD server does
// (extractTagsMetadata): a host:<h> tag sets the item's host and is removed
// from its tags, an empty one clearing the host; dd.internal.entity_id:,
// dd.internal.card: and dd.internal.jmx_check_name: tags are origin
// metadata, not tags, and are dropped. An event's or service check's h:
// field wins over a host: tag. Items without either take Parser.DefaultHost.
// Unknown |x fields are ignored for forward compatibility; a container id
// is accepted and not used.
package dogstatsd

import (
	"bytes"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/aggd/aggd/internal/window"
)

// Reason says why a line was refused; it reuses window's codes.
type Reason = window.Reason

// view returns b as a string without copying.
func view(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// Line kinds.
const (
	KindMetric = iota
	KindEvent
	KindServiceCheck
)

// Parser parses lines into window types. Its scratch space is reused from
// datagram to datagram; it is not safe for concurrent use.
type Parser struct {
	// DefaultHost is the host of items that name none, as the Agent
	// stamps its own hostname; empty by default.
	DefaultHost string

	tags   []string
	values []float64
}

// metadataTagPrefixes start tags the Agent takes as origin metadata and
// drops from the tags (extractTagsMetadata).
var metadataTagPrefixes = [...]string{"dd.internal.entity_id:", "dd.internal.card:", "dd.internal.jmx_check_name:"}

func isMetadataTag(t []byte) bool {
	for _, p := range metadataTagPrefixes {
		if len(t) >= len(p) && string(t[:len(p)]) == p {
			return true
		}
	}
	return false
}

// Reset forgets the previous datagram's tags and values.
func (p *Parser) Reset() {
	clear(p.tags)
	p.tags = p.tags[:0]
	p.values = p.values[:0]
}

// splitTags appends the comma-separated tags of b to p.tags, taking a
// host:<h> tag (possibly empty) as the host and dropping metadata tags, and
// returns the appended slice, the host and whether a host: tag was seen.
func (p *Parser) splitTags(b []byte) ([]string, string, bool) {
	start := len(p.tags)
	host, hasHost := "", false
	for len(b) > 0 {
		i := bytes.IndexByte(b, ',')
		var t []byte
		if i < 0 {
			t, b = b, nil
		} else {
			t, b = b[:i], b[i+1:]
		}
		if len(t) >= 5 && string(t[:5]) == "host:" {
			host, hasHost = view(t[5:]), true
			continue
		}
		if len(t) > 0 && !isMetadataTag(t) {
			p.tags = append(p.tags, view(t))
		}
	}
	return p.tags[start:len(p.tags):len(p.tags)], host, hasHost
}

func parseFloat(b []byte) (float64, bool) {
	f, err := strconv.ParseFloat(view(b), 64)
	return f, err == nil
}

// ParseMetric parses a metric line into s, whose Timestamp it leaves 0
// unless the line has |T. s's strings are views into line.
func (p *Parser) ParseMetric(line []byte, s *window.Sample) (Reason, string) {
	colon := bytes.IndexByte(line, ':')
	pipe := bytes.IndexByte(line, '|')
	if colon <= 0 || pipe < 0 || pipe < colon {
		return window.ReasonMalformed, "not name:value|type"
	}
	*s = window.Sample{Name: view(line[:colon]), SampleRate: 1, Host: p.DefaultHost}
	if !utf8.Valid(line) {
		return window.ReasonInvalidUTF8, "line is not valid UTF-8"
	}
	rawValues := line[colon+1 : pipe]
	rest := line[pipe+1:]
	typ := rest
	if i := bytes.IndexByte(rest, '|'); i >= 0 {
		typ, rest = rest[:i], rest[i+1:]
	} else {
		rest = nil
	}
	switch string(typ) {
	case "g":
		s.Type = window.TypeGauge
	case "c":
		s.Type = window.TypeCount
	case "ms":
		s.Type = window.TypeTiming
	case "h":
		s.Type = window.TypeHistogram
	case "d":
		s.Type = window.TypeDistribution
	case "s":
		s.Type = window.TypeSet
	default:
		return window.ReasonInvalidType, "type is not g, c, ms, h, d or s"
	}
	for len(rest) > 0 {
		f := rest
		if i := bytes.IndexByte(rest, '|'); i >= 0 {
			f, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == '@':
			r, ok := parseFloat(f[1:])
			if !ok || !(r > 0 && r <= 1) {
				return window.ReasonInvalidSampleRate, "sample rate is not in (0, 1]"
			}
			s.SampleRate = r
		case f[0] == '#':
			var host string
			var hasHost bool
			if s.Tags, host, hasHost = p.splitTags(f[1:]); hasHost {
				s.Host = host
			}
		case f[0] == 'T':
			ts, err := strconv.ParseInt(view(f[1:]), 10, 64)
			if err != nil || ts <= 0 || ts > maxUnixSeconds {
				return window.ReasonInvalidValue, "timestamp is not positive unix seconds"
			}
			s.Timestamp = ts * 1e9
		}
		// c:<container id> and fields of later protocol versions are ignored.
	}
	if s.Type == window.TypeSet {
		if len(rawValues) == 0 {
			return window.ReasonInvalidValue, "set member is empty"
		}
		s.SetMember = view(rawValues)
		return window.Accepted, ""
	}
	if bytes.IndexByte(rawValues, ':') < 0 {
		v, ok := parseFloat(rawValues)
		if !ok {
			return window.ReasonInvalidValue, "value is not a number"
		}
		s.Value = v
		return window.Accepted, ""
	}
	start := len(p.values)
	for len(rawValues) > 0 { // v1.1 packed values
		v := rawValues
		if i := bytes.IndexByte(rawValues, ':'); i >= 0 {
			v, rawValues = rawValues[:i], rawValues[i+1:]
		} else {
			rawValues = nil
		}
		f, ok := parseFloat(v)
		if !ok {
			return window.ReasonInvalidValue, "a value is not a number"
		}
		p.values = append(p.values, f)
	}
	s.Values = p.values[start:len(p.values):len(p.values)]
	return window.Accepted, ""
}

// ParseEvent parses an _e line. Strings are copied: events outlive the
// datagram.
func (p *Parser) ParseEvent(line []byte, e *window.Event) (Reason, string) {
	*e = window.Event{}
	if !utf8.Valid(line) {
		return window.ReasonInvalidUTF8, "line is not valid UTF-8"
	}
	head, ok := bytes.CutPrefix(line, []byte("_e{"))
	end := bytes.Index(head, []byte("}:"))
	if !ok || end < 0 {
		return window.ReasonMalformed, "event is not _e{<title length>,<text length>}:<title>|<text>"
	}
	tl, xl, ok := bytes.Cut(head[:end], []byte{','})
	titleLen, err1 := strconv.Atoi(view(tl))
	textLen, err2 := strconv.Atoi(view(xl))
	body := head[end+2:]
	if !ok || err1 != nil || err2 != nil || titleLen <= 0 || textLen < 0 || titleLen+1+textLen > len(body) || body[titleLen] != '|' {
		return window.ReasonMalformed, "event lengths do not match its title and text"
	}
	e.Title = string(body[:titleLen])
	e.Text = strings.ReplaceAll(string(body[titleLen+1:titleLen+1+textLen]), `\n`, "\n")
	rest := body[titleLen+1+textLen:]
	var h hosts
	defer func() { e.Host = h.resolve(p.DefaultHost) }()
	for len(rest) > 0 {
		if rest[0] != '|' {
			return window.ReasonMalformed, "event field does not start with |"
		}
		rest = rest[1:]
		f := rest
		if i := bytes.IndexByte(rest, '|'); i >= 0 {
			f, rest = rest[:i], rest[i:]
		} else {
			rest = nil
		}
		switch {
		case bytes.HasPrefix(f, []byte("d:")), bytes.HasPrefix(f, []byte("h:")), len(f) > 0 && f[0] == '#':
			if !p.common(f, &e.Timestamp, &h, &e.Tags) {
				return window.ReasonInvalidValue, "event timestamp is not unix seconds"
			}
		case bytes.HasPrefix(f, []byte("k:")):
			e.AggregationKey = string(f[2:])
		case bytes.HasPrefix(f, []byte("s:")):
			e.SourceType = string(f[2:])
		case bytes.HasPrefix(f, []byte("p:")):
			switch string(f[2:]) {
			case "normal":
				e.Priority = window.PriorityNormal
			case "low":
				e.Priority = window.PriorityLow
			default:
				return window.ReasonInvalidEvent, "priority is not normal or low"
			}
		case bytes.HasPrefix(f, []byte("t:")):
			switch string(f[2:]) {
			case "info":
				e.AlertType = window.AlertInfo
			case "warning":
				e.AlertType = window.AlertWarning
			case "error":
				e.AlertType = window.AlertError
			case "success":
				e.AlertType = window.AlertSuccess
			default:
				return window.ReasonInvalidEvent, "alert type is not info, warning, error or success"
			}
		}
	}
	return window.Accepted, ""
}

// hosts holds what an event's or service check's fields say of its host.
type hosts struct {
	field, tag string
	hasTag     bool
}

// resolve returns the host as the Agent's enrichEvent and
// enrichServiceCheck choose it: a non-empty h: field, else the host: tag
// (an empty one clears the host), else the default.
func (h *hosts) resolve(def string) string {
	switch {
	case h.field != "":
		return h.field
	case h.hasTag:
		return h.tag
	}
	return def
}

// common applies a field events and service checks share: d:<unix
// seconds>, h:<host> or #<tags>. Strings are copied. It reports false for
// a bad timestamp; other fields are ignored.
func (p *Parser) common(f []byte, ts *int64, h *hosts, tags *[]string) bool {
	switch {
	case bytes.HasPrefix(f, []byte("d:")):
		secs, err := strconv.ParseInt(string(f[2:]), 10, 64)
		if err != nil || secs <= 0 || secs > maxUnixSeconds {
			return false
		}
		*ts = secs * 1e9
	case bytes.HasPrefix(f, []byte("h:")):
		h.field = string(f[2:])
	case len(f) > 0 && f[0] == '#':
		t, host, hasHost := p.splitTags(f[1:])
		*tags = cloneAll(t)
		if hasHost {
			h.tag, h.hasTag = strings.Clone(host), true
		}
	}
	return true
}

func cloneAll(ss []string) []string {
	if len(ss) == 0 {
		return nil
	}
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.Clone(s)
	}
	return out
}

// ParseServiceCheck parses an _sc line. Strings are copied.
func (p *Parser) ParseServiceCheck(line []byte, c *window.ServiceCheck) (Reason, string) {
	*c = window.ServiceCheck{}
	if !utf8.Valid(line) {
		return window.ReasonInvalidUTF8, "line is not valid UTF-8"
	}
	rest, ok := bytes.CutPrefix(line, []byte("_sc|"))
	if !ok {
		return window.ReasonMalformed, "service check is not _sc|<name>|<status>"
	}
	name, rest, _ := bytes.Cut(rest, []byte{'|'})
	status, rest, _ := bytes.Cut(rest, []byte{'|'})
	if len(name) == 0 {
		return window.ReasonInvalidName, "service check name is empty"
	}
	if len(status) != 1 || status[0] < '0' || status[0] > '3' {
		return window.ReasonInvalidStatus, "status is not 0, 1, 2 or 3"
	}
	c.Name = string(name)
	c.Status = window.CheckStatus(status[0] - '0')
	var h hosts
	defer func() { c.Host = h.resolve(p.DefaultHost) }()
	for len(rest) > 0 {
		f := rest
		if m, ok := bytes.CutPrefix(rest, []byte("m:")); ok { // the message is last and may hold |
			c.Message = strings.ReplaceAll(string(m), `\n`, "\n")
			break
		}
		if i := bytes.IndexByte(rest, '|'); i >= 0 {
			f, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		if !p.common(f, &c.Timestamp, &h, &c.Tags) {
			return window.ReasonInvalidValue, "service check timestamp is not unix seconds"
		}
	}
	return window.Accepted, ""
}

// Kind returns the kind of line.
func Kind(line []byte) int {
	switch {
	case bytes.HasPrefix(line, []byte("_e{")):
		return KindEvent
	case bytes.HasPrefix(line, []byte("_sc|")):
		return KindServiceCheck
	}
	return KindMetric
}

// maxUnixSeconds is the largest timestamp whose nanoseconds fit an int64.
const maxUnixSeconds = math.MaxInt64 / int64(1e9)
