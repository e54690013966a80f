package window

import (
	"runtime"
	"strings"
	"sync/atomic"
)

// MetricType is the aggregation applied to the samples of a context. Its
// values match the aggd.v1 MetricType enum.
type MetricType uint8

// The metric types.
const (
	TypeUnspecified MetricType = iota
	TypeGauge
	TypeCount
	TypeRate
	TypeMonotonicCount
	TypeHistogram
	TypeDistribution
	TypeSet
	TypeTiming
	numTypes
)

var typeNames = [numTypes]string{"unspecified", "gauge", "count", "rate", "monotonic_count", "histogram", "distribution", "set", "timing"}

// String returns the snake_case name of t.
func (t MetricType) String() string {
	if t < numTypes {
		return typeNames[t]
	}
	return "unknown"
}

// Valid reports whether t is a type samples may carry.
func (t MetricType) Valid() bool { return t > TypeUnspecified && t < numTypes }

// Stateful reports whether a context of type t carries its last sample
// from bucket to bucket: RATE and MONOTONIC_COUNT.
func (t MetricType) Stateful() bool { return t == TypeRate || t == TypeMonotonicCount }

func (t MetricType) isDist() bool {
	return t == TypeHistogram || t == TypeTiming || t == TypeDistribution
}

// Reason says why an item was rejected. The zero Reason means accepted.
type Reason uint8

// The rejection reasons. Their String forms are the stable codes clients see.
const (
	Accepted Reason = iota
	ReasonMalformed
	ReasonInvalidName
	ReasonInvalidType
	ReasonInvalidValue
	ReasonInvalidSampleRate
	ReasonInvalidUTF8
	ReasonTooManyTags
	ReasonTagTooLong
	ReasonInvalidHost
	ReasonTypeConflict
	ReasonTooOld
	ReasonTooNew
	ReasonSetLimit
	ReasonTenantLimit
	ReasonInvalidStatus
	ReasonInvalidEvent
	ReasonUnsupported
	ReasonDuplicateSequence
	// ReasonOwnerUnavailable: in cluster mode, the replica owning the
	// item could not be reached in time; sending it again is safe.
	ReasonOwnerUnavailable
	ReasonUnknownSeries
	ReasonInvalidSeriesRef
	// ReasonRulesMismatch: in cluster mode, a sample a peer sent for its
	// aggregation rule groups matched no rule here: the replicas' rules
	// differ.
	ReasonRulesMismatch
	NumReasons
)

// Withheld is not a rejection reason: a caller sets it on an item to keep
// the item out of one ingestion (in cluster mode, because the replica
// owning it took it) and sets the item's result back before results are
// reported or counted. It is outside the reasons, so it has no code and
// no counter: indexing Tenant.Rejected with it panics.
const Withheld Reason = NumReasons

var reasonNames = [NumReasons]string{
	"accepted", "malformed", "invalid_name", "invalid_type", "invalid_value",
	"invalid_sample_rate", "invalid_utf8", "too_many_tags", "tag_too_long",
	"invalid_host", "type_conflict", "too_old", "too_new", "set_limit",
	"tenant_limit", "invalid_status", "invalid_event", "unsupported",
	"duplicate_sequence", "owner_unavailable", "unknown_series", "invalid_series_ref",
	"rules_mismatch",
}

// String returns the snake_case code of r.
func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Tenant is one tenant's identity and counters. Counters are safe for
// concurrent use.
type Tenant struct {
	// ID names the tenant in flushed data.
	ID string

	// Accepted counts accepted items of every kind.
	Accepted atomic.Uint64
	// Rejected counts rejected items by reason.
	Rejected [NumReasons]atomic.Uint64
	// Contexts is the number of live contexts of the tenant over all shards.
	Contexts atomic.Int64
	// MaxContexts bounds Contexts; zero means no bound. Samples of new
	// contexts past it fold into the tenant's aggd.overflow.<type> series.
	// It bounds Seeded apart: seeds of new contexts past it are refused.
	MaxContexts atomic.Int64
	// Seeded is the number of live contexts a cluster's seeds made here
	// (previous samples of contexts this replica owns from a member change
	// on) that have taken no sample yet; not in Contexts.
	Seeded atomic.Int64
	// Overflowed counts samples folded into an overflow series.
	Overflowed atomic.Uint64
	// Limits are the tenant's own limits; zero fields take the server's.
	// Set before the tenant is used.
	Limits TenantLimits
	// EventsInWindow counts the tenant's events since the last flush tick,
	// for Limits.EventsPerWindow.
	EventsInWindow atomic.Int64

	keyHash uint64
}

