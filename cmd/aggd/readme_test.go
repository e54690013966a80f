package main

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
)

func readme(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestReadmeGrpcurlList checks the README's `grpcurl … list` against the
// services a running aggd lists through reflection, as grpcurl asks.
func TestReadmeGrpcurlList(t *testing.T) {
	m := regexp.MustCompile("(?s)\\$ grpcurl -plaintext localhost:8127 list\n(.*?)\n\n").FindStringSubmatch(readme(t))
	if m == nil {
		t.Fatal("the README has no grpcurl list session")
	}
	in := startAggd(t)
	stream, err := reflectionpb.NewServerReflectionClient(in.conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	var served []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		served = append(served, s.Name)
	}
	slices.Sort(served) // grpcurl sorts them
	if got := strings.Split(m[1], "\n"); !slices.Equal(got, served) {
		t.Errorf("the README lists\n%s\naggd serves\n%s", m[1], strings.Join(served, "\n"))
	}
}

// TestReadmeGrpcurlInstall checks that the README's install line pins the
// grpcurl that tools/go.mod pins.
func TestReadmeGrpcurlInstall(t *testing.T) {
	mod, err := os.ReadFile(filepath.Join(repo, "tools/go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	v := regexp.MustCompile(`github.com/fullstorydev/grpcurl (v\S+)`).FindStringSubmatch(string(mod))
	if v == nil {
		t.Fatal("tools/go.mod does not pin grpcurl")
	}
	if want := "go install github.com/fullstorydev/grpcurl/cmd/grpcurl@" + v[1]; !strings.Contains(readme(t), want) {
		t.Errorf("the README lacks %q", want)
	}
}

// TestReadmePorts checks that the README's table of ports lists every
// address aggd binds by default and every listener flag.
func TestReadmePorts(t *testing.T) {
	text := readme(t)
	i := strings.Index(text, "| port | listener |")
	if i < 0 {
		t.Fatal("the README has no table of ports")
	}
	table := text[i:]
	table = table[:strings.Index(table, "\n\n")]
	for _, name := range flagNames(t) {
		if !strings.HasSuffix(name, "listen") && !strings.HasPrefix(name, "dogstatsd-udp") {
			continue
		}
		def := flagDefault(t, name)
		row := regexp.MustCompile("(?m)^\\| ([^|]*) \\|.*`--" + regexp.QuoteMeta(name) + "`.*$").FindStringSubmatch(table)
		if row == nil {
			t.Errorf("the ports table has no row for --%s", name)
			continue
		}
		if def != "" && !strings.Contains(row[1], port(def)) {
			t.Errorf("the ports table gives --%s port %q, its default is %s", name, row[1], def)
		}
		if def == "" && !strings.Contains(row[0], "off by default") {
			t.Errorf("the ports table does not say --%s is off by default", name)
		}
	}
}

// flagDefault returns the default of --name.
func flagDefault(t *testing.T, name string) string {
	t.Helper()
	fs := flag.NewFlagSet("aggd", flag.ContinueOnError)
	var c config
	defineFlags(fs, &c)
	f := fs.Lookup(name)
	if f == nil {
		t.Fatalf("no flag --%s", name)
	}
	return f.DefValue
}
