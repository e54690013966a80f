package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/service/servicetest"
	"github.com/aggd/aggd/internal/window"
)

// movedFrom returns a context name (no tags, no host) owned by from under
// ring a and by to under ring b.
func movedFrom(a, b *Ring, from, to string) string {
	for i := 0; ; i++ {
		name := fmt.Sprintf("m%d", i)
		h := ContextHash("default", window.AppendKey(nil, name, "", nil))
		if a.Owner(h) == from && b.Owner(h) == to {
			return name
		}
	}
}

func TestHeirs(t *testing.T) {
	abc, abcd, acd := []string{"a", "b", "c"}, []string{"a", "b", "c", "d"}, []string{"a", "c", "d"}
	m := NewMembership(abc, 10*sec, 3600*sec)
	m.Schedule(abcd, 100*sec, 0)
	m.Schedule(acd, 200*sec, 0)
	r1, r2, r3 := NewRing(abc), NewRing(abcd), NewRing(acd)
	bToD := movedFrom(r1, r2, "b", "d") // b, then d, then d
	bToB := movedFrom(r1, r2, "b", "b") // b, then b, then a, c or d
	aToA := movedFrom(r2, r3, "a", "a") // unmoved by the second change
	hash := func(name string) uint64 { return ContextHash("default", window.AppendKey(nil, name, "", nil)) }
	tests := []struct {
		name   string
		key    string
		bucket int64
		want   []string
	}{
		{"moved once: the later owner, once", bToD, 50 * sec, []string{"d"}},
		{"owned by the bucket's owner until the second change", bToB, 50 * sec, []string{r3.Owner(hash(bToB))}},
		{"from the middle version", bToB, 150 * sec, []string{r3.Owner(hash(bToB))}},
		{"latest version: nobody", bToD, 250 * sec, nil},
		{"a context no change moves", aToA, 150 * sec, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hash(tt.key)
			owner, _ := m.Owner(h, tt.bucket)
			got := m.Heirs(nil, h, tt.bucket, owner)
			if !slices.Equal(got, tt.want) {
				t.Errorf("heirs of %s (owner %s) at %d s: %v, want %v", tt.key, owner, tt.bucket/sec, got, tt.want)
			}
		})
	}
	if aToA == "" || r1.Owner(hash(aToA)) == "" {
		t.Fatal("no context found")
	}
}

