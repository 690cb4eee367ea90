package hostgw

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/route"
	"github.com/flannel-go/flannel/internal/route/routetest"
)

// TestUpdateEqualsSync: host-gw's incremental path ends where a Sync of
// the whole set would, whatever the sequence of changes.
func TestUpdateEqualsSync(t *testing.T) {
	pool := []netip.Prefix{netip.MustParsePrefix("10.6.0.0/24"), netip.MustParsePrefix("10.5.0.0/25"), netip.MustParsePrefix("10.5.0.0/23")}
	for i := range 10 {
		pool = append(pool, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24))
	}
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.5.9.0/24")}
	gen := func(r *rand.Rand, sn netip.Prefix) lease.Lease {
		ip := netip.AddrFrom4([4]byte{192, 168, 0, byte(r.IntN(5))})
		if r.IntN(6) == 0 {
			ip = netip.MustParseAddr("fd00::1")
		}
		return lease.Lease{Subnet: sn, Attrs: lease.Attrs{PublicIP: ip, BackendType: Type}}
	}
	routetest.CheckUpdates(t, 100, 30, pool, gen, func(t *testing.T) (routetest.Updatable, *routetest.FakeNetlink) {
		k := routetest.NewFakeNetlink()
		bb, err := New(backend.Config{Network: netConf(), Ext: iface.ExtIface{Name: "eth0", Index: 2, MTU: 1500,
			IfaceAddr: netip.MustParseAddr("192.168.0.9"), ExtAddr: netip.MustParseAddr("192.168.0.9")}})
		if err != nil {
			t.Fatal(err)
		}
		b := bb.(*Backend)
		b.nl = fakeNL{FakeNetlink: k}
		b.f.Table = route.NewTable(k)
		b.own = own.Subnet
		return b, k
	})
}

// fakeNL is the fake kernel plus the listing half of netlinker, which the
// desired state never calls.
type fakeNL struct {
	netlinker
	*routetest.FakeNetlink
}

func (f fakeNL) RouteReplace(r *netlink.Route) error { return f.FakeNetlink.RouteReplace(r) }
func (f fakeNL) RouteDel(r *netlink.Route) error     { return f.FakeNetlink.RouteDel(r) }
func (f fakeNL) NeighSet(n *netlink.Neigh) error     { return f.FakeNetlink.NeighSet(n) }
func (f fakeNL) NeighDel(n *netlink.Neigh) error     { return f.FakeNetlink.NeighDel(n) }
