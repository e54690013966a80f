// Command aggd is the aggregation server: it receives samples, events and
// service checks over gRPC, aggregates them per tenant in time windows and
// flushes them upstream on aligned ticks.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	rungroup "github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	nooptrace "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	configpkg "github.com/aggd/aggd/internal/config"
	"github.com/aggd/aggd/internal/dogstatsd"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/journal"
	"github.com/aggd/aggd/internal/overload"
	"github.com/aggd/aggd/internal/rules"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/telemetry"
	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/wal"
)

// The components wired below, checked against the interfaces they are
// wired in as.
var (
	_ flush.Exporter        = (*upstream.Router)(nil)
	_ spans.Exporter        = (*upstream.Router)(nil)
	_ flush.RuleEngine      = (*rules.Engine)(nil)
	_ spans.Observer        = (*rules.Engine)(nil)
	_ flush.EventHolder     = (*spans.GroupSampler)(nil)
	_ flush.WAL             = (*journal.Journal)(nil)
	_ flush.TenantLister    = (*service.Tenants)(nil)
	_ flush.Observer        = (*telemetry.FlushMetrics)(nil)
	_ service.Ingester      = (*flush.Aggregator)(nil)
	_ service.SpanIngester  = (*spans.Processor)(nil)
	_ service.ContextRanker = (*flush.Aggregator)(nil)
	_ spans.StatsSink       = (*flush.Aggregator)(nil)
	_ dogstatsd.Ingester    = (*flush.Aggregator)(nil)
	_ journal.Tenants       = (*service.Tenants)(nil)
	_ journal.Ingester      = (*flush.Aggregator)(nil)
	_ journal.SpanReplayer  = (*spans.Processor)(nil)
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr, nil); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "aggd:", err)
		os.Exit(1)
	}
}