// The hand-off's timing: a member seen joining at t owns contexts from the
// first boundary at least Settle after t. From the moment a replica sees
// the change, each RATE or MONOTONIC_COUNT sample of a bucket before the
// boundary goes to its owner and is seeded to the joining member; from the
// boundary on, samples go to the new owner and nothing is seeded, except
// for late samples of the old buckets.
func TestHandOffTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const self, old, joining = "10.0.0.1:8129", "10.0.0.2:8129", "10.0.0.3:8129"
		dns := &fakeDNS{}
		dns.set(nil, "10.0.0.1", "10.0.0.2")
		src := DNS{Host: "aggd-peers", Port: "8129", Resolver: dns}
		m := NewMembership([]string{self, old}, 10*sec, 60*sec)
		w := NewWatcher(src, m, WatchConfig{Refresh: 5 * time.Second, Settle: 12 * time.Second}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err := w.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer w.Shutdown(context.Background())
		f := NewForwarder(Config{Self: self, Token: token, Timing: window.DefaultConfig().Timing(), Interval: 10 * time.Second}, m, slog.New(slog.DiscardHandler))
		name := movedFrom(NewRing([]string{self, old}), NewRing([]string{self, old, joining}), old, joining)
		tn := window.NewTenant("default")
		route := func(ts, now int64) (string, []string) {
			s := window.Sample{Name: name, Type: window.TypeRate, Value: 1, SampleRate: 1, Timestamp: ts}
			s.Prepare(tn, nil)
			owner, _, heirs := f.route("default", &s, now, nil)
			return owner, heirs
		}

		// Sent once a second, stamped with their arrival.
		start := time.Now().UnixNano()
		dns.set(nil, "10.0.0.1", "10.0.0.2", "10.0.0.3") // seen at the refresh at 5 s
		var seen, boundary int64
		var lastBefore int64
		for range 40 {
			time.Sleep(time.Second)
			synctest.Wait()
			now := time.Now().UnixNano()
			owner, heirs := route(0, now)
			if seen == 0 && m.Latest().N == 2 {
				seen, boundary = now, m.Latest().Since
			}
			switch {
			case seen == 0 || now < seen:
				if owner != old || heirs != nil {
					t.Fatalf("at %v, before the change is seen: owner %s, heirs %v; want %s and none", time.Duration(now-start), owner, heirs, old)
				}
			case now < boundary:
				if owner != old || !slices.Equal(heirs, []string{joining}) {
					t.Fatalf("at %v, change seen, before the boundary: owner %s, heirs %v; want %s, seeding %s", time.Duration(now-start), owner, heirs, old, joining)
				}
				lastBefore = now
			default:
				if owner != joining || heirs != nil {
					t.Fatalf("at %v, past the boundary: owner %s, heirs %v; want %s and none", time.Duration(now-start), owner, heirs, joining)
				}
			}
		}
		if seen == 0 || lastBefore == 0 || boundary < seen+12*sec || boundary%(10*sec) != 0 {
			t.Fatalf("change seen at %v takes effect at %v; want a boundary at least 12 s later, seeded in between", time.Duration(seen-start), time.Duration(boundary-start))
		}
		// A late sample of a bucket before the boundary, arriving after.
		if owner, heirs := route(boundary-sec, time.Now().UnixNano()); owner != old || !slices.Equal(heirs, []string{joining}) {
			t.Errorf("late sample of the old owner's bucket: owner %s, heirs %v; want %s, seeding %s", owner, heirs, old, joining)
		}
	})
}