// TenantLimits are one tenant's bounds; a zero field means the server's.
// The toml keys are those of a [[tenant]] entry of the tenants file.
type TenantLimits struct {
	SamplesPerSecond float64 `toml:"samples_per_second"`
	EventsPerWindow  int64   `toml:"events_per_window"`
	MaxTags          int     `toml:"max_tags"`
	MaxNameLength    int     `toml:"max_name_length"`
	MaxTagLength     int     `toml:"max_tag_length"`
	MaxHeldTraces    int     `toml:"max_held_traces"`
}

// NewTenant returns a tenant named id.
func NewTenant(id string) *Tenant { return &Tenant{ID: id, keyHash: tenantHash(id)} }

func (t *Tenant) hash() uint64 { return t.keyHash }

// Sample is one decoded sample. Its strings may be views into a transport
// buffer: a Shard copies what it keeps.
type Sample struct {
	Name       string
	Host       string
	Tags       []string
	Type       MetricType
	Value      float64
	Values     []float64 // when non-nil, used instead of Value
	SetMember  string
	SampleRate float64 // in (0, 1]
	Timestamp  int64   // unix nanoseconds; 0 means arrival time
	// Hist, on a HISTOGRAM, TIMING or DISTRIBUTION sample, is a
	// distribution aggregated before it arrived (an OTLP histogram point);
	// Value, Values and SampleRate are then ignored.
	Hist *HistPoint
	// RulesOnly marks a sample another replica aggregates, taken here only
	// for the aggregation rule groups this replica owns (cluster mode):
	// the rules observe it, and it is not aggregated.
	RulesOnly bool

	// Key is the canonical context key (see AppendKey) and Hash its hash;
	// both are set by Prepare, or copied from a series reference's
	// definition.
	Key  []byte
	Hash uint64
	// Handle, when set, caches the context of a series reference: Add
	// finds the context through it without an index probe, and fills it.
	Handle *Handle
}

// Handle caches the context a series reference of one stream resolved to,
// so that the reference's samples skip hashing and the index probe: its
// shard, the context's ID there and the ID's generation, which moves on
// when the context is forgotten, so that a Handle never reaches another
// context that took the ID since. A context that expired is found again
// by its key. The Handle also keeps the hash of the key it was made for:
// a sample of another key (its reference declared again for another
// series, while samples of the earlier one wait in the same batch) finds
// its own context by its key. A Handle is read and
// written only under the lock of the shard its series hashes to, by the
// one goroutine that owns the stream.
type Handle struct {
	sh  *Shard
	id  uint32 // the context's ID in sh
	gen uint32 // the context's generation when the Handle was made
	// hash is the Hash of the samples the Handle was made for.
	hash uint64
}

// HistPoint is a distribution aggregated elsewhere: Counts[i] values at
// about Values[i] go into the sketch, while its count, sum, minimum and
// maximum are exact and taken as they are.
type HistPoint struct {
	Values, Counts       []float64
	Count, Sum, Min, Max float64
}

// EventPriority and the other small enums mirror aggd.v1.
type (
	EventPriority  uint8
	EventAlertType uint8
	CheckStatus    uint8
)

// Event priorities.
const (
	PriorityNormal EventPriority = iota
	PriorityLow
)

// Event alert types.
const (
	AlertInfo EventAlertType = iota
	AlertWarning
	AlertError
	AlertSuccess
)

// Service check statuses, numbered as Datadog numbers them.
const (
	StatusOK CheckStatus = iota
	StatusWarning
	StatusCritical
	StatusUnknown
)

// String returns the lower-case name of p.
func (p EventPriority) String() string {
	if p == PriorityLow {
		return "low"
	}
	return "normal"
}

// String returns the lower-case name of a.
func (a EventAlertType) String() string {
	switch a {
	case AlertWarning:
		return "warning"
	case AlertError:
		return "error"
	case AlertSuccess:
		return "success"
	}
	return "info"
}

// Event is a discrete occurrence. Its strings are owned (not views).
type Event struct {
	Tenant         *Tenant
	Title, Text    string
	Timestamp      int64
	Priority       EventPriority
	AlertType      EventAlertType
	AggregationKey string
	SourceType     string
	Host           string
	Tags           []string
	// RulesOnly marks an event another replica took, for the logging
	// rule groups this replica owns: the rules feed only those with it
	// (rules.Engine.ObserveEvent).
	RulesOnly bool
}

// Field returns the field name of e as conditions and rules read it, in
// DataKit's log-point names and aggd's own: title; message and text;
// status and alert_type (info, warning, error, success); priority; source
// and source_type; aggregation_key; host; else the value of tag name. A
// "fields." or "tags." prefix is ignored. Empty host, source and
// aggregation key are absent.
func (e *Event) Field(name string) (string, bool) {
	name = strings.TrimPrefix(strings.TrimPrefix(name, "fields."), "tags.")
	switch name {
	case "title":
		return e.Title, true
	case "text", "message":
		return e.Text, true
	case "host":
		return e.Host, e.Host != ""
	case "source_type", "source":
		return e.SourceType, e.SourceType != ""
	case "aggregation_key":
		return e.AggregationKey, e.AggregationKey != ""
	case "priority":
		return e.Priority.String(), true
	case "alert_type", "status":
		return e.AlertType.String(), true
	}
	for _, t := range e.Tags {
		if k, v, ok := strings.Cut(t, ":"); ok && k == name {
			return v, true
		}
	}
	return "", false
}

