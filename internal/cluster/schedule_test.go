package cluster

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/service/servicetest"
	"github.com/aggd/aggd/internal/window"
)

func TestScheduleFileRoundTrip(t *testing.T) {
	m := NewMembership([]string{"10.0.0.1:8129", "10.0.0.2:8129"}, 10*sec, 3600*sec)
	m.Schedule([]string{"10.0.0.1:8129", "[fd00::3]:8129"}, 95*sec, 90*sec)
	m.Schedule(nil, 200*sec, 100*sec) // an empty list, as a name resolving to nobody yet
	f := ScheduleFile{Path: filepath.Join(t.TempDir(), "members"), Self: "10.0.0.1:8129"}
	if _, err := f.Load(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of no file: %v, want not exist", err)
	}
	if err := f.Save(m.Versions()); err != nil {
		t.Fatal(err)
	}
	got, err := f.Load()
	if err != nil {
		t.Fatal(err)
	}
	want := m.Versions()
	if len(got) != len(want) {
		t.Fatalf("loaded %d versions, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].N != want[i].N || got[i].Since != want[i].Since || !got[i].Ring.Equal(want[i].Ring) {
			t.Errorf("version %d: %d from %d %v, want %d from %d %v", i, got[i].N, got[i].Since, got[i].Ring.Members(),
				want[i].N, want[i].Since, want[i].Ring.Members())
		}
	}
	if _, err := os.Stat(f.Path + ".tmp"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the temporary file stays: %v", err)
	}
}

// A schedule file cut short or damaged is refused whole, with the reason;
// RestoreMembership then logs it and routes by the list resolved at start.
func TestScheduleFileRefusesDamage(t *testing.T) {
	m := NewMembership([]string{"10.0.0.1:8129"}, 10*sec, 3600*sec)
	m.Schedule([]string{"10.0.0.1:8129", "10.0.0.2:8129"}, 100*sec, 0)
	f := ScheduleFile{Path: filepath.Join(t.TempDir(), "members"), Self: "10.0.0.1:8129"}
	if err := f.Save(m.Versions()); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(f.Path)
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(good)
	flipped[len(scheduleHeader)+3] ^= 1
	tests := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "cut short"},
		{"cut in the last line", good[:len(good)-4], "checksum"},
		{"cut before the checksum", good[:bytes.LastIndex(good, []byte("crc32c"))], "cut short"},
		{"a byte changed", flipped, "damaged"},
		{"another format", []byte("aggd member schedule 2\n1 0 - a:1\ncrc32c 00000000\n"), "damaged"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(f.Path, tt.b, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := f.Load()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load: %v, want an error saying %q", err, tt.want)
			}
			var logged bytes.Buffer
			r := RestoreMembership(f, []string{"10.0.0.9:8129"}, 10*sec, 3600*sec, 1000*sec, slog.New(slog.NewTextHandler(&logged, nil)))
			if vs := r.Versions(); len(vs) != 1 || !slices.Equal(vs[0].Ring.Members(), []string{"10.0.0.9:8129"}) {
				t.Errorf("restored %d versions, want the list resolved at start only", len(vs))
			}
			if !strings.Contains(logged.String(), "member schedule ignored") || !strings.Contains(logged.String(), tt.want) {
				t.Errorf("logged %q, want the schedule ignored and why", logged.String())
			}
		})
	}
	// A header of another version with its checksum right is refused by
	// its header.
	b := []byte("aggd member schedule 2\n1 0 - a:1\n")
	if _, err := parseSchedule(appendScheduleSum(b)); err == nil || !strings.Contains(err.Error(), "first line") {
		t.Errorf("another format: %v, want refused by its first line", err)
	}
	b = []byte(scheduleHeader + "\n2 10 - a:1\n1 20 - a:1\n")
	if _, err := parseSchedule(appendScheduleSum(b)); err == nil || !strings.Contains(err.Error(), "out of order") {
		t.Errorf("versions out of order: %v, want refused", err)
	}
	b = []byte(scheduleHeader + "\n1 10 b:1 a:1\n")
	if _, err := parseSchedule(appendScheduleSum(b)); err == nil || !strings.Contains(err.Error(), "not a member") {
		t.Errorf("self not a member: %v, want refused", err)
	}
	b = []byte(scheduleHeader + "\n1 10 - nohostport\n")
	if _, err := parseSchedule(appendScheduleSum(b)); err == nil || !strings.Contains(err.Error(), "host:port") {
		t.Errorf("bad member: %v, want refused", err)
	}
}

