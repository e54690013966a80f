package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/credentials"

	"github.com/aggd/aggd/internal/cluster"
	"github.com/aggd/aggd/internal/journal"
	"github.com/aggd/aggd/internal/rules"
	"github.com/aggd/aggd/internal/service"
)

// clusterFlags configure cluster mode: on when one of the member sources
// (--peers, --peers-file, --peers-dns) is set.
type clusterFlags struct {
	Listen, Advertise          string
	Peers, PeersFile, PeersDNS string
	Token                      string
	TLSCA                      string
	Refresh, Settle, Timeout   time.Duration
	DepartedTimeout            time.Duration
}

func defineClusterFlags(fs *flag.FlagSet, c *clusterFlags) {
	fs.StringVar(&c.Listen, "peer-listen", "", "address of the peer port, serving aggd.v1.PeerService to the other replicas (cluster mode)")
	fs.StringVar(&c.Advertise, "peer-advertise", "", "this replica's peer address as the member list names it (host:port); default: --peer-listen's bound address")
	fs.StringVar(&c.Peers, "peers", "", "cluster members, comma-separated peer addresses (a static list)")
	fs.StringVar(&c.PeersFile, "peers-file", "", "file listing the cluster members, one peer address a line, optionally \"at <unix seconds>\"; read again every --peers-refresh")
	fs.StringVar(&c.PeersDNS, "peers-dns", "", "host:port whose name resolves to every member, such as a Kubernetes headless Service; resolved again every --peers-refresh")
	fs.StringVar(&c.Token, "peer-token", "", "shared secret of the peer port; every replica needs the same")
	fs.StringVar(&c.TLSCA, "peer-tls-ca", "", "PEM CA verifying the peers' certificates: forwards go over TLS, presenting --tls-cert (the peer port serves the gRPC port's TLS)")
	fs.DurationVar(&c.Refresh, "peers-refresh", 5*time.Second, "how often --peers-file or --peers-dns is read again")
	fs.DurationVar(&c.Settle, "peers-settle", 0, "a member change seen now owns buckets from the first bucket boundary after this long (0: twice --peers-refresh)")
	fs.DurationVar(&c.Timeout, "peer-forward-timeout", 30*time.Second, "how long a forward waits and retries for its owner before its items are refused as owner_unavailable")
	fs.DurationVar(&c.DepartedTimeout, "peer-departed-timeout", 2*time.Second, "how long a late sample's forward waits for an owner that has left the member list (a replica scaled away), at most --peer-forward-timeout")
}

func (c clusterFlags) on() bool { return c.Peers != "" || c.PeersFile != "" || c.PeersDNS != "" }

func (c clusterFlags) validate() error {
	if !c.on() {
		return nil
	}
	n := 0
	for _, s := range []string{c.Peers, c.PeersFile, c.PeersDNS} {
		if s != "" {
			n++
		}
	}
	switch {
	case n > 1:
		return errors.New("cluster: set one of --peers, --peers-file and --peers-dns")
	case c.Listen == "":
		return errors.New("cluster: --peer-listen is required")
	case c.Token == "":
		return errors.New("cluster: --peer-token is required")
	case c.Refresh <= 0 || c.Settle < 0 || c.Timeout <= 0 || c.DepartedTimeout <= 0:
		return errors.New("cluster: --peers-refresh, --peer-forward-timeout and --peer-departed-timeout must be positive")
	}
	if c.PeersDNS != "" {
		if _, _, err := net.SplitHostPort(c.PeersDNS); err != nil {
			return fmt.Errorf("cluster: --peers-dns: %w", err)
		}
	}
	return nil
}

// clusterNode is this replica's part of a cluster.
type clusterNode struct {
	lis     net.Listener
	m       *cluster.Membership
	fwd     *cluster.Forwarder
	calls   *cluster.Calls
	watcher *cluster.Watcher
	// handTo is the forwarder the watcher's changes hand over by, once
	// set (handOverPending); handOvers are the hand-overs of the changes
	// scheduled before, and cancel ends them.
	handTo    *atomic.Pointer[cluster.Forwarder]
	handOvers sync.WaitGroup
	cancel    context.CancelFunc
	// predecessor, when not 0, is when this replica started, after a peer
	// had reached another replica at its address (guardPredecessor).
	predecessor int64
}

// forwarder returns the forwarder the aggregator service hands what other
// replicas own to; nil (no forwarding) when cluster mode is off.
func (n *clusterNode) forwarder() service.Forwarder {
	if n == nil {
		return nil
	}
	return n.fwd
}

// members returns what answers peers asking for the schedule of member
// lists; nil when cluster mode is off.
func (n *clusterNode) members() service.PeerMembers {
	if n == nil {
		return nil
	}
	return n.fwd
}

// peerCalls returns the memory of the calls peers forwarded here; nil
// when cluster mode is off.
func (n *clusterNode) peerCalls() service.PeerCalls {
	if n == nil {
		return nil
	}
	return n.calls
}

