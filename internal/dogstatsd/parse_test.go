package dogstatsd

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/aggd/aggd/internal/window"
)

func TestParseMetric(t *testing.T) {
	tests := []struct {
		line   string
		want   window.Sample
		reason window.Reason
	}{
		{"page.views:1|c", window.Sample{Name: "page.views", Type: window.TypeCount, Value: 1, SampleRate: 1}, 0},
		{"fuel:0.5|g|#env:prod,shape:round", window.Sample{Name: "fuel", Type: window.TypeGauge, Value: 0.5, SampleRate: 1, Tags: []string{"env:prod", "shape:round"}}, 0},
		{"req:3|c|@0.1|#a", window.Sample{Name: "req", Type: window.TypeCount, Value: 3, SampleRate: 0.1, Tags: []string{"a"}}, 0},
		{"lat:12|ms", window.Sample{Name: "lat", Type: window.TypeTiming, Value: 12, SampleRate: 1}, 0},
		{"h:1:2:3|h", window.Sample{Name: "h", Type: window.TypeHistogram, SampleRate: 1, Values: []float64{1, 2, 3}}, 0},
		{"d:4|d|T1700000000", window.Sample{Name: "d", Type: window.TypeDistribution, Value: 4, SampleRate: 1, Timestamp: 1700000000e9}, 0},
		{"users:alice|s", window.Sample{Name: "users", Type: window.TypeSet, SampleRate: 1, SetMember: "alice"}, 0},
		{"g:1|g|#host:web-1,env:prod|c:abc123|x:future", window.Sample{Name: "g", Type: window.TypeGauge, Value: 1, SampleRate: 1, Host: "web-1", Tags: []string{"env:prod"}}, 0},
		{"g:1|g||#a", window.Sample{Name: "g", Type: window.TypeGauge, Value: 1, SampleRate: 1, Tags: []string{"a"}}, 0},
		{"novalue", window.Sample{}, window.ReasonMalformed},
		{":1|c", window.Sample{}, window.ReasonMalformed},
		{"a|c:1", window.Sample{}, window.ReasonMalformed},
		{"a:x|c", window.Sample{}, window.ReasonInvalidValue},
		{"a:1:x|h", window.Sample{}, window.ReasonInvalidValue},
		{"a:1|q", window.Sample{}, window.ReasonInvalidType},
		{"a:1|c|@2", window.Sample{}, window.ReasonInvalidSampleRate},
		{"a:1|c|@0", window.Sample{}, window.ReasonInvalidSampleRate},
		{"a:1|c|Tsoon", window.Sample{}, window.ReasonInvalidValue},
		{"a:|s", window.Sample{}, window.ReasonInvalidValue},
		{"a\xff:1|c", window.Sample{}, window.ReasonInvalidUTF8},
	}
	var p Parser
	for _, tt := range tests {
		p.Reset()
		var got window.Sample
		r, _ := p.ParseMetric([]byte(tt.line), &got)
		if r != tt.reason {
			t.Errorf("%q: reason %v, want %v", tt.line, r, tt.reason)
			continue
		}
		if r != window.Accepted {
			continue
		}
		if got.Name != tt.want.Name || got.Type != tt.want.Type || got.Value != tt.want.Value || got.SampleRate != tt.want.SampleRate ||
			got.Host != tt.want.Host || got.SetMember != tt.want.SetMember || got.Timestamp != tt.want.Timestamp ||
			!slices.Equal(got.Tags, tt.want.Tags) || !slices.Equal(got.Values, tt.want.Values) {
			t.Errorf("%q:\n got %+v\nwant %+v", tt.line, got, tt.want)
		}
	}
}

