package cluster

import (
	"context"
	"log/slog"
	"math"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/service/servicetest"
	"github.com/aggd/aggd/internal/window"
)

// sameOwners fails unless got names the owner want names for every hash
// of a sample in every bucket from the first to the last of buckets.
func sameOwners(t *testing.T, want, got *Membership, buckets ...int64) {
	t.Helper()
	for _, b := range buckets {
		for h := uint64(0); h < 1<<16; h += 97 {
			h := h * 0x9e3779b97f4a7c15
			wo, wv := want.Owner(h, b)
			go_, gv := got.Owner(h, b)
			if wo != go_ || wv != gv {
				t.Fatalf("hash %x, bucket %d: owner %s (list %d), want %s (list %d)", h, b, go_, gv, wo, wv)
			}
		}
	}
}

// TestJoinerTakesItsPeersSchedule serves a replica's schedule on the peer
// port and has a replica starting ask for it over loopback: the schedule
// it adopts names the same owner of every context in every bucket, and
// the answer says when the peer last reached the asker's address.
func TestJoinerTakesItsPeersSchedule(t *testing.T) {
	const sec = int64(time.Second)
	peerLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peerAddr, joiner, gone := peerLis.Addr().String(), "127.0.0.1:7", "127.0.0.1:8"
	m := NewMembership([]string{peerAddr, gone}, sec, 3600*sec)
	m.Schedule([]string{peerAddr, gone, "127.0.0.1:9"}, 100*sec, 0)
	m.Schedule([]string{peerAddr, joiner}, 200*sec, 0)
	fwd := NewForwarder(Config{Self: peerAddr, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second}, m, slog.New(slog.DiscardHandler))
	defer fwd.Shutdown(context.Background())
	fwd.markReached(joiner, 150*sec)
	servicetest.ServeOn(t, peerLis, discard{}, token, func(cfg *service.Config) { cfg.Members = fwd })
	bare := replica(t, discard{}, nil) // answers no Members

	for _, tc := range []struct {
		name    string
		first   []string
		token   string
		reached int64
		err     string
	}{
		{"asks the other members", []string{joiner, peerAddr}, token, 150 * sec, ""},
		{"passes a member that does not answer", []string{bare, joiner, peerAddr}, token, 150 * sec, ""},
		{"alone", []string{joiner}, token, 0, "no other member"},
		{"wrong token", []string{joiner, peerAddr}, "nope", 0, "Unauthenticated"},
		{"not implemented", []string{bare}, token, 0, "Unimplemented"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, from, err := AskMembers(context.Background(), tc.first, joiner, tc.token, nil, 5*time.Second)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("AskMembers: %v, want an error with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if from != peerAddr || resp.GetAskerReachedUnixNano() != tc.reached {
				t.Fatalf("answer from %s reached %d, want %s and %d", from, resp.GetAskerReachedUnixNano(), peerAddr, tc.reached)
			}
			got, err := AdoptMembership(resp, sec, 3600*sec, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			sameOwners(t, m, got, math.MinInt64/2, 0, 99*sec, 100*sec, 150*sec, 200*sec, 1e6*sec)
			if got.Latest().N != 3 || len(got.Versions()) != 3 {
				t.Fatalf("adopted %d versions, the latest %d, want 3 and 3", len(got.Versions()), got.Latest().N)
			}
		})
	}
}

