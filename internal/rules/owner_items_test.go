package rules

import (
	"fmt"
	"testing"

	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// itemRules hold a logging rule with two window widths and a tracing rule
// grouped by an attribute.
const itemRules = `
[[aggregate_rules]]
name = "logs"
group_by = ["host", "status"]
[aggregate_rules.select]
category = "logging"
metric_name = ["message", "title"]
[aggregate_rules.algorithms.n]
method = "count"
source_field = "message"
window = "10s"
[aggregate_rules.algorithms.titles]
method = "count_distinct"
source_field = "title"
window = "30s"

[[aggregate_rules]]
name = "traces"
group_by = ["service", "zone"]
[aggregate_rules.select]
category = "tracing"
metric_name = ["duration", "resource"]
[aggregate_rules.algorithms.d_sum]
method = "sum"
source_field = "duration"
window = "10s"
[aggregate_rules.algorithms.d_q]
method = "quantiles"
source_field = "duration"
window = "20s"
[aggregate_rules.algorithms.d_q.quantile_opts]
percentiles = [0.5, 0.9]
[aggregate_rules.algorithms.r_cd]
method = "count_distinct"
source_field = "resource"
window = "10s"
`

// Engines that split the logging and tracing rule groups between them
// (SetOwner, RouteEvents, RouteSpans) output together what one engine outputs, each
// point once, when the engine taking an item observes it for its groups
// and the owner of each other group AppendEventGroups or
// AppendSpanGroups names observes it marked RulesOnly; the rules count
// each item matched once.
func TestOwnersSplitEventAndSpanRuleGroups(t *testing.T) {
	one := engine(t, itemRules, 1)
	split, asked := splitEngines(t, itemRules)
	for _, e := range split {
		e.RouteEvents()
		e.RouteSpans()
	}
	tn := window.NewTenant("default")
	statuses := []window.EventAlertType{window.AlertError, window.AlertWarning, window.AlertInfo}
	// check compares the groups the engines asked about for an item with
	// those refs names, and returns the owners refs names besides taker.
	check := func(what string, refs []GroupRef) map[int]bool {
		t.Helper()
		if len(refs) != len(asked) {
			t.Fatalf("%s: placed %v, the engines asked about %v", what, refs, asked)
		}
		others := map[int]bool{}
		for _, r := range refs {
			if !asked[r] {
				t.Fatalf("%s: placed %v, the engines asked about %v", what, refs, asked)
			}
			others[int(r.Hash%2)] = true
		}
		return others
	}
	routed := 0
	// feed gives an item to one, and to the engine taker; then, marked
	// RulesOnly, to each other engine owning a group place names for it.
	feed := func(what string, taker int, observe func(e *Engine, marked bool) bool, place func(e *Engine) []GroupRef) {
		t.Helper()
		if !observe(one, false) {
			t.Fatalf("%s: no rule selected it", what)
		}
		clear(asked)
		observe(split[taker], false)
		for owner := range check(what, place(split[taker])) {
			if owner == taker {
				continue
			}
			if !observe(split[owner], true) {
				t.Fatalf("%s: its group owner matched no rule", what)
			}
			routed++
		}
	}
	for i := range 90 {
		now := t0 + int64(i)*sec
		ev := window.Event{Title: fmt.Sprintf("t%d", i%5), Text: "m", Host: fmt.Sprintf("h%d", i%4), AlertType: statuses[i%3], Timestamp: now}
		if i%9 == 0 {
			ev.Timestamp = 0 // timed at arrival
		}
		feed(fmt.Sprintf("event %d", i), i%2, func(e *Engine, marked bool) bool {
			ev := ev
			ev.RulesOnly = marked
			return e.ObserveEvent(tn, &ev, now, 0)
		}, func(e *Engine) []GroupRef { return e.AppendEventGroups(nil, tn, &ev, now) })
		sp := spans.Span{TraceID: [16]byte{byte(i)}, Service: fmt.Sprintf("svc%d", i%3), Resource: fmt.Sprintf("/r%d", i%4), Start: now, Duration: int64(i+1) * 1000,
			Attrs: []spans.Attr{{Key: "zone", Value: fmt.Sprintf("z%d", i%2)}}}
		feed(fmt.Sprintf("span %d", i), (i/2)%2, func(e *Engine, marked bool) bool {
			sp := sp
			sp.RulesOnly = marked
			return e.ObserveSpan(tn, &sp, now, 0)
		}, func(e *Engine) []GroupRef { return e.AppendSpanGroups(nil, tn, &sp, now) })
	}
	if routed < 40 {
		t.Fatalf("only %d items went to another owner", routed)
	}
	for _, name := range []string{"logs", "traces"} {
		got := split[0].Counters(name).Matched.Load() + split[1].Counters(name).Matched.Load()
		if want := one.Counters(name).Matched.Load(); got != want || want != 90 {
			t.Errorf("rule %s: split engines matched %d, one engine %d, want 90", name, got, want)
		}
	}
	compareSplit(t, one, split, 100)
}

// Placing an event's or a span's rule groups, and observing them routed,
// allocate nothing once their groups are open.
func TestOwnersRouteItemsAllocateNothing(t *testing.T) {
	e := engine(t, itemRules, 1)
	e.SetOwner(func(h uint64, _ int64) bool { return h%2 == 0 })
	e.RouteEvents()
	e.RouteSpans()
	tn := window.NewTenant("default")
	ev := window.Event{Title: "t", Text: "m", Host: "h", AlertType: window.AlertError, Timestamp: t0 + sec}
	sp := spans.Span{Service: "api", Resource: "/a", Start: t0 + sec, Duration: 1000, Attrs: []spans.Attr{{Key: "zone", Value: "z1"}}}
	marked := sp
	marked.RulesOnly = true
	var refs []GroupRef
	step := func() {
		e.ObserveEvent(tn, &ev, t0+sec, 0)
		e.ObserveSpan(tn, &sp, t0+sec, 0)
		e.ObserveSpan(tn, &marked, t0+sec, 0)
		refs = e.AppendEventGroups(refs[:0], tn, &ev, t0+sec)
		refs = e.AppendSpanGroups(refs, tn, &sp, t0+sec)
	}
	step() // opens the groups
	if len(refs) == 0 {
		t.Fatal("no groups placed")
	}
	if n := testing.AllocsPerRun(100, step); n != 0 {
		t.Fatalf("%v allocations per event and spans", n)
	}
}
