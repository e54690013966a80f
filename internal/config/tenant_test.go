package config_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/aggd/aggd/internal/config"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/window"
)

// TestEveryTenantLimitReachesTheTenant writes a tenants file that sets
// every field of window.TenantLimits by its toml key, and checks that
// each one arrives, unchanged, in the window.Tenant the edge builds: a
// limit added to the tenant needs no copy anywhere to take effect.
func TestEveryTenantLimitReachesTheTenant(t *testing.T) {
	var file strings.Builder
	file.WriteString("[[tenant]]\nid = \"acme\"\ntokens = [\"0123456789abcdef\"]\nmax_contexts = 5\nupstreams = [\"dd\"]\n")
	lt := reflect.TypeFor[window.TenantLimits]()
	want := reflect.New(lt).Elem()
	for i := range lt.NumField() {
		f := lt.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if key == "" {
			t.Fatalf("window.TenantLimits.%s has no toml key", f.Name)
		}
		v := i + 1
		fmt.Fprintf(&file, "%s = %d\n", key, v)
		switch f.Type.Kind() {
		case reflect.Float64:
			want.Field(i).SetFloat(float64(v))
		case reflect.Int, reflect.Int64:
			want.Field(i).SetInt(int64(v))
		default:
			t.Fatalf("window.TenantLimits.%s is a %s: extend this test", f.Name, f.Type)
		}
	}
	ts, err := config.LoadTenants(write(t, "t.toml", file.String()), getenv)
	if err != nil {
		t.Fatal(err)
	}
	tenants, err := service.NewTenants(service.TenantsConfig{Tenants: config.ServiceTenants(ts), Auth: true})
	if err != nil {
		t.Fatal(err)
	}
	tn, err := tenants.Get("acme")
	if err != nil {
		t.Fatal(err)
	}
	if got := tn.Limits; !reflect.DeepEqual(got, want.Interface()) {
		t.Fatalf("tenant limits %+v, want %+v from the file:\n%s", got, want.Interface(), file.String())
	}
	if tn.MaxContexts.Load() != 5 {
		t.Fatalf("max contexts %d, want 5", tn.MaxContexts.Load())
	}
	routes, err := config.Routes(ts)
	if err != nil || !reflect.DeepEqual(routes["acme"].Upstreams, []string{"dd"}) {
		t.Fatalf("routes %+v, %v", routes, err)
	}
}
