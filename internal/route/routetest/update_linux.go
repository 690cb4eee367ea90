package routetest

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/route"
)

// FakeNetlink accepts every change a route.Table makes and keeps the
// result keyed as the kernel keys it, so two backends fed the same peers
// by different paths can be compared. RouteGet says a gateway-less route
// through OnLinkIndex for the addresses in OnLink and a gateway otherwise.
//
// It has nexthop objects, as Linux 5.3 and later do, so a Table on it
// installs IPv4 routes through a gateway through them; Entries shows such
// a route as the classic one, and CheckNexthops says whether the objects
// are exactly those the routes use.
type FakeNetlink struct {
	Entries     map[string]string
	OnLink      map[netip.Addr]bool
	OnLinkIndex int
	Nexthops    map[uint32]route.Nexthop
	routeNH     map[string]uint32 // route entry key → its object's id
}

var _ route.NexthopNetlink = (*FakeNetlink)(nil)

// NewFakeNetlink returns an empty fake kernel.
func NewFakeNetlink() *FakeNetlink {
	return &FakeNetlink{Entries: map[string]string{}, OnLink: map[netip.Addr]bool{},
		Nexthops: map[uint32]route.Nexthop{}, routeNH: map[string]uint32{}}
}

func routeEntryKey(dst fmt.Stringer, metric int) string {
	return fmt.Sprintf("route %s metric %d", dst, metric)
}

func (k *FakeNetlink) RouteReplace(r *netlink.Route) error {
	key := routeEntryKey(r.Dst, r.Priority)
	k.Entries[key] = fmt.Sprintf("via %v dev %d flags %d", r.Gw, r.LinkIndex, r.Flags)
	delete(k.routeNH, key)
	return nil
}

func (k *FakeNetlink) RouteDel(r *netlink.Route) error {
	key := routeEntryKey(r.Dst, r.Priority)
	delete(k.Entries, key)
	delete(k.routeNH, key)
	return nil
}

func (k *FakeNetlink) NexthopList() ([]route.Nexthop, error) {
	return slices.Collect(maps.Values(k.Nexthops)), nil
}

func (k *FakeNetlink) NexthopAdd(n route.Nexthop) error {
	if _, ok := k.Nexthops[n.ID]; ok {
		return unix.EEXIST
	}
	k.Nexthops[n.ID] = n
	return nil
}

// NexthopDel deletes the object and, as the kernel does, its routes.
func (k *FakeNetlink) NexthopDel(id uint32) error {
	if _, ok := k.Nexthops[id]; !ok {
		return unix.ENOENT
	}
	delete(k.Nexthops, id)
	for key, nh := range k.routeNH {
		if nh == id {
			delete(k.Entries, key)
			delete(k.routeNH, key)
		}
	}
	return nil
}

func (k *FakeNetlink) RouteReplaceNH(r route.Route, id uint32) error {
	n, ok := k.Nexthops[id]
	if !ok {
		return unix.EINVAL
	}
	flags := 0
	if n.OnLink {
		flags = int(netlink.FLAG_ONLINK)
	}
	key := routeEntryKey(r.Dst, r.Metric)
	k.Entries[key] = fmt.Sprintf("via %v dev %d flags %d", n.Gw, n.LinkIndex, flags)
	k.routeNH[key] = id
	return nil
}

func (k *FakeNetlink) RouteDelNH(r route.Route, id uint32) error {
	key := routeEntryKey(r.Dst, r.Metric)
	if nh, ok := k.routeNH[key]; !ok || nh != id {
		return unix.ESRCH
	}
	delete(k.Entries, key)
	delete(k.routeNH, key)
	return nil
}

// CheckNexthops reports objects no route uses and objects alike (a
// leak a restart would have to clean up).
func (k *FakeNetlink) CheckNexthops() error {
	used := map[uint32]bool{}
	for _, id := range k.routeNH {
		used[id] = true
	}
	alike := map[route.Nexthop]uint32{}
	for id, n := range k.Nexthops {
		if !used[id] {
			return fmt.Errorf("nexthop %v is used by no route", n)
		}
		n.ID = 0
		if o, ok := alike[n]; ok {
			return fmt.Errorf("nexthops %d and %d are alike: %v", o, id, n)
		}
		alike[n] = id
	}
	return nil
}

