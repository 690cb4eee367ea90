package udp

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/ns"
)

// The lab: a switch namespace with a bridge, and per host a namespace on
// that bridge (192.168.77.i/24 on eth0) running a backend, behind which a
// container namespace holds 10.77.i.2 in the host's subnet 10.77.i.0/24.
//
//	c1 ─veth─ h1 ─veth─┐
//	c2 ─veth─ h2 ─veth─┤ br0 (sw)
//	c3 ─veth─ h3 ─veth─┘
type lab struct {
	t     testing.TB
	sw    *ns.NS
	hosts []*host
}

type host struct {
	i        int
	ns, ctr  *ns.NS
	underlay netip.Addr
	subnet   netip.Prefix
	ctrAddr  netip.Addr
	b        *Backend
	attrs    lease.Attrs
	mtu      int
}

const labPrefix = "fud"

func (h *host) lease() lease.Lease {
	return lease.Lease{Subnet: h.subnet, Attrs: h.attrs}
}

func execCommand(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
}

// newLab builds n hosts (no backends yet).
func newLab(t testing.TB, n int) *lab {
	netnstest.SkipUnlessRoot(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
	l := &lab{t: t, sw: netnstest.New(t, labPrefix+"sw")}
	netnstest.Run(t, "ip", "-n", l.sw.Name, "link", "add", "br0", "type", "bridge")
	netnstest.Run(t, "ip", "-n", l.sw.Name, "link", "set", "br0", "up")
	for i := 1; i <= n; i++ {
		h := &host{
			i:        i,
			ns:       netnstest.New(t, labPrefix+"h"),
			ctr:      netnstest.New(t, labPrefix+"c"),
			underlay: netip.AddrFrom4([4]byte{192, 168, 77, byte(i)}),
			subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(i), 0}), 24),
			ctrAddr:  netip.AddrFrom4([4]byte{10, 77, byte(i), 2}),
		}
		port := fmt.Sprintf("s%d", i)
		netnstest.Run(t, "ip", "-n", l.sw.Name, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.ns.Name)
		netnstest.Run(t, "ip", "-n", l.sw.Name, "link", "set", port, "master", "br0", "up")
		netnstest.Run(t, "ip", "-n", h.ns.Name, "addr", "add", h.underlay.String()+"/24", "dev", "eth0")
		netnstest.Run(t, "ip", "-n", h.ns.Name, "link", "set", "eth0", "up")
		netnstest.Run(t, "ip", "netns", "exec", h.ns.Name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		gw := netip.PrefixFrom(h.subnet.Addr().Next(), 24) // 10.77.i.1
		netnstest.Container(t, h.ns, h.ctr, gw, netip.PrefixFrom(h.ctrAddr, 24), 0)
		l.hosts = append(l.hosts, h)
	}
	return l
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func labConfig(h *host, t testing.TB, options string) backend.Config {
	return backend.Config{
		Options: []byte(options),
		Network: &netconf.Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.77.0.0/16"), SubnetLen: 24, BackendType: "udp"},
		Ext:     iface.ExtIface{Name: "eth0", MTU: 1500, IfaceAddr: h.underlay, ExtAddr: h.underlay},
		Log:     testLogger(t),
	}
}

// start runs a backend on h: Init inside its namespace, Configure, and the
// container veth's MTU set to what Configure returned.
func (l *lab) start(h *host, want offloadSet) {
	l.t.Helper()
	l.startWith(h, settings{offloads: want, raiseProcs: true})
}

