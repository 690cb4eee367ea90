package udp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netnstest"
)

// checkHostState asserts what upstream's udp backend leaves on a host: a
// TUN named flannel0, address <subnet>/32, MTU ext−28, one route for the
// whole network through it.
func checkHostState(t testing.TB, h *host) {
	t.Helper()
	nl, err := h.ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	err = waitFor(2*time.Second, func() error {
		link, err := nl.LinkByName("flannel0")
		if err != nil {
			return err
		}
		if link.Type() != "tuntap" || link.Attrs().MTU != 1500-28 || link.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("flannel0: type %s mtu %d flags %v", link.Type(), link.Attrs().MTU, link.Attrs().Flags)
		}
		addrs, err := nl.AddrList(link, unix.AF_INET)
		if err != nil {
			return err
		}
		if len(addrs) != 1 || addrs[0].IPNet.String() != h.subnet.Addr().String()+"/32" {
			return fmt.Errorf("flannel0 addresses %v, want %s/32", addrs, h.subnet.Addr())
		}
		routes, err := nl.RouteList(link, unix.AF_INET)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool { return r.Dst != nil && r.Dst.String() == "10.77.0.0/16" }) {
			return fmt.Errorf("no route 10.77.0.0/16 dev flannel0 in %v", routes)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("h%d: %v", h.i, err)
	}
}

func TestEndToEnd(t *testing.T) {
	for _, tc := range []struct {
		name  string
		want  offloadSet
		hosts int
	}{
		{"offloads", allOffloads, 3},
		{"no offloads", offloadSet{}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, tc.hosts)
			for _, h := range l.hosts {
				l.start(h, tc.want)
			}
			l.syncAll()
			h1, h2 := l.hosts[0], l.hosts[1]
			for _, h := range l.hosts {
				checkHostState(t, h)
				if h.attrs.BackendType != "" || h.attrs.PublicIP != h.underlay {
					t.Errorf("h%d lease attrs %+v; want PublicIP %s and no BackendType (as upstream)", h.i, h.attrs, h.underlay)
				}
			}
			off := h1.b.Stats().Offloads
			t.Logf("offloads: %+v", off)
			if tc.want == (offloadSet{}) && off != (Offloads{}) {
				t.Errorf("offloads %+v active though all were switched off", off)
			}
			capt := startCapture(t, l.sw, "s1") // h1's port on the switch

			l.pingAll(t)

			// No peer: a net unreachable from our flannel0 address, as
			// upstream; but never about ICMP, so a ping stays unanswered.
			mustNetUnreachable(t, h1)
			if r, err := ping(h1.ctr, noPeerIP, 300*time.Millisecond); err == nil {
				t.Errorf("ping %s (no peer) answered by %s with %v; upstream never answers ICMP with ICMP", noPeerIP, r.from, r.typ)
			}

			// Re-syncing during a transfer must not disturb it.
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				extra := lease.Lease{Subnet: netip.MustParsePrefix("10.77.200.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.77.200")}}
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-time.After(10 * time.Millisecond):
					}
					peers := []lease.Lease{h1.lease(), h2.lease()}
					if i%2 == 0 {
						peers = append(peers, extra)
					}
					if err := h1.b.Sync(context.Background(), peers); err != nil {
						t.Error(err)
					}
				}
			})
			d := transfer(t, h1, h2, 64<<20)
			close(stop)
			wg.Wait()
			l.syncAll()
			t.Logf("64 MiB h1→h2 in %v (%.2f Gbit/s)", d, float64(64<<20)*8/d.Seconds()/1e9)
			d = transfer(t, h2, h1, 16<<20)
			t.Logf("16 MiB h2→h1 in %v", d)

			datagrams, gsoFrames, bad := capt.result()
			t.Logf("capture on h1's switch port: %d datagrams on port %d, %d GSO frames", datagrams, DefaultPort, gsoFrames)
			if len(bad) > 0 {
				t.Errorf("datagrams that are not exactly one IPv4 packet: %v", bad)
			}
			if datagrams < 1000 {
				t.Errorf("capture saw only %d datagrams of the transfer", datagrams)
			}

			s1, s2 := h1.b.Stats(), h2.b.Stats()
			if s1.Out.Packets < 1000 || s2.In.Packets < 1000 || s1.Out.Bytes < 64<<20 {
				t.Errorf("counters: h1 out %+v, h2 in %+v", s1.Out, s2.In)
			}
			if s1.Out.Drops.NoRoute == 0 {
				t.Errorf("h1 counted no no_route drop for the unreachable probe: %+v", s1.Out.Drops)
			}
			// Everything the kernels handed over was understood.
			for _, h := range l.hosts {
				if s := h.b.Stats(); s.Out.Drops.Malformed+s.In.Drops.Malformed+s.Out.Drops.WriteError+s.In.Drops.WriteError != 0 {
					t.Errorf("h%d: %+v", h.i, s)
				}
			}
		})
	}
}

