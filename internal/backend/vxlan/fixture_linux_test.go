package vxlan

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/logbuf"
	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/ns"
	"github.com/flannel-go/flannel/internal/route"
	"github.com/flannel-go/flannel/internal/route/routetest"
)

func newLog(t testing.TB) (*slog.Logger, *logbuf.Buffer) {
	lb := &logbuf.Buffer{Echo: func(l string) { t.Log(l) }}
	return lb.Logger(), lb
}

// host is one flannel host of a lab: the namespace, its subnet, a
// container behind it and its backend.
type host struct {
	*routetest.Host
	subnet  netip.Prefix
	ctr     *ns.NS
	ctrAddr netip.Addr
	b       *Backend
	attrs   lease.Attrs
	mtu     int // what Configure returned
	logs    *logbuf.Buffer
}

// newHosts builds n hosts on one segment: host i (from 1) has underlay
// 192.168.100.i/24, subnet 10.5.i.0/24 and a container at 10.5.i.2.
func newHosts(t *testing.T, n int) []*host {
	netnstest.SkipUnlessModule(t, "vxlan")
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

// start builds a backend with the given options JSON and runs Init and
// Configure inside the host's namespace.
func (h *host) start(t testing.TB, opts string) {
	t.Helper()
	log, lb := newLog(t)
	bb, err := New(backend.Config{Options: json.RawMessage(opts), Network: netConf(), Ext: h.Ext, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	h.b, h.logs = bb.(*Backend), lb
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

// mac is the VTEP MAC the host advertises.
func (h *host) mac(t testing.TB) string {
	t.Helper()
	var d struct{ VtepMAC string }
	if err := json.Unmarshal(h.attrs.BackendData, &d); err != nil {
		t.Fatal(err)
	}
	return d.VtepMAC
}

func (h *host) ip(t testing.TB, args ...string) string {
	t.Helper()
	return routetest.Run(t, h.NS, "ip", args...)
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
	routes := sortedLines(h.ip(t, "-4", "route", "show", "dev", "flannel.1"))
	neigh := sortedLines(h.ip(t, "-4", "neigh", "show", "dev", "flannel.1"))
	fdb := sortedLines(routetest.Run(t, h.NS, "bridge", "fdb", "show", "dev", "flannel.1"))
	return "routes:\n" + routes + "\nneigh:\n" + neigh + "\nfdb:\n" + fdb
}

// wantEntries is what a user must see on a host whose vxlan peers are ps.
func wantEntries(t testing.TB, ps ...*host) string {
	var routes, neigh, fdb []string
	for _, p := range ps {
		gw := p.subnet.Addr()
		routes = append(routes, fmt.Sprintf("%s via %s onlink", p.subnet, gw))
		neigh = append(neigh, fmt.Sprintf("%s lladdr %s PERMANENT", gw, p.mac(t)))
		fdb = append(fdb, fmt.Sprintf("%s dst %s self permanent", p.mac(t), p.Ext.ExtAddr))
	}
	slices.Sort(routes)
	slices.Sort(neigh)
	slices.Sort(fdb)
	return "routes:\n" + strings.Join(routes, "\n") + "\nneigh:\n" + strings.Join(neigh, "\n") + "\nfdb:\n" + strings.Join(fdb, "\n")
}

// ping checks container-to-container traffic from h to each of ps.
func (h *host) ping(t testing.TB, ps ...*host) {
	t.Helper()
	for _, p := range ps {
		routetest.MustPing(t, h.ctr, h.ctrAddr, p.ctrAddr)
	}
}

// countingNL counts the calls that change kernel state.
type countingNL struct {
	netlinker
	changes []string
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
	nh, err := h.NS.Handle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nh.Close)
	c := &countingNL{netlinker: nh}
	h.b.nl = c
	applied := h.b.f.Table.Applied()
	h.b.f.Table = route.NewTable(c)
	h.b.f.Table.Load(applied)
	return c
}
