package fastpath

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/ns"
)

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// openTUN creates flannel0 in the calling thread's namespace and keeps
// it open (carrier up) until the test ends; packets that reach it can be
// read from the returned file.
func openTUN(t testing.TB) *os.File {
	t.Helper()
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no tun: %v", err)
	}
	ifr, _ := unix.NewIfreq("flannel0")
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		t.Fatalf("TUNSETIFF: %v", err)
	}
	f := os.NewFile(uintptr(fd), "flannel0")
	t.Cleanup(func() { f.Close() })
	return f
}

type host struct {
	i        int
	ns, ctr  *ns.NS
	underlay netip.Addr
	subnet   netip.Prefix
	ctrAddr  netip.Addr
	tun      *os.File
	extIdx   int
	tunIdx   int
	dp       *Datapath
	pins     string
}

// twoHosts builds h1 ─veth─ h2, each with flannel0 (address, route for
// 10.77.0.0/16, MTU 1472) and a container 10.77.i.2 behind a veth. The
// underlay's offloads are switched off as a NIC's wire would have them:
// a veth would otherwise hand GSO super-packets and unfinished checksums
// to the other host.
func twoHosts(t *testing.T) []*host {
	netnstest.SkipUnlessRoot(t)
	var hs []*host
	for i := 1; i <= 2; i++ {
		h := &host{
			i:        i,
			ns:       netnstest.New(t, "ffph"),
			ctr:      netnstest.New(t, "ffpc"),
			underlay: netip.AddrFrom4([4]byte{192, 168, 77, byte(i)}),
			subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(i), 0}), 24),
			ctrAddr:  netip.AddrFrom4([4]byte{10, 77, byte(i), 2}),
		}
		hs = append(hs, h)
	}
	netnstest.Run(t, "ip", "-n", hs[0].ns.Name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", hs[1].ns.Name)
	for _, h := range hs {
		n := h.ns.Name
		netnstest.Run(t, "ip", "-n", n, "addr", "add", h.underlay.String()+"/24", "dev", "eth0")
		netnstest.Run(t, "ip", "-n", n, "link", "set", "eth0", "up")
		netnstest.NICWire(t, h.ns, "eth0")
		netnstest.Run(t, "ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		if err := h.ns.Do(func() error { h.tun = openTUN(t); return nil }); err != nil {
			t.Fatal(err)
		}
		netnstest.Run(t, "ip", "-n", n, "link", "set", "flannel0", "mtu", "1472", "up")
		netnstest.Run(t, "ip", "-n", n, "addr", "add", h.subnet.Addr().String()+"/32", "dev", "flannel0")
		netnstest.Run(t, "ip", "-n", n, "route", "add", "10.77.0.0/16", "dev", "flannel0")
		gw := netip.PrefixFrom(h.subnet.Addr().Next(), 24)
		netnstest.Container(t, h.ns, h.ctr, gw, netip.PrefixFrom(h.ctrAddr, 24), 1472)
		if err := h.ns.Do(func() error {
			e, err := net.InterfaceByName("eth0")
			if err != nil {
				return err
			}
			f, err := net.InterfaceByName("flannel0")
			if err != nil {
				return err
			}
			h.extIdx, h.tunIdx = e.Index, f.Index
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return hs
}

func (h *host) config() Config {
	return Config{PublicIP: h.underlay, Port: 8285, ExtIndex: h.extIdx, TUNIndex: h.tunIdx, Own: h.subnet, PinDir: h.pins}
}

func (h *host) open(t *testing.T) *Datapath {
	t.Helper()
	var dp *Datapath
	if err := h.ns.Do(func() error {
		var err error
		dp, err = Open(h.config(), testLog(t))
		return err
	}); err != nil {
		t.Fatalf("h%d: Open: %v", h.i, err)
	}
	return dp
}

func peersOf(hs []*host, self *host) map[netip.Prefix]netip.Addr {
	m := make(map[netip.Prefix]netip.Addr)
	for _, h := range hs {
		if h != self {
			m[h.subnet] = h.underlay
		}
	}
	return m
}

func TestLoadAdoptRemove(t *testing.T) {
	hs := twoHosts(t)
	h := hs[0]
	h.pins = filepath.Join(netnstest.BPFFS(t), "flannel", "udp")
	dp := h.open(t)
	if dp.Adopted() {
		t.Error("a first Open adopted something")
	}
	want := map[netip.Prefix]netip.Addr{
		netip.MustParsePrefix("10.77.2.0/24"): netip.MustParseAddr("192.168.77.2"),
		netip.MustParsePrefix("10.77.3.0/24"): netip.MustParseAddr("192.168.77.3"),
	}
	if err := dp.SetPeers(want); err != nil {
		t.Fatal(err)
	}
	mark := dp.cfg.mark
	if mark == ([6]byte{}) || mark[0]&0x03 != 0x02 {
		t.Errorf("mark %x is not a locally administered unicast address", mark)
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	for _, pin := range []string{pinEgress, pinIngress, pinXDP, mapPeers, mapConfig, mapPeerIPs} {
		if _, err := os.Stat(filepath.Join(h.pins, pin)); err != nil {
			t.Errorf("after Close: %v", err)
		}
	}

	// A restarted process adopts the pins: the peers are still there and
	// the links are the same ones, with new programs. Until it knows its
	// lease it keeps the subnet the old programs decapsulated for.
	own := h.subnet
	h.subnet = netip.Prefix{}
	dp = h.open(t)
	h.subnet = own
	defer dp.Close()
	if !dp.Adopted() {
		t.Error("second Open did not adopt the pinned maps")
	}
	if dp.cfg.Own != own {
		t.Errorf("adopted config has subnet %v, want the previous %v", dp.cfg.Own, own)
	}
	if dp.cfg.mark != mark {
		t.Errorf("adopted config has mark %x, want the previous %x (the old XDP program marks with it until replaced)", dp.cfg.mark, mark)
	}
	got, err := dp.Peers()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("adopted peers %v, want %v", got, want)
	}
	delete(want, netip.MustParsePrefix("10.77.3.0/24"))
	want[netip.MustParsePrefix("10.77.4.0/24")] = netip.MustParseAddr("192.168.77.4")
	if err := dp.SetPeers(want); err != nil {
		t.Fatal(err)
	}
	if got, _ = dp.Peers(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("peers %v after SetPeers(%v)", got, want)
	}
	if n := tcxCount(t, h, "eth0"); n != 1 {
		t.Errorf("%d tcx programs on eth0 after adoption, want 1", n)
	}
	if id := xdpProgID(t, h); id == 0 || !dp.XDP() {
		t.Errorf("no XDP program on eth0 after adoption (XDP() = %v)", dp.XDP())
	} else if info, err := dp.coll.Programs[progXDP].Info(); err != nil {
		t.Fatal(err)
	} else if pid, _ := info.ID(); uint32(pid) != id {
		t.Errorf("XDP program %d on eth0, want the adopting process's %d", id, pid)
	}
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h.pins); !os.IsNotExist(err) {
		t.Errorf("pin directory after Remove: %v", err)
	}
	if n := tcxCount(t, h, "eth0"); n != 0 {
		t.Errorf("%d tcx programs on eth0 after Remove, want 0", n)
	}
	if id := xdpProgID(t, h); id != 0 {
		t.Errorf("XDP program %d on eth0 after Remove", id)
	}
}

// TestNoXDPDetachesPinned: a start told to leave XDP alone takes away the
// XDP program a previous process pinned, and forwards without it.
func TestNoXDPDetachesPinned(t *testing.T) {
	hs := twoHosts(t)
	h := hs[0]
	h.pins = filepath.Join(netnstest.BPFFS(t), "flannel", "udp")
	dp := h.open(t)
	if !dp.XDP() || xdpProgID(t, h) == 0 {
		t.Fatal("no XDP program after the first Open")
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if xdpProgID(t, h) == 0 {
		t.Fatal("the pinned XDP program went with Close")
	}
	cfg := h.config()
	cfg.NoXDP = true
	if err := h.ns.Do(func() error {
		var err error
		dp, err = Open(cfg, testLog(t))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer dp.Remove()
	if id := xdpProgID(t, h); id != 0 || dp.XDP() {
		t.Errorf("with NoXDP: XDP program %d on eth0, XDP() %v", id, dp.XDP())
	}
	if _, err := os.Stat(filepath.Join(h.pins, pinXDP)); !os.IsNotExist(err) {
		t.Errorf("XDP pin after an Open with NoXDP: %v", err)
	}
}

// xdpProgID is the id of the XDP program on h's eth0, 0 if none.
func xdpProgID(t *testing.T, h *host) uint32 {
	t.Helper()
	var id uint32
	if err := h.ns.Do(func() error {
		l, err := netlink.LinkByIndex(h.extIdx)
		if err != nil {
			return err
		}
		if x := l.Attrs().Xdp; x != nil && x.Attached {
			id = x.ProgId
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return id
}

// tcxCount counts the programs attached with tcx to one of h's devices,
// both hooks.
func tcxCount(t *testing.T, h *host, dev string) int {
	t.Helper()
	idx := h.extIdx
	if dev == "flannel0" {
		idx = h.tunIdx
	}
	n := 0
	if err := h.ns.Do(func() error {
		for _, typ := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			r, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: typ})
			if err != nil {
				return err
			}
			n += len(r.Programs)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestForwarding(t *testing.T) {
	hs := twoHosts(t)
	for _, h := range hs {
		h.dp = h.open(t)
		t.Cleanup(func() { h.dp.Close() })
		if err := h.dp.SetPeers(peersOf(hs, h)); err != nil {
			t.Fatal(err)
		}
	}
	h1, h2 := hs[0], hs[1]
	// What h1 sends: h2's XDP program decapsulates before a capture
	// there would see the datagrams.
	capt := startCapture(t, h1.ns, "eth0")

	// Nobody reads the TUNs: whatever crosses, crossed in the kernel.
	mustPing(t, h1.ctr, h2.ctrAddr)
	mustPing(t, h2.ctr, h1.ctrAddr)

	// An unknown subnet goes to the TUN unchanged, for userspace.
	unknown := netip.MustParseAddr("10.77.99.5")
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, err := h1.tun.Read(buf)
			if err != nil {
				return
			}
			if n >= 20 && netip.AddrFrom4([4]byte(buf[16:20])) == unknown {
				got <- append([]byte(nil), buf[:n]...)
				return
			}
		}
	}()
	sendUDP(t, h1.ctr, unknown)
	select {
	case p := <-got:
		if p[0] != 0x45 || p[9] != unix.IPPROTO_UDP {
			t.Errorf("packet for an unknown subnet reached the TUN changed: % x", p[:20])
		}
	case <-time.After(3 * time.Second):
		t.Error("packet for an unknown subnet never reached the TUN")
	}

	d := transfer(t, h1, h2, 32<<20)
	t.Logf("32 MiB c1→c2 through the eBPF path in %v (%.2f Gbit/s)", d, float64(32<<20)*8/d.Seconds()/1e9)
	for _, h := range hs {
		c, err := h.dp.Counters()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("h%d counters %+v", h.i, c)
		out, in := c.OutBytes, c.InBytes
		if h == h2 {
			out, in = in, out
		}
		if out < 32<<20 || c.OutPackets == 0 || c.InPackets == 0 || in == 0 {
			t.Errorf("h%d counted %+v after 32 MiB out of h1", h.i, c)
		}
	}
	datagrams, bad := capt.result()
	t.Logf("capture on h1's eth0: %d datagrams on port 8285", datagrams)
	if datagrams < 1000 { // the capture socket drops some under load: the counters above count them all
		t.Errorf("capture saw only %d datagrams", datagrams)
	}
	if len(bad) > 0 {
		t.Errorf("datagrams not in upstream's format: %v", bad)
	}
}

func sendUDP(t *testing.T, n *ns.NS, dst netip.Addr) {
	t.Helper()
	if err := n.Do(func() error {
		c, err := net.Dial("udp4", netip.AddrPortFrom(dst, 33434).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("probe"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func mustPing(t *testing.T, n *ns.NS, dst netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.Name, "ping", "-c1", "-W3", dst.String()).CombinedOutput(); err != nil {
		t.Fatalf("ping %s from %s: %v: %s", dst, n.Name, err, out)
	}
}

// transfer sends size bytes over TCP between the hosts' containers and
// checks that what arrived is what was sent.
func transfer(t *testing.T, from, to *host, size int) time.Duration {
	t.Helper()
	return netnstest.Transfer(t, from.ctr, to.ctr, to.ctrAddr, size)
}

// capture checks every UDP datagram to port 8285 that leaves through an
// interface (segmented, checksums done: the interface is a NIC's wire)
// against upstream's format: at most the underlay MTU, UDP
// checksum 0, ports 8285, exactly one IPv4 packet whose TCP or UDP
// checksum (if any) is valid.
type capture struct {
	*netnstest.Capture

	mu        sync.Mutex
	datagrams int
	bad       []string
}

func startCapture(t *testing.T, n *ns.NS, ifname string) *capture {
	c := &capture{}
	c.Capture = netnstest.StartCapture(t, n, ifname, unix.SOCK_DGRAM, false, func(ip []byte, from *unix.SockaddrLinklayer) {
		if from == nil || from.Pkttype != unix.PACKET_OUTGOING || from.Protocol != htons(unix.ETH_P_IP) {
			return
		}
		c.packet(ip)
	})
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *capture) packet(ip []byte) {
	if len(ip) < 28 || ip[9] != unix.IPPROTO_UDP {
		return
	}
	ihl := int(ip[0]&0xf) * 4
	udp := ip[ihl:]
	if binary.BigEndian.Uint16(udp[2:]) != 8285 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.datagrams++
	complain := func(f string, a ...any) {
		if len(c.bad) < 5 {
			c.bad = append(c.bad, fmt.Sprintf(f, a...))
		}
	}
	inner := udp[8:]
	switch {
	case len(ip) > 1500:
		complain("%d-byte datagram above the MTU", len(ip))
	case binary.BigEndian.Uint16(udp[0:]) != 8285 || binary.BigEndian.Uint16(udp[6:]) != 0:
		complain("UDP header % x", udp[:8])
	case len(inner) < 20 || inner[0]>>4 != 4 || int(binary.BigEndian.Uint16(inner[2:])) != len(inner):
		complain("payload is not one IPv4 packet: % x", inner[:min(20, len(inner))])
	case !l4ChecksumOK(inner):
		complain("inner checksum wrong in % x", inner[:min(40, len(inner))])
	}
}

// l4ChecksumOK verifies the TCP or UDP checksum of an IPv4 packet.
func l4ChecksumOK(p []byte) bool {
	ihl := int(p[0]&0xf) * 4
	proto := p[9]
	if proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_UDP || len(p) < ihl+8 {
		return true
	}
	seg := p[ihl:]
	if proto == unix.IPPROTO_UDP && binary.BigEndian.Uint16(seg[6:]) == 0 {
		return true
	}
	var sum uint32
	add := func(b []byte) {
		for len(b) >= 2 {
			sum += uint32(binary.BigEndian.Uint16(b))
			b = b[2:]
		}
		if len(b) == 1 {
			sum += uint32(b[0]) << 8
		}
	}
	add(p[12:20])
	sum += uint32(proto) + uint32(len(seg))
	add(seg)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return sum == 0xffff
}

func (c *capture) result() (int, []string) {
	c.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.datagrams, c.bad
}

// TestCheckNoticesDetach: a program detached behind our back is reported,
// so the backend's Repair reattaches it.
func TestCheckNoticesDetach(t *testing.T) {
	hs := twoHosts(t)
	h := hs[0]
	dp := h.open(t)
	defer dp.Close()
	if err := dp.Check(); err != nil {
		t.Fatalf("fresh datapath: %v", err)
	}
	d, ok := dp.ingress.(interface{ Detach() error })
	if !ok {
		t.Skip("link cannot be detached")
	}
	if err := d.Detach(); err != nil {
		t.Fatal(err)
	}
	if err := dp.Check(); err == nil {
		t.Error("Check passed with the ingress program detached")
	}
}