// A peer that holds, under its present address, what it took under a
// former one (a restart with a new pod IP) passes that on: the adopted
// schedule sends the former address's buckets to the peer. Saved, the
// alias is dropped, since the file keeps this replica's own only.
func TestAdoptedAliasIsThePeers(t *testing.T) {
	const sec = int64(time.Second)
	dir := t.TempDir()
	// The peer was 10.0.0.2:1 and restarted as 10.0.0.9:1.
	before := ScheduleFile{Path: filepath.Join(dir, "peer"), Self: "10.0.0.2:1"}
	if err := before.Save(NewMembership([]string{"10.0.0.1:1", "10.0.0.2:1"}, sec, 0).Versions()); err != nil {
		t.Fatal(err)
	}
	peer := RestoreMembership(ScheduleFile{Path: before.Path, Self: "10.0.0.9:1"}, []string{"10.0.0.1:1", "10.0.0.9:1"}, sec, 3600*sec, 50*sec, slog.New(slog.DiscardHandler))
	fwd := NewForwarder(Config{Self: "10.0.0.9:1", Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second}, peer, slog.New(slog.DiscardHandler))
	defer fwd.Shutdown(context.Background())
	resp := fwd.Members("10.0.0.3:1")
	if l := resp.GetLists()[0]; l.GetAlias() != "10.0.0.2:1" || l.GetAliasOwner() != "10.0.0.9:1" {
		t.Fatalf("first list's alias %q owned by %q", l.GetAlias(), l.GetAliasOwner())
	}
	got, err := AdoptMembership(resp, sec, 3600*sec, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	sameOwners(t, peer, got, 0, 49*sec, 50*sec, 100*sec)
	if o, _ := got.Owner(hashOwnedBy(t, got.Versions()[0].Ring, "10.0.0.2:1"), 0); o != "10.0.0.9:1" {
		t.Fatalf("the former address's context is owned by %s", o)
	}

	mine := ScheduleFile{Path: filepath.Join(dir, "mine"), Self: "10.0.0.3:1"}
	if err := mine.Save(got.Versions()); err != nil {
		t.Fatal(err)
	}
	vs, err := mine.Load()
	if err != nil {
		t.Fatal(err)
	}
	if vs[0].was != "" {
		t.Fatalf("saved the peer's alias %q as this replica's", vs[0].was)
	}
}

// hashOwnedBy returns a hash r gives to member.
func hashOwnedBy(t *testing.T, r *Ring, member string) uint64 {
	t.Helper()
	for h := uint64(1); h < 1<<20; h++ {
		if h := h * 0x9e3779b97f4a7c15; r.Owner(h) == member {
			return h
		}
	}
	t.Fatalf("no hash of %s", member)
	return 0
}

// TestAdoptMembershipRefusesABrokenSchedule: a schedule that no replica
// keeps is refused whole, with the reason.
func TestAdoptMembershipRefusesABrokenSchedule(t *testing.T) {
	list := func(n uint64, since int64, members ...string) *aggdv1.MemberList {
		return &aggdv1.MemberList{Number: n, SinceUnixNano: since, Members: members}
	}
	for _, tc := range []struct {
		name  string
		lists []*aggdv1.MemberList
		err   string
	}{
		{"empty", nil, "without member lists"},
		{"first list timed", []*aggdv1.MemberList{list(1, 5, "a:1")}, "owns every bucket before"},
		{"out of time order", []*aggdv1.MemberList{list(1, minTime, "a:1"), list(2, 10, "a:1", "b:1"), list(3, 10, "b:1")}, "time order"},
		{"out of number order", []*aggdv1.MemberList{list(2, minTime, "a:1"), list(2, 10, "a:1", "b:1")}, "number order"},
		{"not host:port", []*aggdv1.MemberList{list(1, minTime, "a")}, "not host:port"},
		{"alias without owner", []*aggdv1.MemberList{{Number: 1, SinceUnixNano: minTime, Members: []string{"a:1"}, Alias: "a:1"}}, "alias without its owner"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := AdoptMembership(&aggdv1.MembersResponse{Lists: tc.lists}, int64(time.Second), 0, "", nil)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("AdoptMembership: %v, want an error with %q", err, tc.err)
			}
		})
	}
}