func TestParseEventAndServiceCheck(t *testing.T) {
	var p Parser
	var e window.Event
	line := "_e{7,11}:deploy!|v2 is\\nlive|d:1700000000|h:web|p:low|t:success|k:dep|s:ci|#env:prod,host:web-2"
	if r, d := p.ParseEvent([]byte(line), &e); r != window.Accepted {
		t.Fatalf("%v %s", r, d)
	}
	// The h: field wins over a host: tag (the Agent's enrichEvent).
	if e.Title != "deploy!" || e.Text != "v2 is\nlive" || e.Timestamp != 1700000000e9 || e.Host != "web" || e.Priority != window.PriorityLow ||
		e.AlertType != window.AlertSuccess || e.AggregationKey != "dep" || e.SourceType != "ci" || !slices.Equal(e.Tags, []string{"env:prod"}) {
		t.Fatalf("event %+v", e)
	}
	for _, bad := range []string{"_e{3,2}:ab|cd", "_e{x,1}:a|b", "_e{1,1}:ab|", "_e{1,1}:a|b|p:urgent", "_e{1,1}:a|b|t:meh", "_e{1,1}:a|bz"} {
		if r, _ := p.ParseEvent([]byte(bad), &e); r == window.Accepted {
			t.Errorf("%q accepted", bad)
		}
	}
	var c window.ServiceCheck
	if r, d := p.ParseServiceCheck([]byte("_sc|db.up|2|d:1700000000|h:db|#env:prod|m:down | since 5m"), &c); r != window.Accepted {
		t.Fatalf("%v %s", r, d)
	}
	if c.Name != "db.up" || c.Status != window.StatusCritical || c.Host != "db" || c.Message != "down | since 5m" || c.Timestamp != 1700000000e9 || c.Tags[0] != "env:prod" {
		t.Fatalf("check %+v", c)
	}
	for _, bad := range []string{"_sc|x|4", "_sc||0", "_sc|x", "_sc|x|0|d:no"} {
		if r, _ := p.ParseServiceCheck([]byte(bad), &c); r == window.Accepted {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestAgentEnrichment checks hosts and tags against the Datadog Agent's
// DogStatsD enrichment (comp/dogstatsd/server/impl/enrich.go):
// extractTagsMetadata for every item, enrichEvent and enrichServiceCheck
// for the h: field. The Agent's default host stands in for DefaultHost.
func TestAgentEnrichment(t *testing.T) {
	p := Parser{DefaultHost: "agent-host"}
	metrics := []struct {
		line, host, agent string
		tags              []string
	}{
		{"g:1|g|#env:prod", "agent-host", "extractTagsMetadata: host starts as the default hostname", []string{"env:prod"}},
		{"g:1|g|#host:web-1,env:prod", "web-1", "extractTagsMetadata: a host: tag sets the host and is not a tag", []string{"env:prod"}},
		{"g:1|g|#host:,env:prod", "", "extractTagsMetadata: an empty host: tag clears the host", []string{"env:prod"}},
		{"g:1|g|#dd.internal.entity_id:pod-uid,dd.internal.card:high,dd.internal.jmx_check_name:kafka,env:prod", "agent-host",
			"extractTagsMetadata: entity id, cardinality and JMX check name are origin metadata, not tags", []string{"env:prod"}},
	}
	for _, tt := range metrics {
		p.Reset()
		var s window.Sample
		if r, d := p.ParseMetric([]byte(tt.line), &s); r != window.Accepted {
			t.Fatalf("%q: %v %s", tt.line, r, d)
		}
		if s.Host != tt.host || !slices.Equal(s.Tags, tt.tags) {
			t.Errorf("%q: host %q tags %q, want %q %q (%s)", tt.line, s.Host, s.Tags, tt.host, tt.tags, tt.agent)
		}
	}
	checks := []struct{ line, host, agent string }{
		{"_sc|x|0|#host:a|h:b", "b", "enrichServiceCheck: a non-empty h: field wins"},
		{"_sc|x|0|h:b|#host:a", "b", "enrichServiceCheck: whatever the order"},
		{"_sc|x|0|h:|#host:a", "a", "enrichServiceCheck: an empty h: leaves the tag's host"},
		{"_sc|x|0|#host:", "", "extractTagsMetadata: an empty host: tag clears the default"},
		{"_sc|x|0", "agent-host", "extractTagsMetadata: the default hostname"},
	}
	for _, tt := range checks {
		var c window.ServiceCheck
		if r, d := p.ParseServiceCheck([]byte(tt.line), &c); r != window.Accepted {
			t.Fatalf("%q: %v %s", tt.line, r, d)
		}
		if c.Host != tt.host {
			t.Errorf("%q: host %q, want %q (%s)", tt.line, c.Host, tt.host, tt.agent)
		}
	}
	var e window.Event
	if r, d := p.ParseEvent([]byte("_e{1,1}:a|b|#host:tagged"), &e); r != window.Accepted || e.Host != "tagged" {
		t.Errorf("event host %q (%v %s), want the host: tag's (enrichEvent)", e.Host, r, d)
	}
}

func TestParseMetricDoesNotAllocate(t *testing.T) {
	var p Parser
	var s window.Sample
	line := []byte("api.request.duration:12.5|h|@0.5|#env:prod,service:api,endpoint:/v1/items")
	if n := testing.AllocsPerRun(100, func() { p.Reset(); p.ParseMetric(line, &s) }); n != 0 {
		t.Fatalf("%v allocations per line", n)
	}
}

func BenchmarkParseMetric(b *testing.B) {
	var p Parser
	var s window.Sample
	line := []byte("api.request.duration:12.5|h|@0.5|#env:prod,service:api,endpoint:/v1/items")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		p.Reset()
		p.ParseMetric(line, &s)
	}
}

func FuzzParseLine(f *testing.F) {
	for _, s := range []string{"a:1|c", "h:1:2:3|h|@0.5|#a:b,host:x|T1700000000|c:abc", "_e{1,1}:a|b|#t", "_sc|n|0|m:x", "s:m|s"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		var p Parser
		switch Kind(line) {
		case KindEvent:
			var e window.Event
			p.ParseEvent(line, &e)
		case KindServiceCheck:
			var c window.ServiceCheck
			p.ParseServiceCheck(line, &c)
		default:
			var s window.Sample
			if r, _ := p.ParseMetric(line, &s); r == window.Accepted {
				if s.Name == "" || !s.Type.Valid() || !(s.SampleRate > 0 && s.SampleRate <= 1) || strings.ContainsAny(s.Name, "|") {
					t.Fatalf("accepted %q as %+v", line, s)
				}
				if s.Type != window.TypeSet && s.Values == nil && math.IsNaN(s.Value) && !strings.Contains(strings.ToLower(string(line)), "nan") {
					t.Fatalf("NaN from %q", line)
				}
			}
		}
	})
}
