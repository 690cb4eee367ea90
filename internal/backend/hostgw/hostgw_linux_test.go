package hostgw

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/logbuf"
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/ns"
	"github.com/flannel-go/flannel/internal/route"
	"github.com/flannel-go/flannel/internal/route/routetest"
)

func netConf() *netconf.Config {
	return &netconf.Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24, BackendType: Type}
}

type host struct {
	*routetest.Host
	subnet  netip.Prefix
	ctr     *ns.NS
	ctrAddr netip.Addr
	b       *Backend
	attrs   lease.Attrs
	mtu     int
	logs    *logbuf.Buffer
}

// newHosts builds n hosts on one segment: host i (from 1) has underlay
// 192.168.100.i/24, subnet 10.5.i.0/24 and a container at 10.5.i.2.
func newHosts(t *testing.T, n int) []*host {
	lab := routetest.NewLab(t, "fbk")
	var hs []*host
	for i := 1; i <= n; i++ {
		h := &host{
			Host:   lab.AddHost(netip.MustParsePrefix(fmt.Sprintf("192.168.100.%d/24", i))),
			subnet: netip.MustParsePrefix(fmt.Sprintf("10.5.%d.0/24", i)),
		}
		h.ctr, h.ctrAddr = h.AddContainer(h.subnet)
		hs = append(hs, h)
	}
	return hs
}

