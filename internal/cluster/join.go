package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/window"
)

// A replica whose member list comes from a resolved name learns only the
// members of now. Starting, it asks a peer for the peer's schedule and
// routes by it (AskMembers, AdoptMembership), its saved schedule giving
// only the addresses it had before: the buckets that began before it
// joined stay with the lists that owned them, and its own first list takes
// effect at a boundary, as its peers schedule it when they resolve the
// name. Without that, a new replica would own its share of every bucket
// at once, and send points of the open bucket and of late samples beside
// the points of the replicas its peers route those samples to.

// membersMethod is PeerService.Members's full name.
const membersMethod = "/aggd.v1.PeerService/Members"

// Members answers a peer's MembersRequest: this replica's schedule, and
// when a call of this replica to the asker's address last succeeded.
func (f *Forwarder) Members(asker string) *aggdv1.MembersResponse {
	vs := f.m.Versions()
	resp := &aggdv1.MembersResponse{Lists: make([]*aggdv1.MemberList, len(vs))}
	for i, v := range vs {
		resp.Lists[i] = &aggdv1.MemberList{Number: v.N, SinceUnixNano: v.Since, Members: v.Ring.Members()}
		if v.was != "" {
			resp.Lists[i].Alias, resp.Lists[i].AliasOwner = v.was, v.self
		}
	}
	f.mu.Lock()
	resp.AskerReachedUnixNano = f.reached[asker]
	f.mu.Unlock()
	return resp
}

// markReached records that a call to owner succeeded at now. A peer not
// reached for a day is forgotten when a new one is first reached, so that
// the addresses of replicas long gone do not pile up.
func (f *Forwarder) markReached(owner string, now int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.reached[owner]; !ok {
		for p, t := range f.reached {
			if t < now-int64(24*time.Hour) {
				delete(f.reached, p)
			}
		}
	}
	f.reached[owner] = now
}

// AskMembers asks the members of first other than self, in turn, for
// their schedules, each for up to timeout, and returns the first answer
// and who gave it. It fails when none answers: the first replicas of a
// new cluster, which then take their first list as owning every bucket.
func AskMembers(ctx context.Context, first []string, self, token string, creds credentials.TransportCredentials, timeout time.Duration) (*aggdv1.MembersResponse, string, error) {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	var errs []error
	for _, p := range first {
		if p == self {
			continue
		}
		resp, err := askMembers(ctx, p, self, token, creds, timeout)
		if err == nil {
			return resp, p, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", p, err))
	}
	if len(errs) == 0 {
		return nil, "", errors.New("no other member to ask")
	}
	return nil, "", errors.Join(errs...)
}

func askMembers(ctx context.Context, peer, self, token string, creds credentials.TransportCredentials, timeout time.Duration) (*aggdv1.MembersResponse, error) {
	cc, err := grpc.NewClient(peer, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ctx = peerCallContext(ctx, token)
	resp := &aggdv1.MembersResponse{}
	if err := cc.Invoke(ctx, membersMethod, &aggdv1.MembersRequest{Asker: self}, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// AdoptMembership returns the schedule of resp, a peer's, for a replica
// routing by it from now on. The lists must be numbered and timed in
// order, the first owning every bucket before the second, and name
// members as host:port. A list naming one of former, addresses this
// replica had before a restart (ScheduleFile.Former), has that address
// owned by self, which holds what it took there (its write-ahead log), in
// place of the peer's own alias.
func AdoptMembership(resp *aggdv1.MembersResponse, interval, keep int64, self string, former []string) (*Membership, error) {
	lists := resp.GetLists()
	if len(lists) == 0 {
		return nil, errors.New("a schedule without member lists")
	}
	vs := make([]Version, len(lists))
	for i, l := range lists {
		switch {
		case i == 0 && l.GetSinceUnixNano() != minTime:
			return nil, fmt.Errorf("member list %d: the first list owns every bucket before the next, not from %d", l.GetNumber(), l.GetSinceUnixNano())
		case i > 0 && l.GetSinceUnixNano() <= lists[i-1].GetSinceUnixNano():
			return nil, fmt.Errorf("member list %d: out of time order", l.GetNumber())
		case i > 0 && l.GetNumber() <= lists[i-1].GetNumber():
			return nil, fmt.Errorf("member list %d: out of number order", l.GetNumber())
		case (l.GetAlias() == "") != (l.GetAliasOwner() == ""):
			return nil, fmt.Errorf("member list %d: an alias without its owner", l.GetNumber())
		}
		for _, m := range append([]string{l.GetAliasOwner()}, l.GetMembers()...) {
			if _, _, err := net.SplitHostPort(m); m != "" && err != nil {
				return nil, fmt.Errorf("member list %d: peer %q is not host:port: %w", l.GetNumber(), m, err)
			}
		}
		vs[i] = Version{N: l.GetNumber(), Since: l.GetSinceUnixNano(), Ring: NewRing(l.GetMembers()), was: l.GetAlias(), self: l.GetAliasOwner()}
		for _, f := range former {
			if f != self && slices.Contains(l.GetMembers(), f) {
				vs[i].was, vs[i].self = f, self
				break
			}
		}
	}
	m := &Membership{interval: interval, keep: keep}
	m.versions.Store(&vs)
	return m, nil
}

// RefusePredecessors makes this replica, started at start, refuse the
// samples it owns in buckets that began before start (owner_unavailable,
// counted in aggd_cluster_predecessor_refused_total): a replica answered
// at this address before (a peer's call to it succeeded, as a Members
// answer says) and flushed those buckets, and this one has no log of what
// it took. A point of this replica for one of them would replace that
// replica's at a last-write intake. Once the buckets are past the
// lateness a sample may have, nothing more is refused.
func (f *Forwarder) RefusePredecessors(start int64) { f.predecessor.Store(start) }

// predecessorDetail is the detail of a sample RefusePredecessors refuses.
const predecessorDetail = "its bucket began before this replica started, and a replica at the same address flushed it, whose log this one does not have: its point would replace that one's; samples of later buckets are taken"

// refusePredecessor refuses sample i of o, which this replica owns, if
// its bucket began before RefusePredecessors's start, and reports whether
// it did.
func (f *Forwarder) refusePredecessor(o *service.Outgoing, i int) bool {
	p := f.predecessor.Load()
	if p == 0 {
		return false
	}
	if start, _ := f.cfg.Timing.Bucket(o.Samples[i].Timestamp, o.Now); start >= p {
		return false
	}
	o.Results[i], o.Details[i] = window.ReasonOwnerUnavailable, predecessorDetail
	f.predecessorRefused.Add(1)
	return true
}
