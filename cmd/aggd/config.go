package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/aggd/aggd/internal/codec"
	configpkg "github.com/aggd/aggd/internal/config"
	"github.com/aggd/aggd/internal/dogstatsd"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/wal"
	"github.com/aggd/aggd/internal/window"
)

// config is every setting of aggd. Each is a flag --name and an environment
// variable AGGD_NAME (upper case, '-' as '_'); a flag given on the command
// line wins over the environment.
type config struct {
	Listen         string
	AdminListen    string
	PprofListen    string
	OTLPHTTPListen string
	Output         string
	ConfigFile     string
	TenantsFile    string
	TLSCert        string
	TLSKey         string
	TLSClientCA    string
	MaxTenants     int
	// MetricsMaxTenants bounds the tenants with series of their own in
	// /metrics.
	MetricsMaxTenants int
	AdminToken        string
	MaxRecvMsgSize    int
	MemoryLimit       uint64
	WALDir            string
	WALFsync          string
	WALCompression    string
	QueueMaxBytes     int64
	Shards            int
	Hostname          string
	DrainTimeout      time.Duration
	// Connection rebalancing and keepalive.
	MaxConnAge, MaxConnAgeGrace, MaxStreamAge time.Duration
	KeepaliveTime, KeepaliveTimeout           time.Duration
	KeepaliveMinTime                          time.Duration
	ShutdownTimeout                           time.Duration
	ExportTimeout                             time.Duration
	FlushSpread                               time.Duration
	OTelTraces                                string
	OTelTracesInsecure                        bool
	LogFormat                                 string
	LogLevel                                  string

	DogStatsD       dogstatsd.Config
	DogStatsDTenant string

	RulesFile      string
	RulesReload    time.Duration
	SamplingFile   string
	SamplingReload time.Duration
	Sampling       spans.Limits

	Cluster clusterFlags

	// values renders every flag as parsed, environment applied.
	values map[string]string

	Window    window.Config
	Limits    codec.Limits
	OTLP      service.OTLPConfig
	Histogram upstream.HistogramConfig
	SketchPct []float64
}

type floatList struct{ p *[]float64 }

func (f floatList) String() string {
	if f.p == nil {
		return ""
	}
	s := make([]string, len(*f.p))
	for i, v := range *f.p {
		s[i] = strconv.FormatFloat(v, 'f', -1, 64)
	}
	return strings.Join(s, ",")
}

func (f floatList) Set(v string) error {
	*f.p = nil
	for _, s := range splitList(v) {
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		*f.p = append(*f.p, x)
	}
	return nil
}

// byteSize is a flag of a size in bytes that takes units: 512MiB, 4Gi,
// 1GB (1000s), 1.5GiB, or bytes.
type byteSize[T ~int | ~int64 | ~uint64] struct{ p *T }

func (b byteSize[T]) String() string {
	if b.p == nil {
		return "0"
	}
	return strconv.FormatUint(uint64(*b.p), 10)
}

func (b byteSize[T]) Set(v string) error {
	n, err := humanize.ParseBytes(v)
	if err != nil {
		return fmt.Errorf("%q is not a size such as 512MiB, 4Gi or 1GB", v)
	}
	if T(n) < 0 || uint64(T(n)) != n {
		return fmt.Errorf("%s is too large", v)
	}
	*b.p = T(n)
	return nil
}

type stringList struct{ p *[]string }

func (f stringList) String() string {
	if f.p == nil {
		return ""
	}
	return strings.Join(*f.p, ",")
}

func (f stringList) Set(v string) error { *f.p = splitList(v); return nil }

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// parseConfig reads flags from args and, for flags not given, the
// environment through getenv.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	host, _ := os.Hostname()
	c := config{
		Window:    window.DefaultConfig(),
		Limits:    codec.DefaultLimits(),
		OTLP:      service.DefaultOTLPConfig(),
		Histogram: upstream.DefaultHistogramConfig(),
		SketchPct: []float64{0.5, 0.75, 0.9, 0.95, 0.99},
		Sampling:  spans.DefaultLimits(),
		DogStatsD: dogstatsd.Config{PacketSize: 65535, ReceiveBuffer: 8 << 20},
	}
	fs := flag.NewFlagSet("aggd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.Hostname = host
	defineFlags(fs, &c)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if err := applySettings(fs, given, getenv); err != nil {
		return c, err
	}
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || envErr != nil {
			return
		}
		name := envName(f.Name)
		if v := getenv(name); v != "" {
			if err := f.Value.Set(v); err != nil {
				envErr = fmt.Errorf("%s=%q: %w", name, v, err)
			}
		}
	})
	if envErr != nil {
		return c, envErr
	}
	c.values = map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { c.values[f.Name] = f.Value.String() })
	return c, c.validate()
}