// FuzzAdoptMembership: whatever a peer answers, adopting it fails or
// gives a schedule whose lists are in order and each name an owner.
func FuzzAdoptMembership(f *testing.F) {
	m := NewMembership([]string{"10.0.0.1:1", "10.0.0.2:1"}, 1e9, 0)
	m.Schedule([]string{"10.0.0.1:1"}, 5e9, 0)
	fwd := NewForwarder(Config{Self: "10.0.0.1:1", Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second}, m, slog.New(slog.DiscardHandler))
	defer fwd.Shutdown(context.Background())
	seed, _ := proto.Marshal(fwd.Members("10.0.0.2:1"))
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		var resp aggdv1.MembersResponse
		if proto.Unmarshal(b, &resp) != nil {
			return
		}
		got, err := AdoptMembership(&resp, 1e9, 0, "10.0.0.3:1", []string{"10.0.0.2:1"})
		if err != nil {
			return
		}
		vs := got.Versions()
		for i, v := range vs {
			if i > 0 && (v.Since <= vs[i-1].Since || v.N <= vs[i-1].N) {
				t.Fatalf("versions out of order: %+v", vs)
			}
			got.Owner(uint64(i)*0x9e3779b97f4a7c15, v.Since)
		}
	})
}

// TestRefusePredecessors: once told that a replica answered at its address
// before it started, a replica refuses the samples it owns in buckets
// begun before then, whether its client or a peer sent them, with the
// reason; it takes those of later buckets, and forwards as before what
// another replica owns.
func TestRefusePredecessors(t *testing.T) {
	const self = "127.0.0.1:1"
	owner := &servicetest.Recorder{}
	ownerAddr := replica(t, owner, nil)
	m := NewMembership([]string{self, ownerAddr}, int64(time.Second), int64(time.Hour))
	fwd := NewForwarder(Config{Self: self, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second}, m, slog.New(slog.DiscardHandler))
	defer fwd.Shutdown(context.Background())
	r := m.Latest().Ring
	mine, theirs := ownedBy(r, self, 1)[0], ownedBy(r, ownerAddr, 1)[0]
	tn := window.NewTenant("default")
	started := time.Now().Truncate(time.Second).Add(500 * time.Millisecond).UnixNano()
	now := started + int64(25*time.Second)
	sample := func(name string, at int64) window.Sample {
		s := window.Sample{Name: name, Type: window.TypeCount, Value: 1, SampleRate: 1, Timestamp: at}
		s.Prepare(tn, nil)
		return s
	}
	for _, tc := range []struct {
		name    string
		guard   bool
		peer    bool
		samples []window.Sample
		want    []window.Reason
	}{
		{"no predecessor", false, false,
			[]window.Sample{sample(mine, started-int64(time.Minute)), sample(mine, started-1)},
			[]window.Reason{window.Accepted, window.Accepted}},
		{"from a client", true, false,
			[]window.Sample{sample(mine, started-int64(time.Minute)), sample(mine, started-1), sample(mine, started+int64(20*time.Second)), sample(theirs, started-int64(time.Minute)), sample(mine, 0)},
			[]window.Reason{window.ReasonOwnerUnavailable, window.ReasonOwnerUnavailable, window.Accepted, window.Accepted, window.Accepted}},
		{"from a peer", true, true,
			[]window.Sample{sample(mine, started-int64(time.Minute)), sample(mine, started+int64(20*time.Second))},
			[]window.Reason{window.ReasonOwnerUnavailable, window.Accepted}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.guard {
				fwd.RefusePredecessors(started)
			}
			n := len(tc.samples)
			before := fwd.predecessorRefused.Load()
			o := &service.Outgoing{Tenant: tn, Now: now, Samples: tc.samples, Results: make([]window.Reason, n), Details: make([]string, n),
				SampleSent: make([]bool, n), Peer: tc.peer}
			fwd.Forward(context.Background(), o)
			refused := 0
			for i, want := range tc.want {
				if o.Results[i] != want {
					t.Fatalf("sample %d: %v %q, want %v", i, o.Results[i], o.Details[i], want)
				}
				if want == window.ReasonOwnerUnavailable {
					refused++
					if !strings.Contains(o.Details[i], "began before this replica started") {
						t.Errorf("sample %d refused with %q", i, o.Details[i])
					}
				}
			}
			if got := fwd.predecessorRefused.Load() - before; got != uint64(refused) {
				t.Errorf("counted %d refused, want %d", got, refused)
			}
		})
	}
}