// A forward while a change is scheduled: the owner of a RATE sample's
// bucket aggregates it, the replica owning its context from the change on
// keeps it as the context's previous sample (a remote heir through the
// peer service, this replica itself directly), and the client's ack is the
// owner's. A heir that cannot be reached loses its seed, counted, and
// refuses nothing.
func TestForwardSeedsTheHeirs(t *testing.T) {
	for _, heirDown := range []bool{false, true} {
		t.Run(fmt.Sprintf("heir down %v", heirDown), func(t *testing.T) {
			const self = "127.0.0.1:1"
			owner, heir := &servicetest.Recorder{}, &servicetest.Recorder{}
			ownerAddr, heirAddr := replica(t, owner, nil), replica(t, heir, nil)
			if heirDown {
				l, _ := net.Listen("tcp", "127.0.0.1:0")
				heirAddr = l.Addr().String()
				l.Close()
			}
			now := time.Now()
			boundary := now.Truncate(time.Second).Add(time.Hour).UnixNano()
			before, after := []string{self, ownerAddr}, []string{self, heirAddr}
			m := NewMembership(before, int64(time.Second), int64(time.Hour))
			m.Schedule(after, boundary, now.UnixNano())
			local := &servicetest.Recorder{}
			// The owner must get its forward however busy the machine:
			// only the seed to a heir that is down may give up soon.
			timeout := 30 * time.Second
			if heirDown {
				timeout = 300 * time.Millisecond
			}
			fwd := NewForwarder(Config{Self: self, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second,
				Timeout: timeout, InitialBackoff: 10 * time.Millisecond, Seeder: local}, m, slog.New(slog.DiscardHandler))
			defer fwd.Shutdown(context.Background())
			entry := &servicetest.Recorder{}
			entryAddr := replica(t, entry, fwd)

			r1, r2 := NewRing(before), NewRing(after)
			toHeir, toSelf := movedFrom(r1, r2, ownerAddr, heirAddr), movedFrom(r1, r2, ownerAddr, self)
			ts := now.UnixNano()
			b := &aggdv1.Batch{Samples: []*aggdv1.Sample{
				{Name: toHeir, Type: aggdv1.MetricType_METRIC_TYPE_RATE, Value: 7, TimestampUnixNano: ts},
				{Name: toSelf, Type: aggdv1.MetricType_METRIC_TYPE_MONOTONIC_COUNT, Value: 9, TimestampUnixNano: ts},
				{Name: toHeir, Type: aggdv1.MetricType_METRIC_TYPE_GAUGE, Value: 1, TimestampUnixNano: ts}, // no state: no seed
			}}
			ack := submit(t, entryAddr, b)
			if ack.GetAccepted() != 3 || ack.GetRejected() != 0 {
				t.Fatalf("ack %v, want the 3 samples accepted by their owner", ack)
			}
			if got := len(owner.Samples()); got != 3 {
				t.Errorf("the buckets' owner aggregated %d samples, want 3", got)
			}
			wantHeir := []servicetest.Sample{{Tenant: "default", Name: toHeir, Tags: []string{}, Type: window.TypeRate, Value: 7, Timestamp: ts}}
			if heirDown {
				wantHeir = nil
			}
			if got := heir.Seeds(); !slices.EqualFunc(got, wantHeir, sampleEqual) || len(heir.Samples()) != 0 {
				t.Errorf("heir: seeds %+v and %d samples; want %+v and none", got, len(heir.Samples()), wantHeir)
			}
			wantLocal := []servicetest.Sample{{Tenant: "default", Name: toSelf, Tags: []string{}, Type: window.TypeMonotonicCount, Value: 9, Timestamp: ts}}
			if got := local.Seeds(); !slices.EqualFunc(got, wantLocal, sampleEqual) {
				t.Errorf("this replica's seeds %+v, want %+v", got, wantLocal)
			}
			outcome := "acked"
			if heirDown {
				outcome = "undelivered"
			}
			if got := itemsCounted(t, fwd, "seed", outcome); got != 1 {
				t.Errorf("seeds %s: %v, want 1", outcome, got)
			}
		})
	}
}

func sampleEqual(a, b servicetest.Sample) bool {
	return a.Tenant == b.Tenant && a.Name == b.Name && slices.Equal(a.Tags, b.Tags) && a.Type == b.Type && a.Value == b.Value && a.Timestamp == b.Timestamp && a.HandedOver == b.HandedOver
}

// Samples made here (the stats of spans) go through service.Routed: live,
// each to its context's owner; replayed from the write-ahead log, only the
// ones this replica owns are taken here, and nothing is forwarded again
// (the owners logged theirs when they acked them).
func TestRoutedStatsHaveOneOwner(t *testing.T) {
	const self = "127.0.0.1:1"
	peer := &servicetest.Recorder{}
	peerAddr := replica(t, peer, nil)
	members := []string{self, peerAddr}
	m := NewMembership(members, int64(time.Second), int64(time.Hour))
	fwd := NewForwarder(Config{Self: self, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second}, m, slog.New(slog.DiscardHandler))
	defer fwd.Shutdown(context.Background())
	local := &servicetest.Recorder{}
	r := &service.Routed{Forwarder: fwd, Ingester: local}
	tn := window.NewTenant("default")
	ring := NewRing(members)
	names := append(ownedBy(ring, self, 3), ownedBy(ring, peerAddr, 3)...)
	batch := func() *window.Batch {
		b := &window.Batch{Tenant: tn, Now: time.Now().UnixNano()}
		for _, n := range names {
			s := window.Sample{Name: n, Type: window.TypeCount, Value: 1, SampleRate: 1}
			s.Prepare(tn, nil)
			b.Samples = append(b.Samples, s)
			b.Results = append(b.Results, window.Accepted)
		}
		return b
	}
	b := batch()
	r.Ingest(b)
	if len(local.Samples()) != 3 || len(peer.Samples()) != 3 {
		t.Fatalf("live: %d samples taken here and %d by the peer, want 3 and 3", len(local.Samples()), len(peer.Samples()))
	}
	b = batch()
	r.IngestReplayed(b)
	if len(local.Samples()) != 6 || len(peer.Samples()) != 3 {
		t.Errorf("replayed: %d samples taken here and %d by the peer, want 3 more here and none forwarded", len(local.Samples()), len(peer.Samples()))
	}
	for i, res := range b.Results {
		if res != window.Accepted {
			t.Errorf("replayed sample %d: %v, want accepted", i, res)
		}
	}
}