// applySettings sets the options of the configuration file's [aggd]
// table that neither a flag nor the environment sets: a flag wins over
// the environment, which wins over the file, which wins over the default.
func applySettings(fs *flag.FlagSet, given map[string]bool, getenv func(string) string) error {
	path := fs.Lookup("config").Value.String()
	if !given["config"] && getenv("AGGD_CONFIG") != "" {
		path = getenv("AGGD_CONFIG")
	}
	if path == "" {
		return nil
	}
	settings, err := configpkg.LoadSettings(path, getenv)
	errs := []error{err}
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		f := fs.Lookup(k)
		switch {
		case k == "config":
			errs = append(errs, fmt.Errorf("%s: [aggd] config: the file cannot name another", path))
		case f == nil:
			var names []string
			fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
			best := slices.MinFunc(names, func(a, b string) int { return distance(k, a) - distance(k, b) })
			errs = append(errs, fmt.Errorf("%s: [aggd] %s is not an option (%s?)", path, k, best))
		case given[k] || getenv(envName(k)) != "":
			// the flag or the environment wins
		default:
			if err := f.Value.Set(settings[k]); err != nil {
				errs = append(errs, fmt.Errorf("%s: [aggd] %s = %q: %w", path, k, settings[k], err))
			}
		}
	}
	return errors.Join(errs...)
}

func envName(flagName string) string {
	return "AGGD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func (c config) validate() error {
	var errs []error
	if c.Listen == "" {
		errs = append(errs, errors.New("listen address is empty"))
	}
	if c.MetricsMaxTenants < 0 {
		errs = append(errs, errors.New("metrics-max-tenants must not be negative"))
	}
	if c.MaxTenants < 1 || c.MaxRecvMsgSize < 1024 || c.Shards < 0 {
		errs = append(errs, errors.New("max-tenants must be positive, max-recv-msg-size at least 1024, shards not negative"))
	}
	if c.MaxConnAge < 0 || c.MaxConnAgeGrace < 0 || c.MaxStreamAge < 0 || c.KeepaliveTime <= 0 || c.KeepaliveTimeout <= 0 || c.KeepaliveMinTime <= 0 {
		errs = append(errs, errors.New("connection ages must not be negative; keepalive times must be positive"))
	}
	if c.DrainTimeout < 0 || c.ShutdownTimeout <= 0 || c.ExportTimeout < 0 {
		errs = append(errs, errors.New("timeouts must not be negative; shutdown-timeout must be positive"))
	}
	if _, err := wal.ParseSync(c.WALFsync); err != nil {
		errs = append(errs, err)
	}
	if _, err := wal.ParseCompression(c.WALCompression); err != nil {
		errs = append(errs, err)
	}
	if c.QueueMaxBytes < 1<<20 {
		errs = append(errs, errors.New("queue-max-bytes must be at least 1 MiB"))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") || (c.TLSClientCA != "" && c.TLSCert == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together, and --tls-client-ca needs them"))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("log-format %q is not text or json", c.LogFormat))
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		errs = append(errs, fmt.Errorf("log-level: %w", err))
	}
	for _, p := range c.SketchPct {
		if !(p >= 0 && p <= 1) {
			errs = append(errs, fmt.Errorf("sketch percentile %v is not in [0, 1]", p))
		}
	}
	if c.RulesReload <= 0 || c.SamplingReload <= 0 || c.Sampling.MaxTracesPerTenant < 1 || c.Sampling.MaxSpansPerTrace < 1 || c.Sampling.MaxBytes < 1 || c.Sampling.DecisionTTL <= 0 {
		errs = append(errs, errors.New("sampling limits and intervals must be positive"))
	}
	errs = append(errs, c.Window.Validate(), c.Limits.Validate(), c.OTLP.Validate(), c.Histogram.Validate(), c.DogStatsD.Validate(), c.Cluster.validate())
	return errors.Join(errs...)
}

