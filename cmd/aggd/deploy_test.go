package main

import (
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	configpkg "github.com/aggd/aggd/internal/config"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

const repo = "../.."

// knownFlag reports whether --name or AGGD_NAME is one of aggd's options.
func knownFlag(t *testing.T, name string) bool {
	for _, f := range flagNames(t) {
		if f == name || envName(f) == name {
			return true
		}
	}
	return false
}

// checkArgs checks --flag[=value] arguments and AGGD_ variables against the
// binary's flags, returning them as a flag → value map.
func checkArgs(t *testing.T, where string, args []string, env map[string]string) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, a := range args {
		name, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !knownFlag(t, name) {
			t.Errorf("%s: %q is not an aggd flag", where, a)
		}
		got[name] = v
	}
	for k, v := range env {
		if strings.HasPrefix(k, "AGGD_") {
			if !knownFlag(t, k) {
				t.Errorf("%s: %s is not an aggd variable", where, k)
			}
			got[strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, "AGGD_"), "_", "-"))] = v
		}
	}
	return got
}

func port(addr string) string {
	_, p, _ := strings.Cut(addr, ":")
	return p
}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repo, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	env := map[string]string{}
	for _, m := range regexp.MustCompile(`(AGGD_[A-Z_]+)=(\S+)`).FindAllStringSubmatch(text, -1) {
		env[m[1]] = m[2]
	}
	opts := checkArgs(t, "Dockerfile", nil, env)
	expose := regexp.MustCompile(`(?m)^EXPOSE (.+)$`).FindStringSubmatch(text)
	if expose == nil {
		t.Fatal("no EXPOSE")
	}
	for _, p := range []string{port(opts["listen"]), port(opts["admin-listen"])} {
		if !slices.Contains(strings.Fields(expose[1]), p) {
			t.Errorf("EXPOSE %s lacks the listen port %s", expose[1], p)
		}
	}
	if d := opts["wal-dir"]; d == "" || !strings.Contains(text, "VOLUME "+d) || !strings.Contains(text, "--chown=nonroot:nonroot /out/data "+d) {
		t.Errorf("the image's --wal-dir %q is not a volume the nonroot user owns", d)
	}
	for _, want := range []string{"go build", "./cmd/aggd", "CGO_ENABLED=0", "USER nonroot", `ENTRYPOINT ["/usr/local/bin/aggd"]`} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