// TestUpstreamPeer plays an upstream flannel host by hand: a plain UDP
// socket that sends one raw IPv4 packet per datagram and expects the same.
func TestUpstreamPeer(t *testing.T) {
	for _, mode := range []datapathMode{datapathUserspace, datapathEBPF} {
		t.Run(mode.String(), func(t *testing.T) { testUpstreamPeer(t, mode) })
	}
}

func testUpstreamPeer(t *testing.T, mode datapathMode) {
	l := newLab(t, 2)
	h1, up := l.hosts[0], l.hosts[1]
	if mode == datapathEBPF {
		nicWire(t, l)
	}
	l.startWith(h1, settings{offloads: allOffloads, raiseProcs: true, datapath: mode})
	if h1.b.Datapath() != mode.String() {
		t.Fatalf("datapath %s, want %s", h1.b.Datapath(), mode)
	}
	// Upstream's udp leases have no BackendType; a peer of another type
	// is accepted too, as upstream does.
	for _, typ := range []string{"", "vxlan"} {
		upLease := lease.Lease{Subnet: up.subnet, Attrs: lease.Attrs{PublicIP: up.underlay, BackendType: typ}}
		if err := h1.b.Sync(context.Background(), []lease.Lease{h1.lease(), upLease}); err != nil {
			t.Fatal(err)
		}
		var c *net.UDPConn
		if err := up.ns.Do(func() error {
			var err error
			c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(up.underlay, DefaultPort)))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		echo, _ := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: 99, Seq: 7, Data: []byte("upstream")}}).Marshal(nil)
		pkt := make([]byte, 20+len(echo))
		copy(pkt, udpPacket(up.ctrAddr, h1.ctrAddr, 64, nil)[:20])
		pkt[9] = protoICMP
		copy(pkt[20:], echo)
		fixLen(pkt)
		if _, err := c.WriteToUDPAddrPort(pkt, netip.AddrPortFrom(h1.underlay, DefaultPort)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 65536)
		n, from, err := c.ReadFromUDPAddrPort(buf)
		c.Close()
		if err != nil {
			t.Fatalf("BackendType %q: no reply datagram: %v", typ, err)
		}
		d := buf[:n]
		h := checkWirePacket(t, d)
		m, err := icmp.ParseMessage(1, d[h.Len:])
		if err != nil {
			t.Fatal(err)
		}
		e, ok := m.Body.(*icmp.Echo)
		if from != netip.AddrPortFrom(h1.underlay, DefaultPort) || m.Type != ipv4.ICMPTypeEchoReply || !ok || e.ID != 99 ||
			h.Src.String() != h1.ctrAddr.String() || h.Dst.String() != up.ctrAddr.String() {
			t.Fatalf("BackendType %q: reply from %s: %+v %+v", typ, from, h, m)
		}
		// The container sent TTL 64; h1's kernel routed it (63) and the
		// backend forwarded it (62), as upstream's proxy decrements.
		if h.TTL != 62 {
			t.Errorf("reply TTL %d, want 62", h.TTL)
		}
	}
	if s := h1.b.Stats(); mode == datapathEBPF && s.In.Packets+s.Out.Packets != 0 {
		t.Errorf("the eBPF datapath left packets to userspace: in %+v, out %+v", s.In, s.Out)
	}
}

func fixLen(pkt []byte) {
	pkt[2], pkt[3] = byte(len(pkt)>>8), byte(len(pkt))
	setIPChecksum(pkt[:20])
}

// TestRestart replaces a host's backend as a restarted flanneld would and
// checks traffic resumes within a second.
func TestRestart(t *testing.T) {
	l := newLab(t, 2)
	for _, h := range l.hosts {
		l.start(h, allOffloads)
	}
	l.syncAll()
	h1, h2 := l.hosts[0], l.hosts[1]
	mustPing(t, h1.ctr, h2.ctrAddr)

	start := time.Now()
	if err := h1.b.Close(); err != nil {
		t.Fatal(err)
	}
	h1.b = nil
	l.start(h1, allOffloads)
	l.syncAll()
	setup := time.Since(start)
	err := waitFor(time.Second, func() error {
		_, err := ping(h1.ctr, h2.ctrAddr, 100*time.Millisecond)
		return err
	})
	took := time.Since(start)
	if err != nil || took > time.Second {
		t.Fatalf("after restart: %v; traffic resumed after %v (setup %v), want under 1s", err, took, setup)
	}
	t.Logf("restart: setup %v, first reply after %v", setup, took)
	if h1.b.Device() != "flannel0" {
		t.Errorf("device %q after restart, want flannel0 again", h1.b.Device())
	}
	checkHostState(t, h1)
}