// A replica routing by a DNS name restarts after the members changed: the
// stats of the spans its write-ahead log replays are kept here exactly
// where this replica owned them under the list in force when the spans
// arrived, read back from the schedule kept under --wal-dir, and not by
// the list resolved at start. Without the kept schedule (the comparison
// at the end) the same replay keeps other stats, which is how the test
// would fail.
func TestReplayedStatsFollowTheListInForceAcrossRestart(t *testing.T) {
	const self, b, c, d = "10.0.0.1:8129", "10.0.0.2:8129", "10.0.0.3:8129", "10.0.0.4:8129"
	wcfg := window.DefaultConfig()
	interval := int64(wcfg.Interval)
	log := slog.New(slog.DiscardHandler)
	store := ScheduleFile{Path: filepath.Join(t.TempDir(), "members"), Self: self}
	dns := &fakeDNS{}
	dns.set(nil, "10.0.0.1", "10.0.0.2")
	src := DNS{Host: "aggd-peers", Port: "8129", Resolver: dns}
	ctx := context.Background()

	// The first run: the list resolved at start, then a change (b
	// replaced by c) scheduled at a boundary, both saved.
	first, err := src.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := RestoreMembership(store, first[0].Members, interval, int64(time.Hour), time.Now().UnixNano(), log)
	w := NewWatcher(src, m, WatchConfig{Refresh: time.Second, Settle: time.Second, Store: store}, log)
	if err := w.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	dns.set(nil, "10.0.0.1", "10.0.0.3")
	if err := w.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	vs := m.Versions()
	if len(vs) != 2 {
		t.Fatalf("%d versions after the change, want 2", len(vs))
	}
	change := vs[1].Since
	before, after := change-interval, change // bucket starts: spans arrived in each

	// Down, the members changed again (c replaced by d); at restart the
	// name resolves to self and d.
	dns.set(nil, "10.0.0.1", "10.0.0.4")
	restart := change + 5*interval
	resolved, err := src.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}

	ab, ac, ad := NewRing([]string{self, b}), NewRing([]string{self, c}), NewRing([]string{self, d})
	// Contexts whose owner then and at restart differ, both ways.
	type stat struct {
		name     string
		arrived  int64
		ownedNow bool // by self, under the list in force at arrival
	}
	stats := []stat{
		{movedFrom(ab, ad, self, d), before, true},
		{movedFrom(ab, ad, b, self), before, false},
		{movedFrom(ac, ad, self, d), after, true},
		{movedFrom(ac, ad, c, self), after, false},
		{ownedBy(ab, self, 1)[0], before, true},
	}
	replay := func(m *Membership, me string) []string {
		fwd := NewForwarder(Config{Self: me, Token: token, Timing: wcfg.Timing(), Interval: wcfg.Interval}, m, log)
		defer fwd.Shutdown(ctx)
		local := &servicetest.Recorder{}
		r := &service.Routed{Forwarder: fwd, Ingester: local}
		tn := window.NewTenant("default")
		for _, s := range stats {
			smp := window.Sample{Name: s.name, Type: window.TypeCount, Value: 1, SampleRate: 1}
			smp.Prepare(tn, nil)
			r.IngestReplayed(&window.Batch{Tenant: tn, Now: s.arrived + interval/2, Samples: []window.Sample{smp}, Results: []window.Reason{window.Accepted}})
		}
		var kept []string
		for _, s := range local.Samples() {
			kept = append(kept, s.Name)
		}
		slices.Sort(kept)
		return kept
	}
	var want []string
	for _, s := range stats {
		if s.ownedNow {
			want = append(want, s.name)
		}
	}
	slices.Sort(want)

	restored := RestoreMembership(store, resolved[0].Members, interval, int64(time.Hour), restart, log)
	if got := replay(restored, self); !slices.Equal(got, want) {
		t.Errorf("replay kept %v here, want %v (owned by this replica when they arrived)", got, want)
	}
	// The list resolved at start owns the buckets from restart on.
	if o, _ := restored.Owner(ContextHash("default", window.AppendKey(nil, stats[1].name, "", nil)), restart+interval); o != self {
		t.Errorf("after restart %s is owned by %s, want this replica by the list resolved at start", stats[1].name, o)
	}
	// A name not resolving at start keeps the lists restored in force.
	unresolved := RestoreMembership(store, nil, interval, int64(time.Hour), restart, log)
	if got := replay(unresolved, self); !slices.Equal(got, want) {
		t.Errorf("restored without a list resolved at start, replay kept %v here, want %v", got, want)
	}
	if n := len(unresolved.Versions()); n != 2 {
		t.Errorf("restored without a list resolved at start: %d versions, want the 2 saved", n)
	}
	// Restarted with another address (a new pod IP, the same volume), the
	// replica holds what its former address took: it owns that address's
	// contexts in the buckets of the lists restored, and its own from
	// the list resolved at start on.
	const e = "10.0.0.5:8129"
	moved := RestoreMembership(ScheduleFile{Path: store.Path, Self: e}, []string{d, e}, interval, int64(time.Hour), restart, log)
	if got := replay(moved, e); !slices.Equal(got, want) {
		t.Errorf("restarted as %s, replay kept %v here, want %v (owned by %s when they arrived)", e, got, want, self)
	}
	h := ContextHash("default", window.AppendKey(nil, stats[0].name, "", nil))
	if o, _ := moved.Owner(h, before); o != e {
		t.Errorf("restarted as %s, %s in the first list is owned by %s, want %s", e, stats[0].name, o, e)
	}
	if heirs := moved.Heirs(nil, h, before, e); slices.Contains(heirs, self) {
		t.Errorf("restarted as %s, heirs %v name the former address", e, heirs)
	}
	// Saved again, the lists restored keep the former address as this
	// replica's, so a second restart restores the same owners.
	if !moved.Versions()[0].Ring.Equal(ab) {
		t.Fatalf("first version restored: %v", moved.Versions()[0].Ring.Members())
	}
	if err := (ScheduleFile{Path: store.Path, Self: e}).Save(moved.Versions()); err != nil {
		t.Fatal(err)
	}
	again := RestoreMembership(ScheduleFile{Path: store.Path, Self: e}, []string{d, e}, interval, int64(time.Hour), restart, log)
	if got := replay(again, e); !slices.Equal(got, want) {
		t.Errorf("restarted twice as %s, replay kept %v here, want %v", e, got, want)
	}
	// Without the schedule kept, the list resolved at start owns every
	// earlier bucket too: the same replay keeps other stats.
	if got := replay(RestoreMembership(ScheduleFile{}, resolved[0].Members, interval, int64(time.Hour), restart, log), self); slices.Equal(got, want) {
		t.Errorf("without the kept schedule replay kept %v too: the test cannot tell", got)
	}
}

