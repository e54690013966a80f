package telemetry

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// version is aggd's release. Release builds set it with
// -ldflags "-X github.com/aggd/aggd/internal/telemetry.version=…"; the
// default is the release this tree is, the Helm chart's appVersion.
var version = "0.1.0"

// Build describes the running binary.
type Build struct {
	Version   string // aggd's release
	Revision  string // the VCS commit it was built from, if recorded
	GoVersion string
}

// BuildInfo returns what the binary records of its build.
func BuildInfo() Build {
	b := Build{Version: version, GoVersion: runtime.Version()}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				b.Revision = s.Value
			}
		}
	}
	return b
}

// String is the line aggd --version prints.
func (b Build) String() string {
	s := "aggd " + b.Version
	if b.Revision != "" {
		s += " (" + b.Revision + ")"
	}
	return s + " " + b.GoVersion
}

// RegisterBuildInfo registers aggd_build_info, 1, labelled with b.
func RegisterBuildInfo(reg prometheus.Registerer, b Build) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "aggd_build_info", Help: "1, labelled with aggd's version, VCS revision and Go version.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion}})
	g.Set(1)
	reg.MustRegister(g)
}