// startWith is start with every setting given.
func (l *lab) startWith(h *host, set settings) {
	t := l.t
	t.Helper()
	b, err := newBackend(labConfig(h, t, `{"Type":"udp"}`), set)
	if err != nil {
		t.Fatal(err)
	}
	// Repair is called from the test's thread, in another namespace.
	b.inNS = h.ns.Do
	ctx := context.Background()
	if err := h.ns.Do(func() error {
		var err error
		h.attrs, err = b.Init(ctx)
		return err
	}); err != nil {
		t.Fatalf("h%d: Init: %v", h.i, err)
	}
	h.b = b
	t.Cleanup(func() { b.Close() })
	if h.mtu, err = b.Configure(ctx, h.lease()); err != nil {
		t.Fatalf("h%d: Configure: %v", h.i, err)
	}
	netnstest.Run(t, "ip", "-n", h.ns.Name, "link", "set", "ctr", "mtu", fmt.Sprint(h.mtu))
	netnstest.Run(t, "ip", "-n", h.ctr.Name, "link", "set", "eth0", "mtu", fmt.Sprint(h.mtu))
}

// syncAll gives every running backend every host's lease.
func (l *lab) syncAll() {
	var leases []lease.Lease
	for _, h := range l.hosts {
		if h.b != nil {
			leases = append(leases, h.lease())
		}
	}
	for _, h := range l.hosts {
		if h.b != nil {
			if err := h.b.Sync(context.Background(), leases); err != nil {
				l.t.Fatal(err)
			}
		}
	}
}

var pingID atomic.Uint32

// pingResult is what came back for one echo request.
type pingResult struct {
	from netip.Addr
	typ  icmp.Type
	code int
}

// ping sends one ICMP echo request from inside n to dst and returns the
// first answer about it: the echo reply or an ICMP error quoting it.
func ping(n *ns.NS, dst netip.Addr, timeout time.Duration) (pingResult, error) {
	var c *icmp.PacketConn
	if err := n.Do(func() error {
		var err error
		c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		return pingResult{}, err
	}
	defer c.Close()
	id := int(pingID.Add(1) & 0xffff)
	req, _ := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("flannel udp")}}).Marshal(nil)
	if _, err := c.WriteTo(req, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return pingResult{}, err
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return pingResult{}, fmt.Errorf("ping %s: %w", dst, err)
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil {
			continue
		}
		src, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP.To4())
		switch body := m.Body.(type) {
		case *icmp.Echo:
			if m.Type == ipv4.ICMPTypeEchoReply && body.ID == id {
				return pingResult{from: src, typ: m.Type, code: m.Code}, nil
			}
		case *icmp.DstUnreach:
			// The quote holds our request's IP header and its first 8
			// bytes: type, code, checksum, id.
			q := body.Data
			if len(q) >= 28 && int(binary.BigEndian.Uint16(q[24:])) == id {
				return pingResult{from: src, typ: m.Type, code: m.Code}, nil
			}
		}
	}
}

// probeUDP sends a UDP datagram from inside n to dst and returns the ICMP
// error that comes back about it.
func probeUDP(n *ns.NS, dst netip.Addr, timeout time.Duration) (pingResult, error) {
	var c *icmp.PacketConn
	var u net.Conn
	if err := n.Do(func() error {
		var err error
		if c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0"); err != nil {
			return err
		}
		u, err = net.Dial("udp4", netip.AddrPortFrom(dst, 33434).String())
		return err
	}); err != nil {
		if c != nil {
			c.Close()
		}
		return pingResult{}, err
	}
	defer c.Close()
	defer u.Close()
	if _, err := u.Write([]byte("probe")); err != nil {
		return pingResult{}, err
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return pingResult{}, fmt.Errorf("udp probe %s: %w", dst, err)
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil {
			continue
		}
		if du, ok := m.Body.(*icmp.DstUnreach); ok && len(du.Data) >= 20 &&
			du.Data[9] == protoUDP && netip.AddrFrom4([4]byte(du.Data[16:20])) == dst {
			src, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP.To4())
			return pingResult{from: src, typ: m.Type, code: m.Code}, nil
		}
	}
}

// mustPing asserts an echo reply from dst.
func mustPing(t testing.TB, n *ns.NS, dst netip.Addr) {
	t.Helper()
	r, err := ping(n, dst, 3*time.Second)
	if err != nil {
		t.Fatalf("from %s: %v", n.Name, err)
	}
	if r.typ != ipv4.ICMPTypeEchoReply || r.from != dst {
		t.Fatalf("from %s: ping %s answered by %s with %v code %d", n.Name, dst, r.from, r.typ, r.code)
	}
}