// defineFlags defines every flag of c on fs, with c's values as defaults.
func defineFlags(fs *flag.FlagSet, c *config) {
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:8127", "gRPC listen address")
	defineClusterFlags(fs, &c.Cluster)
	fs.StringVar(&c.AdminListen, "admin-listen", "127.0.0.1:8128", "admin HTTP address serving /metrics; empty disables")
	fs.StringVar(&c.PprofListen, "pprof-listen", "127.0.0.1:6060", "HTTP address serving /debug/pprof/; keep it on localhost; empty disables")
	fs.StringVar(&c.OTLPHTTPListen, "otlp-http-listen", "", "OTLP/HTTP address serving /v1/metrics and /v1/traces, conventionally port 4318; empty disables")
	fs.StringVar(&c.Output, "output", "-", "JSON-lines output without --config: - for stdout, or a file path (appended)")
	fs.StringVar(&c.ConfigFile, "config", "", "TOML file defining upstreams ([[upstream]], default_upstreams); without it, JSON lines go to --output")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "PEM certificate of the gRPC port; with --tls-key, TLS is on")
	fs.StringVar(&c.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&c.TLSClientCA, "tls-client-ca", "", "PEM CA certificates: clients must present a certificate they sign (mTLS)")
	fs.StringVar(&c.TenantsFile, "tenants-file", "", "TOML tenants file; when set, bearer-token authentication is on")
	fs.StringVar(&c.AdminToken, "admin-token", "", "bearer token of the aggd.v1.AdminService; required for it when --tenants-file is set")
	fs.IntVar(&c.MaxTenants, "max-tenants", 1000, "tenants created on demand from x-tenant-id when authentication is off")
	fs.IntVar(&c.MetricsMaxTenants, "metrics-max-tenants", 100, "tenants with series of their own in /metrics, those that accepted most; the rest are summed under tenant=\"_other\" (0: every tenant)")
	fs.Var(byteSize[uint64]{&c.MemoryLimit}, "memory-limit", "memory budget (512MiB, 4Gi, or bytes): past 80 % streams slow down, past 95 % batches are refused (RESOURCE_EXHAUSTED); 0: off")
	fs.StringVar(&c.WALDir, "wal-dir", "", "directory of the write-ahead log and the send queues on disk: a batch is acked once it is logged, and payloads wait on disk until the intake takes them; empty: in memory only")
	fs.StringVar(&c.WALFsync, "wal-fsync", "interval", "interval: a batch is written before its ack and fsynced within a second; always: fsynced before its ack (group commit); never: fsynced when its segment is full")
	fs.StringVar(&c.WALCompression, "wal-compression", "s2", "how the write-ahead log stores batches: s2 (compressed, about 23 bytes a full-name sample) or none (as they came, about 86 bytes a full-name sample: no compressing before each ack, but the kernel copies four times the bytes); logs written either way are read")
	c.QueueMaxBytes = 1 << 30
	fs.Var(byteSize[int64]{&c.QueueMaxBytes}, "queue-max-bytes", "bound (1GiB, or bytes) of each upstream's send queue on disk (with --wal-dir); when full, flushes wait and batches are refused")
	c.MaxRecvMsgSize = 16 << 20
	fs.Var(byteSize[int]{&c.MaxRecvMsgSize}, "max-recv-msg-size", "largest request message (16MiB, or bytes)")
	fs.IntVar(&c.Shards, "shards", 0, "aggregation shards (0: 4 per CPU)")
	fs.StringVar(&c.Hostname, "hostname", c.Hostname, "host of aggd's own aggd.up service checks")
	fs.DurationVar(&c.MaxConnAge, "max-connection-age", 5*time.Minute, "connections older than this get GOAWAY, so clients reconnect through the load balancer (0: never)")
	fs.DurationVar(&c.MaxConnAgeGrace, "max-connection-age-grace", 30*time.Second, "how long a connection past its age may finish its calls")
	fs.DurationVar(&c.MaxStreamAge, "max-stream-age", 5*time.Minute, "a stream older than this ends with Unavailable after its current batch (0: never)")
	fs.DurationVar(&c.KeepaliveTime, "keepalive-time", 2*time.Minute, "ping an idle client after this long")
	fs.DurationVar(&c.KeepaliveTimeout, "keepalive-timeout", 20*time.Second, "close a connection whose ping is unanswered this long")
	fs.DurationVar(&c.KeepaliveMinTime, "keepalive-min-time", 10*time.Second, "clients may ping at most this often (more often: GOAWAY); clients should use a keepalive time of at least this")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 5*time.Second, "how long shutdown waits for streams to end before closing them")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 25*time.Second, "bound on the whole shutdown, final flush included")
	fs.DurationVar(&c.ExportTimeout, "export-timeout", 0, "deadline of one flush's export (0: the interval)")
	fs.DurationVar(&c.FlushSpread, "flush-spread", 0, "longest a flush spends encoding, paced at most 500k aggregates/s so that it does not take a core in a burst (0: a quarter of the interval; negative: not paced)")
	fs.StringVar(&c.OTelTraces, "otel-traces-endpoint", "", "OTLP/gRPC host:port receiving traces of aggd's own flushes and sends; empty: off")
	fs.BoolVar(&c.OTelTracesInsecure, "otel-traces-insecure", false, "send aggd's own traces without TLS")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&c.Window.Interval, "interval", c.Window.Interval, "bucket width and flush period (whole seconds)")
	fs.DurationVar(&c.Window.Rollup, "rollup", 0, "bucket width of timestamped samples, a multiple of interval (0: interval)")
	fs.DurationVar(&c.Window.Grace, "grace", c.Window.Grace, "how long after its end a bucket waits for samples")
	fs.DurationVar(&c.Window.MaxLateness, "max-lateness", c.Window.MaxLateness, "oldest accepted sample timestamp, relative to arrival")
	fs.DurationVar(&c.Window.MaxFuture, "max-future", c.Window.MaxFuture, "furthest accepted future sample timestamp, relative to arrival")
	fs.DurationVar(&c.Window.ContextTTL, "context-ttl", c.Window.ContextTTL, "how long an idle context is kept")
	fs.IntVar(&c.Window.MaxSetSize, "max-set-size", c.Window.MaxSetSize, "distinct members of one set context per bucket")
	fs.DurationVar(&c.Window.LateWindow, "late-window", c.Window.LateWindow, "how long a flushed bucket holding timestamped samples is kept to correct it with late ones (at most max-lateness)")
	fs.DurationVar(&c.Window.CounterExpiry, "counter-expiry", c.Window.CounterExpiry, "how long after its last sample a counter is flushed with 0 each interval (the Agent's dogstatsd_expiry_seconds); 0: off")
	fs.IntVar(&c.Limits.MaxNameLength, "max-name-length", c.Limits.MaxNameLength, "longest metric or check name in bytes")
	fs.IntVar(&c.Limits.MaxTags, "max-tags", c.Limits.MaxTags, "most tags per item")
	fs.IntVar(&c.Limits.MaxTagLength, "max-tag-length", c.Limits.MaxTagLength, "longest tag in bytes")
	fs.IntVar(&c.Limits.MaxHostLength, "max-host-length", c.Limits.MaxHostLength, "longest host in bytes")
	fs.Var(stringList{&c.OTLP.ResourceTags}, "otlp-resource-tags", "resource attributes of OTLP metrics that become tags (\"k8s.*\" matches a prefix); empty: all but --otlp-drop-resource-tags")
	fs.Var(stringList{&c.OTLP.DropResourceTags}, "otlp-drop-resource-tags", "resource attributes of OTLP metrics that never become tags")
	fs.Var(stringList{&c.Histogram.Aggregates}, "histogram-aggregates", "series of histograms and timings among min,max,sum,avg,count,median")
	fs.Var(floatList{&c.Histogram.Percentiles}, "histogram-percentiles", "percentile series of histograms and timings, in (0,1)")
	fs.Var(floatList{&c.SketchPct}, "sketch-percentiles", "percentiles written with each distribution's summary")
	fs.StringVar(&c.DogStatsD.UDP, "dogstatsd-udp", "", "DogStatsD UDP address, such as :8125; empty disables it")
	fs.StringVar(&c.DogStatsD.Socket, "dogstatsd-socket", "", "DogStatsD Unix datagram socket path; empty disables it")
	fs.StringVar(&c.DogStatsDTenant, "dogstatsd-tenant", "default", "tenant of everything the DogStatsD listener receives")
	fs.StringVar(&c.DogStatsD.DefaultHost, "dogstatsd-default-host", "", "host of DogStatsD items that name none, as the Agent stamps its hostname; empty: none")
	fs.IntVar(&c.DogStatsD.Readers, "dogstatsd-readers", 0, "goroutines reading each DogStatsD socket (0: one per CPU)")
	fs.Var(byteSize[int]{&c.DogStatsD.ReceiveBuffer}, "dogstatsd-receive-buffer", "DogStatsD socket receive buffer (8MiB, or bytes; 0: the system's)")
	fs.Var(byteSize[int]{&c.DogStatsD.PacketSize}, "dogstatsd-packet-size", "largest DogStatsD datagram read whole (64KiB, or bytes)")
	fs.StringVar(&c.RulesFile, "rules-file", "", "DataKit aggr.toml of aggregation rules; empty: no rules")
	fs.DurationVar(&c.RulesReload, "rules-reload-interval", time.Minute, "how often the rules file is checked for changes (SIGHUP reloads at once)")
	fs.StringVar(&c.SamplingFile, "sampling-file", "", "DataKit tail-sampling.toml; without it every span is kept")
	fs.DurationVar(&c.SamplingReload, "sampling-reload-interval", time.Minute, "how often the sampling file is checked for changes (SIGHUP reloads at once)")
	fs.IntVar(&c.Sampling.MaxTracesPerTenant, "sampling-max-traces", c.Sampling.MaxTracesPerTenant, "traces held per tenant; new traces past it are decided at once")
	fs.IntVar(&c.Sampling.MaxSpansPerTrace, "sampling-max-spans-per-trace", c.Sampling.MaxSpansPerTrace, "spans held per trace; the trace is decided when it reaches it")
	fs.Var(byteSize[int64]{&c.Sampling.MaxBytes}, "sampling-max-bytes", "memory of all held spans (512MiB, or bytes); new traces past it are decided at once")
	fs.DurationVar(&c.Sampling.DecisionTTL, "sampling-decision-ttl", c.Sampling.DecisionTTL, "how long a trace's decision applies to its late spans")
}

