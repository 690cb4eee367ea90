package fastpath

import (
	"net/netip"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/ns"
)

// bridgeHost moves h's container onto a bridge "cbr0" that holds the
// gateway address, as docker0 or cni0 does, and plugs another container
// (returned) into it at .3.
func bridgeHost(t *testing.T, h *host) (*ns.NS, netip.Addr) {
	t.Helper()
	n := h.ns.Name
	gw := netip.PrefixFrom(h.subnet.Addr().Next(), 24).String()
	// A fixed MAC, as Docker gives docker0: a bridge that takes its
	// ports' lowest changes it when a port goes, and the kernel then
	// flushes the bridge's neighbours.
	netnstest.Run(t, "ip", "-n", n, "link", "add", "cbr0", "address", "02:42:0a:4d:00:01", "mtu", "1472", "type", "bridge")
	netnstest.Run(t, "ip", "-n", n, "addr", "del", gw, "dev", "ctr")
	netnstest.Run(t, "ip", "-n", n, "link", "set", "ctr", "master", "cbr0")
	netnstest.Run(t, "ip", "-n", n, "addr", "add", gw, "dev", "cbr0")
	netnstest.Run(t, "ip", "-n", n, "link", "set", "cbr0", "up")
	ctr2 := netnstest.New(t, "ffpc")
	addr2 := h.subnet.Addr().Next().Next().Next()
	netnstest.Run(t, "ip", "-n", n, "link", "add", "ctr2", "mtu", "1472", "type", "veth", "peer", "name", "eth0", "mtu", "1472", "netns", ctr2.Name)
	netnstest.Run(t, "ip", "-n", n, "link", "set", "ctr2", "master", "cbr0", "up")
	netnstest.Run(t, "ip", "-n", ctr2.Name, "addr", "add", netip.PrefixFrom(addr2, 24).String(), "dev", "eth0")
	netnstest.Run(t, "ip", "-n", ctr2.Name, "link", "set", "eth0", "up")
	netnstest.Run(t, "ip", "-n", ctr2.Name, "route", "add", "default", "via", h.subnet.Addr().Next().String())
	return ctr2, addr2
}

// waitEndpoints waits until the watch has scanned a state for which ok
// holds.
func waitEndpoints(t *testing.T, dp *Datapath, what string, ok func(map[netip.Addr]Endpoint) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		next := dp.eps.syncedChan()
		got, err := dp.Endpoints()
		if err != nil {
			t.Fatal(err)
		}
		if ok(got) {
			return
		}
		select {
		case <-next:
		case <-deadline:
			t.Fatalf("endpoints never %s: %v", what, got)
		}
	}
}

// TestDirectDelivery: a container on h2's bridge receives from h1 through
// bpf_redirect_peer (its counter says so), a container removed loses its
// entry, and h1's container, on no bridge, is reached through flannel0.
func TestDirectDelivery(t *testing.T) {
	hs := twoHosts(t)
	h1, h2 := hs[0], hs[1]
	for _, h := range hs {
		h.dp = h.open(t)
		t.Cleanup(func() { h.dp.Close() })
		if err := h.dp.SetPeers(peersOf(hs, h)); err != nil {
			t.Fatal(err)
		}
	}
	// The bridge comes after flanneld, as docker0 does (dockerd reads
	// subnet.env).
	_, addr2 := bridgeHost(t, h2)

	// The first packets take flannel0; the kernel's ARP for them puts
	// the containers in the bridge's neighbour table.
	mustPing(t, h1.ctr, h2.ctrAddr)
	mustPing(t, h1.ctr, addr2)
	waitEndpoints(t, h2.dp, "list both containers", func(m map[netip.Addr]Endpoint) bool {
		_, ok1 := m[h2.ctrAddr]
		_, ok2 := m[addr2]
		return ok1 && ok2
	})
	eps, _ := h2.dp.Endpoints()
	t.Logf("h2 endpoints %v", eps)
	if n, _ := h1.dp.Endpoints(); len(n) != 0 {
		t.Errorf("h1, without a bridge, has endpoints %v", n)
	}

	before := counters(t, h2)
	mustPing(t, h1.ctr, addr2)
	d := transfer(t, h1, h2, 64<<20)
	t.Logf("64 MiB c1→c2 delivered directly in %v (%.2f Gbit/s)", d, float64(64<<20)*8/d.Seconds()/1e9)
	after := counters(t, h2)
	t.Logf("h2 counters %+v", after)
	if got := after.PeerBytes - before.PeerBytes; got < 64<<20 || after.PeerPackets == before.PeerPackets {
		t.Errorf("h2 delivered %d bytes straight to containers during a 64 MiB transfer: %+v", got, after)
	}

	// h1's container is on no bridge: the replies above and a transfer
	// the other way reach it through flannel0.
	d = transfer(t, h2, h1, 32<<20)
	t.Logf("32 MiB c2→c1 through flannel0 in %v", d)
	c1 := counters(t, h1)
	if c1.PeerPackets != 0 || c1.InBytes < 32<<20 {
		t.Errorf("h1 counted %+v: want everything decapsulated through flannel0", c1)
	}

	// A container that goes loses its entry, and the other keeps its.
	netnstest.Run(t, "ip", "-n", h2.ns.Name, "link", "del", "ctr2")
	waitEndpoints(t, h2.dp, "drop the removed container", func(m map[netip.Addr]Endpoint) bool {
		_, ok1 := m[h2.ctrAddr]
		_, ok2 := m[addr2]
		return ok1 && !ok2
	})

	// Close empties the map: pinned programs left behind deliver through
	// flannel0.
	m := h2.dp.coll.Maps[mapEndpoints]
	m, err := m.Clone()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	h2.dp.Close()
	var k [4]byte
	var v []byte
	if m.Iterate().Next(&k, &v) {
		t.Errorf("endpoint %v left after Close", netip.AddrFrom4(k))
	}
}

func counters(t *testing.T, h *host) Counters {
	t.Helper()
	c, err := h.dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestBridgeOnly: with direct delivery off nothing watches the bridge and
// every packet takes flannel0.
func TestBridgeOnly(t *testing.T) {
	hs := twoHosts(t)
	h1, h2 := hs[0], hs[1]
	bridgeHost(t, h2)
	for _, h := range hs {
		cfg := h.config()
		cfg.BridgeOnly = true
		if err := h.ns.Do(func() error {
			var err error
			h.dp, err = Open(cfg, testLog(t))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.dp.Close() })
		if err := h.dp.SetPeers(peersOf(hs, h)); err != nil {
			t.Fatal(err)
		}
	}
	mustPing(t, h1.ctr, h2.ctrAddr)
	transfer(t, h1, h2, 4<<20)
	if c := counters(t, h2); c.PeerPackets != 0 || c.InPackets == 0 {
		t.Errorf("h2 counted %+v with direct delivery off", c)
	}
	if h2.dp.eps != nil {
		t.Error("an endpoint watch runs with direct delivery off")
	}
}