// callMemory returns the memory of forwarded calls for the write-ahead
// log's replay to fill; nil when cluster mode is off.
func (n *clusterNode) callMemory() journal.Calls {
	if n == nil {
		return nil
	}
	return n.calls
}

// clusterState is the state a replica hands over and takes in when the
// owners of contexts change: the aggregator's.
type clusterState interface {
	service.Seeder
	cluster.LastSamples
}

// startCluster listens on the peer port, reads the member list and starts
// the forwarder of what other replicas own, for the aggregator service to
// use (forwarder), which keeps the previous samples of the contexts this
// replica is about to own in seeder. The aggregation rules (engine, nil
// when there are none) then feed only the rule groups this replica owns,
// and the forwarder sends samples to the owners of the others. It returns
// nil when cluster mode is off. The caller serves the peer port with the
// gRPC server the aggregator service is on.
func startCluster(ctx context.Context, cfg config, seeder clusterState, engine *rules.Engine, reg prometheus.Registerer, log *slog.Logger) (*clusterNode, error) {
	c := cfg.Cluster
	if !c.on() {
		return nil, nil
	}
	lis, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return nil, err
	}
	self := c.Advertise
	if self == "" {
		self = lis.Addr().String()
	}
	var src cluster.Source
	switch {
	case c.Peers != "":
		src = cluster.Static(splitList(c.Peers))
	case c.PeersFile != "":
		src = cluster.File(c.PeersFile)
	default:
		host, port, _ := net.SplitHostPort(c.PeersDNS)
		src = cluster.DNS{Host: host, Port: port}
	}
	keep := int64(cfg.Window.MaxLateness + cfg.Window.Grace + 2*cfg.Window.Interval)
	if engine != nil {
		// A rule group is placed by the list in force at its window's
		// start, which must be kept while the window takes samples.
		keep += engine.MaxWindow()
	}
	started := time.Now().UnixNano()
	var creds credentials.TransportCredentials
	if c.TLSCA != "" {
		if creds, err = peerTLS(cfg); err != nil {
			lis.Close()
			return nil, err
		}
	}
	// The first list owns every bucket from the start: a replica starting
	// joins the list it finds, as its peers found it.
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	entries, err := src.Members(rctx)
	cancel()
	var first []string
	switch {
	case err == nil:
		first = entries[0].Members
	case c.PeersDNS != "":
		// A headless Service may not list the first pods yet: until it
		// does, this replica owns everything it takes in, and the list
		// resolved later takes effect at a boundary like any change.
		log.Warn("cluster members not resolved yet", "err", err)
	default:
		lis.Close()
		return nil, fmt.Errorf("cluster members: %w", err)
	}
	// A resolved name tells only the members of now: the schedule of the
	// lists resolved before is kept under --wal-dir, so that what the log
	// replays is routed by the list in force when it arrived. (A file
	// keeps its own history; a static list has none.)
	var store cluster.ScheduleFile
	if c.PeersDNS != "" && cfg.WALDir != "" {
		store = cluster.ScheduleFile{Path: filepath.Join(cfg.WALDir, "members"), Self: self}
	}
	m, reached := joinMembership(ctx, c, entries, self, creds, store, int64(cfg.Window.Interval), keep, log)
	if m == nil {
		m = cluster.RestoreMembership(store, first, int64(cfg.Window.Interval), keep, time.Now().UnixNano(), log)
	}
	// Each change hands the last samples of the RATE and MONOTONIC_COUNT
	// contexts it moves to their new owners, once the write-ahead log is
	// replayed (handOverPending sets handTo, and hands over the changes
	// scheduled until then). The watcher calls handOver on a goroutine of
	// its own, hence the atomic.
	handTo := new(atomic.Pointer[cluster.Forwarder])
	handOver := func(ctx context.Context, v cluster.Version) {
		if fwd := handTo.Load(); fwd != nil {
			fwd.HandOver(ctx, seeder, v)
		}
	}
	w := cluster.NewWatcher(src, m, cluster.WatchConfig{Refresh: c.Refresh, Settle: c.Settle, OnChange: handOver, Store: store}, log)
	if err := w.Refresh(ctx); err != nil { // the later lists of a file
		log.Warn("cluster members", "err", err)
	}
	fc := cluster.Config{
		Self: self, Token: c.Token, TLS: creds, Timing: cfg.Window.Timing(), Interval: cfg.Window.Interval, Timeout: c.Timeout, DepartedTimeout: c.DepartedTimeout,
		Seeder: seeder,
	}
	if engine != nil {
		fc.Rules = engine
	}
	fwd := cluster.NewForwarder(fc, m, log)
	if engine != nil {
		engine.SetOwner(fwd.OwnsGroup)
		engine.RouteSpans()
		engine.RouteEvents()
	}
	reg.MustRegister(fwd)
	// A forward is sent again for up to --peer-forward-timeout after its
	// first attempt: its owner remembers it twice that long.
	calls := cluster.NewCalls(2*c.Timeout, 0)
	reg.MustRegister(calls)
	if err := w.Start(ctx); err != nil {
		lis.Close()
		return nil, err
	}
	log.Info("cluster mode", "peer", lis.Addr().String(), "self", self, "members", m.Latest().Ring.Members())
	n := &clusterNode{lis: lis, m: m, fwd: fwd, calls: calls, watcher: w, handTo: handTo, cancel: func() {}}
	if reached {
		n.predecessor = started
	}
	return n, nil
}