func neighKey(n *netlink.Neigh) string {
	if n.Family == 7 { // AF_BRIDGE: the whole entry is the key
		return fmt.Sprintf("fdb %s dst %s dev %d", n.HardwareAddr, n.IP, n.LinkIndex)
	}
	return fmt.Sprintf("neigh %s dev %d", n.IP, n.LinkIndex)
}

func (k *FakeNetlink) NeighSet(n *netlink.Neigh) error {
	k.Entries[neighKey(n)] = n.HardwareAddr.String()
	return nil
}

func (k *FakeNetlink) NeighDel(n *netlink.Neigh) error {
	delete(k.Entries, neighKey(n))
	return nil
}

func (k *FakeNetlink) RouteGet(ip net.IP) ([]netlink.Route, error) {
	a, _ := netip.AddrFromSlice(ip)
	if k.OnLink[a.Unmap()] {
		return []netlink.Route{{LinkIndex: k.OnLinkIndex}}, nil
	}
	return []netlink.Route{{LinkIndex: k.OnLinkIndex, Gw: net.IPv4(192, 0, 2, 1)}}, nil
}

// Render lists the entries, sorted.
func (k *FakeNetlink) Render() string {
	var lines []string
	for _, key := range slices.Sorted(maps.Keys(k.Entries)) {
		lines = append(lines, key+" = "+k.Entries[key])
	}
	return strings.Join(lines, "\n")
}

// Updatable is a backend with the incremental path, started on a
// FakeNetlink.
type Updatable interface {
	Sync(ctx context.Context, peers []lease.Lease) error
	backend.Updater
}

// CheckUpdates is the property that makes backend.Updater safe to use:
// for random sequences of adds, changes and removals of peers with
// subnets from pool and leases made by gen (which should produce
// duplicates, overlaps and bad values), a backend that got one Sync and
// then Updates programs the same entries as a backend that got one Sync of
// the final set. start returns a fresh backend and its fake kernel.
func CheckUpdates(t *testing.T, seeds, steps int, pool []netip.Prefix,
	gen func(r *rand.Rand, sn netip.Prefix) lease.Lease,
	start func(t *testing.T) (Updatable, *FakeNetlink)) {
	t.Helper()
	ctx := context.Background()
	for seed := range uint64(seeds) {
		r := rand.New(rand.NewPCG(seed, 2))
		inc, kInc := start(t)
		set := map[netip.Prefix]lease.Lease{}
		list := func() []lease.Lease {
			var l []lease.Lease
			for _, sn := range slices.SortedFunc(maps.Keys(set), netip.Prefix.Compare) {
				l = append(l, set[sn])
			}
			return l
		}
		for _, sn := range pool {
			if r.IntN(2) == 0 {
				set[sn] = gen(r, sn)
			}
		}
		if err := inc.Sync(ctx, list()); err != nil {
			t.Fatal(err)
		}
		for step := range steps {
			var changes []backend.Change
			for _, i := range r.Perm(len(pool))[:1+r.IntN(4)] {
				sn := pool[i]
				if _, ok := set[sn]; ok && r.IntN(3) == 0 {
					delete(set, sn)
					changes = append(changes, backend.Change{Lease: lease.Lease{Subnet: sn}, Removed: true})
					continue
				}
				l := gen(r, sn)
				set[sn] = l
				changes = append(changes, backend.Change{Lease: l})
			}
			if err := inc.Update(ctx, changes); err != nil {
				t.Fatal(err)
			}
			full, kFull := start(t)
			if err := full.Sync(ctx, list()); err != nil {
				t.Fatal(err)
			}
			if got, want := kInc.Render(), kFull.Render(); got != want {
				t.Fatalf("seed %d step %d: after Updates\n%s\nwant (one Sync of the set)\n%s", seed, step, got, want)
			}
			for _, k := range []*FakeNetlink{kInc, kFull} {
				if err := k.CheckNexthops(); err != nil {
					t.Fatalf("seed %d step %d: %v", seed, step, err)
				}
			}
		}
	}
}
