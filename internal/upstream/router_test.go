package upstream_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
	"github.com/aggd/aggd/internal/window"
)

func TestRouterSendsEachTenantToItsUpstreams(t *testing.T) {
	intake := upstreamtest.NewDatadogIntake(t)
	dd := newDatadog(t, intake, &upstreamtest.Metrics{}, nil)
	var local bytes.Buffer
	json := upstream.NewJSONLines("local", &local, upstream.JSONLinesConfig{})
	r, err := upstream.NewRouter([]upstream.Upstream{dd, json}, []string{"local"}, map[string]upstream.TenantRoute{
		"acme": {Upstreams: []string{"dd", "local"}, Credentials: map[string]upstream.Credentials{"dd": {APIKey: "acme-key"}}},
		"blue": {Upstreams: []string{"dd"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	acme, blue, other := window.NewTenant("acme"), window.NewTenant("blue"), window.NewTenant("other")
	f := flushOf(t, map[*window.Tenant][]window.Sample{
		acme: {{Name: "a", Type: window.TypeCount, Value: 1}}, blue: {{Name: "b", Type: window.TypeCount, Value: 2}},
		other: {{Name: "o", Type: window.TypeCount, Value: 3}},
	})
	f.Checks = []window.ServiceCheck{{Tenant: blue, Name: "up"}, {Tenant: other, Name: "up"}}
	if err := r.Export(context.Background(), f); err != nil {
		t.Fatal(err)
	}
	if err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range intake.Series() {
		got[p.Metric] = p.APIKey
	}
	if len(got) != 2 || got["a"] != "acme-key" || got["b"] != "default-key" {
		t.Errorf("datadog got %v; want a with acme's key, b with the default key", got)
	}
	if c := intake.Checks(); len(c) != 1 || c[0]["api_key"] != "default-key" {
		t.Errorf("datadog checks %v; want only blue's", c)
	}
	lines := local.String()
	if !strings.Contains(lines, `"name":"a"`) || !strings.Contains(lines, `"name":"o"`) || strings.Contains(lines, `"name":"b"`) ||
		!strings.Contains(lines, `"kind":"service_check","tenant":"other"`) || strings.Contains(lines, `"tenant":"blue"`) {
		t.Errorf("local output:\n%s", lines)
	}
}

func TestRouterRejectsUnknownNames(t *testing.T) {
	json := upstream.NewJSONLines("local", &bytes.Buffer{}, upstream.JSONLinesConfig{})
	for _, tc := range []struct {
		defaults []string
		tenants  map[string]upstream.TenantRoute
	}{
		{[]string{"nope"}, nil},
		{nil, map[string]upstream.TenantRoute{"a": {Upstreams: []string{"nope"}}}},
		{nil, map[string]upstream.TenantRoute{"a": {Upstreams: []string{"local"}, Credentials: map[string]upstream.Credentials{"other": {}}}}},
	} {
		if _, err := upstream.NewRouter([]upstream.Upstream{json}, tc.defaults, tc.tenants); err == nil {
			t.Errorf("%+v accepted", tc)
		}
	}
	if _, err := upstream.NewRouter([]upstream.Upstream{json, json}, nil, nil); err == nil {
		t.Error("duplicate names accepted")
	}
}