// run builds aggd from args and the environment, serves until ctx is done,
// then shuts down in order. ready, if set, is told the bound addresses.
// It only wires: the parts are built by their constructors (the helpers
// below), started, and stopped by one run group in the order of
// STYLE.md's shutdown; every Start, Shutdown and Close error is returned.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, ready func(grpcAddr, adminAddr string)) (err error) {
	build := telemetry.BuildInfo()
	if slices.ContainsFunc(args, func(a string) bool { return a == "--version" || a == "-version" }) {
		_, err := fmt.Fprintln(stdout, build)
		return err
	}
	if len(args) > 0 && args[0] == "validate" {
		return validate(args[1:], getenv, stdout)
	}
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	if err := checkEnviron(environ()); err != nil {
		return err
	}
	log := newLogger(cfg, stderr)

	tenantCfgs, tenants, err := loadTenants(cfg, getenv)
	if err != nil {
		return err
	}
	tracer, stopTracing, err := newTracer(ctx, cfg)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), telemetry.NewTenantCollector(tenants, cfg.MetricsMaxTenants))
	telemetry.RegisterBuildInfo(reg, build)

	router, upstreamFile, closeUpstreams, err := buildUpstreams(cfg, getenv, tenantCfgs, configpkg.Shared{
		Histogram: cfg.Histogram, SketchPercentiles: cfg.SketchPct, Metrics: telemetry.NewSendMetrics(reg), Log: log, Stdout: stdout, InstanceID: instanceID(cfg),
		Tracer: tracer, SpoolDir: spoolDir(cfg), SpoolMaxBytes: cfg.QueueMaxBytes,
	})
	if err != nil {
		return errors.Join(err, stopTracing(context.Background()))
	}
	defer func() { err = errors.Join(err, closeUpstreams()) }()
	walLog, err := openWAL(cfg, reg, router)
	if err != nil {
		return errors.Join(err, stopTracing(context.Background()))
	}
	if walLog != nil {
		defer func() { err = errors.Join(err, walLog.Close()) }() // fsyncs
	}
	// What has started is stopped again, last first, if a later step
	// fails before aggd serves; from then on the run group stops it.
	started := undo{stopTracing}
	serving := false
	defer func() {
		if !serving {
			err = errors.Join(err, started.run(cfg.ShutdownTimeout))
		}
	}()
	// Payloads a crash left queued are sent again once the router starts.
	if err := router.Start(ctx); err != nil {
		return err
	}
	started.add(router.Shutdown)

	ruleEngine, policy, err := loadRulesAndPolicy(cfg)
	if err != nil {
		return err
	}
	sampler := spans.NewSampler(policy, cfg.Sampling)
	groups := spans.NewGroupSampler(policy, spans.MaxHeldEvents)
	reg.MustRegister(telemetry.NewSamplerCollector(&sampler.C))
	aggCfg := flush.AggregatorConfig{Window: cfg.Window, Shards: cfg.Shards, Events: groups}
	var spanObserver spans.Observer
	if ruleEngine != nil {
		aggCfg.Rules, spanObserver = ruleEngine, ruleEngine
	}
	agg := flush.NewAggregator(aggCfg)
	// In cluster mode the stats of spans go to their contexts' owners,
	// like other samples: the forwarder is set once the cluster starts.
	spanStats := &service.Routed{Ingester: agg}
	proc := spans.NewProcessor(spanStats, sampler, spanObserver)
	jnl, err := newJournal(cfg, walLog, policy, agg, tenants, proc, log)
	if err != nil {
		return err
	}
	flushCfg := flush.Config{
		Interval: cfg.Window.Interval, Timeout: cfg.ExportTimeout, Spread: cfg.FlushSpread, Hostname: cfg.Hostname,
		Observer: telemetry.NewFlushMetrics(reg), Tracer: tracer,
	}
	if jnl != nil {
		flushCfg.WAL = jnl
	}
	flusher, err := flush.NewFlusher(agg, router, tenants, flushCfg, log)
	if err != nil {
		return err
	}
	traceRunner, err := spans.NewRunner(spans.RunnerConfig{Sampler: sampler, Exporter: router, Timeout: cfg.Window.Interval, Logger: log})
	if err != nil {
		return err
	}
	if err := traceRunner.Start(ctx); err != nil {
		return err
	}
	started.add(traceRunner.Shutdown)
	reloads := newReloader(cfg, ruleEngine, sampler, groups, telemetry.NewReloadMetrics(reg), log)
	if err := reloads.Start(ctx); err != nil {
		return err
	}
	started.add(reloads.Shutdown)
	guard := newGuard(cfg, reg)
	if guard != nil {
		if err := guard.Start(ctx); err != nil {
			return err
		}
		started.add(guard.Shutdown)
	}
	load := loadLevel(walLog != nil, guard.overload(), router)
	node, err := startCluster(ctx, cfg, agg, ruleEngine, reg, log)
	if err != nil {
		return err
	}
	spanStats.Forwarder = node.forwarder()
	if node != nil {
		started.add(func(ctx context.Context) error {
			return errors.Join(node.Shutdown(ctx), ignoreClosed(node.lis.Close()))
		})
	}
	dsd, err := newDogStatsD(cfg, tenants, agg, node, load, log)
	if err != nil {
		return err
	}
	if dsd != nil {
		if err := dsd.Start(ctx); err != nil {
			return err
		}
		started.add(dsd.Shutdown)
		reg.MustRegister(telemetry.NewDogStatsDCollector(dsd, cfg.DogStatsDTenant))
		log.Info("dogstatsd listening", "addrs", dsd.Addrs(), "tenant", cfg.DogStatsDTenant)
	}

	sc := service.Config{Ingest: agg, Tenants: tenants, Limits: cfg.Limits, Logger: log, Spans: proc, MaxStreamAge: cfg.MaxStreamAge, Load: load,
		Forwarder: node.forwarder(), PeerCalls: node.peerCalls(), Members: node.members(), Seeder: agg, Decisions: sampler}
	if g := guard.overload(); g != nil {
		sc.Memory = g
	}
	if jnl != nil {
		sc.Journal = jnl
		if c := node.callMemory(); c != nil {
			jnl.RememberCalls(c) // a forward retried across a restart is applied once
		}
		if err := jnl.Replay(); err != nil {
			return err
		}
	}
	// Without a log of what a replica answering at this address before
	// took, the buckets it flushed are refused rather than sent again.
	node.guardPredecessor(jnl != nil && jnl.Restored())
	// The lists read at start that are not in force yet move contexts
	// whose last samples the log just restored.
	node.handOverPending(ctx, agg)
	if node != nil {
		// Traces the log restored that another replica runs now, and
		// those a member list moves later, go to it.
		traceRunner.MoveBy(node.fwd)
	}
	srv, err := service.New(sc)
	if err != nil {
		return err
	}
	reg.MustRegister(telemetry.NewRefusalCollector(srv))
	gs, hs, otlp, err := newGRPCServer(cfg, reg, srv)
	if err != nil {
		return err
	}
	srv.RegisterAdmin(gs, service.AdminConfig{
		Token:    cfg.AdminToken,
		Contexts: agg,
		Queues:   service.RouterQueues(router),
		Config:   func() string { return effectiveConfig(cfg, upstreamFile, tenantCfgs) },
		Rules:    service.EngineRules(ruleEngine),
	})
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	started.add(func(context.Context) error { return ignoreClosed(lis.Close()) })
	admin, err := listenHTTP(cfg.AdminListen, metricsMux(reg))
	if err != nil {
		return err
	}
	started.add(func(context.Context) error { return admin.close() })
	pprofSrv, err := listenHTTP(cfg.PprofListen, pprofMux())
	if err != nil {
		return err
	}
	started.add(func(context.Context) error { return pprofSrv.close() })
	otlpHTTP, err := listenHTTP(cfg.OTLPHTTPListen, otlp.Handler(cfg.MaxRecvMsgSize))
	if err != nil {
		return err
	}
	started.add(func(context.Context) error { return otlpHTTP.close() })
	if otlpHTTP != nil {
		log.Info("OTLP/HTTP serving", "addr", otlpHTTP.addr())
	}
	if err := flusher.Start(ctx); err != nil {
		return err
	}
	serving = true // the run group below stops everything

	// Serve until ctx is done or the gRPC server fails, then stop in the
	// order the actors are added: run.Group interrupts them one after the
	// other. Every stop's error is returned.
	var (
		g          rungroup.Group
		stopErrs   []error
		stopCtx    = context.Background() // the shutdown timeout's, from the gRPC stop on
		cancelStop = func() {}
		start      time.Time
	)
	defer func() { cancelStop() }()
	// stops adds an actor that waits until it is interrupted, then stops
	// a part, its error kept for the return.
	stops := func(stop func() error) {
		done := make(chan struct{})
		g.Add(func() error { <-done; return nil }, func(error) { stopErrs = append(stopErrs, stop()); close(done) })
	}
	// serves adds an actor serving an HTTP server until it is
	// interrupted; a failure to serve is logged, as it stops none of
	// the rest.
	serves := func(h *httpServer, what string, stop func() error) {
		if h == nil {
			return
		}
		g.Add(servesUntilStopped(h.serve, func(err error) { log.Error(what+" stopped", "err", err) },
			func() { stopErrs = append(stopErrs, stop()) }))
	}
	signalled := make(chan struct{})
	g.Add(func() error {
		select {
		case <-ctx.Done():
		case <-signalled:
		}
		return nil
	}, func(error) { close(signalled) })
	stops(func() error { return reloads.Shutdown(context.Background()) })
	if dsd != nil {
		stops(func() error { return dsd.Shutdown(context.Background()) })
	}
	// Stop taking OTLP/HTTP before the final flush.
	serves(otlpHTTP, "OTLP/HTTP server", func() error { otlpHTTP.drain(cfg.DrainTimeout, log); return nil })
	g.Add(func() error {
		if err := gs.Serve(lis); err != nil {
			log.Error("grpc server stopped", "err", err)
			return err
		}
		return nil
	}, func(error) {
		start = time.Now()
		stopCtx, cancelStop = context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		log.Info("shutting down")
		drain(cfg, log, hs, srv, gs)
	})
	if node != nil {
		// The peer port is served by the same gRPC server: its drain and
		// stop above end this too. Nothing forwards once it has stopped.
		g.Add(func() error { return gs.Serve(node.lis) }, func(error) {})
		// Before the forwarder closes, the traces held here that a list
		// moved to another replica go to it, rather than being decided
		// here by the trace runner's final tick.
		stops(func() error { node.fwd.MoveTraces(stopCtx, sampler, time.Now().UnixNano()); return nil })
		stops(func() error { return node.Shutdown(stopCtx) })
	}
	stops(func() error { return traceRunner.Shutdown(stopCtx) })
	stops(func() error { return flusher.Shutdown(stopCtx) })
	stops(func() error {
		err := router.Shutdown(stopCtx)
		if err != nil {
			log.Error("send queues not drained", "err", err)
		}
		return err
	})
	// aggd's own traces, the flushes' and sends' among them, go last.
	stops(func() error { return stopTracing(stopCtx) })
	serves(admin, "admin server", func() error { return admin.srv.Shutdown(stopCtx) })
	serves(pprofSrv, "pprof server", pprofSrv.close)
	if guard != nil {
		stops(func() error { return guard.Shutdown(stopCtx) })
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(aggdv1.AggregatorService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	memory := "off"
	if cfg.MemoryLimit > 0 {
		memory = fmt.Sprintf("%d bytes (%.0f MiB)", cfg.MemoryLimit, float64(cfg.MemoryLimit)/(1<<20))
	}
	wal := "off (in memory only)"
	if cfg.WALDir != "" {
		wal = fmt.Sprintf("%s (fsync %s, compression %s)", cfg.WALDir, cfg.WALFsync, cfg.WALCompression)
	}
	log.Info("aggd serving", "version", build.Version, "grpc", lis.Addr().String(), "admin", admin.addr(), "interval", cfg.Window.Interval,
		"upstreams", describeUpstreams(upstreamFile), "wal", wal, "memory_limit", memory,
		"auth", cfg.TenantsFile != "", "tenants_file", cfg.TenantsFile, "watched", reloads.paths())
	if ready != nil {
		ready(lis.Addr().String(), admin.addr())
	}

	serveErr := g.Run()
	err = errors.Join(stopErrs...)
	log.Info("stopped", "took", time.Since(start), "err", err)
	return errors.Join(serveErr, err)
}

// buildUpstreams makes the upstreams of the configuration file, or the
// JSON-lines upstream of --output without one, and the router over them.
func buildUpstreams(cfg config, getenv func(string) string, tenants []configpkg.Tenant, sh configpkg.Shared) (*upstream.Router, *configpkg.File, func() error, error) {
	file := &configpkg.File{Upstreams: []configpkg.Upstream{{Name: "jsonlines", Type: "jsonlines", Path: cfg.Output}}}
	if cfg.ConfigFile != "" {
		var err error
		if file, err = configpkg.Load(cfg.ConfigFile, getenv); err != nil {
			return nil, nil, nil, err
		}
		if len(file.Upstreams) == 0 {
			return nil, nil, nil, fmt.Errorf("%s defines no [[upstream]]", cfg.ConfigFile)
		}
	}
	var ups []upstream.Upstream
	var closers []func() error
	closeAll := func() error {
		var errs []error
		for _, c := range closers {
			errs = append(errs, c())
		}
		return errors.Join(errs...)
	}
	defaults := file.DefaultUpstreams
	for _, u := range file.Upstreams {
		built, closer, err := u.Build(sh)
		if err != nil {
			return nil, nil, nil, errors.Join(err, closeAll())
		}
		ups = append(ups, built)
		closers = append(closers, closer)
		if len(file.DefaultUpstreams) == 0 {
			defaults = append(defaults, u.Name)
		}
	}
	routes, err := configpkg.Routes(tenants)
	if err == nil {
		var r *upstream.Router
		if r, err = upstream.NewRouter(ups, defaults, routes); err == nil {
			return r, file, closeAll, nil
		}
	}
	return nil, nil, nil, errors.Join(err, closeAll())
}

// loadTenants reads the tenants file, if any, and returns its tenants and
// the edge's tenants built from them.
func loadTenants(cfg config, getenv func(string) string) ([]configpkg.Tenant, *service.Tenants, error) {
	var tenantCfgs []configpkg.Tenant
	if cfg.TenantsFile != "" {
		var err error
		if tenantCfgs, err = configpkg.LoadTenants(cfg.TenantsFile, getenv); err != nil {
			return nil, nil, err
		}
	}
	tenants, err := service.NewTenants(service.TenantsConfig{Tenants: configpkg.ServiceTenants(tenantCfgs), Auth: cfg.TenantsFile != "", MaxTenants: cfg.MaxTenants})
	if err != nil {
		return nil, nil, fmt.Errorf("tenants file: %w", err)
	}
	return tenantCfgs, tenants, nil
}

// spoolDir is where the upstreams' send queues are kept on disk: under
// --wal-dir, and nowhere (in memory) without it.
func spoolDir(cfg config) string {
	if cfg.WALDir == "" {
		return ""
	}
	return filepath.Join(cfg.WALDir, "queue")
}

// openWAL opens the write-ahead log under --wal-dir, nil without it, and
// registers its metrics and the send queue's.
func openWAL(cfg config, reg prometheus.Registerer, router *upstream.Router) (*wal.Log, error) {
	if cfg.WALDir == "" {
		return nil, nil
	}
	sync, _ := wal.ParseSync(cfg.WALFsync)
	comp, _ := wal.ParseCompression(cfg.WALCompression)
	walLog, err := wal.Open(filepath.Join(cfg.WALDir, "wal"), wal.Options{Sync: sync, Compression: comp})
	if err != nil {
		return nil, err
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "aggd_wal_records", Help: "Batches in the write-ahead log, waiting for the flushes that carry them."},
		func() float64 { return float64(walLog.Stats().Records) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "aggd_wal_bytes", Help: "Bytes of the records in the write-ahead log, as written (see --wal-compression)."},
			func() float64 { return float64(walLog.Stats().Bytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "aggd_wal_damaged_records_total", Help: "Write-ahead log records replay skipped because they failed their checksum."},
			func() float64 { return float64(walLog.Stats().Damaged) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "aggd_send_queue_full", Help: "1 while some upstream's send queue on disk is at --queue-max-bytes: flushes wait and batches are refused."},
			func() float64 { return b2f(router.Full()) }))
	return walLog, nil
}

