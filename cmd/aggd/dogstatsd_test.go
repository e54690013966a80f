package main

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// freeUDP returns a loopback UDP address nothing listens on now.
func freeUDP(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

func TestDogStatsDListenerEndToEnd(t *testing.T) {
	addr := freeUDP(t)
	in := startAggd(t, "--dogstatsd-udp", addr, "--dogstatsd-tenant", "statsd-team", "--interval", "1h", "--context-ttl", "3h")
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("dsd.c:2|c|#env:prod\ndsd.c:3|c|#env:prod\ndsd.g:5|g\nbroken\n_sc|dsd.check|1|m:degraded"))
	conn.Close()
	deadline := time.Now().Add(30 * time.Second) // only a hang reaches it
	for metric(scrape(t, in.admin), `aggd_dogstatsd_lines_total{tenant="statsd-team"}`) < 5 {
		if time.Now().After(deadline) {
			t.Fatal("the listener did not read the datagram")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if v := metric(scrape(t, in.admin), `aggd_items_rejected_total{reason="malformed",tenant="statsd-team"}`); v != 1 {
		t.Errorf("malformed lines counted: %v", v)
	}
	got := map[string]any{}
	for _, l := range in.stop(t) {
		if l["tenant"] != "statsd-team" {
			continue
		}
		got[l["name"].(string)] = l["value"]
		if l["kind"] == "service_check" && l["name"] == "dsd.check" {
			got["check"] = l["message"]
		}
	}
	if got["dsd.c"] != 5.0 || got["dsd.g"] != 5.0 || got["check"] != "degraded" {
		t.Fatalf("flushed %v", got)
	}
}

func TestDogStatsDUnixSocketFlag(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "dsd.sock")
	in := startAggd(t, "--dogstatsd-socket", sock)
	conn, err := net.Dial("unixgram", sock)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("uds.c:4|c"))
	conn.Close()
	deadline := time.Now().Add(30 * time.Second) // only a hang reaches it
	for metric(scrape(t, in.admin), `aggd_dogstatsd_lines_total{tenant="default"}`) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no line read")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, l := range in.stop(t) {
		if l["name"] == "uds.c" && l["value"] == 4.0 {
			return
		}
	}
	t.Fatal("uds.c not flushed")
}
