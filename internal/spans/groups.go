package spans

import (
	"sync"
	"sync/atomic"

	"github.com/aggd/aggd/internal/filter"
	"github.com/aggd/aggd/internal/window"
)

// GroupSampler applies a policy's [logging] group dimensions to events:
// an event that carries a dimension's group_key (a tag key, or an event
// field: title, text, host, source_type, aggregation_key, priority,
// alert_type) is held with the other events of its (tenant, dimension,
// value) group until logging.data_ttl after the group's last event; then
// the dimension's rules decide the whole group, as a trace's are decided.
// A probabilistic rule hashes the group value. Events that carry no
// dimension's key pass through. It is safe for concurrent use.
type GroupSampler struct {
	policy    atomic.Pointer[Policy]
	maxEvents int

	mu      sync.Mutex
	groups  map[groupKey]*heldGroup
	held    int
	decided map[groupKey]decision
	pending []window.Event

	// Kept, Dropped and PassedThrough count events.
	Kept, Dropped, PassedThrough, Early atomic.Int64
}

type groupKey struct {
	tenant *window.Tenant
	dim    int
	value  string
}

type heldGroup struct {
	events []window.Event
	last   int64
}

// NewGroupSampler returns a group sampler applying p (nil: pass
// everything), holding at most maxEvents events.
func NewGroupSampler(p *Policy, maxEvents int) *GroupSampler {
	g := &GroupSampler{maxEvents: maxEvents, groups: map[groupKey]*heldGroup{}, decided: map[groupKey]decision{}}
	g.policy.Store(p)
	return g
}

// SetPolicy replaces the policy; held groups stay.
func (g *GroupSampler) SetPolicy(p *Policy) { g.policy.Store(p) }

// eventRecord presents an event to conditions.
type eventRecord struct{ e *window.Event }

// Field implements filter.Record.
func (r eventRecord) Field(name string) (filter.Value, bool) {
	v, ok := r.e.Field(name)
	return filter.Str(v), ok
}

// Hold takes e into its group and reports true, or reports false when e
// carries no group key (or no policy has dimensions), leaving e to the
// caller.
func (g *GroupSampler) Hold(e *window.Event, now int64) bool {
	p := g.policy.Load()
	if p == nil || len(p.Logging) == 0 {
		return false
	}
	for i, d := range p.Logging {
		v, ok := e.Field(d.GroupKey)
		if !ok || v == "" { // DataKit's pickByGroupKey passes these through
			continue
		}
		k := groupKey{e.Tenant, i, v}
		g.mu.Lock()
		defer g.mu.Unlock()
		if dec, ok := g.decided[k]; ok {
			g.count(dec.keep, 1)
			if dec.keep {
				g.pending = append(g.pending, *e)
			}
			return true
		}
		gr := g.groups[k]
		if gr == nil {
			if g.held >= g.maxEvents {
				g.Early.Add(1)
				g.decideLocked(p, k, &heldGroup{events: []window.Event{*e}}, now)
				return true
			}
			gr = &heldGroup{}
			g.groups[k] = gr
		}
		gr.events = append(gr.events, *e)
		gr.last = now
		g.held++
		return true
	}
	g.PassedThrough.Add(1)
	return false
}

func (g *GroupSampler) count(keep bool, n int) {
	if keep {
		g.Kept.Add(int64(n))
	} else {
		g.Dropped.Add(int64(n))
	}
}

func (g *GroupSampler) decideLocked(p *Policy, k groupKey, gr *heldGroup, now int64) {
	keep := false
	if k.dim < len(p.Logging) {
		keep = judgeGroup(p.Logging[k.dim].Rules, k.value, gr.events)
	}
	g.count(keep, len(gr.events))
	if keep {
		g.pending = append(g.pending, gr.events...)
	}
	if len(g.decided) < g.maxEvents {
		g.decided[k] = decision{keep: keep, at: now}
	}
}

// judgeGroup is Judge for a group of events: the first rule a member
// matches decides; a probabilistic rule keeps the group as DataKit does, by
// FNV-1a 64 of the group value; undecided groups are dropped.
func judgeGroup(rules []Rule, value string, events []window.Event) bool {
	for _, r := range rules {
		matched := r.Cond == nil && r.Probabilistic
		for i := 0; !matched && r.Cond != nil && i < len(events); i++ {
			matched = r.Cond.Match(eventRecord{&events[i]})
		}
		if !matched {
			continue
		}
		if r.Probabilistic {
			return keepHash(hashString(value), r.Rate)
		}
		return r.Keep
	}
	return false
}

// Release decides the groups quiet for logging.data_ttl at now (all of
// them when final is set) and returns the events to flush: kept groups and
// later events of kept groups. Old decisions are forgotten after a
// further data_ttl.
func (g *GroupSampler) Release(now int64, final bool) []window.Event {
	p := g.policy.Load()
	g.mu.Lock()
	defer g.mu.Unlock()
	if p != nil {
		ttl := int64(p.LoggingTTL)
		for k, gr := range g.groups {
			if final || now-gr.last >= ttl {
				delete(g.groups, k)
				g.held -= len(gr.events)
				g.decideLocked(p, k, gr, now)
			}
		}
		for k, d := range g.decided {
			if now-d.at > ttl {
				delete(g.decided, k)
			}
		}
	}
	out := g.pending
	g.pending = nil
	return out
}

// MaxHeldEvents bounds the events a GroupSampler holds in aggd; past it, a
// new group is decided on its first event.
const MaxHeldEvents = 1_000_000