// loadRulesAndPolicy reads the aggregation rules and the sampling policy
// files; each is nil when its file is not set.
func loadRulesAndPolicy(cfg config) (*rules.Engine, *spans.Policy, error) {
	var engine *rules.Engine
	if cfg.RulesFile != "" {
		set, err := rules.Load(cfg.RulesFile)
		if err != nil {
			return nil, nil, err
		}
		engine = rules.NewEngine(set, flush.ShardCount(cfg.Shards), cfg.Window)
	}
	var policy *spans.Policy
	if cfg.SamplingFile != "" {
		var err error
		if policy, err = spans.LoadPolicy(cfg.SamplingFile); err != nil {
			return nil, nil, err
		}
	}
	return engine, policy, nil
}

// newJournal returns the journal over walLog, nil without one.
func newJournal(cfg config, walLog *wal.Log, policy *spans.Policy, agg *flush.Aggregator, tenants *service.Tenants, proc *spans.Processor, log *slog.Logger) (*journal.Journal, error) {
	if walLog == nil {
		return nil, nil
	}
	eventHold, spanHold := journal.Holds(policy, cfg.Window.Interval)
	return journal.New(journal.Config{Log: walLog, Due: agg.Due, EventHold: eventHold, SpanHold: spanHold, LateWindow: cfg.Window.LateWindow,
		Tenants: tenants, Limits: cfg.Limits, Ingest: agg, Spans: proc, Seeder: agg, Logger: log})
}

