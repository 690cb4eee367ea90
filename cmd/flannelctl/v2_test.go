package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/etcdv2store"
)

// startV2Etcd runs the system's etcd (≤ 3.5, which still has the v2 API
// behind --enable-v2) on 127.0.0.1 and returns its client URL; the test
// is skipped without one.
func startV2Etcd(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("no etcd binary (≤ 3.5) for the v2 API")
	}
	port := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	client, peer := fmt.Sprintf("http://127.0.0.1:%d", port()), fmt.Sprintf("http://127.0.0.1:%d", port())
	dir := t.TempDir()
	logf, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--name", "fo", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "fo="+peer, "--enable-v2", "--unsafe-no-fsync")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	// A loaded 2-core machine (the whole suite runs packages in
	// parallel) has taken more than 15 s to bring etcd up.
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(client + "/v2/keys/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return client
			}
			if resp.StatusCode == http.StatusNotFound {
				t.Skip("this etcd has no v2 API")
			}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logf.Name())
			t.Skipf("etcd exited (no --enable-v2 in this version?):\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("etcd not ready: %v\n%s", err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// v2Key reads a key the way `curl …/v2/keys/KEY` does.
func v2Key(t *testing.T, base, key string) (value string, ttl int64, found bool) {
	t.Helper()
	resp, err := http.Get(base + "/v2/keys" + key)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return "", 0, false
	}
	var r struct {
		Node struct {
			Value string
			TTL   int64
		}
	}
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("GET %s: %v: %s", key, err, b)
	}
	return r.Node.Value, r.Node.TTL, true
}

func TestEtcdV2(t *testing.T) {
	base := startV2Etcd(t)
	c := cli{t: t, env: map[string]string{"FLANNELD_ETCD_ENDPOINTS": base}}
	cfg := `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`

	// A tutorial-era cluster: the config written with the v2 API.
	req, _ := http.NewRequest(http.MethodPut, base+"/v2/keys/coreos.com/network/config", strings.NewReader(url.Values{"value": {cfg}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	out, errOut, err := c.run("", "config", "get")
	if err != nil || strings.TrimSpace(out) != cfg || !strings.Contains(errOut, "using the etcd v2 API") {
		t.Errorf("auto: config get = %q (%v), stderr %q; want the v2 config and a note", out, err, errOut)
	}
	if err := c.fails("config", "get", "--etcd-api=v3"); !strings.Contains(err, "no network config") {
		t.Errorf("--etcd-api=v3 sees no v2 config: %s", err)
	}

	c.ok("leases", "reserve", "10.5.7.0/24", "192.168.1.7", "--etcd-api=v2")
	v, ttl, found := v2Key(t, base, "/coreos.com/network/subnets/10.5.7.0-24")
	if !found || ttl != 0 || v != `{"PublicIP":"192.168.1.7","PublicIPv6":null}` {
		t.Errorf("v2 reservation: found %v, ttl %d, value %s", found, ttl, v)
	}
	row := rowOf(t, c.ok("leases", "list"), "10.5.7.0/24")
	if row[1] != "192.168.1.7" || row[3] != "never" || row[4] != "yes" {
		t.Errorf("v2 list row %q", row)
	}
	// A v2 lease (a key with a TTL) becomes its host's reservation.
	s2, err := etcdv2store.New(etcdv2store.Options{Endpoints: []string{base}})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	attrs := lease.Attrs{PublicIP: netip.MustParseAddr("192.168.1.8"), BackendType: "host-gw"}
	if _, err := s2.Create(context.Background(), lease.Lease{Subnet: netip.MustParsePrefix("10.5.8.0/24"), Attrs: attrs}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if out := c.ok("leases", "reserve", "10.5.8.0/24", "192.168.1.8"); !strings.Contains(out, "now its reservation") {
		t.Errorf("v2 conversion: %q", out)
	}
	if v, ttl, _ := v2Key(t, base, "/coreos.com/network/subnets/10.5.8.0-24"); ttl != 0 || !strings.Contains(v, `"BackendType":"host-gw"`) {
		t.Errorf("converted v2 key: ttl %d, value %s", ttl, v)
	}

	c.ok("leases", "release", "10.5.7.0-24")
	if _, _, found := v2Key(t, base, "/coreos.com/network/subnets/10.5.7.0-24"); found {
		t.Error("release left the v2 key")
	}
}
