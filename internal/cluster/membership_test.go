package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

const sec = int64(time.Second)

func TestMembershipScheduleTakesEffectAtBoundary(t *testing.T) {
	abc := []string{"a:1", "b:1", "c:1"}
	abcd := []string{"a:1", "b:1", "c:1", "d:1"}
	m := NewMembership(abc, 10*sec, 60*sec)
	v := m.Schedule(abcd, 103*sec, 100*sec)
	if v.Since != 110*sec || v.N != 2 {
		t.Fatalf("scheduled version %d from %d, want 2 from %d (the next boundary)", v.N, v.Since, 110*sec)
	}
	// The same list again, from the same or a later time: no change.
	for _, at := range []int64{103 * sec, 110 * sec, 200 * sec} {
		if got := m.Schedule(abcd, at, 101*sec); got.N != 2 {
			t.Errorf("rescheduling the same list at %d made version %d", at, got.N)
		}
	}
	before, after := 0, 0
	for i := range 5000 {
		h := uint64(i) * 0x9e3779b97f4a7c15
		o1, n1 := m.Owner(h, 100*sec)
		o2, n2 := m.Owner(h, 110*sec)
		if n1 != 1 || n2 != 2 {
			t.Fatalf("versions %d, %d before and at the boundary, want 1, 2", n1, n2)
		}
		if o1 == "d:1" {
			before++
		}
		if o2 == "d:1" {
			after++
		}
	}
	if before != 0 || after == 0 {
		t.Errorf("the new member owns %d keys before the boundary and %d after, want 0 and some", before, after)
	}
}

func TestMembershipReplacesPendingAndForgetsOld(t *testing.T) {
	m := NewMembership([]string{"a:1"}, sec, 5*sec)
	m.Schedule([]string{"a:1", "b:1"}, 10*sec, 0)
	m.Schedule([]string{"a:1", "c:1"}, 8*sec, 1*sec) // before the pending one: replaces it
	vs := m.Versions()
	if len(vs) != 2 || vs[1].Since != 8*sec || !slices.Equal(vs[1].Ring.Members(), []string{"a:1", "c:1"}) {
		t.Fatalf("versions %+v, want the first and a,c from 8 s", vs)
	}
	m.Schedule([]string{"c:1"}, 30*sec, 20*sec) // a,c in force for 12 s > keep: the first is forgotten
	vs = m.Versions()
	if len(vs) != 2 || vs[0].Since != 8*sec {
		t.Fatalf("versions from %d, %d; want the first forgotten", vs[0].Since, vs[len(vs)-1].Since)
	}
	if m.Single("c:1") {
		t.Error("Single with two versions")
	}
	if !NewMembership([]string{"c:1"}, sec, sec).Single("c:1") {
		t.Error("not Single with one version of self")
	}
}

