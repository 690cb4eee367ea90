package vxlan

import (
	"encoding/json"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/route"
	"github.com/flannel-go/flannel/internal/route/routetest"
)

// fakeNL is the fake kernel plus the rest of netlinker, which the desired
// state never calls.
type fakeNL struct {
	netlinker
	*routetest.FakeNetlink
}

func (f fakeNL) RouteReplace(r *netlink.Route) error { return f.FakeNetlink.RouteReplace(r) }
func (f fakeNL) RouteDel(r *netlink.Route) error     { return f.FakeNetlink.RouteDel(r) }
func (f fakeNL) NeighSet(n *netlink.Neigh) error     { return f.FakeNetlink.NeighSet(n) }
func (f fakeNL) NeighDel(n *netlink.Neigh) error     { return f.FakeNetlink.NeighDel(n) }
func (f fakeNL) RouteGet(ip net.IP) ([]netlink.Route, error) {
	return f.FakeNetlink.RouteGet(ip)
}

// TestUpdateEqualsSync: vxlan's incremental path ends where a Sync of the
// whole set would, whatever the sequence of changes: peers sharing a
// VtepMAC (the lowest subnet keeps it, and a peer takes it over when its
// holder leaves or changes), overlapping subnets sharing a network
// address, bad BackendData, a foreign VNI, no IPv4 PublicIP, subnets
// outside the network or ours, with and without DirectRouting.
func TestUpdateEqualsSync(t *testing.T) {
	pool := []netip.Prefix{netip.MustParsePrefix("10.6.0.0/24"), netip.MustParsePrefix("10.5.0.0/25"),
		netip.MustParsePrefix("10.5.0.0/23"), netip.MustParsePrefix("10.5.2.0/23")}
	for i := range 10 {
		pool = append(pool, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24))
	}
	own := netip.MustParsePrefix("10.5.9.0/24")
	gen := func(r *rand.Rand, sn netip.Prefix) lease.Lease {
		ip := netip.AddrFrom4([4]byte{192, 168, 0, byte(r.IntN(6))})
		if r.IntN(10) == 0 {
			ip = netip.MustParseAddr("fd00::1")
		}
		data := encodeBackendData(1, route.MAC{2, 0, 0, 0, 0, byte(r.IntN(5))})
		switch r.IntN(12) {
		case 0:
			data = json.RawMessage(`{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`)
		case 1:
			data = json.RawMessage(`{"VNI":`)
		case 2:
			data = encodeBackendData(2, route.MAC{2, 0, 0, 0, 0, 1})
		}
		return lease.Lease{Subnet: sn, Attrs: lease.Attrs{PublicIP: ip, BackendType: Type, BackendData: data}}
	}
	for _, direct := range []bool{false, true} {
		opts := Options{VNI: 1, DirectRouting: direct}
		routetest.CheckUpdates(t, 100, 30, pool, gen, func(t *testing.T) (routetest.Updatable, *routetest.FakeNetlink) {
			k := routetest.NewFakeNetlink()
			k.OnLinkIndex = 2
			for i := range 3 { // 192.168.0.0-2 are on the segment
				k.OnLink[netip.AddrFrom4([4]byte{192, 168, 0, byte(i)})] = true
			}
			bb, err := newBackend(backend.Config{Network: netConf(), Ext: iface.ExtIface{Name: "eth0", Index: 2, MTU: 1500,
				IfaceAddr: netip.MustParseAddr("192.168.0.9"), ExtAddr: netip.MustParseAddr("192.168.0.9")}}, opts)
			if err != nil {
				t.Fatal(err)
			}
			b := bb.(*Backend)
			b.nl = fakeNL{FakeNetlink: k}
			b.link = &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Index: 7}}
			b.f.Table = route.NewTable(b.nl)
			b.own = own
			return b, k
		})
	}
}