type composeFile struct {
	Services map[string]struct {
		Command     []string          `yaml:"command"`
		Environment map[string]string `yaml:"environment"`
		Ports       []string          `yaml:"ports"`
		Volumes     []string          `yaml:"volumes"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

func TestDockerCompose(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repo, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	a, ok := c.Services["aggd"]
	if !ok {
		t.Fatal("no aggd service")
	}
	opts := checkArgs(t, "compose", a.Command, a.Environment)
	for _, p := range []string{port(opts["listen"]), port(opts["admin-listen"]), port(opts["dogstatsd-udp"]) + "/udp", port(opts["otlp-http-listen"])} {
		if !slices.ContainsFunc(a.Ports, func(m string) bool { return strings.HasSuffix(m, ":"+p) }) {
			t.Errorf("compose publishes %v, not %s", a.Ports, p)
		}
	}
	// Every mounted file exists, and every file aggd reads is mounted.
	mounts := map[string]string{}
	for _, v := range append(a.Volumes, append(c.Services["otel-collector"].Volumes, c.Services["prometheus"].Volumes...)...) {
		parts := strings.Split(v, ":")
		if !strings.HasPrefix(parts[0], ".") { // a named volume
			if _, ok := c.Volumes[parts[0]]; !ok {
				t.Errorf("volume %s is not declared", parts[0])
			}
			mounts[parts[1]] = "volume:" + parts[0]
			continue
		}
		if _, err := os.Stat(filepath.Join(repo, parts[0])); err != nil {
			t.Errorf("volume %s: %v", v, err)
		}
		mounts[parts[1]] = filepath.Join(repo, parts[0])
	}
	if d := opts["wal-dir"]; d == "" || !strings.HasPrefix(mounts[d], "volume:") {
		t.Errorf("--wal-dir %q is not on a named volume", d)
	}
	cfgFile, sampling := mounts[opts["config"]], mounts[opts["sampling-file"]]
	if cfgFile == "" || sampling == "" {
		t.Fatalf("--config %s or --sampling-file %s is not mounted", opts["config"], opts["sampling-file"])
	}
	f, err := configpkg.Load(cfgFile, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := spans.LoadPolicy(sampling); err != nil {
		t.Fatal(err)
	}
	// The OTLP upstream points at the collector service and its receiver.
	var otel struct {
		Receivers struct {
			OTLP struct {
				Protocols struct {
					GRPC struct {
						Endpoint string `yaml:"endpoint"`
					} `yaml:"grpc"`
				} `yaml:"protocols"`
			} `yaml:"otlp"`
		} `yaml:"receivers"`
	}
	od, _ := os.ReadFile(filepath.Join(repo, "deploy/compose/otel-collector.yaml"))
	if err := yaml.Unmarshal(od, &otel); err != nil {
		t.Fatal(err)
	}
	if u := f.Upstreams[0]; u.Type != "otlp" || u.Endpoint != "otel-collector:"+port(otel.Receivers.OTLP.Protocols.GRPC.Endpoint) {
		t.Errorf("upstream %+v does not reach the collector's receiver %s", u, otel.Receivers.OTLP.Protocols.GRPC.Endpoint)
	}
	var prom struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	pd, _ := os.ReadFile(filepath.Join(repo, "deploy/compose/prometheus.yml"))
	if err := yaml.Unmarshal(pd, &prom); err != nil {
		t.Fatal(err)
	}
	if tg := prom.ScrapeConfigs[0].StaticConfigs[0].Targets[0]; tg != "aggd:"+port(opts["admin-listen"]) {
		t.Errorf("Prometheus scrapes %s, aggd serves /metrics on %s", tg, opts["admin-listen"])
	}
	if len(prom.RuleFiles) == 0 || !strings.HasSuffix(mounts[prom.RuleFiles[0]], "deploy/helm/aggd/files/aggd-alerts.yaml") {
		t.Errorf("Prometheus's rule files %v are not aggd's alerting rules", prom.RuleFiles)
	}
	// The binary starts with this configuration and passes a health check
	// (the collector need not be up: OTLP connects lazily).
	startedHealthy(t, map[string]string{"config": cfgFile, "sampling-file": sampling, "dogstatsd-udp": opts["dogstatsd-udp"]}, a.Environment, nil)
}

type servicePort struct {
	Port       int    `yaml:"port"`
	TargetPort string `yaml:"targetPort"`
}

// k8sObject is the part of a manifest the tests read.
type k8sObject struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Spec       struct {
		ServiceName string `yaml:"serviceName"`
		Selector    struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		ScaleTargetRef struct {
			Kind, Name string
		} `yaml:"scaleTargetRef"`
		ClusterIP                string        `yaml:"clusterIP"`
		PublishNotReadyAddresses bool          `yaml:"publishNotReadyAddresses"`
		Ports                    []servicePort `yaml:"ports"`
		VolumeClaimTemplates     []struct {
			Metadata struct {
				Name string `yaml:"name"`
			} `yaml:"metadata"`
		} `yaml:"volumeClaimTemplates"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
				Containers                    []struct {
					Name    string   `yaml:"name"`
					Args    []string `yaml:"args"`
					EnvFrom []struct {
						SecretRef *struct{ Name string } `yaml:"secretRef"`
					} `yaml:"envFrom"`
					Env []struct {
						Name      string `yaml:"name"`
						Value     string `yaml:"value"`
						ValueFrom *struct {
							SecretKeyRef     *struct{ Name, Key string } `yaml:"secretKeyRef"`
							ResourceFieldRef *struct {
								ContainerName string `yaml:"containerName"`
								Resource      string `yaml:"resource"`
							} `yaml:"resourceFieldRef"`
						} `yaml:"valueFrom"`
					} `yaml:"env"`
					Ports []struct {
						Name          string `yaml:"name"`
						ContainerPort int    `yaml:"containerPort"`
					} `yaml:"ports"`
					Lifecycle struct {
						PreStop struct {
							Sleep struct {
								Seconds int `yaml:"seconds"`
							} `yaml:"sleep"`
						} `yaml:"preStop"`
					} `yaml:"lifecycle"`
					StartupProbe   probe `yaml:"startupProbe"`
					ReadinessProbe probe `yaml:"readinessProbe"`
					LivenessProbe  probe `yaml:"livenessProbe"`
					Resources      struct {
						Limits map[string]string `yaml:"limits"`
					} `yaml:"resources"`
					VolumeMounts []struct {
						Name      string `yaml:"name"`
						MountPath string `yaml:"mountPath"`
					} `yaml:"volumeMounts"`
				} `yaml:"containers"`
				Volumes []struct {
					Name      string
					EmptyDir  *struct{}              `yaml:"emptyDir"`
					ConfigMap *struct{ Name string } `yaml:"configMap"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type probe struct {
	GRPC *struct {
		Port int `yaml:"port"`
	} `yaml:"grpc"`
}

// kustomizeObjects reads deploy/kubernetes: its resources, and the
// ConfigMap and Secret its generators make from files.
func kustomizeObjects(t *testing.T) map[string]k8sObject {
	var kust struct {
		Resources          []string `yaml:"resources"`
		ConfigMapGenerator []struct {
			Name  string   `yaml:"name"`
			Files []string `yaml:"files"`
		} `yaml:"configMapGenerator"`
		SecretGenerator []struct {
			Name string   `yaml:"name"`
			Envs []string `yaml:"envs"`
		} `yaml:"secretGenerator"`
	}
	dir := filepath.Join(repo, "deploy/kubernetes")
	kd, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(kd, &kust); err != nil {
		t.Fatal(err)
	}
	var docs []string
	for _, r := range kust.Resources {
		data, err := os.ReadFile(filepath.Join(dir, r))
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(data))
	}
	objs := decodeManifests(t, strings.Join(docs, "\n---\n"))
	for _, g := range kust.ConfigMapGenerator {
		cm := k8sObject{Kind: "ConfigMap", Data: map[string]string{}}
		cm.Metadata.Name = g.Name
		for _, f := range g.Files {
			text, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			cm.Data[filepath.Base(f)] = string(text)
		}
		objs["ConfigMap/"+g.Name] = cm
	}
	for _, g := range kust.SecretGenerator {
		sec := k8sObject{Kind: "Secret", StringData: map[string]string{}}
		sec.Metadata.Name = g.Name
		for _, f := range g.Envs {
			text, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			for line := range strings.Lines(string(text)) {
				if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
					k, v, _ := strings.Cut(line, "=")
					sec.StringData[k] = v
				}
			}
		}
		objs["Secret/"+g.Name] = sec
	}
	return objs
}

// decodeManifests decodes multi-document YAML by kind/name.
func decodeManifests(t *testing.T, text string) map[string]k8sObject {
	t.Helper()
	objs := map[string]k8sObject{}
	dec := yaml.NewDecoder(strings.NewReader(text))
	for {
		var o k8sObject
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if o.Kind != "" {
			objs[o.Kind+"/"+o.Metadata.Name] = o
		}
	}
	return objs
}

func TestKubernetesManifests(t *testing.T) {
	checkAndStart(t, kustomizeObjects(t))
}

// TestHelmChart starts aggd as the chart's rendered example runs it
// (deploy/testdata/helm-example.yaml; the deploy module's tests check that
// the chart still renders it, and validate it against the Kubernetes API).
func TestHelmChart(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repo, "deploy/testdata/helm-example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	checkAndStart(t, decodeManifests(t, string(data)))
}

// memoryBytes converts a Kubernetes memory quantity in binary units (as
// the downward API hands it to the container, in bytes).
func memoryBytes(t *testing.T, q string) string {
	t.Helper()
	for i, suffix := range []string{"Ki", "Mi", "Gi", "Ti"} {
		if n, ok := strings.CutSuffix(q, suffix); ok {
			v, err := strconv.ParseUint(n, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return strconv.FormatUint(v<<(10*(i+1)), 10)
		}
	}
	t.Fatalf("memory quantity %q is not in binary units", q)
	return ""
}

// checkAndStart checks the StatefulSet that runs aggd against the binary
// and the other objects, then starts aggd with its files and variables.
func checkAndStart(t *testing.T, objs map[string]k8sObject) {
	t.Helper()
	byKind := map[string][]k8sObject{}
	for _, o := range objs {
		byKind[o.Kind] = append(byKind[o.Kind], o)
	}
	for _, k := range []string{"StatefulSet", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret"} {
		if len(byKind[k]) == 0 {
			t.Fatalf("no %s", k)
		}
	}
	if len(byKind["Deployment"]) > 0 {
		t.Error("a Deployment: the write-ahead log belongs on a StatefulSet's claims")
	}
	sts := byKind["StatefulSet"][0]
	pod := sts.Spec.Template
	c := pod.Spec.Containers[0]
	env := map[string]string{}
	secretEnv := map[string]string{}
	for _, ef := range c.EnvFrom {
		sec, ok := objs["Secret/"+ef.SecretRef.Name]
		if !ok {
			t.Fatalf("envFrom names a missing Secret %s", ef.SecretRef.Name)
		}
		maps.Copy(secretEnv, sec.StringData)
	}
	for _, e := range c.Env {
		env[e.Name] = e.Value
		switch {
		case e.ValueFrom == nil:
		case e.ValueFrom.SecretKeyRef != nil:
			v, ok := objs["Secret/"+e.ValueFrom.SecretKeyRef.Name].StringData[e.ValueFrom.SecretKeyRef.Key]
			if !ok {
				t.Errorf("env %s names a missing Secret key", e.Name)
			}
			secretEnv[e.Name] = v
		case e.ValueFrom.ResourceFieldRef != nil:
			r := e.ValueFrom.ResourceFieldRef
			limit, ok := strings.CutPrefix(r.Resource, "limits.")
			if !ok || r.ContainerName != c.Name || c.Resources.Limits[limit] == "" {
				t.Fatalf("env %s takes %s of container %s, which has no such limit", e.Name, r.Resource, r.ContainerName)
			}
			env[e.Name] = memoryBytes(t, c.Resources.Limits[limit])
		}
	}
	if env["AGGD_MEMORY_LIMIT"] == "" || env["AGGD_MEMORY_LIMIT"] != env["GOMEMLIMIT"] {
		t.Errorf("the memory budget %q and GOMEMLIMIT %q are not the container's limit", env["AGGD_MEMORY_LIMIT"], env["GOMEMLIMIT"])
	}
	if secretEnv["AGGD_ADMIN_TOKEN"] == "" {
		t.Error("no admin token in the pod's Secret variables")
	}
	opts := checkArgs(t, "StatefulSet", c.Args, maps.Collect(func(yield func(string, string) bool) {
		for k, v := range env {
			yield(k, v)
		}
		for k, v := range secretEnv {
			yield(k, v)
		}
	}))
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	listen := strconv.Itoa(ports["grpc"])
	if port(opts["listen"]) != listen || port(opts["admin-listen"]) != strconv.Itoa(ports["admin"]) || port(opts["dogstatsd-udp"]) != strconv.Itoa(ports["dogstatsd"]) ||
		port(opts["otlp-http-listen"]) != strconv.Itoa(ports["otlp-http"]) {
		t.Errorf("container ports %v, aggd listens on %s, %s, %s and %s", ports, opts["listen"], opts["admin-listen"], opts["dogstatsd-udp"], opts["otlp-http-listen"])
	}
	for _, p := range []probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
		if p.GRPC == nil || strconv.Itoa(p.GRPC.Port) != listen {
			t.Errorf("probe %+v is not a gRPC probe of aggd's port %s", p.GRPC, listen)
		}
	}
	shutdown, err := time.ParseDuration(opts["shutdown-timeout"])
	preStop := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	if err != nil || preStop == 0 || time.Duration(pod.Spec.TerminationGracePeriodSeconds)*time.Second <= preStop+shutdown+5*time.Second {
		t.Errorf("terminationGracePeriodSeconds %d is not comfortably longer than the preStop sleep %v plus --shutdown-timeout %s", pod.Spec.TerminationGracePeriodSeconds, preStop, opts["shutdown-timeout"])
	}
	// Every file aggd reads comes from a mounted ConfigMap; the
	// write-ahead log is on the StatefulSet's claim.
	files := map[string]string{} // path in the pod → contents
	walOnClaim := false
	for _, m := range c.VolumeMounts {
		for _, v := range pod.Spec.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil {
				cm, ok := objs["ConfigMap/"+v.ConfigMap.Name]
				if !ok {
					t.Fatalf("volume %s names a missing ConfigMap %s", v.Name, v.ConfigMap.Name)
				}
				for k, text := range cm.Data {
					files[m.MountPath+"/"+k] = text
				}
			}
		}
		for _, vc := range sts.Spec.VolumeClaimTemplates {
			walOnClaim = walOnClaim || (vc.Metadata.Name == m.Name && m.MountPath == opts["wal-dir"] && opts["wal-dir"] != "")
		}
	}
	if !walOnClaim {
		t.Errorf("--wal-dir %q is not on a volume claim", opts["wal-dir"])
	}
	tmp := t.TempDir()
	local := map[string]string{}
	for _, flag := range []string{"config", "tenants-file", "sampling-file"} {
		text, ok := files[opts[flag]]
		if !ok {
			t.Fatalf("--%s %s is not mounted", flag, opts[flag])
		}
		local[flag] = filepath.Join(tmp, flag+".toml")
		os.WriteFile(local[flag], []byte(text), 0o600)
	}
	// Selectors match the pod; the autoscaler targets the StatefulSet,
	// which leaves the replica count to it.
	for _, o := range append(byKind["PodDisruptionBudget"], sts) {
		for lk, lv := range o.Spec.Selector.MatchLabels {
			if pod.Metadata.Labels[lk] != lv {
				t.Errorf("%s selector %s=%s does not match the pod", o.Kind, lk, lv)
			}
		}
	}
	if _, ok := objs["Service/"+sts.Spec.ServiceName]; !ok {
		t.Errorf("the StatefulSet's Service %q is missing", sts.Spec.ServiceName)
	}
	for _, svc := range byKind["Service"] {
		for _, p := range svc.Spec.Ports {
			if _, ok := ports[p.TargetPort]; !ok {
				t.Errorf("Service %s targets port %q the container does not name", svc.Metadata.Name, p.TargetPort)
			}
		}
	}
	checkClusterMode(t, objs, opts, ports)
	if h := byKind["HorizontalPodAutoscaler"][0].Spec.ScaleTargetRef; h.Kind != "StatefulSet" || h.Name != sts.Metadata.Name {
		t.Errorf("HPA targets %s/%s", h.Kind, h.Name)
	}
	// The binary starts with the mounted files and the Secret's variables,
	// the Datadog URL pointed at a loopback intake, and passes a health check.
	intake := upstreamtest.NewDatadogIntake(t)
	cfgText, _ := os.ReadFile(local["config"])
	os.WriteFile(local["config"], []byte(strings.ReplaceAll(string(cfgText), "https://api.datadoghq.com", intake.URL)), 0o600)
	startedHealthy(t, local, env, secretEnv)
}

// checkClusterMode checks, when the manifests run cluster mode with a
// headless Service for members, that the Service lists every pod, ready
// or not, on the port the pods serve peers on, and that the pods name
// themselves by their address on that port and carry a peer token.
func checkClusterMode(t *testing.T, objs map[string]k8sObject, opts map[string]string, ports map[string]int) {
	t.Helper()
	dns := opts["peers-dns"]
	if dns == "" {
		return
	}
	host, port, err := net.SplitHostPort(dns)
	if err != nil {
		t.Fatalf("--peers-dns %q: %v", dns, err)
	}
	if p := strconv.Itoa(ports["peer"]); port != p || opts["peer-listen"] != ":"+p || opts["peer-advertise"] != "$(POD_IP):"+p {
		t.Errorf("peer port %s: --peers-dns %s, --peer-listen %s, --peer-advertise %s", p, dns, opts["peer-listen"], opts["peer-advertise"])
	}
	svc, ok := objs["Service/"+host]
	if !ok {
		t.Fatalf("--peers-dns names a missing Service %s", host)
	}
	if svc.Spec.ClusterIP != "None" || !svc.Spec.PublishNotReadyAddresses {
		t.Errorf("Service %s is not headless with every pod listed (clusterIP %q, publishNotReadyAddresses %v)", host, svc.Spec.ClusterIP, svc.Spec.PublishNotReadyAddresses)
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p servicePort) bool { return p.TargetPort == "peer" && strconv.Itoa(p.Port) == port }) {
		t.Errorf("Service %s ports %+v lack the peer port %s", host, svc.Spec.Ports, port)
	}
	if opts["peer-token"] == "" {
		t.Error("cluster mode without a peer token")
	}
}

// startedHealthy runs aggd with opts (files) and env, on loopback ports,
// and checks that its health service answers SERVING.
func startedHealthy(t *testing.T, opts, env, extraEnv map[string]string) {
	t.Helper()
	all := map[string]string{}
	for k, v := range env {
		all[k] = v
	}
	for k, v := range extraEnv {
		all[k] = v
	}
	// Loopback ports instead of the deployment's, and a directory of the
	// test's.
	for _, k := range []string{"AGGD_LISTEN", "AGGD_ADMIN_LISTEN"} {
		delete(all, k)
	}
	loopback := map[string]string{"AGGD_DOGSTATSD_UDP": freeUDP(t), "AGGD_OTLP_HTTP_LISTEN": "127.0.0.1:0", "AGGD_PEER_LISTEN": "127.0.0.1:0"}
	for k, v := range loopback {
		if _, ok := all[k]; ok {
			all[k] = v
		}
	}
	for _, flag := range []string{"dogstatsd-udp", "otlp-http-listen"} {
		if _, ok := opts[flag]; ok {
			opts[flag] = loopback[envName(flag)]
		}
	}
	if _, ok := all["AGGD_WAL_DIR"]; ok {
		all["AGGD_WAL_DIR"] = t.TempDir()
	}
	var args []string
	for k, v := range opts {
		args = append(args, "--"+k+"="+v)
	}
	in := startAggdEnv(t, func(k string) string { return all[k] }, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(in.conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", resp, err)
	}
}