// TestReconfigure gives a host a new lease: the device's address follows
// it, and traffic to the new subnet flows once peers learn of it.
func TestReconfigure(t *testing.T) {
	l := newLab(t, 2)
	for _, h := range l.hosts {
		l.start(h, allOffloads)
	}
	h1, h2 := l.hosts[0], l.hosts[1]
	h2.subnet = netip.MustParsePrefix("10.77.12.0/24")
	if _, err := h2.b.Configure(context.Background(), h2.lease()); err != nil {
		t.Fatal(err)
	}
	l.syncAll()
	checkHostState(t, h2) // exactly one address: the new one
	// Move the container into the new subnet.
	netnstest.Run(t, "ip", "-n", h2.ns.Name, "addr", "add", "10.77.12.1/24", "dev", "ctr")
	netnstest.Run(t, "ip", "-n", h2.ctr.Name, "addr", "add", "10.77.12.2/24", "dev", "eth0")
	mustPing(t, h1.ctr, netip.MustParseAddr("10.77.12.2"))
}

// TestRepair removes the backend's kernel state behind its back.
func TestRepair(t *testing.T) {
	l := newLab(t, 2)
	for _, h := range l.hosts {
		l.start(h, allOffloads)
	}
	l.syncAll()
	h1, h2 := l.hosts[0], l.hosts[1]
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		cmd  []string
	}{
		{"route", []string{"ip", "-n", h1.ns.Name, "route", "del", "10.77.0.0/16"}},
		{"address and down", []string{"sh", "-c", fmt.Sprintf("ip -n %s addr flush dev flannel0 && ip -n %s link set flannel0 down", h1.ns.Name, h1.ns.Name)}},
		{"device", []string{"ip", "-n", h1.ns.Name, "link", "del", "flannel0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			netnstest.Run(t, tc.cmd...)
			if r, err := ping(h1.ctr, h2.ctrAddr, 300*time.Millisecond); err == nil && r.typ == ipv4.ICMPTypeEchoReply {
				t.Fatal("ping still works after the damage; the test is not testing anything")
			}
			if err := h1.b.Repair(ctx); err != nil {
				t.Fatal(err)
			}
			checkHostState(t, h1)
			mustPing(t, h1.ctr, h2.ctrAddr)
			mustPing(t, h2.ctr, h1.ctrAddr)
		})
	}
}

// TestCloseJoinsGoroutines: Close returns only after the forwarding loops
// have ended, and leaves none behind.
func TestCloseJoinsGoroutines(t *testing.T) {
	procs := runtime.GOMAXPROCS(0)
	l := newLab(t, 1)
	h := l.hosts[0]
	l.start(h, allOffloads)
	if got := runtime.GOMAXPROCS(0); got != procs+loops {
		t.Errorf("GOMAXPROCS %d while forwarding, want %d + one per loop", got, procs)
	}
	if err := h.b.Sync(context.Background(), []lease.Lease{h.lease()}); err != nil {
		t.Fatal(err)
	}
	if n := forwardingLoops(); n != 2 {
		t.Fatalf("%d forwarding loops running after start, want 2 (one per direction)", n)
	}
	if err := h.b.Close(); err != nil {
		t.Fatal(err)
	}
	// Close waits for the loops; a goroutine past wg.Done may still be
	// unwinding for a moment.
	if err := waitFor(time.Second, func() error {
		if n := forwardingLoops(); n != 0 {
			return fmt.Errorf("%d forwarding loops left after Close", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := h.b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if got := runtime.GOMAXPROCS(0); got != procs {
		t.Errorf("GOMAXPROCS %d after Close, want %d as before", got, procs)
	}
	nl, err := h.ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	if _, err := nl.LinkByName("flannel0"); err == nil {
		t.Error("flannel0 still exists after Close; the TUN must not be persistent")
	}
}

// forwardingLoops counts the goroutines running the datapath's loops, by
// their functions in the goroutine dump: unlike a goroutine count, this is
// not thrown off by unrelated goroutines coming and going.
func forwardingLoops() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "udp.runOutbound(") || strings.Contains(g, "udp.(*receiver).run(") {
			n++
		}
	}
	return n
}