func TestParseMembers(t *testing.T) {
	tests := []struct {
		name, in string
		want     []Entry
		err      bool
	}{
		{"one list", "# members\na:1\n\nb:2\n", []Entry{{Members: []string{"a:1", "b:2"}}}, false},
		{"history", "a:1\nat 100\na:1\nb:1\nat 200\nb:1\n", []Entry{
			{Members: []string{"a:1"}}, {At: 100 * sec, Members: []string{"a:1", "b:1"}}, {At: 200 * sec, Members: []string{"b:1"}}}, false},
		{"not host:port", "a\n", nil, true},
		{"empty", "# nobody\n", nil, true},
		{"out of order", "at 200\na:1\nat 100\nb:1\n", nil, true},
		{"bad at", "at soon\na:1\n", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMembers([]byte(tt.in))
			if (err != nil) != tt.err {
				t.Fatalf("error %v, want error %v", err, tt.err)
			}
			if !slices.EqualFunc(got, tt.want, func(a, b Entry) bool { return a.At == b.At && slices.Equal(a.Members, b.Members) }) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// fakeDNS answers lookups from a list the test changes, or fails.
type fakeDNS struct {
	mu    sync.Mutex
	addrs []string
	err   error
	calls int
}

func (f *fakeDNS) set(err error, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs, f.err = addrs, err
}

func (f *fakeDNS) LookupIPAddr(_ context.Context, host string) ([]net.IPAddr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	var out []net.IPAddr
	for _, a := range f.addrs {
		out = append(out, net.IPAddr{IP: net.ParseIP(a)})
	}
	return out, nil
}

// The DNS watcher reads the name every Refresh, as the load-balancing
// exporter's dnsResolver.periodicallyResolve does, keeps the list when a
// lookup fails, and schedules a change at the first bucket boundary at
// least Settle after it saw it.
func TestWatcherReResolvesDNS(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dns := &fakeDNS{}
		dns.set(nil, "10.0.0.2", "10.0.0.1", "fd00::1")
		src := DNS{Host: "aggd-peers", Port: "8129", Resolver: dns}
		entries, err := src.Members(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"10.0.0.1:8129", "10.0.0.2:8129", "[fd00::1]:8129"}
		if !slices.Equal(entries[0].Members, want) {
			t.Fatalf("members %v, want %v (sorted, IPv6 in brackets)", entries[0].Members, want)
		}
		m := NewMembership(entries[0].Members, 10*sec, 60*sec)
		w := NewWatcher(src, m, WatchConfig{Refresh: 5 * time.Second, Settle: 12 * time.Second}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err := w.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer w.Shutdown(context.Background())

		dns.set(nil, "10.0.0.1", "10.0.0.2", "10.0.0.3")
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if m.Latest().N != 1 {
			t.Fatal("the list changed before the first refresh")
		}
		time.Sleep(time.Second) // the refresh at 5 s
		synctest.Wait()
		v := m.Latest()
		seen := time.Now().UnixNano()
		if v.N != 2 || v.Since != alignUp(seen+12*sec, 10*sec) {
			t.Fatalf("version %d from %v, want 2 from the boundary after %v", v.N, time.Unix(0, v.Since), time.Unix(0, seen+12*sec))
		}
		dns.set(errors.New("no such host"))
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if w.Failures.Load() != 2 || m.Latest().N != 2 {
			t.Errorf("%d failures, version %d; want 2 and the list kept", w.Failures.Load(), m.Latest().N)
		}
		dns.mu.Lock()
		calls := dns.calls
		dns.mu.Unlock()
		if calls != 1+3 {
			t.Errorf("%d lookups in 15 s, want one at start and one every 5 s", calls)
		}
	})
}

func TestWatcherReadsFileHistory(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "peers")
		if err := os.WriteFile(path, []byte("a:1\nb:1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		m := NewMembership([]string{"a:1", "b:1"}, sec, 60*sec)
		w := NewWatcher(File(path), m, WatchConfig{Refresh: time.Second}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		w.Start(t.Context())
		defer w.Shutdown(context.Background())
		at := time.Now().Add(time.Minute).Unix()
		os.WriteFile(path, fmt.Appendf(nil, "a:1\nb:1\nat %d\na:1\nb:1\nc:1\n", at), 0o600)
		time.Sleep(3 * time.Second)
		synctest.Wait()
		v := m.Latest()
		if v.N != 2 || v.Since != at*sec || len(v.Ring.Members()) != 3 {
			t.Fatalf("version %d from %d with %v; want 2 from %d with three members", v.N, v.Since, v.Ring.Members(), at*sec)
		}
		if w.Changes.Load() != 1 {
			t.Errorf("%d changes after reading the same file 3 times, want 1", w.Changes.Load())
		}
	})
}

// A change whose OnChange (a hand-over to an heir not answering) is still
// running does not hold the next reads: the change after it is scheduled
// at the boundary the other replicas, seeing it at the same refresh,
// pick. Shutdown ends and waits for the OnChange still running.
func TestWatcherReadsOnDuringAChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dns := &fakeDNS{}
		dns.set(nil, "10.0.0.1", "10.0.0.2")
		src := DNS{Host: "aggd-peers", Port: "8129", Resolver: dns}
		m := NewMembership([]string{"10.0.0.1:8129", "10.0.0.2:8129"}, 10*sec, 600*sec)
		var running, ended atomic.Int32
		onChange := func(ctx context.Context, v Version) {
			running.Add(1)
			<-ctx.Done() // an heir that never answers
			ended.Add(1)
		}
		w := NewWatcher(src, m, WatchConfig{Refresh: 5 * time.Second, Settle: 12 * time.Second, OnChange: onChange},
			slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err := w.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		dns.set(nil, "10.0.0.1", "10.0.0.2", "10.0.0.3")
		time.Sleep(5 * time.Second) // the refresh at 5 s schedules version 2
		synctest.Wait()
		dns.set(nil, "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
		time.Sleep(5 * time.Second) // the refresh at 10 s, version 3
		synctest.Wait()
		seen := time.Now().UnixNano()
		if v := m.Latest(); v.N != 3 || v.Since != alignUp(seen+12*sec, 10*sec) {
			t.Errorf("version %d from %v, want 3 from the boundary after %v", v.N, time.Unix(0, v.Since), time.Unix(0, seen+12*sec))
		}
		if n := running.Load(); n != 2 {
			t.Errorf("%d changes handed on, want 2", n)
		}
		w.Shutdown(context.Background())
		if n := ended.Load(); n != 2 {
			t.Errorf("%d changes ended by Shutdown, want 2", n)
		}
	})
}

// TestDeparted: a member has left when neither the list in force nor any
// later one names it.
func TestDeparted(t *testing.T) {
	const sec = int64(time.Second)
	m := NewMembership([]string{"a", "b", "c"}, sec, 3600*sec)
	m.Schedule([]string{"a", "b"}, 100*sec, 0) // c leaves at 100 s
	m.Schedule([]string{"a", "d"}, 200*sec, 0) // b leaves at 200 s, d joins
	for _, tt := range []struct {
		member string
		now    int64
		want   bool
	}{
		{"c", 50 * sec, false},  // in force
		{"c", 150 * sec, true},  // left at 100 s
		{"b", 150 * sec, false}, // in force until 200 s
		{"b", 250 * sec, true},
		{"d", 150 * sec, false}, // scheduled to join
		{"a", 250 * sec, false},
		{"e", 0, true}, // never a member
	} {
		if got := m.Departed(tt.member, tt.now); got != tt.want {
			t.Errorf("Departed(%s) at %ds = %v, want %v", tt.member, tt.now/sec, got, tt.want)
		}
	}
}