// reloader watches the rules and sampling files and reads them again on
// SIGHUP too.
type reloader struct {
	watchers   []*configpkg.Watcher
	hup        chan os.Signal
	stop, done chan struct{}
}

// newReloader returns the reloader of the rules file into engine and of
// the sampling file into sampler and groups; either file may be unset.
func newReloader(cfg config, engine *rules.Engine, sampler *spans.Sampler, groups *spans.GroupSampler, m *telemetry.ReloadMetrics, log *slog.Logger) *reloader {
	r := &reloader{hup: make(chan os.Signal, 1), stop: make(chan struct{}), done: make(chan struct{})}
	if cfg.RulesFile != "" {
		r.watchers = append(r.watchers, configpkg.NewWatcher(cfg.RulesFile, cfg.RulesReload, func() error {
			set, err := rules.Load(cfg.RulesFile)
			if err == nil {
				engine.SetRules(set)
			}
			return err
		}, m.Observer("rules"), log))
	}
	if cfg.SamplingFile != "" {
		r.watchers = append(r.watchers, configpkg.NewWatcher(cfg.SamplingFile, cfg.SamplingReload, func() error {
			p, err := spans.LoadPolicy(cfg.SamplingFile)
			if err == nil {
				sampler.SetPolicy(p)
				groups.SetPolicy(p)
			}
			return err
		}, m.Observer("sampling"), log))
	}
	return r
}

