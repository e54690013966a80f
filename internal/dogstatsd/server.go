package dogstatsd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/overload"
	"github.com/aggd/aggd/internal/window"
)

// Ingester takes parsed datagrams: the aggregator.
type Ingester interface {
	Ingest(b *window.Batch)
}

// Config configures a Server.
type Config struct {
	// UDP is the UDP address to listen on; empty disables it.
	UDP string
	// Socket is the Unix datagram socket path; empty disables it.
	Socket string
	// Readers is the number of goroutines reading each socket; 0 is one
	// per CPU (GOMAXPROCS).
	Readers int
	// ReceiveBuffer sets SO_RCVBUF in bytes; 0 keeps the system's.
	ReceiveBuffer int
	// PacketSize is the largest datagram read whole.
	PacketSize int
	// DefaultHost is the host of items that name none (Parser.DefaultHost).
	DefaultHost string
	Limits      codec.Limits
	// Load, if set, makes the server drop the datagrams it reads while it
	// is Hard (memory past the hard limit, or a full send queue), counting
	// them in Refused: UDP has no way to slow its senders, and the aggd.v1
	// services refuse batches at that point too.
	Load overload.Leveler
}

// Validate reports a setting out of range.
func (c Config) Validate() error {
	if c.Readers < 0 || c.ReceiveBuffer < 0 || c.PacketSize < 512 {
		return errors.New("dogstatsd: readers and receive buffer must not be negative, packet size at least 512")
	}
	return nil
}

// Server receives DogStatsD datagrams for one tenant. Start and Shutdown may
// be called once each.
type Server struct {
	cfg    Config
	tenant *window.Tenant
	ing    Ingester
	log    *slog.Logger
	conns  []net.PacketConn
	wg     sync.WaitGroup

	// Packets, Lines and ReadErrors count what the sockets delivered;
	// Refused counts datagrams read and dropped while the load level is
	// Hard: RefusedQueue those dropped because the send queue was full
	// (the level's Cause, when it has one), RefusedMemory the others.
	Packets, Lines, ReadErrors, Refused, RefusedMemory, RefusedQueue atomic.Int64
}

// loadCause, implemented by a load level (overload.Pushback), says
// whether a Hard level is the send queue's rather than memory's.
type loadCause interface {
	Cause() (msg string, queue bool)
}

// New returns a server feeding ing for tenant t, or why cfg is not valid.
func New(cfg Config, t *window.Tenant, ing Ingester, log *slog.Logger) (*Server, error) {
	if err := errors.Join(cfg.Validate(), cfg.Limits.Validate()); err != nil {
		return nil, err
	}
	if t == nil || ing == nil || log == nil {
		return nil, errors.New("dogstatsd: a tenant, an ingester and a logger are required")
	}
	if cfg.Readers == 0 {
		cfg.Readers = runtime.GOMAXPROCS(0)
	}
	return &Server{cfg: cfg, tenant: t, ing: ing, log: log.With("tenant", t.ID)}, nil
}

// Start opens the sockets and starts the readers.
func (s *Server) Start(context.Context) error {
	if s.cfg.UDP != "" {
		addr, err := net.ResolveUDPAddr("udp", s.cfg.UDP)
		if err != nil {
			return fmt.Errorf("dogstatsd: %w", err)
		}
		c, err := net.ListenUDP("udp", addr)
		if err != nil {
			return fmt.Errorf("dogstatsd: %w", err)
		}
		if s.cfg.ReceiveBuffer > 0 {
			got, err := setReceiveBuffer(c, s.cfg.ReceiveBuffer)
			if err != nil || got < s.cfg.ReceiveBuffer {
				s.log.Warn("UDP receive buffer smaller than asked: raise net.core.rmem_max or grant CAP_NET_ADMIN",
					"asked", s.cfg.ReceiveBuffer, "kernel_reports", got, "err", err)
			}
		}
		s.conns = append(s.conns, c)
	}
	if s.cfg.Socket != "" {
		os.Remove(s.cfg.Socket) // a stale socket of a previous run
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: s.cfg.Socket, Net: "unixgram"})
		if err != nil {
			s.closeAll()
			return fmt.Errorf("dogstatsd: %w", err)
		}
		if s.cfg.ReceiveBuffer > 0 {
			setReceiveBuffer(c, s.cfg.ReceiveBuffer)
		}
		s.conns = append(s.conns, c)
	}
	for _, c := range s.conns {
		for range s.cfg.Readers {
			s.wg.Add(1)
			go s.read(c)
		}
	}
	return nil
}

// Addrs returns the addresses listened on.
func (s *Server) Addrs() []net.Addr {
	var out []net.Addr
	for _, c := range s.conns {
		out = append(out, c.LocalAddr())
	}
	return out
}

