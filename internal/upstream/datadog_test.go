package upstream_test

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
	"github.com/aggd/aggd/internal/window"
)

const bucket = int64(1_700_000_000) // unix seconds, a multiple of 10

// flushOf aggregates samples into one flush at bucket.
func flushOf(t testing.TB, samples map[*window.Tenant][]window.Sample) *window.Flush {
	t.Helper()
	sh := window.NewShard(window.DefaultConfig())
	now := bucket * 1e9
	for tn, ss := range samples {
		for _, s := range ss {
			if s.SampleRate == 0 {
				s.SampleRate = 1
			}
			s.Prepare(tn, nil)
			if r := sh.Add(tn, &s, now); r != window.Accepted {
				t.Fatalf("add %s: %v", s.Name, r)
			}
		}
	}
	return &window.Flush{Time: now, Buckets: sh.Drain(now, true, nil)}
}

func newDatadog(t *testing.T, intake *upstreamtest.DatadogIntake, m upstream.PipelineMetrics, mod func(*upstream.DatadogConfig)) *upstream.Datadog {
	t.Helper()
	cfg := upstream.DatadogConfig{Pipeline: upstream.DefaultPipelineConfig("dd"), URL: intake.URL, APIKey: "default-key",
		Compression: upstream.CompressZstd, Histogram: upstream.DefaultHistogramConfig()}
	cfg.Pipeline.InitialBackoff = 10 * time.Millisecond
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d := upstream.NewDatadog(cfg, m, slog.New(slog.DiscardHandler))
	d.Start(context.Background())
	return d
}

func routeAll(keys map[string]string) upstream.Routes {
	return func(t *window.Tenant) (upstream.Credentials, bool) {
		k, ok := keys[t.ID]
		return upstream.Credentials{APIKey: k}, ok
	}
}

func seqValues(n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = float64(i + 1)
	}
	return v
}

