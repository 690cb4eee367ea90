package vxlan

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/route/routetest"
)

// linkMAC and linkIndex read the device as `ip -o link` shows it.
var linkRE = regexp.MustCompile(`^(\d+): flannel\.1: .* link/ether ([0-9a-f:]{17}) `)

func (h *host) link(t testing.TB) (index, mac string) {
	t.Helper()
	out := h.IP(t, "-o", "link", "show", "flannel.1")
	m := linkRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("cannot parse %q", out)
	}
	return m[1], m[2]
}

func TestTrafficAndEntries(t *testing.T) {
	hs := newHosts(t, 3)
	a, b, c := hs[0], hs[1], hs[2]
	for _, h := range hs {
		h.start(t, `{"Type":"vxlan"}`)
	}
	a.Sync(t, b, c)
	b.Sync(t, a, c)
	c.Sync(t, a, b)

	// The lease: upstream's exact BackendData, with the device's real MAC.
	_, mac := a.link(t)
	if a.Attrs.BackendType != "vxlan" || a.Attrs.PublicIP != netip.MustParseAddr("192.168.100.1") {
		t.Errorf("attrs = %+v", a.Attrs)
	}
	if got, want := string(a.Attrs.BackendData), fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, mac); got != want {
		t.Errorf("BackendData = %s, want %s", got, want)
	}
	if hw, err := net.ParseMAC(mac); err != nil || hw[0]&2 == 0 || hw[0]&1 != 0 {
		t.Errorf("MAC %s is not a locally administered unicast address", mac)
	}

	if a.MTU != 1450 {
		t.Errorf("Configure returned MTU %d, want 1450 (eth0's 1500 − 50)", a.MTU)
	}
	dev := a.IP(t, "-d", "link", "show", "flannel.1")
	for _, want := range []string{"mtu 1450", "vxlan id 1 local 192.168.100.1 dev eth0", "dstport 8472", "nolearning", ",UP,"} {
		if !strings.Contains(dev, want) {
			t.Errorf("ip -d link show flannel.1 lacks %q:\n%s", want, dev)
		}
	}
	if addr := a.IP(t, "-4", "-o", "addr", "show", "dev", "flannel.1"); !strings.Contains(addr, "inet 10.5.1.0/32 ") || strings.Count(addr, "inet ") != 1 {
		t.Errorf("addresses of flannel.1: %s", addr)
	}
	if got, want := a.entries(t), wantEntries(t, b, c); got != want {
		t.Errorf("host a shows\n%s\nwant\n%s", got, want)
	}
	a.Ping(t, b, c)
	b.Ping(t, c)
	c.Ping(t, a)

	// Nothing changed: nothing is written.
	cnt := a.count(t)
	a.Sync(t, b, c)
	if len(cnt.changes) != 0 {
		t.Errorf("second Sync with the same peers made changes: %q", cnt.changes)
	}

	// c leaves: its route, neighbour and FDB entry go, b's stay.
	a.Sync(t, b)
	if len(cnt.changes) != 3 {
		t.Errorf("removing one peer made %d changes, want 3: %q", len(cnt.changes), cnt.changes)
	}
	if got, want := a.entries(t), wantEntries(t, b); got != want {
		t.Errorf("after c left, host a shows\n%s\nwant\n%s", got, want)
	}
	a.Ping(t, b)
	routetest.MustNotPing(t, a.Ctr, a.CtrAddr, c.CtrAddr)
}