func (s *Server) closeAll() {
	for _, c := range s.conns {
		c.Close()
	}
}

// Shutdown closes the sockets and waits for the readers, which finish the
// datagram they hold.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeAll()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		if s.cfg.Socket != "" {
			os.Remove(s.cfg.Socket)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reader owns one goroutine's memory.
type reader struct {
	s     *Server
	p     Parser
	batch window.Batch
	arena []byte
}

func (s *Server) read(c net.PacketConn) {
	defer s.wg.Done()
	r := &reader{s: s, p: Parser{DefaultHost: s.cfg.DefaultHost}}
	buf := make([]byte, s.cfg.PacketSize)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.ReadErrors.Add(1)
			continue
		}
		if s.cfg.Load != nil && s.cfg.Load.Level() == overload.Hard {
			queue := false
			if c, ok := s.cfg.Load.(loadCause); ok {
				_, queue = c.Cause()
			}
			if queue {
				s.RefusedQueue.Add(1)
			} else {
				s.RefusedMemory.Add(1)
			}
			s.Refused.Add(1) // before Packets: who sees the datagram sees its refusal
			s.Packets.Add(1)
			continue
		}
		s.Packets.Add(1)
		r.handle(buf[:n], time.Now().UnixNano())
	}
}

// handle parses one datagram, line by line, and ingests it. A bad line is
// counted by reason and skipped; the rest of the datagram goes on.
func (r *reader) handle(pkt []byte, now int64) {
	s, b, tn := r.s, &r.batch, r.s.tenant
	b.Reset()
	r.p.Reset()
	r.arena = r.arena[:0]
	b.Tenant, b.Now = tn, now
	lines, accepted := int64(0), uint64(0)
	for len(pkt) > 0 {
		line := pkt
		if i := bytes.IndexByte(pkt, '\n'); i >= 0 {
			line, pkt = pkt[:i], pkt[i+1:]
		} else {
			pkt = nil
		}
		line = bytes.TrimRight(line, "\r")
		if len(line) == 0 {
			continue
		}
		lines++
		var reason Reason
		switch Kind(line) {
		case KindEvent:
			var e window.Event
			if reason, _ = r.p.ParseEvent(line, &e); reason == window.Accepted {
				e.Tenant = tn
				if e.Timestamp == 0 {
					e.Timestamp = now
				}
				b.Events = append(b.Events, e)
			}
		case KindServiceCheck:
			var c window.ServiceCheck
			if reason, _ = r.p.ParseServiceCheck(line, &c); reason == window.Accepted {
				c.Tenant = tn
				if c.Timestamp == 0 {
					c.Timestamp = now
				}
				b.Checks = append(b.Checks, c)
			}
		default:
			b.Samples = append(b.Samples, window.Sample{})
			smp := &b.Samples[len(b.Samples)-1]
			if reason, _ = r.p.ParseMetric(line, smp); reason == window.Accepted {
				reason, _ = s.cfg.Limits.Check(smp)
			}
			if reason != window.Accepted {
				b.Samples = b.Samples[:len(b.Samples)-1]
				break
			}
			r.arena = smp.Prepare(tn, r.arena)
			b.Results = append(b.Results, window.Accepted)
		}
		if reason != window.Accepted {
			tn.Rejected[reason].Add(1)
		}
	}
	s.Lines.Add(lines)
	if len(b.Samples)+len(b.Events)+len(b.Checks) == 0 {
		return
	}
	s.ing.Ingest(b)
	for _, res := range b.Results {
		if res == window.Accepted {
			accepted++
		} else {
			tn.Rejected[res].Add(1)
		}
	}
	tn.Accepted.Add(accepted + uint64(len(b.Events)+len(b.Checks)))
}

// KernelDrops returns the datagrams the kernel dropped for the UDP socket
// because its receive buffer was full (the drops column of /proc/net/udp
// and /proc/net/udp6), and whether it could tell.
func (s *Server) KernelDrops() (uint64, bool) {
	if len(s.conns) == 0 {
		return 0, false
	}
	ua, ok := s.conns[0].LocalAddr().(*net.UDPAddr)
	if !ok {
		return 0, false
	}
	port := strings.ToUpper(strconv.FormatInt(int64(ua.Port), 16))
	for len(port) < 4 {
		port = "0" + port
	}
	var total uint64
	found := false
	for _, f := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		file, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(file)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 13 || !strings.HasSuffix(fields[1], ":"+port) {
				continue
			}
			if d, err := strconv.ParseUint(fields[len(fields)-1], 10, 64); err == nil {
				total += d
				found = true
			}
		}
		file.Close()
	}
	return total, found
}