// A schedule file of any bytes is refused with an error or read into a
// schedule that saves and reads back the same.
func FuzzParseSchedule(f *testing.F) {
	f.Add(appendScheduleSum([]byte(scheduleHeader + "\n1 -9223372036854775808 10.0.0.1:8129 10.0.0.1:8129 10.0.0.2:8129\n2 110000000000 - [fd00::1]:8129\n3 120000000000 -\n")))
	f.Add(appendScheduleSum([]byte(scheduleHeader + "\n1 5 a:1 a:1 a:1\n")))
	f.Add([]byte(scheduleHeader + "\n1 0 - a:1\ncrc32c 00000000\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		vs, err := parseSchedule(b)
		if err != nil {
			return
		}
		file := ScheduleFile{Path: filepath.Join(dir, "members")}
		if err := file.Save(vs); err != nil {
			t.Fatal(err)
		}
		again, err := file.Load()
		if err != nil {
			t.Fatalf("a schedule read from %q and saved does not read back: %v", b, err)
		}
		if len(again) != len(vs) {
			t.Fatalf("%d versions read back, want %d", len(again), len(vs))
		}
		for i := range vs {
			if again[i].N != vs[i].N || again[i].Since != vs[i].Since || !again[i].Ring.Equal(vs[i].Ring) || again[i].was != vs[i].was {
				t.Fatalf("version %d reads back as %+v, want %+v", i, again[i], vs[i])
			}
		}
	})
}

// The watcher saves the schedule at its first read and after each change;
// a save that fails is logged and tried again at the next read, even a
// read that changes nothing or fails.
func TestWatcherSavesTheSchedule(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "wal")
	store := ScheduleFile{Path: filepath.Join(dir, "members"), Self: "10.0.0.1:8129"}
	dns := &fakeDNS{}
	dns.set(nil, "10.0.0.1")
	m := NewMembership([]string{"10.0.0.1:8129"}, 10*sec, 3600*sec)
	var logged bytes.Buffer
	w := NewWatcher(DNS{Host: "aggd-peers", Port: "8129", Resolver: dns}, m, WatchConfig{Settle: time.Second, Store: store},
		slog.New(slog.NewTextHandler(&logged, nil)))
	ctx := context.Background()
	if err := w.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logged.String(), "member schedule not saved") {
		t.Fatalf("logged %q, want the failed save", logged.String())
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dns.set(errors.New("lookup failed"))
	if err := w.Refresh(ctx); err == nil {
		t.Fatal("a failed lookup was not reported")
	}
	vs, err := store.Load()
	if err != nil || len(vs) != 1 {
		t.Fatalf("after the next read: %d versions, %v; want the schedule saved", len(vs), err)
	}
	dns.set(nil, "10.0.0.1", "10.0.0.2")
	if err := w.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if vs, err = store.Load(); err != nil || len(vs) != 2 || !vs[1].Ring.Equal(m.Latest().Ring) {
		t.Fatalf("after a change: %d versions, %v; want the change saved", len(vs), err)
	}
}
