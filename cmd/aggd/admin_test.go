package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

func TestAdminService(t *testing.T) {
	dd := upstreamtest.NewDatadogIntake(t)
	dir := t.TempDir()
	cfgFile, tenants := filepath.Join(dir, "aggd.toml"), filepath.Join(dir, "tenants.toml")
	os.WriteFile(cfgFile, []byte(fmt.Sprintf("default_upstreams = [\"dd\"]\n[[upstream]]\nname = \"dd\"\ntype = \"datadog\"\nurl = %q\napi_key = \"dd-secret-key-123\"\n"+
		"[[upstream]]\nname = \"collector\"\ntype = \"otlp\"\nendpoint = \"127.0.0.1:1\"\ninsecure = true\nheaders = { x-h = \"header-secret\" }\n", dd.URL)), 0o600)
	os.WriteFile(tenants, []byte(fmt.Sprintf("[[tenant]]\nid = \"acme\"\ntokens = [%q]\nmax_contexts = 50\n", acmeToken)), 0o600)
	in := startAggd(t, "--config", cfgFile, "--tenants-file", tenants, "--admin-token", "admin-0123456789abcdef", "--interval", "1h", "--context-ttl", "3h")
	client := aggdv1.NewAggregatorServiceClient(in.conn)
	var samples []*aggdv1.Sample
	for i := range 5 {
		for range i + 1 {
			samples = append(samples, smp(fmt.Sprintf("m%d", i), aggdv1.MetricType_METRIC_TYPE_COUNT, 1, "env:prod"))
		}
	}
	samples = append(samples, smp("bad", aggdv1.MetricType_METRIC_TYPE_GAUGE, 1, strings.Repeat("x", 300)))
	if _, err := client.Submit(withToken(acmeToken), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: samples}}); err != nil {
		t.Fatal(err)
	}
	admin := aggdv1.NewAdminServiceClient(in.conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer admin-0123456789abcdef")

	if _, err := admin.ListTenants(withToken(acmeToken), &aggdv1.ListTenantsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a tenant token reached the admin service: %v", err)
	}
	tl, err := admin.ListTenants(ctx, &aggdv1.ListTenantsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(tl.Tenants) != 1 || tl.Tenants[0].Id != "acme" || tl.Tenants[0].Contexts != 5 || tl.Tenants[0].MaxContexts != 50 ||
		tl.Tenants[0].Accepted != 15 || tl.Tenants[0].Rejected["tag_too_long"] != 1 {
		t.Fatalf("tenants %v", tl)
	}
	top, err := admin.TopContexts(ctx, &aggdv1.TopContextsRequest{Tenant: "acme", Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(top.Contexts) != 2 || top.Contexts[0].Name != "m4" || top.Contexts[0].Samples != 5 || top.Contexts[1].Name != "m3" || top.Contexts[0].Tags[0] != "env:prod" {
		t.Fatalf("top contexts %v", top)
	}
	if _, err := admin.TopContexts(ctx, &aggdv1.TopContextsRequest{Tenant: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown tenant: %v", err)
	}
	q, err := admin.GetQueues(ctx, &aggdv1.GetQueuesRequest{})
	if err != nil || len(q.Queues) != 2 || q.Queues[0].Upstream != "dd" || q.Queues[0].Capacity != 1000 || q.Queues[1].Upstream != "collector" {
		t.Fatalf("queues %v %v", q, err)
	}
	c, err := admin.GetConfig(ctx, &aggdv1.GetConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"dd-secret-key-123", "header-secret", acmeToken, "admin-0123456789abcdef"} {
		if strings.Contains(c.Json, secret) {
			t.Errorf("the configuration shows a secret: %s", secret)
		}
	}
	for _, want := range []string{`"interval": "1h0m0s"`, `"ID": "acme"`, `"Tokens": 1`, `"APIKey": "<redacted>"`} {
		if !strings.Contains(c.Json, want) {
			t.Errorf("the configuration lacks %s:\n%s", want, c.Json)
		}
	}
}

func TestOwnTracesOfFlushesAndSends(t *testing.T) {
	traces := upstreamtest.NewOTLPReceiver(t)
	dd := upstreamtest.NewDatadogIntake(t)
	cfgFile := filepath.Join(t.TempDir(), "aggd.toml")
	os.WriteFile(cfgFile, []byte(fmt.Sprintf("[[upstream]]\nname = \"dd\"\ntype = \"datadog\"\nurl = %q\napi_key = \"k\"\n", dd.URL)), 0o600)
	in := startAggd(t, "--config", cfgFile, "--otel-traces-endpoint", traces.Addr, "--otel-traces-insecure", "--interval", "1h", "--context-ttl", "3h")
	if _, err := aggdv1.NewAggregatorServiceClient(in.conn).Submit(context.Background(), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
		smp("c", aggdv1.MetricType_METRIC_TYPE_COUNT, 1)}}}); err != nil {
		t.Fatal(err)
	}
	in.stop(t) // the final flush, its sends, then the tracer's own flush
	names := map[string]int{}
	for _, r := range traces.TraceRequests() {
		for _, rs := range r.Req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					names[s.Name]++
				}
			}
		}
	}
	if names["aggd.flush"] < 1 || names["aggd.send"] < 1 {
		t.Fatalf("own spans: %v", names)
	}
}
