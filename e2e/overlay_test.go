package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/ns"
)

var backends = []string{"vxlan", "host-gw"}

// Every container pings every other, for each kernel backend.
func TestPingMatrix(t *testing.T) {
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			l := startLab(t, labOpts(t, 3, backendConfig(b)))
			assertAllPairsPing(t, l)
		})
	}
}

func assertAllPairsPing(t *testing.T, l *lab.Lab) {
	t.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	for _, from := range l.Hosts {
		for _, to := range l.Hosts {
			if from == to {
				continue
			}
			wg.Go(func() {
				got, out, err := l.Ping(ctx, from, to.Container, 3, 200*time.Millisecond)
				if err != nil || got != 3 {
					t.Errorf("ping %s (%s) → %s (%s): %d/3 answered: %v\n%s", from.Name, from.Container, to.Name, to.Container, got, err, out)
				}
			})
		}
	}
	wg.Wait()
}

// The etcd keys and values, subnet.env and devices have upstream's form.
func TestUpstreamFormats(t *testing.T) {
	l := startLab(t, labOpts(t, 2, backendConfig("vxlan")))
	cli, err := l.Etcd()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "/coreos.com/network/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != len(l.Hosts) {
		t.Fatalf("got %d subnet keys, want one per host (%d)", len(resp.Kvs), len(l.Hosts))
	}
	keyRE := regexp.MustCompile(`^/coreos\.com/network/subnets/10\.5\.(\d+)\.0-24$`)
	valRE := regexp.MustCompile(`^\{"PublicIP":"(192\.168\.100\.\d+)","PublicIPv6":null,"BackendType":"vxlan","BackendData":\{"VNI":1,"VtepMAC":"([0-9a-f]{2}(:[0-9a-f]{2}){5})"\}\}$`)
	byIP := map[string]string{}
	for _, kv := range resp.Kvs {
		if !keyRE.Match(kv.Key) {
			t.Errorf("key %q does not have upstream's form <prefix>/subnets/10.5.N.0-24", kv.Key)
		}
		m := valRE.FindStringSubmatch(string(kv.Value))
		if m == nil {
			t.Errorf("value of %s = %s; want upstream's {\"PublicIP\":…,\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":…}}", kv.Key, kv.Value)
			continue
		}
		if kv.Lease == 0 {
			t.Errorf("%s has no etcd lease (TTL)", kv.Key)
		} else {
			ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease))
			if err != nil {
				t.Fatal(err)
			}
			if ttl.GrantedTTL != 86400 {
				t.Errorf("%s: granted TTL %d s, want 86400", kv.Key, ttl.GrantedTTL)
			}
		}
		byIP[m[1]] = strings.TrimPrefix(string(kv.Key), "/coreos.com/network/subnets/")
	}
	for _, h := range l.Hosts {
		key, ok := byIP[h.Addr.String()]
		if !ok {
			t.Errorf("no lease with PublicIP %s", h.Addr)
			continue
		}
		b, err := os.ReadFile(l.SubnetFile(h))
		if err != nil {
			t.Fatal(err)
		}
		sn := netip.MustParsePrefix(strings.Replace(key, "-", "/", 1))
		want := fmt.Sprintf("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=%s/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", sn.Addr().Next())
		if string(b) != want {
			t.Errorf("%s subnet.env:\n%s\nwant:\n%s", h.Name, b, want)
		}
		st, _ := os.Stat(l.SubnetFile(h))
		if st.Mode().Perm() != 0o644 {
			t.Errorf("%s subnet.env mode %v, want 0644", h.Name, st.Mode().Perm())
		}
		hn, _ := ns.Open(h.NS)
		out, err := hn.Run(ctx, "ip", "-d", "link", "show", "flannel.1")
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range []string{"mtu 1450", "vxlan id 1", "local " + h.Addr.String(), "dev eth0"} {
			if !strings.Contains(out, w) {
				t.Errorf("%s: `ip -d link show flannel.1` lacks %q:\n%s", h.Name, w, out)
			}
		}
		out, _ = hn.Run(ctx, "ip", "-4", "addr", "show", "flannel.1")
		if !strings.Contains(out, "inet "+sn.Addr().String()+"/32") {
			t.Errorf("%s: flannel.1 should hold %s/32:\n%s", h.Name, sn.Addr(), out)
		}
	}
}