// lastSamples is a LastSamples of fixed contexts. before, if set, is
// called before each slice is handed out, with the number of contexts
// handed out so far.
type lastSamples struct {
	ls     []servicetest.Sample
	before func(n int)
}

func (l lastSamples) LastSamples(n int, fn func([]window.Last) bool) {
	tn := window.NewTenant("default")
	var buf []window.Last
	for i, s := range l.ls {
		buf = append(buf, window.Last{Tenant: tn, Key: string(window.AppendKey(nil, s.Name, "", s.Tags)), Type: s.Type, Value: s.Value, Timestamp: s.Timestamp})
		if len(buf) == n || i == len(l.ls)-1 {
			if l.before != nil {
				l.before(i + 1 - len(buf))
			}
			if !fn(buf) {
				return
			}
			buf = buf[:0]
		}
	}
}

// A change scheduled hands the last sample of each RATE and
// MONOTONIC_COUNT context this replica owns and the change moves to its new
// owner; the contexts that stay, and those of other owners, stay.
func TestHandOverSendsMovedContexts(t *testing.T) {
	const self = "127.0.0.1:1"
	heir := &servicetest.Recorder{}
	heirAddr := replica(t, heir, nil)
	other := "127.0.0.1:2" // owns contexts before the change; never dialled
	before, after := []string{self, other}, []string{self, other, heirAddr}
	m := NewMembership(before, int64(time.Second), int64(time.Hour))
	fwd := NewForwarder(Config{Self: self, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second}, m, slog.New(slog.DiscardHandler))
	defer fwd.Shutdown(context.Background())
	now := time.Now()
	v := m.Schedule(after, now.Add(time.Minute).UnixNano(), now.UnixNano())
	r1, r2 := NewRing(before), NewRing(after)
	ts := now.Add(-3 * time.Second).UnixNano()
	moved := servicetest.Sample{Tenant: "default", Name: movedFrom(r1, r2, self, heirAddr), Type: window.TypeRate, Value: 41, Timestamp: ts}
	stays := servicetest.Sample{Tenant: "default", Name: movedFrom(r1, r2, self, self), Type: window.TypeMonotonicCount, Value: 5, Timestamp: ts}
	others := servicetest.Sample{Tenant: "default", Name: movedFrom(r1, r2, other, heirAddr), Type: window.TypeRate, Value: 9, Timestamp: ts}
	fwd.HandOver(context.Background(), lastSamples{ls: []servicetest.Sample{moved, stays, others}}, v)

	moved.Tags = []string{} // as the heir decodes them
	moved.HandedOver = true // kept only if later than the heir's last sample
	if got := heir.Seeds(); !slices.EqualFunc(got, []servicetest.Sample{moved}, sampleEqual) {
		t.Errorf("heir's seeds %+v, want only %+v", got, moved)
	}
	if got := itemsCounted(t, fwd, "seed", "acked"); got != 1 {
		t.Errorf("seeds acked %v, want 1", got)
	}
	if fwd.handOvers.Load() != 1 {
		t.Errorf("%d hand-overs counted, want 1", fwd.handOvers.Load())
	}
}

