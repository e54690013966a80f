package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	configpkg "github.com/aggd/aggd/internal/config"
	"github.com/aggd/aggd/internal/rules"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/upstream"
)

// environ lists the process's environment, for the check of AGGD_
// variables.
var environ = os.Environ

// checkEnviron reports AGGD_ variables that are no flag's, such as a
// mistyped AGGD_MAX_TAG, naming the closest one.
func checkEnviron(env []string) error {
	fs := flag.NewFlagSet("aggd", flag.ContinueOnError)
	var c config
	defineFlags(fs, &c)
	known := map[string]bool{}
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		known[envName(f.Name)] = true
		names = append(names, envName(f.Name))
	})
	var errs []error
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "AGGD_") || known[k] {
			continue
		}
		best := slices.MinFunc(names, func(a, b string) int { return distance(k, a) - distance(k, b) })
		if distance(k, best) <= 3 {
			errs = append(errs, fmt.Errorf("%s is not an aggd variable (%s?)", k, best))
		} else {
			errs = append(errs, fmt.Errorf("%s is not an aggd variable", k))
		}
	}
	return errors.Join(errs...)
}

// distance is the Levenshtein distance of a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// validate is aggd validate: it checks the flags, the environment and
// every file they name as aggd would at start, without starting, and
// lists every problem.
func validate(args []string, getenv func(string) string, stdout io.Writer) error {
	var errs []error
	errs = append(errs, checkEnviron(environ()))
	cfg, err := parseConfig(args, getenv, stdout)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		errs = append(errs, err)
	}
	var tenantCfgs []configpkg.Tenant
	if cfg.TenantsFile != "" {
		tenantCfgs, err = configpkg.LoadTenants(cfg.TenantsFile, getenv)
		errs = append(errs, err)
		if _, err := service.NewTenants(service.TenantsConfig{Tenants: configpkg.ServiceTenants(tenantCfgs), Auth: true, MaxTenants: cfg.MaxTenants}); err != nil {
			errs = append(errs, fmt.Errorf("tenants file: %w", err))
		}
	}
	if cfg.ConfigFile != "" {
		file, err := configpkg.Load(cfg.ConfigFile, getenv)
		errs = append(errs, err)
		if file != nil {
			sh := configpkg.Shared{Histogram: cfg.Histogram, SketchPercentiles: cfg.SketchPct, Metrics: nopMetrics{},
				Log: slog.New(slog.DiscardHandler), Stdout: io.Discard, InstanceID: instanceID(cfg)}
			var ups []upstream.Upstream
			var defaults []string
			for _, u := range file.Upstreams {
				if u.Type == "jsonlines" {
					u.Path = "-" // building it would create its file
				}
				built, closer, err := u.Build(sh)
				errs = append(errs, err)
				if err == nil {
					ups = append(ups, built)
					closer()
				}
				defaults = append(defaults, u.Name)
			}
			if len(file.DefaultUpstreams) > 0 {
				defaults = file.DefaultUpstreams
			}
			routes, err := configpkg.Routes(tenantCfgs)
			errs = append(errs, err)
			if err == nil && len(ups) == len(file.Upstreams) {
				_, err := upstream.NewRouter(ups, defaults, routes)
				errs = append(errs, err)
			}
		}
	}
	if cfg.RulesFile != "" {
		_, err := rules.Load(cfg.RulesFile)
		errs = append(errs, err)
	}
	if cfg.SamplingFile != "" {
		_, err := spans.LoadPolicy(cfg.SamplingFile)
		errs = append(errs, err)
	}
	if _, err := serverTLS(cfg); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintln(stdout, "error:", line)
		}
		return errors.New("the configuration is not valid")
	}
	fmt.Fprintln(stdout, "the configuration is valid")
	return nil
}

// nopMetrics discards what the upstreams validate builds would report.
type nopMetrics struct{}

func (nopMetrics) Sent(string, int, time.Duration) {}
func (nopMetrics) Failed(string, string)           {}
func (nopMetrics) Lost(string, string, int)        {}
func (nopMetrics) Queue(string, int, int)          {}
func (nopMetrics) Started(string, int, int64)      {}
