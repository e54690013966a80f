package cluster

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Entry is a member list and the time (unix nanoseconds) from which it
// owns buckets; zero leaves the time to the Watcher.
type Entry struct {
	At      int64
	Members []string
}

// Source returns the member lists, oldest first.
type Source interface {
	Members(ctx context.Context) ([]Entry, error)
}

// Static is a fixed member list.
type Static []string

// Members implements Source.
func (s Static) Members(context.Context) ([]Entry, error) { return []Entry{{Members: s}}, nil }

// File reads member lists from a file: one peer address a line, blank
// lines and lines starting with # ignored. A line "at <unix seconds>"
// starts a new list owning buckets from that time, so the file keeps the
// history of changes: writing the same file to every replica makes every
// replica, one restarted too, switch at the same bucket whenever it reads
// it. The lists must come in time order.
type File string

// Members implements Source.
func (f File) Members(context.Context) ([]Entry, error) {
	b, err := os.ReadFile(string(f))
	if err != nil {
		return nil, err
	}
	return parseMembers(b)
}

func parseMembers(b []byte) ([]Entry, error) {
	var out []Entry
	cur := Entry{}
	end := func(n int) error {
		if len(cur.Members) == 0 {
			return fmt.Errorf("line %d: a member list without members", n)
		}
		if k := len(out); k > 0 && cur.At <= out[k-1].At {
			return fmt.Errorf("line %d: member lists out of time order", n)
		}
		out = append(out, cur)
		return nil
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "at "):
			s, err := strconv.ParseInt(strings.TrimSpace(line[3:]), 10, 64)
			if err != nil || s <= 0 {
				return nil, fmt.Errorf("line %d: want \"at <unix seconds>\", got %q", n, line)
			}
			if len(cur.Members) > 0 || cur.At != 0 {
				if err := end(n); err != nil {
					return nil, err
				}
			}
			cur = Entry{At: s * int64(time.Second)}
		default:
			if _, _, err := net.SplitHostPort(line); err != nil {
				return nil, fmt.Errorf("line %d: peer %q is not host:port: %w", n, line, err)
			}
			cur.Members = append(cur.Members, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := end(n); err != nil {
		return nil, err
	}
	return out, nil
}

// IPResolver looks up a name's addresses (net.Resolver).
type IPResolver interface {
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
}

// DNS resolves a name, such as a Kubernetes headless Service's, to the
// member list: every address it resolves to, with Port, sorted. It is how
// the OpenTelemetry Collector's load-balancing exporter finds its backends
// (exporter/loadbalancingexporter, dnsResolver.resolve): IPv6 addresses in
// brackets, the list sorted so that order never reads as a change, and a
// failed lookup keeps the previous list.
type DNS struct {
	Host, Port string
	Resolver   IPResolver // nil: net.DefaultResolver
}

// Members implements Source.
func (d DNS) Members(ctx context.Context) ([]Entry, error) {
	r := d.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	addrs, err := r.LookupIPAddr(ctx, d.Host)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%s resolves to no address", d.Host)
	}
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = net.JoinHostPort(a.IP.String(), d.Port)
	}
	slices.Sort(out)
	return []Entry{{Members: out}}, nil
}

// WatchConfig configures a Watcher.
type WatchConfig struct {
	// Refresh is how often the source is read again; 5 s by default, the
	// load-balancing exporter's DNS interval.
	Refresh time.Duration
	// Timeout bounds one read; 1 s by default.
	Timeout time.Duration
	// Settle is added to the time a change is seen before it is aligned
	// up to a bucket boundary, so that replicas seeing it up to Settle
	// apart still pick the same boundary; 2 × Refresh by default.
	Settle time.Duration
	// OnChange, if set, is called with each list scheduled
	// (Forwarder.HandOver), on its own goroutine: a slow one (an heir not
	// answering) must not hold the next reads, since a list seen later
	// than the other replicas see it is scheduled at a later boundary than
	// theirs. Shutdown cancels its ctx, when Start made it, and waits
	// for it.
	OnChange func(ctx context.Context, v Version)
	// Store, if set, keeps the schedule: it is saved by the first
	// Refresh and after each change (again by the next Refresh if saving
	// failed).
	Store ScheduleFile
}

func (c *WatchConfig) setDefaults() {
	if c.Refresh <= 0 {
		c.Refresh = 5 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = time.Second
	}
	if c.Settle <= 0 {
		c.Settle = 2 * c.Refresh
	}
}

// Watcher reads a Source every Refresh and schedules each new list on a
// Membership. Reads that fail keep the list in force and are counted.
type Watcher struct {
	cfg      WatchConfig
	src      Source
	m        *Membership
	log      *slog.Logger
	done     chan struct{}
	cancel   context.CancelFunc
	changes  sync.WaitGroup // OnChange calls running
	Failures atomic.Uint64  // reads that failed
	Changes  atomic.Uint64  // lists scheduled
	unsaved  bool           // the schedule differs from Store's; Refresh only
}

// NewWatcher returns a watcher of src for m.
func NewWatcher(src Source, m *Membership, cfg WatchConfig, log *slog.Logger) *Watcher {
	cfg.setDefaults()
	return &Watcher{cfg: cfg, src: src, m: m, log: log, unsaved: cfg.Store.Path != ""}
}

// Refresh reads the source once and schedules what changed.
func (w *Watcher) Refresh(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	entries, err := w.src.Members(rctx)
	defer w.save()
	if err != nil {
		w.Failures.Add(1)
		return fmt.Errorf("cluster members: %w", err)
	}
	now := time.Now().UnixNano()
	for i, e := range entries {
		at := e.At
		if at == 0 && i < len(entries)-1 {
			continue // a file's first list, owning what its successors do not
		}
		if at == 0 {
			at = now + int64(w.cfg.Settle)
		}
		prev := w.m.Latest()
		if v := w.m.Schedule(e.Members, at, now); w.m.Latest().N != prev.N {
			w.Changes.Add(1)
			w.unsaved = w.cfg.Store.Path != ""
			w.log.Info("cluster members change", "version", v.N, "members", v.Ring.Members(), "from", time.Unix(0, v.Since).UTC())
			if w.cfg.OnChange != nil {
				w.changes.Go(func() { w.cfg.OnChange(ctx, v) })
			}
		}
	}
	return nil
}

// save writes the schedule to Store if it changed since last saved.
func (w *Watcher) save() {
	if !w.unsaved {
		return
	}
	if err := w.cfg.Store.Save(w.m.Versions()); err != nil {
		w.log.Warn("cluster member schedule not saved; tried again at the next read", "err", err)
		return
	}
	w.unsaved = false
}

// Start reads the source every Refresh until Shutdown or ctx ends.
func (w *Watcher) Start(ctx context.Context) error {
	ctx, w.cancel = context.WithCancel(ctx)
	w.done = make(chan struct{})
	go func() {
		defer close(w.done)
		t := time.NewTicker(w.cfg.Refresh)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if err := w.Refresh(ctx); err != nil {
					w.log.Warn("cluster members unchanged", "err", err)
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return nil
}

// Shutdown stops the watcher and waits for it and its OnChange calls. It
// is idempotent.
func (w *Watcher) Shutdown(context.Context) error {
	if w.cancel != nil {
		w.cancel()
		<-w.done
	}
	w.changes.Wait()
	return nil
}
