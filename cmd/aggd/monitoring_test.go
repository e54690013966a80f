package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/metadata"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// grafanaPanel is the part of a dashboard panel the test reads.
type grafanaPanel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

// TestMonitoringNames checks that every metric the alerting rules and
// the Grafana dashboard (deploy/helm/aggd/files) query is one a running aggd
// exports, so a renamed metric cannot leave an alert that never fires.
// promtool checks the rules' syntax and behaviour in CI.
func TestMonitoringNames(t *testing.T) {
	var exprs []string
	data, err := os.ReadFile(filepath.Join(repo, "deploy/helm/aggd/files/aggd-alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatal(err)
	}
	alerts := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
			alerts[r.Alert] = true
		}
	}
	// Every alert has a promtool unit test.
	tests, err := os.ReadFile(filepath.Join(repo, "deploy/helm/aggd/files/aggd-alerts.test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for a := range alerts {
		if !strings.Contains(string(tests), "alertname: "+a+"\n") {
			t.Errorf("alert %s has no promtool test", a)
		}
	}
	data, err = os.ReadFile(filepath.Join(repo, "deploy/helm/aggd/files/grafana-aggd.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string         `json:"uid"`
		Panels []grafanaPanel `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}

	// aggd with everything the queries read: an upstream, the log (and
	// another aggd without it), a
	// memory budget, DogStatsD, and a tenant with an accepted and a
	// refused item.
	intake := upstreamtest.NewDatadogIntake(t)
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "aggd.toml")
	os.WriteFile(cfgFile, []byte("[[upstream]]\nname = \"dd\"\ntype = \"datadog\"\nurl = \""+intake.URL+"\"\napi_key = \"k\"\n"), 0o600)
	in := startAggd(t, "--config", cfgFile, "--wal-dir", filepath.Join(dir, "wal"), "--memory-limit", "1073741824", "--dogstatsd-udp", freeUDP(t))
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-tenant-id", "shop")
	if _, err := aggdv1.NewAggregatorServiceClient(in.conn).Submit(ctx, &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
		{Name: "a", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1}, {Name: "", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1},
	}}}); err != nil {
		t.Fatal(err)
	}
	// The queue's bound is aggd_queue_capacity_bytes with the log, and
	// aggd_queue_capacity without it.
	text := scrape(t, in.admin) + scrape(t, startAggd(t, "--config", cfgFile).admin)
	exported := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+) (\S+)$`).FindAllStringSubmatch(text, -1) {
		exported[m[1]] = true
		if m[2] == "histogram" {
			for _, s := range []string{"_bucket", "_count", "_sum"} {
				exported[m[1]+s] = true
			}
		}
	}
	// Metric names: identifiers followed by a selector, a range or the
	// end of an argument, that are not functions or keywords.
	names := regexp.MustCompile(`\b([a-z][a-z0-9_]*_[a-z0-9_]+)\b\s*([{\[)/]|$)`)
	used := 0
	for _, e := range exprs {
		for _, m := range names.FindAllStringSubmatch(e, -1) {
			if strings.HasPrefix(m[1], "histogram_") || strings.HasPrefix(m[1], "label_") || strings.HasPrefix(m[1], "group_") {
				continue
			}
			used++
			if !exported[m[1]] {
				t.Errorf("%q queries %s, which aggd does not export", e, m[1])
			}
		}
	}
	if used < 20 {
		t.Fatalf("found only %d metric names in the queries: the pattern misses them", used)
	}
}