// A peer not reached for a day is forgotten once another is first
// reached; one reached since is kept.
func TestReachedPeersAreForgottenAfterADay(t *testing.T) {
	fwd := NewForwarder(Config{Self: "127.0.0.1:1", Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second},
		NewMembership([]string{"127.0.0.1:1"}, int64(time.Second), 0), slog.New(slog.DiscardHandler))
	defer fwd.Shutdown(context.Background())
	day := int64(24 * time.Hour)
	reached := func(addr string) int64 { return fwd.Members(addr).GetAskerReachedUnixNano() }
	fwd.markReached("10.0.0.1:1", 10)
	fwd.markReached("10.0.0.2:1", day+5)
	if got := reached("10.0.0.1:1"); got != 10 {
		t.Fatalf("10.0.0.1:1 reached at %d, under a day before another was: want 10", got)
	}
	fwd.markReached("10.0.0.2:1", day+30) // known: forgets nothing
	if got := reached("10.0.0.1:1"); got != 10 {
		t.Fatalf("10.0.0.1:1 reached at %d, want 10", got)
	}
	fwd.markReached("10.0.0.3:1", day+20)
	for addr, want := range map[string]int64{"10.0.0.1:1": 0, "10.0.0.2:1": day + 30, "10.0.0.3:1": day + 20} {
		if got := reached(addr); got != want {
			t.Errorf("%s reached at %d, want %d", addr, got, want)
		}
	}
}

// A replica restarted under a new address with its saved schedule takes
// its peers' schedule, which names its former address for the buckets
// before it left and its new one after it came back: the former address's
// buckets stay its own (it holds what it took there), and saving the
// adopted schedule keeps that.
func TestRestartedReplicaKeepsItsFormerAddress(t *testing.T) {
	const sec = int64(time.Second)
	const peer, was, is = "10.0.0.1:1", "10.0.0.4:1", "10.0.0.5:1"
	path := filepath.Join(t.TempDir(), "members")
	if err := (ScheduleFile{Path: path, Self: was}).Save(NewMembership([]string{peer, was}, sec, 0).Versions()); err != nil {
		t.Fatal(err)
	}
	file := ScheduleFile{Path: path, Self: is}
	former, err := file.Former()
	if err != nil || !slices.Equal(former, []string{was}) {
		t.Fatalf("former addresses %v, %v; want [%s]", former, err, was)
	}
	// The peer saw the replica leave (from 100 s) and come back (200 s).
	theirs := NewMembership([]string{peer, was}, sec, 3600*sec)
	theirs.Schedule([]string{peer}, 100*sec, 0)
	theirs.Schedule([]string{peer, is}, 200*sec, 0)
	fwd := NewForwarder(Config{Self: peer, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second}, theirs, slog.New(slog.DiscardHandler))
	defer fwd.Shutdown(context.Background())
	got, err := AdoptMembership(fwd.Members(is), sec, 3600*sec, is, former)
	if err != nil {
		t.Fatal(err)
	}
	h := hashOwnedBy(t, NewRing([]string{peer, was}), was)
	for _, tc := range []struct {
		bucket int64
		want   string
	}{{0, is}, {99 * sec, is}, {100 * sec, peer}, {200 * sec, NewRing([]string{peer, is}).Owner(h)}} {
		if o, _ := got.Owner(h, tc.bucket); o != tc.want {
			t.Errorf("bucket %d: owner %s, want %s", tc.bucket, o, tc.want)
		}
	}
	if err := file.Save(got.Versions()); err != nil {
		t.Fatal(err)
	}
	again := RestoreMembership(file, nil, sec, 3600*sec, 300*sec, slog.New(slog.DiscardHandler))
	sameOwners(t, got, again, 0, 99*sec, 100*sec, 200*sec)
}