// A host whose device is gone (a reboot) but which published a VTEP MAC
// before creates its device with that MAC, so peers need no update; a
// MAC published for another VNI or backend is not reused.
func TestDeviceKeepsPublishedMAC(t *testing.T) {
	const mac = "0e:12:34:56:78:9a"
	prev := lease.Attrs{BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"` + mac + `"}`)}
	hs := newHosts(t, 2)
	hs[0].startWithPrev(t, `{"Type":"vxlan"}`, prev)
	if got := hs[0].mac(t); got != mac {
		t.Errorf("advertised MAC %s, want the one published before, %s", got, mac)
	}
	if dev := hs[0].IP(t, "link", "show", "flannel.1"); !strings.Contains(dev, "link/ether "+mac) {
		t.Errorf("flannel.1 does not carry %s:\n%s", mac, dev)
	}
	other := prev
	other.BackendData = json.RawMessage(`{"VNI":7,"VtepMAC":"` + mac + `"}`)
	hs[1].startWithPrev(t, `{"Type":"vxlan"}`, other)
	if got := hs[1].mac(t); got == mac {
		t.Errorf("took the MAC published for VNI 7 on VNI 1")
	}
}

func TestMTUOption(t *testing.T) {
	a := newHosts(t, 1)[0]
	a.start(t, `{"Type":"vxlan","MTU":1400,"VNI":7,"Port":4789}`)
	if a.MTU != 1350 {
		t.Errorf("Configure returned MTU %d, want 1350", a.MTU)
	}
	dev := a.IP(t, "-d", "link", "show", "flannel.7")
	for _, want := range []string{"mtu 1350", "vxlan id 7 ", "dstport 4789"} {
		if !strings.Contains(dev, want) {
			t.Errorf("ip -d link show flannel.7 lacks %q:\n%s", want, dev)
		}
	}
}

func TestRestartAdoptsDeviceAndRemovesStalePeers(t *testing.T) {
	hs := newHosts(t, 3)
	a, b, c := hs[0], hs[1], hs[2]
	for _, h := range hs {
		h.start(t, `{"Type":"vxlan"}`)
	}
	a.Sync(t, b, c)
	b.Sync(t, a)
	a.Ping(t, b)

	// Routes that are not the backend's: outside the network on its
	// device, inside the network on another device, on the external
	// interface without a gateway.
	foreign := [][]string{
		{"192.0.2.0/24", "dev", "flannel.1"},
		{"10.5.200.0/24", "via", "10.5.1.2", "dev", "veth0"},
		{"10.5.201.0/24", "dev", "eth0"},
	}
	for _, r := range foreign {
		a.IP(t, append([]string{"route", "add"}, r...)...)
	}
	foreignShown := func() string {
		var s []string
		for _, r := range foreign {
			s = append(s, strings.TrimSpace(a.IP(t, "-4", "route", "show", r[0])))
		}
		return strings.Join(s, "\n")
	}
	foreignBefore := foreignShown()
	idx, mac := a.link(t)
	oldAttrs := a.Attrs

	// flanneld on a restarts; c leaves while it is down.
	if err := a.B.Close(); err != nil {
		t.Fatal(err)
	}
	a.start(t, `{"Type":"vxlan"}`)
	idx2, mac2 := a.link(t)
	if idx2 != idx || mac2 != mac {
		t.Errorf("device after restart: index %s mac %s, want index %s mac %s (adopted)", idx2, mac2, idx, mac)
	}
	if !a.Attrs.Equal(oldAttrs) {
		t.Errorf("attrs after restart %+v, want %+v", a.Attrs, oldAttrs)
	}
	if !slices.ContainsFunc(a.Logs.Take(), func(l string) bool { return strings.Contains(l, "adopting existing device") }) {
		t.Error("no log line about adopting the device")
	}
	// Traffic never stopped: the entries were still there before Sync.
	a.Ping(t, b)

	cnt := a.count(t)
	a.Sync(t, b)
	want := strings.Replace(wantEntries(t, b), "\nneigh:", "\n192.0.2.0/24 scope link\nneigh:", 1)
	if got := a.entries(t); got != want {
		t.Errorf("after restart, host a shows\n%s\nwant\n%s", got, want)
	}
	if len(cnt.changes) != 3 {
		t.Errorf("restart Sync made %q, want only c's three entries removed", cnt.changes)
	}
	if got := foreignShown(); got != foreignBefore {
		t.Errorf("foreign routes changed:\n%s\nwant\n%s", got, foreignBefore)
	}
	a.Ping(t, b)
}

func TestIncompatibleDeviceIsReplaced(t *testing.T) {
	a := newHosts(t, 1)[0]
	a.IP(t, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dev", "eth0", "local", "192.168.100.1", "dstport", "4789")
	idx, _ := a.link(t)
	a.start(t, `{"Type":"vxlan"}`)
	if idx2, _ := a.link(t); idx2 == idx {
		t.Error("incompatible device was kept")
	}
	if dev := a.IP(t, "-d", "link", "show", "flannel.1"); !strings.Contains(dev, "dstport 8472") {
		t.Errorf("replacement device: %s", dev)
	}
	if !slices.ContainsFunc(a.Logs.Take(), func(l string) bool { return strings.Contains(l, "port 4789, want 8472") }) {
		t.Error("no log line saying why the device was replaced")
	}
}

func TestRepair(t *testing.T) {
	hs := newHosts(t, 2)
	a, b := hs[0], hs[1]
	a.start(t, `{"Type":"vxlan"}`)
	b.start(t, `{"Type":"vxlan"}`)
	a.Sync(t, b)
	b.Sync(t, a)
	a.Ping(t, b)
	_, mac := a.link(t)
	want := wantEntries(t, b)
	repair := func() {
		t.Helper()
		if err := a.B.Repair(context.Background()); err != nil {
			t.Fatal(err)
		}
	}

	// Nothing wrong: nothing written.
	cnt := a.count(t)
	repair()
	if len(cnt.changes) != 0 {
		t.Errorf("Repair of a healthy datapath made changes: %q", cnt.changes)
	}

	t.Run("device deleted", func(t *testing.T) {
		a.IP(t, "link", "del", "flannel.1")
		routetest.MustNotPing(t, a.Ctr, a.CtrAddr, b.CtrAddr)
		repair()
		if _, mac2 := a.link(t); mac2 != mac {
			t.Errorf("recreated device has MAC %s, want %s", mac2, mac)
		}
		if addr := a.IP(t, "-4", "-o", "addr", "show", "dev", "flannel.1"); !strings.Contains(addr, "inet 10.5.1.0/32 ") {
			t.Errorf("recreated device lacks its address: %s", addr)
		}
		if got := a.entries(t); got != want {
			t.Errorf("after repair host a shows\n%s\nwant\n%s", got, want)
		}
		a.Ping(t, b)
	})
	t.Run("route deleted", func(t *testing.T) {
		a.IP(t, "route", "del", "10.5.2.0/24")
		repair()
		if got := a.entries(t); got != want {
			t.Errorf("after repair host a shows\n%s\nwant\n%s", got, want)
		}
		a.Ping(t, b)
	})
	t.Run("neighbour and fdb deleted", func(t *testing.T) {
		a.IP(t, "neigh", "del", "10.5.2.0", "dev", "flannel.1")
		routetest.Run(t, a.NS, "bridge", "fdb", "del", b.mac(t), "dev", "flannel.1", "dst", "192.168.100.2", "self")
		repair()
		if got := a.entries(t); got != want {
			t.Errorf("after repair host a shows\n%s\nwant\n%s", got, want)
		}
		a.Ping(t, b)
	})
	t.Run("MAC changed and device down", func(t *testing.T) {
		a.IP(t, "link", "set", "flannel.1", "down", "address", "02:11:22:33:44:55")
		repair()
		if _, mac2 := a.link(t); mac2 != mac {
			t.Errorf("MAC after repair %s, want %s", mac2, mac)
		}
		if dev := a.IP(t, "link", "show", "flannel.1"); !strings.Contains(dev, ",UP,") {
			t.Errorf("device not up after repair: %s", dev)
		}
		if got := a.entries(t); got != want {
			t.Errorf("after repair host a shows\n%s\nwant\n%s", got, want)
		}
		a.Ping(t, b)
	})
}

func TestPeerMACChange(t *testing.T) {
	hs := newHosts(t, 2)
	a, b := hs[0], hs[1]
	a.start(t, `{"Type":"vxlan"}`)
	b.start(t, `{"Type":"vxlan"}`)
	a.Sync(t, b)
	b.Sync(t, a)
	a.Ping(t, b)
	oldMAC := b.mac(t)

	// b reboots: its device and MAC are new.
	_ = b.B.Close()
	b.IP(t, "link", "del", "flannel.1")
	b.start(t, `{"Type":"vxlan"}`)
	b.Sync(t, a)
	if b.mac(t) == oldMAC {
		t.Fatal("recreated device kept its MAC; the test needs a new one")
	}
	a.Sync(t, b)
	got := a.entries(t)
	if want := wantEntries(t, b); got != want {
		t.Errorf("host a shows\n%s\nwant\n%s", got, want)
	}
	if strings.Contains(got, oldMAC) {
		t.Errorf("old MAC %s still present:\n%s", oldMAC, got)
	}
	a.Ping(t, b)
}

func TestDirectRouting(t *testing.T) {
	hs := newHosts(t, 3)
	a, b, c := hs[0], hs[1], hs[2]
	// a reaches c's underlay address only through b, so c is not on-link
	// for a; every other pair is.
	a.IP(t, "route", "add", "192.168.100.3/32", "via", "192.168.100.2")
	for _, k := range []string{"all", "eth0"} {
		routetest.Sysctl(t, a.NS, "net/ipv4/conf/"+k+"/accept_redirects", "0")
		routetest.Sysctl(t, b.NS, "net/ipv4/conf/"+k+"/send_redirects", "0")
	}
	for _, h := range hs {
		h.start(t, `{"Type":"vxlan","DirectRouting":true}`)
	}
	a.Sync(t, b, c)
	b.Sync(t, a, c)
	c.Sync(t, a, b)

	if got := strings.TrimSpace(a.IP(t, "-4", "route", "show", "10.5.2.0/24")); got != "10.5.2.0/24 via 192.168.100.2 dev eth0" {
		t.Errorf("a's route to b: %q, want a direct route", got)
	}
	if got, want := a.entries(t), wantEntries(t, c); got != want {
		t.Errorf("a's vxlan entries\n%s\nwant only c's\n%s", got, want)
	}
	if got := strings.TrimSpace(c.IP(t, "-4", "route", "show", "10.5.1.0/24")); got != "10.5.1.0/24 via 192.168.100.1 dev eth0" {
		t.Errorf("c's route to a: %q, want a direct route", got)
	}
	if got, want := c.entries(t), wantEntries(t); got != want {
		t.Errorf("c's vxlan entries\n%s\nwant none\n%s", got, want)
	}
	a.Ping(t, b, c)
	c.Ping(t, a, b)

	// The detour goes away; Repair looks the path up again and c becomes
	// a direct peer, its vxlan entries removed.
	a.IP(t, "route", "del", "192.168.100.3/32")
	if err := a.B.Repair(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(a.IP(t, "-4", "route", "show", "10.5.3.0/24")); got != "10.5.3.0/24 via 192.168.100.3 dev eth0" {
		t.Errorf("a's route to c: %q, want a direct route", got)
	}
	if got, want := a.entries(t), wantEntries(t); got != want {
		t.Errorf("a's vxlan entries\n%s\nwant none\n%s", got, want)
	}
	a.Ping(t, c)
}

func TestUnusablePeersAreSkippedWithOneWarning(t *testing.T) {
	a := newHosts(t, 1)[0]
	a.start(t, `{"Type":"vxlan"}`)
	mk := func(sn, typ, data string) lease.Lease {
		l := lease.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: lease.Attrs{
			PublicIP: netip.MustParseAddr("192.168.100.9"), BackendType: typ}}
		if data != "" {
			l.Attrs.BackendData = json.RawMessage(data)
		}
		return l
	}
	good := mk("10.5.2.0/24", "vxlan", `{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`)
	bad := []lease.Lease{
		mk("10.5.3.0/24", "host-gw", ""),
		mk("10.5.4.0/24", "vxlan", `{"VNI":1,"VtepMAC":"zz"}`),
		mk("10.5.5.0/24", "vxlan", `{"VNI":2,"VtepMAC":"02:00:00:00:00:05"}`),
		mk("10.5.6.0/24", "vxlan", `{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`),
		mk("10.6.0.0/24", "vxlan", `{"VNI":1,"VtepMAC":"02:00:00:00:00:07"}`),
		mk("10.5.8.0/24", "vxlan", `{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`), // good's MAC
		mk("10.5.9.0/24", "vxlan", ""),
	}
	peers := append([]lease.Lease{good, a.Lease()}, bad...)
	a.Logs.Take()
	if err := a.B.Sync(context.Background(), peers); err != nil {
		t.Fatal(err)
	}
	want := "routes:\n10.5.2.0/24 via 10.5.2.0 onlink\nneigh:\n10.5.2.0 lladdr 02:00:00:00:00:02 PERMANENT\nfdb:\n02:00:00:00:00:02 dst 192.168.100.9 self permanent"
	if got := a.entries(t); got != want {
		t.Errorf("host shows\n%s\nwant only the good peer\n%s", got, want)
	}
	logs := a.Logs.Take()
	for _, p := range bad {
		if !slices.ContainsFunc(logs, func(l string) bool {
			return strings.Contains(l, "level=WARN") && strings.Contains(l, "subnet="+p.Subnet.String())
		}) {
			t.Errorf("no warning naming %s", p.Subnet)
		}
	}
	if slices.ContainsFunc(logs, func(l string) bool { return strings.Contains(l, "subnet=10.5.1.0/24") }) {
		t.Error("own lease warned about")
	}
	if err := a.B.Sync(context.Background(), peers); err != nil {
		t.Fatal(err)
	}
	for _, l := range a.Logs.Take() {
		if strings.Contains(l, "level=WARN") {
			t.Errorf("repeated warning: %s", l)
		}
	}
}

func TestUseAfterClose(t *testing.T) {
	a := newHosts(t, 1)[0]
	a.start(t, `{"Type":"vxlan"}`)
	if err := a.B.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.B.Sync(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Sync after Close: %v, want an error", err)
	}
	if err := a.B.Repair(context.Background()); err == nil {
		t.Error("Repair after Close succeeded")
	}
	if _, err := a.B.Init(context.Background()); err == nil {
		t.Error("Init after Close succeeded")
	}
}