// A heir that does not take a hand-over call within Timeout gets no
// further calls: the rest of its seeds are counted undelivered at once,
// so that the member-list watcher waits one Timeout, not one per call.
func TestHandOverGivesUpAnUnreachableHeir(t *testing.T) {
	const self = "127.0.0.1:1"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String() // nothing listens there once closed
	l.Close()
	before, after := []string{self}, []string{self, dead}
	m := NewMembership(before, int64(time.Second), int64(time.Hour))
	fwd := NewForwarder(Config{Self: self, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second,
		Timeout: 100 * time.Millisecond}, m, slog.New(slog.DiscardHandler))
	defer fwd.Shutdown(context.Background())
	now := time.Now()
	v := m.Schedule(after, now.Add(time.Minute).UnixNano(), now.UnixNano())
	ts := now.Add(-3 * time.Second).UnixNano()
	const moving = 3*handOverChunk + 1 // four calls' worth
	var src lastSamples
	for i := 0; len(src.ls) < moving; i++ {
		name := fmt.Sprintf("m%d", i)
		if v.Ring.Owner(ContextHash("default", window.AppendKey(nil, name, "", nil))) == dead {
			src.ls = append(src.ls, servicetest.Sample{Tenant: "default", Name: name, Type: window.TypeRate, Value: 1, Timestamp: ts})
		}
	}
	fwd.HandOver(context.Background(), src, v)

	if got := fwd.callsFailed.Load(); got != 1 {
		t.Errorf("%d calls given up, want 1 (no call after the first failed)", got)
	}
	if got := itemsCounted(t, fwd, "seed", "undelivered"); got != moving {
		t.Errorf("seeds undelivered %v, want %d", got, moving)
	}
}

// A hand-over streams: it reads the last samples handOverChunk at a time
// and has the heirs take each slice before it reads the next, so that it
// holds a bounded number of seeds whatever the number of contexts.
func TestHandOverStreamsInBoundedSlices(t *testing.T) {
	heir := &servicetest.Recorder{}
	fwd, v, heirAddr := joining(t, heir)
	ts := time.Now().Add(-3 * time.Second).UnixNano()
	const moving = 3*handOverChunk + 7
	src := lastSamples{}
	for i := 0; len(src.ls) < moving; i++ {
		name := fmt.Sprintf("m%d", i)
		if v.Ring.Owner(ContextHash("default", window.AppendKey(nil, name, "", nil))) == heirAddr {
			src.ls = append(src.ls, servicetest.Sample{Tenant: "default", Name: name, Type: window.TypeRate, Value: 1, Timestamp: ts})
		}
	}
	reads := 0
	src.before = func(n int) {
		reads++
		if got := len(heir.Seeds()); got != n {
			t.Errorf("before slice %d: the heir holds %d seeds, want the %d handed out so far", reads, got, n)
		}
	}
	fwd.HandOver(context.Background(), src, v)
	if got := len(heir.Seeds()); got != moving {
		t.Errorf("the heir holds %d seeds, want %d", got, moving)
	}
	if want := (moving + handOverChunk - 1) / handOverChunk; reads != want {
		t.Errorf("%d slices read, want %d", reads, want)
	}
}

// A replica that took a context's last sample as a seed (it owns the
// context from a change on, and no sample came since) hands it over when
// the context moves again: it holds the context's latest state, though
// the sample's bucket had another owner.
func TestHandOverPassesOnASeed(t *testing.T) {
	const self, other = "127.0.0.1:1", "127.0.0.1:2" // other is never dialled
	heir := &servicetest.Recorder{}
	heirAddr := replica(t, heir, nil)
	now := time.Now()
	m := NewMembership([]string{self, other}, int64(time.Second), int64(time.Hour))
	m.Schedule([]string{self}, now.Add(-time.Minute).UnixNano(), now.UnixNano()) // self took over everything
	v := m.Schedule([]string{self, heirAddr}, now.Add(time.Minute).UnixNano(), now.UnixNano())
	fwd := NewForwarder(Config{Self: self, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second}, m, slog.New(slog.DiscardHandler))
	defer fwd.Shutdown(context.Background())
	r1, r3 := NewRing([]string{self, other}), NewRing([]string{self, heirAddr})
	seeded := servicetest.Sample{Tenant: "default", Name: movedFrom(r1, r3, other, heirAddr), Type: window.TypeRate, Value: 41,
		Timestamp: now.Add(-2 * time.Minute).UnixNano()} // a seed: its bucket was other's
	stays := servicetest.Sample{Tenant: "default", Name: movedFrom(r1, r3, other, self), Type: window.TypeRate, Value: 5,
		Timestamp: now.Add(-2 * time.Minute).UnixNano()}
	fwd.HandOver(context.Background(), lastSamples{ls: []servicetest.Sample{seeded, stays}}, v)

	seeded.Tags, seeded.HandedOver = []string{}, true
	if got := heir.Seeds(); !slices.EqualFunc(got, []servicetest.Sample{seeded}, sampleEqual) {
		t.Errorf("heir's seeds %+v, want %+v", got, seeded)
	}
}