func TestDatadogEveryKind(t *testing.T) {
	for _, comp := range []upstream.Compression{upstream.CompressZstd, upstream.CompressGzip, upstream.CompressNone} {
		t.Run(string(comp), func(t *testing.T) {
			intake := upstreamtest.NewDatadogIntake(t)
			m := &upstreamtest.Metrics{}
			d := newDatadog(t, intake, m, func(c *upstream.DatadogConfig) { c.Compression = comp })
			acme, blue, gray := window.NewTenant("acme"), window.NewTenant("blue"), window.NewTenant("gray")
			f := flushOf(t, map[*window.Tenant][]window.Sample{
				acme: {
					{Name: "g", Type: window.TypeGauge, Value: 4, Host: "web-1", Tags: []string{"b:2", "a:1"}},
					{Name: "c", Type: window.TypeCount, Value: 3, SampleRate: 0.5},
					{Name: "m", Type: window.TypeMonotonicCount, Values: []float64{10, 15}},
					{Name: "s", Type: window.TypeSet, SetMember: "x"},
					{Name: "h", Type: window.TypeHistogram, Values: []float64{1, 2, 3, 4}},
					{Name: "d", Type: window.TypeDistribution, Values: seqValues(1000)},
				},
				blue: {{Name: "c", Type: window.TypeCount, Value: 9}},
				gray: {{Name: "c", Type: window.TypeCount, Value: 1}}, // not routed here
			})
			f.Checks = []window.ServiceCheck{{Tenant: acme, Name: "db.up", Status: window.StatusCritical, Host: "db", Timestamp: bucket * 1e9, Message: "down"}}
			f.Events = []window.Event{{Tenant: blue, Title: "deploy", Text: "v2", Timestamp: bucket * 1e9, Tags: []string{"env:prod"}}}
			if err := d.Export(context.Background(), f, routeAll(map[string]string{"acme": "acme-key", "blue": ""})); err != nil {
				t.Fatal(err)
			}
			if err := d.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := intake.Err(); err != nil {
				t.Fatal(err)
			}
			got := map[string]upstreamtest.DDPoint{}
			for _, p := range intake.Series() {
				got[p.APIKey+"/"+p.Metric+"{"+p.Tags+"}"] = p
				if p.TS != bucket || p.Interval != 10 {
					t.Errorf("%s: ts %d interval %d", p.Metric, p.TS, p.Interval)
				}
			}
			want := map[string]struct {
				v   float64
				typ int
			}{
				// COUNT as the Agent's Counter.flush sends it: a rate of
				// sum ÷ 10 s; MONOTONIC_COUNT a count; SET a gauge; the
				// histogram's default series with .count a rate.
				"acme-key/g{a:1,b:2}": {4, 3}, "acme-key/c{}": {0.6, 2}, "acme-key/m{}": {5, 1}, "acme-key/s{}": {1, 3},
				"acme-key/h.max{}": {4, 3}, "acme-key/h.avg{}": {2.5, 3},
				"acme-key/h.count{}": {0.4, 2}, "acme-key/h.median{}": {2, 3}, "acme-key/h.95percentile{}": {4, 3},
				"default-key/c{}": {0.9, 2},
			}
			if len(got) != len(want) {
				t.Errorf("got %d series, want %d: %v", len(got), len(want), got)
			}
			for k, w := range want {
				p, ok := got[k]
				if !ok {
					t.Errorf("%s missing", k)
					continue
				}
				if math.Abs(p.Value-w.v) > 0.01*w.v || p.Type != w.typ {
					t.Errorf("%s = %v type %d, want %v type %d", k, p.Value, p.Type, w.v, w.typ)
				}
			}
			if p := got["acme-key/g{a:1,b:2}"]; p.Host != "web-1" {
				t.Errorf("host %q", p.Host)
			}
			sk := intake.Sketches()
			if len(sk) != 1 || sk[0].Metric != "d" || sk[0].Cnt != 1000 || sk[0].Min != 1 || sk[0].Max != 1000 || sk[0].Sum != 500500 || sk[0].APIKey != "acme-key" {
				t.Fatalf("sketches %+v", sk)
			}
			for _, q := range []float64{0.01, 0.25, 0.5, 0.9, 0.99} {
				want := math.Ceil(q * 1000)
				if got := sk[0].Quantile(q); math.Abs(got-want) > 0.02*want {
					t.Errorf("sketch q%v: got %v, want %v ±2%%", q, got, want)
				}
			}
			checks := intake.Checks()
			if len(checks) != 1 || checks[0]["check"] != "db.up" || checks[0]["status"] != 2.0 || checks[0]["host_name"] != "db" || checks[0]["api_key"] != "acme-key" || checks[0]["timestamp"] != float64(bucket) {
				t.Errorf("checks %v", checks)
			}
			events := intake.Events()
			if len(events) != 1 || events[0]["title"] != "deploy" || events[0]["api_key"] != "default-key" || events[0]["date_happened"] != float64(bucket) {
				t.Errorf("events %v", events)
			}
			if sent, points, _, lost := m.Snapshot(); len(lost) != 0 || points != 9+1+1+1+1 || sent != 5 { // acme: series, sketch, check run; blue: series, event
				t.Errorf("sent %d payloads, %d points, lost %v", sent, points, lost)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestDatadogIntakeFailuresLoseNothing(t *testing.T) {
	intake := upstreamtest.NewDatadogIntake(t)
	// The first series payload meets a 500, then a 429 with Retry-After,
	// then an intake that stores it but never answers, then success.
	intake.Answer = func(path string, n int) upstreamtest.Answer {
		if path != "/api/v2/series" {
			return upstreamtest.Answer{}
		}
		switch n {
		case 0:
			return upstreamtest.Answer{Status: http.StatusInternalServerError}
		case 1:
			return upstreamtest.Answer{Status: http.StatusTooManyRequests, RetryAfter: "1"}
		case 2:
			return upstreamtest.Answer{Store: ptr(true), Hang: true}
		}
		return upstreamtest.Answer{}
	}
	m := &upstreamtest.Metrics{}
	d := newDatadog(t, intake, m, func(c *upstream.DatadogConfig) { c.Pipeline.Timeout = 300 * time.Millisecond; c.Pipeline.Senders = 1 })
	tn := window.NewTenant("acme")
	var ss []window.Sample
	for i := range 50 {
		ss = append(ss, window.Sample{Name: "c", Type: window.TypeCount, Value: float64(i), Tags: []string{fmt.Sprintf("i:%03d", i)}})
	}
	start := time.Now()
	if err := d.Export(context.Background(), flushOf(t, map[*window.Tenant][]window.Sample{tn: ss}), routeAll(map[string]string{"acme": "k"})); err != nil {
		t.Fatal(err)
	}
	d.Shutdown(context.Background())
	if time.Since(start) < time.Second {
		t.Errorf("finished in %v: Retry-After 1 was not honoured", time.Since(start))
	}
	counts := map[string]int{}
	for _, p := range intake.Series() {
		counts[p.Tags]++
		if want := strings.TrimPrefix(p.Tags, "i:"); fmt.Sprintf("%03.0f", p.Value*float64(p.Interval)) != want {
			t.Errorf("%s = %v", p.Tags, p.Value)
		}
	}
	if len(counts) != 50 {
		t.Fatalf("%d of 50 points arrived", len(counts))
	}
	// The hung request stored every point and the retry wrote each again:
	// the intake keeps one value per series and timestamp, so the resend
	// is harmless.
	for tag, n := range counts {
		if n != 1 {
			t.Errorf("%s held %d times, want once", tag, n)
		}
	}
	if n := intake.Replaced(); n != 50 {
		t.Errorf("%d points replaced, want 50 (each stored twice)", n)
	}
	sent, _, failed, lost := m.Snapshot()
	if sent != 1 || failed["http_500"] != 1 || failed["http_429"] != 1 || failed["timeout"] != 1 || len(lost) != 0 {
		t.Fatalf("sent %d, failed %v, lost %v", sent, failed, lost)
	}
}

func TestDatadogPermanentRefusalIsCountedOthersGoOn(t *testing.T) {
	intake := upstreamtest.NewDatadogIntake(t)
	intake.Answer = func(path string, n int) upstreamtest.Answer {
		if path == "/api/beta/sketches" {
			return upstreamtest.Answer{Status: http.StatusBadRequest}
		}
		return upstreamtest.Answer{}
	}
	m := &upstreamtest.Metrics{}
	d := newDatadog(t, intake, m, nil)
	tn := window.NewTenant("acme")
	d.Export(context.Background(), flushOf(t, map[*window.Tenant][]window.Sample{tn: {
		{Name: "d", Type: window.TypeDistribution, Value: 1}, {Name: "c", Type: window.TypeCount, Value: 1},
	}}), routeAll(map[string]string{"acme": "k"}))
	d.Shutdown(context.Background())
	_, points, _, lost := m.Snapshot()
	if lost["http_400"] != 1 || points != 1 || len(intake.Series()) != 1 || intake.Requests("/api/beta/sketches") != 1 {
		t.Fatalf("lost %v, sent points %d, series %d, sketch requests %d", lost, points, len(intake.Series()), intake.Requests("/api/beta/sketches"))
	}
}

func TestDatadogSplitsPayloadsOverTheLimits(t *testing.T) {
	intake := upstreamtest.NewDatadogIntake(t)
	m := &upstreamtest.Metrics{}
	const maxRaw, maxComp = 4000, 1500
	d := newDatadog(t, intake, m, func(c *upstream.DatadogConfig) { c.MaxUncompressed, c.MaxCompressed = maxRaw, maxComp })
	tn := window.NewTenant("acme")
	var ss []window.Sample
	for i := range 2000 {
		ss = append(ss, window.Sample{Name: "split.me", Type: window.TypeCount, Value: 1, Tags: []string{fmt.Sprintf("id:%d", i), "env:prod"}, Host: "h"})
	}
	ss = append(ss, window.Sample{Name: "huge", Type: window.TypeGauge, Value: 1, Tags: []string{strings.Repeat("x", 200), strings.Repeat("y", 200)}})
	f := flushOf(t, map[*window.Tenant][]window.Sample{tn: ss})
	d.Export(context.Background(), f, routeAll(map[string]string{"acme": "k"}))
	d.Shutdown(context.Background())
	if n := len(intake.Series()); n != 2001 {
		t.Fatalf("%d of 2001 points arrived", n)
	}
	sizes := intake.BodySizes("/api/v2/series")
	if len(sizes) < 10 {
		t.Fatalf("only %d payloads for %d raw bytes limit", len(sizes), maxRaw)
	}
	for _, s := range sizes {
		if s > maxComp {
			t.Fatalf("payload of %d bytes over the %d limit", s, maxComp)
		}
	}

	// One aggregate larger than an empty payload may be is counted, not sent.
	d = newDatadog(t, intake, m, func(c *upstream.DatadogConfig) { c.MaxUncompressed, c.MaxCompressed = 100, 100 })
	d.Export(context.Background(), flushOf(t, map[*window.Tenant][]window.Sample{tn: ss[2000:]}), routeAll(map[string]string{"acme": "k"}))
	d.Shutdown(context.Background())
	if _, _, _, lost := m.Snapshot(); lost["too_large"] != 1 {
		t.Fatalf("lost %v, want one too_large", lost)
	}
}