// ServiceCheck is a status report. Its strings are owned (not views).
type ServiceCheck struct {
	Tenant    *Tenant
	Name      string
	Status    CheckStatus
	Host      string
	Tags      []string
	Timestamp int64
	Message   string
}

// Batch is one decoded request: what a transport hands to ingestion. The
// slices are reused from batch to batch by their owner.
type Batch struct {
	Tenant *Tenant
	// Now is the arrival time in unix nanoseconds.
	Now     int64
	Samples []Sample
	// Results has one entry per sample: Accepted, or why it was refused.
	// Validation fills it first; ingestion refuses more.
	Results []Reason
	Events  []Event
	Checks  []ServiceCheck
	// Cutoff is set on a batch replayed from the write-ahead log: the tick
	// of the last flush known to have carried it. What windows due at or
	// before it held is not taken again. Zero for a batch arriving live.
	Cutoff int64
	// EventsFlushed is set on a replayed batch whose events a flush
	// already sent: aggregation rules take them again (in windows after
	// Cutoff), and they are not sent again.
	EventsFlushed bool
	// Drained is set on a replayed batch: the tick of the last drain
	// before it was first taken in (zero: not known). A sample without a
	// timestamp whose arrival's bucket that drain had flushed went to the
	// bucket open then, and goes there again.
	Drained int64
	// EventResults, when as long as Events, takes what ingestion makes
	// of each event: Accepted, or ReasonRulesMismatch for one marked
	// RulesOnly that no logging rule selects.
	EventResults []Reason
}

// Reset empties b, keeping its capacity.
func (b *Batch) Reset() {
	b.Tenant = nil
	b.Now = 0
	b.Cutoff = 0
	b.EventsFlushed = false
	b.Drained = 0
	b.Samples = b.Samples[:0]
	b.Results = b.Results[:0]
	clear(b.Events)
	b.Events = b.Events[:0]
	b.EventResults = b.EventResults[:0]
	clear(b.Checks)
	b.Checks = b.Checks[:0]
}

// Flush is what one tick hands to the upstreams: the closed buckets, with
// the events and service checks received since the last tick.
type Flush struct {
	// Time is the tick, in unix nanoseconds.
	Time    int64
	Buckets []*Bucket
	// Extra holds aggregates made elsewhere (aggregation rules), flushed
	// after the buckets'.
	Extra  []Metric
	Events []Event
	Checks []ServiceCheck
	// Pace, if set, is called by Metrics every YieldEvery aggregates with
	// the number yielded so far by that iteration, instead of yielding the
	// processor: it may sleep, to spread the encoding of a large flush
	// over time. Several iterations may call it at once.
	Pace func(yielded int)
}

// YieldEvery is how many aggregates a flush encodes before it lets other
// goroutines run, or paces itself (see Flush.Metrics).
const YieldEvery = 1024

// Metrics yields every aggregate of every bucket of f (see
// Bucket.Metrics). Every YieldEvery aggregates it calls f.Pace, or
// without one yields the processor (runtime.Gosched), so that encoding a
// large flush, which takes a core for up to a second, lets the goroutines
// acking batches run in between.
func (f *Flush) Metrics() func(yield func(*Metric) bool) {
	return func(yield func(*Metric) bool) {
		n := 0
		for _, b := range f.Buckets {
			for m := range b.Metrics() {
				if !yield(m) {
					return
				}
				if n++; n%YieldEvery == 0 {
					if f.Pace != nil {
						f.Pace(n)
					} else {
						runtime.Gosched()
					}
				}
			}
		}
		for i := range f.Extra {
			if !yield(&f.Extra[i]) {
				return
			}
		}
	}
}

// SortExact orders the exact samples of the distributions of f's buckets
// (see Shard.BeginDrain): the flusher calls it once the drain is done,
// with no shard locked, before anything reads f.
func (f *Flush) SortExact() {
	for _, b := range f.Buckets {
		b.sortExact()
	}
}

// Release returns f's buckets for reuse; f must not be read afterwards.
func (f *Flush) Release() {
	for _, b := range f.Buckets {
		b.Release()
	}
	clear(f.Buckets)
	f.Buckets = f.Buckets[:0]
	clear(f.Extra)
	f.Extra = f.Extra[:0]
}