// Start starts the watchers and, when there are any, takes SIGHUP.
func (r *reloader) Start(ctx context.Context) error {
	if len(r.watchers) == 0 {
		close(r.done)
		return nil
	}
	for _, w := range r.watchers {
		if err := w.Start(ctx); err != nil {
			close(r.done)
			return err
		}
	}
	signal.Notify(r.hup, syscall.SIGHUP)
	go func() {
		defer close(r.done)
		for {
			select {
			case <-r.hup:
				for _, w := range r.watchers {
					w.Reload()
				}
			case <-r.stop:
				return
			}
		}
	}()
	return nil
}

// Shutdown stops taking SIGHUP and stops the watchers.
func (r *reloader) Shutdown(ctx context.Context) error {
	signal.Stop(r.hup)
	close(r.stop)
	<-r.done
	var errs []error
	for _, w := range r.watchers {
		errs = append(errs, w.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// paths returns the files watched.
func (r *reloader) paths() []string {
	var out []string
	for _, w := range r.watchers {
		out = append(out, w.Path())
	}
	return out
}

// memoryGuard is the guard of --memory-limit; while it runs, the Go
// runtime's soft memory limit is 80 % of it, so that the GC works hard
// before traffic slows.
type memoryGuard struct {
	guard       *overload.Guard
	limit, prev int64
}

// newGuard returns the memory guard, nil without --memory-limit, and
// registers its metrics.
func newGuard(cfg config, reg prometheus.Registerer) *memoryGuard {
	if cfg.MemoryLimit == 0 {
		return nil
	}
	g := &memoryGuard{guard: overload.New(cfg.MemoryLimit, 100*time.Millisecond, nil), limit: int64(cfg.MemoryLimit / 10 * 8)}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "aggd_memory_used_bytes", Help: "Memory the Go runtime holds, as the memory budget counts it."},
		func() float64 { return float64(g.guard.Used()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "aggd_memory_pressure", Help: "0 normal, 1 over 80 % of --memory-limit (streams slow), 2 over 95 % (batches refused)."},
			func() float64 { return float64(g.guard.Level()) }))
	return g
}

// Start sets the runtime's memory limit and starts the guard.
func (g *memoryGuard) Start(ctx context.Context) error {
	g.prev = debug.SetMemoryLimit(g.limit)
	return g.guard.Start(ctx)
}

// Shutdown stops the guard and restores the runtime's memory limit.
func (g *memoryGuard) Shutdown(ctx context.Context) error {
	err := g.guard.Shutdown(ctx)
	debug.SetMemoryLimit(g.prev)
	return err
}

// overload returns the guard; nil on a nil memoryGuard.
func (g *memoryGuard) overload() *overload.Guard {
	if g == nil {
		return nil
	}
	return g.guard
}

// loadLevel is what pushes back on ingest: memory pressure and, with a
// write-ahead log (send queues on disk), a full send queue; nil for
// neither.
func loadLevel(wal bool, guard *overload.Guard, router *upstream.Router) overload.Leveler {
	switch {
	case wal:
		return overload.Pushback{Memory: guard, Full: router.Full}
	case guard != nil:
		return guard
	}
	return nil
}

// newDogStatsD returns the DogStatsD server, nil when it listens nowhere.
// In cluster mode what other replicas own goes to them.
func newDogStatsD(cfg config, tenants *service.Tenants, agg *flush.Aggregator, node *clusterNode, load overload.Leveler, log *slog.Logger) (*dogstatsd.Server, error) {
	if cfg.DogStatsD.UDP == "" && cfg.DogStatsD.Socket == "" {
		return nil, nil
	}
	tn, err := tenants.Get(cfg.DogStatsDTenant)
	if err != nil {
		return nil, fmt.Errorf("dogstatsd tenant: %w", err)
	}
	dc := cfg.DogStatsD
	dc.Limits, dc.Load = cfg.Limits, load
	var ing dogstatsd.Ingester = agg
	if fwd := node.forwarder(); fwd != nil {
		ing = &service.Routed{Forwarder: fwd, Ingester: agg}
	}
	return dogstatsd.New(dc, tn, ing, log)
}

// newGRPCServer returns the gRPC server with srv's services, OTLP's,
// health and reflection registered, and srv's OTLP receiver; the admin
// service is registered by the caller.
func newGRPCServer(cfg config, reg prometheus.Registerer, srv *service.Server) (*grpc.Server, *health.Server, *service.OTLP, error) {
	tlsOpt, err := serverTLS(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	grpcMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	reg.MustRegister(grpcMetrics)
	gs := grpc.NewServer(append(service.ServerOptions(), tlsOpt,
		grpc.ChainUnaryInterceptor(grpcMetrics.UnaryServerInterceptor()),
		// Per-message accounting on the batch stream cost about 10 % of
		// ingest throughput; aggd's own counters measure that traffic.
		grpc.ChainStreamInterceptor(selector.StreamServerInterceptor(grpcMetrics.StreamServerInterceptor(),
			selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
				return c.FullMethod() != aggdv1.AggregatorService_Stream_FullMethodName
			}))),
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize),
		grpc.WaitForHandlers(true),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge: orInfinity(cfg.MaxConnAge), MaxConnectionAgeGrace: orInfinity(cfg.MaxConnAgeGrace),
			Time: cfg.KeepaliveTime, Timeout: cfg.KeepaliveTimeout,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: cfg.KeepaliveMinTime, PermitWithoutStream: true}),
	)...)
	srv.Register(gs)
	srv.RegisterPeer(gs, cfg.Cluster.Token)
	otlp := srv.NewOTLP(cfg.OTLP)
	otlp.Register(gs)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	// Series from the start for every method the interceptors count: not
	// for Stream, which they skip and would leave at zero.
	grpcMetrics.InitializeMetrics(exceptMethod{gs, aggdv1.AggregatorService_Stream_FullMethodName})
	return gs, hs, otlp, nil
}