// joinMembership returns the schedule a starting replica takes from a
// peer when its members come as a list of now (entries, a resolved
// name's or a list without times): the peer's lists own the buckets that
// began before, and the watcher's first read schedules this replica's own
// list at a boundary, as the peers schedule it when they see it. A
// replica restarted with a saved schedule (store) takes the peer's too:
// its own stops where it stopped, and the changes its peers scheduled
// while it was down (its own departure and return among them) are
// theirs; the addresses it had in its saved lists stay its own
// (AdoptMembership). It also reports whether a call of that peer to this
// replica's address succeeded within keep (how long a bucket may take
// late samples): a replica answered here before. It returns nil when the
// source tells the lists' times or no peer answers (the first replicas of
// a cluster): the replica then routes by its saved schedule, or takes its
// first list as owning every bucket.
func joinMembership(ctx context.Context, c clusterFlags, entries []cluster.Entry, self string, creds credentials.TransportCredentials, store cluster.ScheduleFile, interval, keep int64, log *slog.Logger) (*cluster.Membership, bool) {
	if len(entries) != 1 || entries[0].At != 0 {
		return nil, false
	}
	var former []string // this replica's former addresses, by its saved schedule
	if store.Path != "" {
		var err error
		if former, err = store.Former(); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn("cluster member schedule ignored: taken from a peer instead", "err", err)
		}
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, from, err := cluster.AskMembers(actx, entries[0].Members, self, c.Token, creds, 2*time.Second)
	if err != nil {
		log.Info("cluster member schedule not taken from a peer: the saved schedule, if any, or the first list owns every bucket", "reason", err)
		return nil, false
	}
	m, err := cluster.AdoptMembership(resp, interval, keep, self, former)
	if err != nil {
		log.Warn("cluster member schedule of a peer refused: the saved schedule, if any, or the first list owns every bucket", "peer", from, "err", err)
		return nil, false
	}
	log.Info("cluster member schedule taken from a peer", "peer", from, "versions", len(m.Versions()))
	// A replica reached longer ago than a sample may be late flushed no
	// bucket that may still take samples.
	return m, resp.GetAskerReachedUnixNano() > time.Now().UnixNano()-keep
}

// handOverPending starts the hand-overs, once the aggregator holds what
// this replica restored from its write-ahead log: it hands over for each
// list scheduled until now and not yet in force (the lists read at start,
// such as a file's future "at", came before that state was there), and
// from then on the watcher hands over for each change it schedules. It
// returns at once; the hand-overs run on their own goroutines until done
// or Shutdown. A change the watcher schedules meanwhile may be handed
// over twice, which changes nothing: its new owner keeps the later
// sample.
func (n *clusterNode) handOverPending(ctx context.Context, src cluster.LastSamples) {
	if n == nil {
		return
	}
	ctx, n.cancel = context.WithCancel(ctx)
	// A change the watcher schedules before the store finds no
	// forwarder, and is read below.
	n.handTo.Store(n.fwd)
	now := time.Now().UnixNano()
	for _, v := range n.m.Versions() {
		if v.Since > now {
			n.handOvers.Go(func() { n.fwd.HandOver(ctx, src, v) })
		}
	}
}

// guardPredecessor makes the replica refuse the samples it owns in the
// buckets begun before it started, when a replica answered at its address
// before and restored is false: the write-ahead log held nothing of what
// that replica took (there is none, or it is new), so a point of this
// replica for one of those buckets would replace that one's.
func (n *clusterNode) guardPredecessor(restored bool) {
	if n == nil || n.predecessor == 0 || restored {
		return
	}
	n.fwd.RefusePredecessors(n.predecessor)
}

// Shutdown stops watching members and handing over, and closes the
// connections to peers.
func (n *clusterNode) Shutdown(ctx context.Context) error {
	n.cancel()
	n.handOvers.Wait()
	return errors.Join(n.watcher.Shutdown(ctx), n.fwd.Shutdown(ctx))
}

// peerTLS returns the credentials of forwards: the peers' certificates
// verified against --peer-tls-ca, this replica's --tls-cert presented.
func peerTLS(cfg config) (credentials.TransportCredentials, error) {
	pem, err := os.ReadFile(cfg.Cluster.TLSCA)
	if err != nil {
		return nil, fmt.Errorf("peer tls ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("peer tls ca: %s holds no PEM certificate", cfg.Cluster.TLSCA)
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("peer tls: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(tc), nil
}
