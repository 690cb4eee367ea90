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
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/route"
	"github.com/flannel-go/flannel/internal/route/routetest"
)

func netConf() *netconf.Config {
	return &netconf.Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24, BackendType: Type}
}

// host is one host of a lab running the host-gw backend.
type host struct {
	*routetest.Node[*Backend]
}

// newHosts builds n hosts on one segment (see routetest.NewNodes).
func newHosts(t *testing.T, n int) []*host {
	var hs []*host
	for _, nd := range routetest.NewNodes[*Backend](t, "fbk", n) {
		hs = append(hs, &host{nd})
	}
	return hs
}

func (h *host) start(t testing.TB) {
	t.Helper()
	h.Start(t, func(ext iface.ExtIface, log *slog.Logger) (*Backend, error) {
		b, err := New(backend.Config{Options: json.RawMessage(`{"Type":"host-gw"}`), Network: netConf(), Ext: ext, Log: log})
		if err != nil {
			return nil, err
		}
		return b.(*Backend), nil
	})
}

// routes is `ip -4 route show` of the host, lines trimmed and sorted.
func (h *host) routes(t testing.TB) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(h.IP(t, "-4", "route", "show")), "\n")
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
		fmt.Sprintf("%s dev veth0 proto kernel scope link src %s", h.Subnet, h.Subnet.Addr().Next()),
	}, extra...)
	for _, p := range peers {
		lines = append(lines, fmt.Sprintf("%s via %s dev eth0", p.Subnet, p.Ext.IfaceAddr))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

type countingNL struct {
	netlinker
	route.NexthopNetlink
	changes []string
}

func (c *countingNL) RouteReplaceNH(r route.Route, id uint32) error {
	c.changes = append(c.changes, "replace "+r.Dst.String())
	return c.NexthopNetlink.RouteReplaceNH(r, id)
}

func (c *countingNL) RouteDelNH(r route.Route, id uint32) error {
	c.changes = append(c.changes, "del "+r.Dst.String())
	return c.NexthopNetlink.RouteDelNH(r, id)
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
	nh := routetest.Handle(t, h.NS)
	c := &countingNL{netlinker: nh, NexthopNetlink: nh}
	applied := h.B.f.Table.Applied()
	h.B.nl, h.B.f.Table = c, route.NewTable(c)
	h.B.f.Table.Load(applied)
	return c
}

func TestTrafficAndRoutes(t *testing.T) {
	hs := newHosts(t, 3)
	a, b, c := hs[0], hs[1], hs[2]
	for _, h := range hs {
		h.start(t)
	}
	a.Sync(t, b, c)
	b.Sync(t, a, c)
	c.Sync(t, a, b)

	if got, want := a.Attrs, (lease.Attrs{PublicIP: netip.MustParseAddr("192.168.100.1"), BackendType: "host-gw"}); !got.Equal(want) {
		t.Errorf("attrs = %+v, want %+v", got, want)
	}
	if a.MTU != 1500 {
		t.Errorf("Configure returned MTU %d, want eth0's 1500", a.MTU)
	}
	if got, want := a.routes(t), a.wantRoutes(nil, b, c); got != want {
		t.Errorf("ip route on a:\n%s\nwant\n%s", got, want)
	}
	a.Ping(t, b, c)
	b.Ping(t, c)

	cnt := a.count(t)
	a.Sync(t, b, c)
	if len(cnt.changes) != 0 {
		t.Errorf("second Sync with the same peers made changes: %q", cnt.changes)
	}
	a.Sync(t, b)
	if !slices.Equal(cnt.changes, []string{"del 10.5.3.0/24"}) {
		t.Errorf("removing c made %q, want only its route deleted", cnt.changes)
	}
	if got, want := a.routes(t), a.wantRoutes(nil, b); got != want {
		t.Errorf("ip route on a after c left:\n%s\nwant\n%s", got, want)
	}
	a.Ping(t, b)
	routetest.MustNotPing(t, a.Ctr, a.CtrAddr, c.CtrAddr)
}

func TestRestartRemovesStaleRoutesOnly(t *testing.T) {
	hs := newHosts(t, 3)
	a, b, c := hs[0], hs[1], hs[2]
	for _, h := range hs {
		h.start(t)
	}
	a.Sync(t, b, c)
	b.Sync(t, a)
	foreign := []string{
		"192.0.2.0/24 via 192.168.100.254 dev eth0", // outside the network
		"10.5.200.0/24 via 10.5.1.2 dev veth0",      // another device
		"10.5.201.0/24 dev eth0 scope link",         // no gateway
	}
	for _, r := range foreign {
		a.IP(t, append([]string{"route", "add"}, strings.Fields(r)...)...)
	}

	_ = a.B.Close()
	a.start(t) // c left while a was down
	a.Ping(t, b)
	a.Sync(t, b)
	if got, want := a.routes(t), a.wantRoutes(foreign, b); got != want {
		t.Errorf("ip route on a after restart:\n%s\nwant\n%s", got, want)
	}
	a.Ping(t, b)
}

func TestRepair(t *testing.T) {
	hs := newHosts(t, 3)
	a, b, c := hs[0], hs[1], hs[2]
	for _, h := range hs {
		h.start(t)
	}
	a.Sync(t, b, c)
	b.Sync(t, a)
	c.Sync(t, a)
	want := a.wantRoutes(nil, b, c)

	cnt := a.count(t)
	if err := a.B.Repair(context.Background()); err != nil || len(cnt.changes) != 0 {
		t.Fatalf("Repair of healthy routes: changes %q, err %v; want none", cnt.changes, err)
	}

	a.IP(t, "route", "del", "10.5.2.0/24")
	a.IP(t, "route", "replace", "10.5.3.0/24", "via", "192.168.100.2", "dev", "eth0")
	routetest.MustNotPing(t, a.Ctr, a.CtrAddr, b.CtrAddr)
	if err := a.B.Repair(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := a.routes(t); got != want {
		t.Errorf("ip route on a after repair:\n%s\nwant\n%s", got, want)
	}
	a.Ping(t, b, c)
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
	peers := []lease.Lease{b.Lease(), out, a.Lease()}
	a.Logs.Take()
	for range 2 {
		if err := a.B.Sync(context.Background(), peers); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := a.routes(t), a.wantRoutes(nil, b); got != want {
		t.Errorf("ip route on a:\n%s\nwant\n%s", got, want)
	}
	var warns []string
	for _, l := range a.Logs.Take() {
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
	b.Sync(t, a)
	far := lease.Lease{Subnet: netip.MustParsePrefix("10.5.9.0/24"), Attrs: lease.Attrs{
		PublicIP: netip.MustParseAddr("198.51.100.9"), BackendType: Type}}
	err := a.B.Sync(context.Background(), []lease.Lease{far, b.Lease()})
	if err == nil || !strings.Contains(err.Error(), "10.5.9.0/24") {
		t.Fatalf("Sync with an off-link peer: %v, want an error naming its subnet", err)
	}
	if got, want := a.routes(t), a.wantRoutes(nil, b); got != want {
		t.Errorf("ip route on a:\n%s\nwant\n%s", got, want)
	}
	a.Ping(t, b)
}