// undo holds the stops of the parts started so far.
type undo []func(context.Context) error

func (u *undo) add(stop func(context.Context) error) { *u = append(*u, stop) }

// run stops the parts, last started first, within timeout.
func (u undo) run(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var errs []error
	for i := len(u) - 1; i >= 0; i-- {
		errs = append(errs, u[i](ctx))
	}
	return errors.Join(errs...)
}

// httpServer is an HTTP server and its listener.
type httpServer struct {
	srv *http.Server
	lis net.Listener
}

// listenHTTP listens on addr for h; nil for an empty addr.
func listenHTTP(addr string, h http.Handler) (*httpServer, error) {
	if addr == "" {
		return nil, nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &httpServer{srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, lis: lis}, nil
}

// serve serves until the server is shut down or closed.
func (h *httpServer) serve() error {
	if err := h.srv.Serve(h.lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// close closes the server, or its listener before it serves; nil does
// nothing.
func (h *httpServer) close() error {
	if h == nil {
		return nil
	}
	return errors.Join(h.srv.Close(), ignoreClosed(h.lis.Close()))
}

// drain waits up to timeout for the requests in flight, then closes what
// is left of them.
func (h *httpServer) drain(timeout time.Duration, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err != nil {
		log.Warn("requests still open after the drain timeout; closing them", "drain_timeout", timeout)
		h.srv.Close()
	}
}

// addr is the bound address; empty for nil.
func (h *httpServer) addr() string {
	if h == nil {
		return ""
	}
	return h.lis.Addr().String()
}

// ignoreClosed drops the error of closing what is closed already.
func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// drain takes aggd out of service: health NOT_SERVING, every stream
// ended after its current batch, and the gRPC server stopped, forcibly
// once the drain timeout has passed.
func drain(cfg config, log *slog.Logger, hs *health.Server, srv *service.Server, gs *grpc.Server) {
	hs.Shutdown() // every service NOT_SERVING
	srv.Drain()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(cfg.DrainTimeout):
		log.Warn("streams still open after the drain timeout; closing them", "drain_timeout", cfg.DrainTimeout)
		gs.Stop()
		<-stopped
	}
}

// newTracer returns the tracer of aggd's own flushes and sends: an OTLP
// exporter when --otel-traces-endpoint is set, else a no-op.
func newTracer(ctx context.Context, cfg config) (trace.Tracer, func(context.Context) error, error) {
	if cfg.OTelTraces == "" {
		return nooptrace.NewTracerProvider().Tracer("aggd"), func(context.Context) error { return nil }, nil
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(cfg.OTelTraces)}
	if cfg.OTelTracesInsecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	exp, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("otel traces: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "aggd"), attribute.String("host.name", cfg.Hostname))))
	// Shutdown exports the spans still held, within the shutdown
	// deadline it is given.
	return tp.Tracer("aggd"), tp.Shutdown, nil
}

// serverTLS returns the gRPC port's transport credentials: TLS with
// --tls-cert and --tls-key, verifying client certificates against
// --tls-client-ca when set; else plaintext.
func serverTLS(cfg config) (grpc.ServerOption, error) {
	if cfg.TLSCert == "" {
		return grpc.Creds(insecure.NewCredentials()), nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if cfg.TLSClientCA != "" {
		pem, err := os.ReadFile(cfg.TLSClientCA)
		if err != nil {
			return nil, fmt.Errorf("tls client ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls client ca: %s holds no PEM certificate", cfg.TLSClientCA)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return grpc.Creds(credentials.NewTLS(tc)), nil
}

// orInfinity maps 0 (never) to grpc's infinity.
func orInfinity(d time.Duration) time.Duration {
	if d == 0 {
		return time.Duration(math.MaxInt64)
	}
	return d
}

func metricsMux(reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// describeUpstreams names each upstream with its type and where it sends,
// for the startup log (no credentials).
func describeUpstreams(f *configpkg.File) []string {
	var out []string
	for _, u := range f.Upstreams {
		to := u.Path
		switch u.Type {
		case "datadog":
			to = u.URL
		case "otlp":
			to = u.Endpoint
		}
		out = append(out, fmt.Sprintf("%s (%s → %s)", u.Name, u.Type, to))
	}
	return out
}

// exceptMethod lists a server's services without one method.
type exceptMethod struct {
	*grpc.Server
	fullMethod string
}

func (e exceptMethod) GetServiceInfo() map[string]grpc.ServiceInfo {
	infos := e.Server.GetServiceInfo()
	for name, info := range infos {
		info.Methods = slices.DeleteFunc(slices.Clone(info.Methods), func(m grpc.MethodInfo) bool { return "/"+name+"/"+m.Name == e.fullMethod })
		infos[name] = info
	}
	return infos
}

func newLogger(cfg config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(strings.ToUpper(cfg.LogLevel)))
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: durationText}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// durationText writes durations as Go durations ("1.5s"), not as
// nanoseconds, in both log formats.
func durationText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// servesUntilStopped returns a run group actor for a server that serves
// until it is stopped: if serve fails first, the failure goes to failed
// and the actor still waits for its interrupt, since the first actor to
// return would end the whole group (a failed admin or OTLP/HTTP listener
// must not stop aggd's ingest).
func servesUntilStopped(serve func() error, failed func(error), stop func()) (execute func() error, interrupt func(error)) {
	done := make(chan struct{})
	return func() error {
			if err := serve(); err != nil {
				failed(err)
			}
			<-done
			return nil
		}, func(error) {
			stop()
			close(done)
		}
}