func TestHeld(t *testing.T) {
	m := NewMembership([]string{"a"}, sec, 3600*sec)
	m.Schedule([]string{"b"}, 100*sec, 0)
	m.Schedule([]string{"c"}, 200*sec, 0)
	m.Schedule([]string{"d"}, 300*sec, 0)
	tests := []struct {
		self        string
		from, until int64
		want        bool
	}{
		{"a", 50 * sec, 300 * sec, true},   // the sample's bucket's owner
		{"b", 50 * sec, 300 * sec, true},   // owner since, seeded
		{"c", 50 * sec, 300 * sec, true},   // owner since, seeded
		{"d", 50 * sec, 300 * sec, false},  // the heir itself
		{"a", 150 * sec, 300 * sec, false}, // replaced before the sample
		{"b", 150 * sec, 200 * sec, true},
		{"c", 150 * sec, 200 * sec, false}, // takes effect at until
		{"c", 200 * sec, 300 * sec, true},  // from its first bucket
	}
	for _, tt := range tests {
		if got := m.Held(tt.self, 1, tt.from, tt.until); got != tt.want {
			t.Errorf("Held(%s, [%d s, %d s)) = %v, want %v", tt.self, tt.from/sec, tt.until/sec, got, tt.want)
		}
	}
}

// Seeds a new owner refuses (past its max lateness) are counted refused,
// not acked.
func TestRefusedSeedsAreCounted(t *testing.T) {
	fwd, v, heirAddr := joining(t, flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 1}))
	now := time.Now()
	names := ownedBy(v.Ring, heirAddr, 2) // self's before the change
	tooOld := now.Add(-window.DefaultConfig().MaxLateness - time.Minute).UnixNano()
	src := lastSamples{ls: []servicetest.Sample{
		{Tenant: "default", Name: names[0], Type: window.TypeRate, Value: 1, Timestamp: now.Add(-time.Second).UnixNano()},
		{Tenant: "default", Name: names[1], Type: window.TypeRate, Value: 1, Timestamp: tooOld},
	}}
	fwd.HandOver(context.Background(), src, v)
	if got := itemsCounted(t, fwd, "seed", "acked"); got != 1 {
		t.Errorf("seeds acked %v, want 1", got)
	}
	if got := itemsCounted(t, fwd, "seed", "refused"); got != 1 {
		t.Errorf("seeds refused %v, want 1 (past max lateness)", got)
	}
}

// joining returns the forwarder of a replica that is alone until a
// minute from now, when heir, served on loopback (its address returned),
// joins it: the change v is scheduled.
func joining(t *testing.T, heir service.Ingester) (*Forwarder, Version, string) {
	const self = "127.0.0.1:1"
	heirAddr := replica(t, heir, nil)
	m := NewMembership([]string{self}, int64(time.Second), int64(time.Hour))
	fwd := NewForwarder(Config{Self: self, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second}, m, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { fwd.Shutdown(context.Background()) })
	now := time.Now()
	v := m.Schedule([]string{self, heirAddr}, now.Add(time.Minute).UnixNano(), now.UnixNano())
	return fwd, v, heirAddr
}
