package telemetry_test

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/aggd/aggd/internal/telemetry"
	"github.com/aggd/aggd/internal/window"
)

type tenants []*window.Tenant

func (t tenants) List() []*window.Tenant { return t }

// TestTenantSeriesAreBounded exports 1000 tenants with room for 10: the
// ten that accepted most keep series of their own, the rest are summed
// under _other, and no count is lost.
func TestTenantSeriesAreBounded(t *testing.T) {
	var ts tenants
	var accepted, rejected uint64
	for i := range 1000 {
		tn := window.NewTenant(fmt.Sprintf("t%03d", i))
		tn.Accepted.Add(uint64(i))
		tn.Rejected[window.ReasonTooOld].Add(1)
		tn.Contexts.Add(2)
		tn.Seeded.Add(3)
		accepted += uint64(i)
		rejected++
		ts = append(ts, tn)
	}
	for _, tc := range []struct {
		max, series int // series per metric name
	}{
		{10, 11},
		{0, 1000},
	} {
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(telemetry.NewTenantCollector(ts, tc.max))
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if len(mf.Metric) != tc.series {
				t.Errorf("max %d: %s has %d series, want %d", tc.max, mf.GetName(), len(mf.Metric), tc.series)
			}
			sum := 0.0
			tenantsSeen := map[string]bool{}
			for _, m := range mf.Metric {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
				tenantsSeen[m.Label[len(m.Label)-1].GetValue()] = true
				if mf.GetName() == "aggd_items_rejected_total" {
					tenantsSeen[m.Label[0].GetValue()] = true
				}
			}
			want := map[string]float64{"aggd_items_accepted_total": float64(accepted), "aggd_items_rejected_total": float64(rejected),
				"aggd_contexts": 2000, "aggd_contexts_seeded": 3000, "aggd_items_overflowed_total": 0}[mf.GetName()]
			if sum != want {
				t.Errorf("max %d: %s sums to %v, want %v", tc.max, mf.GetName(), sum, want)
			}
			if tc.max > 0 && mf.GetName() == "aggd_items_accepted_total" && (!tenantsSeen["t999"] || !tenantsSeen["t990"] || tenantsSeen["t989"] || !tenantsSeen[telemetry.OtherTenants]) {
				t.Errorf("max %d: %d tenants exported, t999 %v, t990 %v, t989 %v; want t990-t999 and %s",
					tc.max, len(tenantsSeen), tenantsSeen["t999"], tenantsSeen["t990"], tenantsSeen["t989"], telemetry.OtherTenants)
			}
		}
	}
}
