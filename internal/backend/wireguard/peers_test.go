package wireguard

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/flannel-go/flannel/internal/lease"
)

type testPeer struct {
	key  wgtypes.Key
	sn   string
	sn6  string
	ip   string
	ip6  string
	port int // BackendData's
	p6   int // BackendV6Data's; 0: none
}

func (p testPeer) lease() lease.Lease {
	l := lease.Lease{Subnet: netip.MustParsePrefix(p.sn), Attrs: lease.Attrs{BackendType: Type}}
	if p.ip != "" {
		l.Attrs.PublicIP = netip.MustParseAddr(p.ip)
	}
	if p.sn6 != "" {
		l.Subnet6 = netip.MustParsePrefix(p.sn6)
	}
	if p.ip6 != "" {
		l.Attrs.PublicIPv6 = netip.MustParseAddr(p.ip6)
	}
	l.Attrs.BackendData = LeaseData{PublicKey: p.key, Port: p.port}.Encode()
	if p.p6 != 0 {
		l.Attrs.BackendV6Data = LeaseData{PublicKey: p.key, Port: p.p6}.Encode()
	}
	return l
}

func render(m map[wgtypes.Key]peerSpec, names map[wgtypes.Key]string) string {
	var lines []string
	for k, s := range m {
		lines = append(lines, fmt.Sprintf("%s %s %v", names[k], s.endpoint, s.allowed))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func TestDesired(t *testing.T) {
	a, b, c, own := mustKey(t).PublicKey(), mustKey(t).PublicKey(), mustKey(t).PublicKey(), mustKey(t).PublicKey()
	names := map[wgtypes.Key]string{a: "A", b: "B", c: "C"}
	cfg := Config{ListenPort: 51820, ListenPortV6: 51821, Mode: ModeSeparate}
	var skipped []string
	skip := func(l lease.Lease, problem string) { skipped = append(skipped, l.Key()+": "+problem) }

	peers := []lease.Lease{
		testPeer{key: a, sn: "10.5.1.0/24", ip: "192.168.1.1", port: 51820}.lease(),
		testPeer{key: b, sn: "10.5.2.0/24", ip: "192.168.1.2", port: 0}.lease(),     // older upstream: our port
		testPeer{key: a, sn: "10.5.3.0/24", ip: "192.168.1.1", port: 51820}.lease(), // A's old lease: both subnets
		testPeer{key: c, sn: "10.5.4.0/24", ip: "192.168.1.9", port: 51820}.lease(),
		testPeer{key: b, sn: "10.5.5.0/24", ip: "192.168.1.7", port: 51820}.lease(), // B's key elsewhere: skipped
		testPeer{key: own, sn: "10.5.6.0/24", ip: "192.168.1.8", port: 51820}.lease(),
	}
	ps := plans(cfg, true, false, false)
	if len(ps) != 1 || ps[0].name != DeviceV4 || ps[0].port != 51820 {
		t.Fatalf("plans = %+v", ps)
	}
	got := render(desired(ps[0], cfg, peers, own, skip), names)
	want := strings.Join([]string{
		"A 192.168.1.1:51820 [10.5.1.0/24 10.5.3.0/24]",
		"B 192.168.1.2:51820 [10.5.2.0/24]",
		"C 192.168.1.9:51820 [10.5.4.0/24]",
	}, "\n")
	if got != want {
		t.Errorf("separate v4:\n%s\nwant\n%s", got, want)
	}
	if len(skipped) != 2 || !strings.Contains(skipped[0], "10.5.5.0-24: PublicKey is also announced by 10.5.2.0/24") || !strings.Contains(skipped[1], "own public key") {
		t.Errorf("skipped %q", skipped)
	}
}

// In the one-device modes the endpoint of IPv6 uses the port the peer's
// device listens on, not ListenPortV6 (upstream's bug), and auto prefers
// the public address.
func TestDesiredOneDevice(t *testing.T) {
	a, b := mustKey(t).PublicKey(), mustKey(t).PublicKey()
	names := map[wgtypes.Key]string{a: "A", b: "B"}
	skip := func(l lease.Lease, problem string) { t.Errorf("skipped %s: %s", l.Key(), problem) }
	peers := []lease.Lease{
		// upstream in auto mode: v6 data advertises 51821, listens on 51820
		testPeer{key: a, sn: "10.5.1.0/24", sn6: "fd00:5:1::/64", ip: "192.168.1.1", ip6: "2001:db8::1", port: 51820, p6: 51821}.lease(),
		// ours with ListenPort 6000: both say 6000; a private v6 address
		testPeer{key: b, sn: "10.5.2.0/24", sn6: "fd00:5:2::/64", ip: "192.168.1.2", ip6: "fd01::2", port: 6000, p6: 6000}.lease(),
	}
	for _, tc := range []struct {
		mode Mode
		want string
	}{
		{ModeAuto, "A [2001:db8::1]:51820 [10.5.1.0/24 fd00:5:1::/64]\nB 192.168.1.2:6000 [10.5.2.0/24 fd00:5:2::/64]"},
		{ModeIPv4, "A 192.168.1.1:51820 [10.5.1.0/24 fd00:5:1::/64]\nB 192.168.1.2:6000 [10.5.2.0/24 fd00:5:2::/64]"},
		{ModeIPv6, "A [2001:db8::1]:51820 [10.5.1.0/24 fd00:5:1::/64]\nB [fd01::2]:6000 [10.5.2.0/24 fd00:5:2::/64]"},
	} {
		cfg := Config{ListenPort: 7000, ListenPortV6: 7001, Mode: tc.mode}
		ps := plans(cfg, true, true, true)
		if len(ps) != 1 || ps[0].port != 7000 {
			t.Fatalf("%s: plans = %+v", tc.mode, ps)
		}
		if got := render(desired(ps[0], cfg, peers, wgtypes.Key{}, skip), names); got != tc.want {
			t.Errorf("%s:\n%s\nwant\n%s", tc.mode, got, tc.want)
		}
	}
	// Separate: two devices, each family's data and port.
	cfg := Config{ListenPort: 51820, ListenPortV6: 51821, Mode: ModeSeparate}
	ps := plans(cfg, true, true, true)
	if len(ps) != 2 || ps[1].name != DeviceV6 || ps[1].port != 51821 {
		t.Fatalf("separate plans = %+v", ps)
	}
	want6 := "A [2001:db8::1]:51821 [fd00:5:1::/64]\nB [fd01::2]:6000 [fd00:5:2::/64]"
	if got := render(desired(ps[1], cfg, peers, wgtypes.Key{}, skip), names); got != want6 {
		t.Errorf("separate v6:\n%s\nwant\n%s", got, want6)
	}
	// Auto on a host without IPv6 underlay never picks IPv6.
	cfg.Mode = ModeAuto
	if p := plans(cfg, true, true, false); p[0].endpoint != 4 {
		t.Errorf("auto without own IPv6: endpoint family %d", p[0].endpoint)
	}
}

func TestDiff(t *testing.T) {
	a, b, c := mustKey(t).PublicKey(), mustKey(t).PublicKey(), mustKey(t).PublicKey()
	spec := func(ep string, allowed ...string) peerSpec {
		s := peerSpec{endpoint: netip.MustParseAddrPort(ep)}
		for _, p := range allowed {
			s.allowed = append(s.allowed, netip.MustParsePrefix(p))
		}
		return s
	}
	have := map[wgtypes.Key]peerSpec{
		a: spec("192.168.1.1:51820", "10.5.1.0/24"),
		b: spec("192.168.1.2:51820", "10.5.2.0/24"),
	}
	// Unchanged: nothing to send.
	if cfgs, added := diff(have, have); len(cfgs) != 0 || len(added) != 0 {
		t.Errorf("no change: %d configs", len(cfgs))
	}
	// b rebooted with a new key c; a moved.
	want := map[wgtypes.Key]peerSpec{
		a: spec("192.168.1.11:51820", "10.5.1.0/24"),
		c: spec("192.168.1.2:51820", "10.5.2.0/24"),
	}
	cfgs, added := diff(have, want)
	if len(cfgs) != 3 || len(added) != 1 || added[0] != c {
		t.Fatalf("diff: %d configs, added %v", len(cfgs), added)
	}
	if !cfgs[2].Remove || cfgs[2].PublicKey != b {
		t.Errorf("last config %+v, want the removal of the old key, after the adds", cfgs[2])
	}
	for _, pc := range cfgs[:2] {
		if pc.Remove || !pc.ReplaceAllowedIPs || pc.Endpoint == nil || len(pc.AllowedIPs) != 1 || pc.PresharedKey == nil || pc.PersistentKeepaliveInterval == nil {
			t.Errorf("add/change config incomplete: %+v", pc)
		}
	}
	// What a device reports reads back equal to what we applied.
	psk := mustKey(t)
	w := spec("[2001:db8::1]:51820", "10.5.1.0/24", "fd00::/64")
	w.psk, w.keepalive = psk, 25*time.Second
	pc := peerConfig(a, w)
	dev := []wgtypes.Peer{{PublicKey: a, PresharedKey: *pc.PresharedKey, Endpoint: pc.Endpoint, PersistentKeepaliveInterval: *pc.PersistentKeepaliveInterval, AllowedIPs: pc.AllowedIPs}}
	back := fromDevice(dev)
	if !back[a].equal(w) {
		t.Errorf("fromDevice(peerConfig(x)) = %+v, want %+v", back[a], w)
	}
}