// pingAll asserts that every host's container answers a ping from every
// other's.
func (l *lab) pingAll(t testing.TB) {
	t.Helper()
	for _, a := range l.hosts {
		for _, b := range l.hosts {
			if a != b {
				mustPing(t, a.ctr, b.ctrAddr)
			}
		}
	}
}

// mustNetUnreachable asserts that a UDP datagram from h's container to
// noPeerIP, a subnet no host holds, is answered net unreachable from h's
// flannel0 address, as upstream does.
func mustNetUnreachable(t testing.TB, h *host) {
	t.Helper()
	r, err := probeUDP(h.ctr, noPeerIP, 3*time.Second)
	if err != nil {
		t.Fatalf("udp to %s (no peer): %v", noPeerIP, err)
	}
	if r.typ != ipv4.ICMPTypeDestinationUnreachable || r.code != 0 || r.from != h.subnet.Addr() {
		t.Errorf("udp to %s (no peer) answered by %s with %v code %d; want net unreachable from %s",
			noPeerIP, r.from, r.typ, r.code, h.subnet.Addr())
	}
}

// transfer sends size pseudo-random bytes over TCP from one container to
// another and checks that what arrived is what was sent. It returns the
// elapsed time.
func transfer(t testing.TB, from, to *host, size int) time.Duration {
	t.Helper()
	return netnstest.Transfer(t, from.ctr, to.ctr, to.ctrAddr, size)
}

// capture records the UDP datagrams to or from port 8285 that cross one
// interface, as they would appear on a wire: frames the kernel still holds
// as GSO super-packets (it segments them only where a real NIC needs it)
// are cut at their gso_size, which the socket reports with PACKET_VNET_HDR.
type capture struct {
	*netnstest.Capture

	mu        sync.Mutex
	datagrams int
	gsoFrames int
	maxLen    int // the largest IPv4 datagram seen whole (not as GSO)
	bad       []string
}

func startCapture(t testing.TB, n *ns.NS, ifname string) *capture {
	c := &capture{}
	c.Capture = netnstest.StartCapture(t, n, ifname, unix.SOCK_RAW, true, func(f []byte, _ *unix.SockaddrLinklayer) { c.frame(f) })
	return c
}

func (c *capture) frame(f []byte) {
	if len(f) < vnetHdrLen+14+20+8 {
		return
	}
	vh := decodeVnet(f)
	eth := f[vnetHdrLen:]
	if binary.BigEndian.Uint16(eth[12:]) != unix.ETH_P_IP {
		return
	}
	ip := eth[14:]
	ihl := int(ip[0]&0xf) * 4
	if ip[9] != protoUDP || len(ip) < ihl+8 {
		return
	}
	udp := ip[ihl:]
	if binary.BigEndian.Uint16(udp[0:]) != DefaultPort && binary.BigEndian.Uint16(udp[2:]) != DefaultPort {
		return
	}
	payload := udp[8:]
	seg := len(payload)
	c.mu.Lock()
	defer c.mu.Unlock()
	if vh.gsoType != 0 {
		c.gsoFrames++
		seg = int(vh.gsoSize)
	} else {
		c.maxLen = max(c.maxLen, len(ip))
	}
	for len(payload) > 0 {
		d := payload[:min(seg, len(payload))]
		payload = payload[len(d):]
		c.datagrams++
		h, err := ipv4.ParseHeader(d)
		if err != nil || h.TotalLen != len(d) {
			if len(c.bad) < 5 {
				c.bad = append(c.bad, fmt.Sprintf("%d-byte datagram starting % x", len(d), d[:min(20, len(d))]))
			}
		}
	}
}

// result stops the capture and returns what it saw.
func (c *capture) result() (datagrams, gsoFrames int, bad []string) {
	c.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.datagrams, c.gsoFrames, c.bad
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
