package spans

import (
	"fmt"
	"testing"
	"time"

	"github.com/aggd/aggd/internal/window"
)

const loggingPolicy = `
[logging]
data_ttl = "1m"

[[logging.group_dimensions]]
group_key = "fields.user_id"

[[logging.group_dimensions.pipelines]]
name = "keep_error_logs"
type = "condition"
condition = "{ status = 'error' }"
action = "keep"

[[logging.group_dimensions.pipelines]]
name = "sample_normal_logs"
type = "probabilistic"
condition = "{ 1 = 1 }"
rate = 0.1
`

func TestGroupSamplingOfEvents(t *testing.T) {
	g := NewGroupSampler(mustPolicy(t, loggingPolicy), 10_000)
	tn := window.NewTenant("t")
	ev := func(user string, alert window.EventAlertType) *window.Event {
		e := &window.Event{Tenant: tn, Title: "login", AlertType: alert}
		if user != "" {
			e.Tags = []string{"user_id:" + user, "env:prod"}
		}
		return e
	}
	const min = int64(time.Minute)
	if g.Hold(ev("", window.AlertInfo), 0) {
		t.Fatal("an event without the group key was held")
	}
	// u-err has one error among its events: the whole group is kept.
	for _, a := range []window.EventAlertType{window.AlertInfo, window.AlertError, window.AlertInfo} {
		if !g.Hold(ev("u-err", a), 0) {
			t.Fatal("an event with the group key passed through")
		}
	}
	// Plain groups: kept by the hash of the user id, at rate 0.1.
	for i := range 1000 {
		g.Hold(ev(fmt.Sprint("user-", i), window.AlertInfo), 30*int64(time.Second))
	}
	if out := g.Release(min-1, false); len(out) != 0 {
		t.Fatalf("released before data_ttl: %d", len(out))
	}
	out := g.Release(min, false)
	if len(out) != 3 || out[1].AlertType != window.AlertError {
		t.Fatalf("error group: %+v", out)
	}
	out = g.Release(min+30*int64(time.Second), false)
	if len(out) < 60 || len(out) > 140 {
		t.Fatalf("kept %d of 1000 plain groups at rate 0.1", len(out))
	}
	for _, e := range out {
		v, _ := e.Field("user_id")
		if !keepHash(hashString(v), 0.1) {
			t.Fatalf("group %s kept against its hash", v)
		}
	}
	// A late event follows its group's decision.
	g.Hold(ev("u-err", window.AlertInfo), min+1)
	if out := g.Release(min+2, false); len(out) != 1 {
		t.Fatalf("late event of a kept group: %v", out)
	}
	if g.PassedThrough.Load() != 1 {
		t.Fatalf("passed through %d", g.PassedThrough.Load())
	}
}

func TestGroupSamplerBoundDecidesEarly(t *testing.T) {
	g := NewGroupSampler(mustPolicy(t, loggingPolicy), 2)
	tn := window.NewTenant("t")
	for i := range 4 {
		g.Hold(&window.Event{Tenant: tn, Title: "x", AlertType: window.AlertError, Tags: []string{fmt.Sprint("user_id:", i)}}, 0)
	}
	if g.Early.Load() != 2 {
		t.Fatalf("early %d", g.Early.Load())
	}
	if out := g.Release(0, true); len(out) != 4 {
		t.Fatalf("released %d of 4 error events", len(out))
	}
}