func (h *host) start(t testing.TB) {
	t.Helper()
	h.logs = &logbuf.Buffer{Echo: func(l string) { t.Log(l) }}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	bb, err := New(backend.Config{Options: json.RawMessage(`{"Type":"host-gw"}`), Network: netConf(), Ext: h.Ext, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	h.b = bb.(*Backend)
	t.Cleanup(func() { _ = h.b.Close() })
	if err := h.NS.Do(func() error {
		var err error
		if h.attrs, err = h.b.Init(context.Background()); err != nil {
			return err
		}
		h.mtu, err = h.b.Configure(context.Background(), h.lease())
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func (h *host) lease() lease.Lease { return lease.Lease{Subnet: h.subnet, Attrs: h.attrs} }

func (h *host) sync(t testing.TB, peers ...*host) {
	t.Helper()
	var ls []lease.Lease
	for _, p := range peers {
		ls = append(ls, p.lease())
	}
	if err := h.b.Sync(context.Background(), ls); err != nil {
		t.Fatal(err)
	}
}

func (h *host) ip(t testing.TB, args ...string) string {
	t.Helper()
	return routetest.Run(t, h.NS, "ip", args...)
}

// routes is `ip -4 route show` of the host, lines trimmed and sorted.
func (h *host) routes(t testing.TB) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(h.ip(t, "-4", "route", "show")), "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// wantRoutes is what `ip -4 route show` must print on h: its connected
// routes, the extra lines given, and one route per peer.
func (h *host) wantRoutes(extra []string, peers ...*host) string {
	lines := append([]string{
		fmt.Sprintf("192.168.100.0/24 dev eth0 proto kernel scope link src %s", h.Ext.IfaceAddr),
		fmt.Sprintf("%s dev veth0 proto kernel scope link src %s", h.subnet, h.subnet.Addr().Next()),
	}, extra...)
	for _, p := range peers {
		lines = append(lines, fmt.Sprintf("%s via %s dev eth0", p.subnet, p.Ext.IfaceAddr))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func (h *host) ping(t testing.TB, ps ...*host) {
	t.Helper()
	for _, p := range ps {
		routetest.MustPing(t, h.ctr, h.ctrAddr, p.ctrAddr)
	}
}

type countingNL struct {
	netlinker
	changes []string
}

func (c *countingNL) RouteReplace(r *netlink.Route) error {
	c.changes = append(c.changes, "replace "+r.Dst.String())
	return c.netlinker.RouteReplace(r)
}

func (c *countingNL) RouteDel(r *netlink.Route) error {
	c.changes = append(c.changes, "del "+r.Dst.String())
	return c.netlinker.RouteDel(r)
}

func (h *host) count(t testing.TB) *countingNL {
	t.Helper()
	nh, err := h.NS.Handle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nh.Close)
	c := &countingNL{netlinker: nh}
	applied := h.b.f.Table.Applied()
	h.b.nl, h.b.f.Table = c, route.NewTable(c)
	h.b.f.Table.Load(applied)
	return c
}

func TestTrafficAndRoutes(t *testing.T) {
	hs := newHosts(t, 3)
	a, b, c := hs[0], hs[1], hs[2]
	for _, h := range hs {
		h.start(t)
	}
	a.sync(t, b, c)
	b.sync(t, a, c)
	c.sync(t, a, b)

	if got, want := a.attrs, (lease.Attrs{PublicIP: netip.MustParseAddr("192.168.100.1"), BackendType: "host-gw"}); !got.Equal(want) {
		t.Errorf("attrs = %+v, want %+v", got, want)
	}
	if a.mtu != 1500 {
		t.Errorf("Configure returned MTU %d, want eth0's 1500", a.mtu)
	}
	if got, want := a.routes(t), a.wantRoutes(nil, b, c); got != want {
		t.Errorf("ip route on a:\n%s\nwant\n%s", got, want)
	}
	a.ping(t, b, c)
	b.ping(t, c)

	cnt := a.count(t)
	a.sync(t, b, c)
	if len(cnt.changes) != 0 {
		t.Errorf("second Sync with the same peers made changes: %q", cnt.changes)
	}
	a.sync(t, b)
	if !slices.Equal(cnt.changes, []string{"del 10.5.3.0/24"}) {
		t.Errorf("removing c made %q, want only its route deleted", cnt.changes)
	}
	if got, want := a.routes(t), a.wantRoutes(nil, b); got != want {
		t.Errorf("ip route on a after c left:\n%s\nwant\n%s", got, want)
	}
	a.ping(t, b)
	routetest.MustNotPing(t, a.ctr, a.ctrAddr, c.ctrAddr)
}

func TestRestartRemovesStaleRoutesOnly(t *testing.T) {
	hs := newHosts(t, 3)
	a, b, c := hs[0], hs[1], hs[2]
	for _, h := range hs {
		h.start(t)
	}
	a.sync(t, b, c)
	b.sync(t, a)
	foreign := []string{
		"192.0.2.0/24 via 192.168.100.254 dev eth0", // outside the network
		"10.5.200.0/24 via 10.5.1.2 dev veth0",      // another device
		"10.5.201.0/24 dev eth0 scope link",         // no gateway
	}
	for _, r := range foreign {
		a.ip(t, append([]string{"route", "add"}, strings.Fields(r)...)...)
	}

	_ = a.b.Close()
	a.start(t) // c left while a was down
	a.ping(t, b)
	a.sync(t, b)
	if got, want := a.routes(t), a.wantRoutes(foreign, b); got != want {
		t.Errorf("ip route on a after restart:\n%s\nwant\n%s", got, want)
	}
	a.ping(t, b)
}

func TestRepair(t *testing.T) {
	hs := newHosts(t, 3)
	a, b, c := hs[0], hs[1], hs[2]
	for _, h := range hs {
		h.start(t)
	}
	a.sync(t, b, c)
	b.sync(t, a)
	c.sync(t, a)
	want := a.wantRoutes(nil, b, c)

	cnt := a.count(t)
	if err := a.b.Repair(context.Background()); err != nil || len(cnt.changes) != 0 {
		t.Fatalf("Repair of healthy routes: changes %q, err %v; want none", cnt.changes, err)
	}

	a.ip(t, "route", "del", "10.5.2.0/24")
	a.ip(t, "route", "replace", "10.5.3.0/24", "via", "192.168.100.2", "dev", "eth0")
	routetest.MustNotPing(t, a.ctr, a.ctrAddr, b.ctrAddr)
	if err := a.b.Repair(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := a.routes(t); got != want {
		t.Errorf("ip route on a after repair:\n%s\nwant\n%s", got, want)
	}
	a.ping(t, b, c)
}

// A lease outside the network would make a route the backend does not own
// (a restart would never remove it), so Sync skips it even though the
// daemon is meant to filter such leases first. (Leases of other backends
// are the daemon's to filter: TestInfo.)
func TestUnusablePeersAreIgnoredWithOneWarning(t *testing.T) {
	hs := newHosts(t, 2)
	a, b := hs[0], hs[1]
	a.start(t)
	b.start(t)
	out := lease.Lease{Subnet: netip.MustParsePrefix("10.6.9.0/24"), Attrs: lease.Attrs{
		PublicIP: netip.MustParseAddr("192.168.100.9"), BackendType: Type}}
	peers := []lease.Lease{b.lease(), out, a.lease()}
	a.logs.Take()
	for range 2 {
		if err := a.b.Sync(context.Background(), peers); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := a.routes(t), a.wantRoutes(nil, b); got != want {
		t.Errorf("ip route on a:\n%s\nwant\n%s", got, want)
	}
	var warns []string
	for _, l := range a.logs.Take() {
		if strings.Contains(l, "level=WARN") {
			warns = append(warns, l)
		}
	}
	if len(warns) != 1 || !strings.Contains(warns[0], "subnet=10.6.9.0/24") {
		t.Errorf("warnings %q, want exactly one naming 10.6.9.0/24", warns)
	}
}

func TestNATIsRejected(t *testing.T) {
	ext := iface.ExtIface{Name: "eth0", Index: 2, MTU: 1500,
		IfaceAddr: netip.MustParseAddr("10.0.2.15"), ExtAddr: netip.MustParseAddr("203.0.113.7")}
	_, err := New(backend.Config{Network: netConf(), Ext: ext})
	if err == nil || !strings.Contains(err.Error(), "NAT") || !strings.Contains(err.Error(), "203.0.113.7") {
		t.Fatalf("New with public IP ≠ interface IP: %v, want an error about NAT naming the public IP", err)
	}
	if _, err := New(backend.Config{Options: json.RawMessage(`[`), Network: netConf(), Ext: iface.ExtIface{}}); err == nil {
		t.Error("New accepted malformed options")
	}
}

func TestUnreachablePeerDoesNotBlockOthers(t *testing.T) {
	hs := newHosts(t, 2)
	a, b := hs[0], hs[1]
	a.start(t)
	b.start(t)
	b.sync(t, a)
	far := lease.Lease{Subnet: netip.MustParsePrefix("10.5.9.0/24"), Attrs: lease.Attrs{
		PublicIP: netip.MustParseAddr("198.51.100.9"), BackendType: Type}}
	err := a.b.Sync(context.Background(), []lease.Lease{far, b.lease()})
	if err == nil || !strings.Contains(err.Error(), "10.5.9.0/24") {
		t.Fatalf("Sync with an off-link peer: %v, want an error naming its subnet", err)
	}
	if got, want := a.routes(t), a.wantRoutes(nil, b); got != want {
		t.Errorf("ip route on a:\n%s\nwant\n%s", got, want)
	}
	a.ping(t, b)
}