// SIGKILL and restart one flanneld: it keeps its subnet, and pings at 10/s
// across it are never lost, for each kernel backend.
func TestRestartLosesNoPing(t *testing.T) {
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			l := startLab(t, labOpts(t, 2, backendConfig(b)))
			h1, h2 := l.Hosts[0], l.Hosts[1]
			before := h1.Subnet
			ctx := context.Background()
			type result struct {
				got int
				out string
			}
			// 40 pings at 10/s in both directions while h1's flanneld is
			// killed and restarted.
			res := make(chan result, 2)
			for _, p := range [][2]*lab.Host{{h1, h2}, {h2, h1}} {
				go func() {
					got, out, _ := l.Ping(ctx, p[0], p[1].Container, 40, 100*time.Millisecond)
					res <- result{got, out}
				}()
			}
			time.Sleep(500 * time.Millisecond) // let pings run before the kill: this is the scenario, not synchronisation
			readyBefore := countReady(t, l, h1)
			if err := l.StopFlanneld(h1, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if err := l.StartFlanneld(h1); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 20*time.Second, "restarted flanneld to become ready", func() bool { return countReady(t, l, h1) > readyBefore })
			if err := l.WaitSubnet(ctx, h1, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if h1.Subnet != before {
				t.Errorf("subnet changed across restart: %s → %s", before, h1.Subnet)
			}
			for range 2 {
				r := <-res
				if r.got != 40 {
					t.Errorf("lost pings across the restart: %d/40 answered\n%s", r.got, r.out)
				}
			}
		})
	}
}

// A host that is gone and whose lease is deleted disappears from the
// others' routes.
func TestDeletedLeaseRemovesRoutes(t *testing.T) {
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			l := startLab(t, labOpts(t, 3, backendConfig(b)))
			h1, h3 := l.Hosts[0], l.Hosts[2]
			ctx := context.Background()
			hn, _ := ns.Open(h1.NS)
			hasRoute := func() bool {
				out, err := hn.Run(ctx, "ip", "-4", "route", "show", h3.Subnet.String())
				return err == nil && strings.TrimSpace(out) != ""
			}
			if !hasRoute() {
				t.Fatalf("h1 has no route to h3's subnet %s before the test", h3.Subnet)
			}
			if err := l.StopFlanneld(h3, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			cli, err := l.Etcd()
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			key := fmt.Sprintf("/coreos.com/network/subnets/%s-%d", h3.Subnet.Addr(), h3.Subnet.Bits())
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			resp, err := cli.Delete(dctx, key)
			cancel()
			if err != nil || resp.Deleted != 1 {
				t.Fatalf("delete %s: %v (deleted %d)", key, err, resp.Deleted)
			}
			waitFor(t, 2*time.Second, "h1 to drop its route to h3's subnet", func() bool { return !hasRoute() })
			assertNoPeerState(t, hn, h3)
		})
	}
}

func assertNoPeerState(t *testing.T, hn *ns.NS, gone *lab.Host) {
	t.Helper()
	ctx := context.Background()
	out, _ := hn.Run(ctx, "ip", "-4", "neigh", "show", "dev", "flannel.1")
	if strings.Contains(out, gone.Subnet.Addr().String()+" ") {
		t.Errorf("neighbour entry for %s left behind:\n%s", gone.Subnet.Addr(), out)
	}
	out, _ = hn.Run(ctx, "bridge", "fdb", "show", "dev", "flannel.1")
	if strings.Contains(out, "dst "+gone.Addr.String()+" ") {
		t.Errorf("fdb entry for %s left behind:\n%s", gone.Addr, out)
	}
}

// countReady counts flanneld's "ready" log lines on h.
func countReady(t *testing.T, l *lab.Lab, h *lab.Host) int {
	b, _ := os.ReadFile(l.LogFile(h))
	return strings.Count(string(b), "msg=ready")
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var _ = json.Marshal