const redacted = "<redacted>"

// effectiveConfig renders the configuration in force as JSON: every flag,
// the upstreams and the tenants, with tokens, keys and header values
// redacted.
func effectiveConfig(cfg config, file *configpkg.File, tenants []configpkg.Tenant) string {
	flags := maps.Clone(cfg.values)
	for _, secret := range []string{"admin-token", "peer-token"} {
		if flags[secret] != "" {
			flags[secret] = redacted
		}
	}
	type upstreamView struct {
		configpkg.Upstream
		APIKey  string            `json:"APIKey,omitempty"`
		Headers map[string]string `json:"Headers,omitempty"`
	}
	var ups []upstreamView
	for _, u := range file.Upstreams {
		v := upstreamView{Upstream: u}
		if u.APIKey != "" {
			v.APIKey = redacted
		}
		for k := range u.Headers {
			if v.Headers == nil {
				v.Headers = map[string]string{}
			}
			v.Headers[k] = redacted
		}
		ups = append(ups, v)
	}
	type tenantView struct {
		ID          string
		Tokens      int
		MaxContexts int64
		Upstreams   []string
	}
	var tvs []tenantView
	for _, t := range tenants {
		tvs = append(tvs, tenantView{ID: t.ID, Tokens: len(t.Tokens), MaxContexts: t.MaxContexts, Upstreams: t.Upstreams})
	}
	var out strings.Builder
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false) // for people reading it through grpcurl
	enc.SetIndent("", "  ")
	enc.Encode(map[string]any{"flags": flags, "default_upstreams": file.DefaultUpstreams, "upstreams": ups, "tenants": tvs})
	return out.String()
}
