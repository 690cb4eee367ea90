package vxlan

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/route"
	"github.com/flannel-go/flannel/internal/route/routetest"
)

// host is one host of a lab running the vxlan backend.
type host struct {
	*routetest.Node[*Backend]
}

// newHosts builds n hosts on one segment (see routetest.NewNodes).
func newHosts(t *testing.T, n int) []*host {
	netnstest.SkipUnlessModule(t, "vxlan")
	var hs []*host
	for _, nd := range routetest.NewNodes[*Backend](t, "fbk", n) {
		hs = append(hs, &host{nd})
	}
	return hs
}

// start builds a backend with the given options JSON and runs Init and
// Configure inside the host's namespace.
func (h *host) start(t testing.TB, opts string) {
	t.Helper()
	h.startWithPrev(t, opts, lease.Attrs{})
}

// startWithPrev is start for a host that published prev before (what
// the Kubernetes source reads back from the node's annotations).
func (h *host) startWithPrev(t testing.TB, opts string, prev lease.Attrs) {
	t.Helper()
	h.Start(t, func(ext iface.ExtIface, log *slog.Logger) (*Backend, error) {
		b, err := New(backend.Config{Options: json.RawMessage(opts), Network: netConf(), Ext: ext, Log: log, Prev: prev})
		if err != nil {
			return nil, err
		}
		return b.(*Backend), nil
	})
}

// mac is the VTEP MAC the host advertises.
func (h *host) mac(t testing.TB) string {
	t.Helper()
	var d struct{ VtepMAC string }
	if err := json.Unmarshal(h.Attrs.BackendData, &d); err != nil {
		t.Fatal(err)
	}
	return d.VtepMAC
}

// sortedLines normalises command output whose order is the kernel's hash
// order (neighbours, FDB).
func sortedLines(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// entries is what `ip route`, `ip neigh` and `bridge fdb` show for the
// flannel device of h.
func (h *host) entries(t testing.TB) string {
	t.Helper()
	routes := sortedLines(h.IP(t, "-4", "route", "show", "dev", "flannel.1"))
	neigh := sortedLines(h.IP(t, "-4", "neigh", "show", "dev", "flannel.1"))
	fdb := sortedLines(routetest.Run(t, h.NS, "bridge", "fdb", "show", "dev", "flannel.1"))
	return "routes:\n" + routes + "\nneigh:\n" + neigh + "\nfdb:\n" + fdb
}

// wantEntries is what a user must see on a host whose vxlan peers are ps.
func wantEntries(t testing.TB, ps ...*host) string {
	var routes, neigh, fdb []string
	for _, p := range ps {
		gw := p.Subnet.Addr()
		routes = append(routes, fmt.Sprintf("%s via %s onlink", p.Subnet, gw))
		neigh = append(neigh, fmt.Sprintf("%s lladdr %s PERMANENT", gw, p.mac(t)))
		fdb = append(fdb, fmt.Sprintf("%s dst %s self permanent", p.mac(t), p.Ext.ExtAddr))
	}
	slices.Sort(routes)
	slices.Sort(neigh)
	slices.Sort(fdb)
	return "routes:\n" + strings.Join(routes, "\n") + "\nneigh:\n" + strings.Join(neigh, "\n") + "\nfdb:\n" + strings.Join(fdb, "\n")
}

// countingNL counts the calls that change kernel state.
type countingNL struct {
	netlinker
	route.NexthopNetlink
	changes []string
}

func (c *countingNL) RouteReplaceNH(r route.Route, id uint32) error {
	c.note("route replace " + r.Dst.String())
	return c.NexthopNetlink.RouteReplaceNH(r, id)
}

func (c *countingNL) RouteDelNH(r route.Route, id uint32) error {
	c.note("route del " + r.Dst.String())
	return c.NexthopNetlink.RouteDelNH(r, id)
}

func (c *countingNL) note(s string) { c.changes = append(c.changes, s) }

func (c *countingNL) RouteReplace(r *netlink.Route) error {
	c.note("route replace " + r.Dst.String())
	return c.netlinker.RouteReplace(r)
}
func (c *countingNL) RouteDel(r *netlink.Route) error {
	c.note("route del " + r.Dst.String())
	return c.netlinker.RouteDel(r)
}
func (c *countingNL) NeighSet(n *netlink.Neigh) error {
	c.note("neigh set " + n.String())
	return c.netlinker.NeighSet(n)
}
func (c *countingNL) NeighDel(n *netlink.Neigh) error {
	c.note("neigh del " + n.String())
	return c.netlinker.NeighDel(n)
}
func (c *countingNL) LinkAdd(l netlink.Link) error {
	c.note("link add")
	return c.netlinker.LinkAdd(l)
}
func (c *countingNL) LinkDel(l netlink.Link) error {
	c.note("link del")
	return c.netlinker.LinkDel(l)
}
func (c *countingNL) LinkSetUp(l netlink.Link) error {
	c.note("link up")
	return c.netlinker.LinkSetUp(l)
}
func (c *countingNL) LinkSetMTU(l netlink.Link, m int) error {
	c.note("link mtu")
	return c.netlinker.LinkSetMTU(l, m)
}
func (c *countingNL) LinkSetHardwareAddr(l netlink.Link, hw net.HardwareAddr) error {
	c.note("link mac")
	return c.netlinker.LinkSetHardwareAddr(l, hw)
}
func (c *countingNL) AddrAdd(l netlink.Link, a *netlink.Addr) error {
	c.note("addr add")
	return c.netlinker.AddrAdd(l, a)
}
func (c *countingNL) AddrDel(l netlink.Link, a *netlink.Addr) error {
	c.note("addr del")
	return c.netlinker.AddrDel(l, a)
}

// count makes every later netlink call of h's backend go through a
// counter. The handle is opened in the host's namespace.
func (h *host) count(t testing.TB) *countingNL {
	t.Helper()
	nh := routetest.Handle(t, h.NS)
	c := &countingNL{netlinker: nh, NexthopNetlink: nh}
	h.B.nl = c
	applied := h.B.f.Table.Applied()
	h.B.f.Table = route.NewTable(c)
	h.B.f.Table.Load(applied)
	return c
}
