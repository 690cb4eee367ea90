package route

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Lister is the part of *netlink.Handle that reads kernel tables.
type Lister interface {
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
	NeighList(linkIndex, family int) ([]netlink.Neigh, error)
}

const dumpAttempts = 5

// Dump calls list until its answer is not marked inconsistent. netlink
// returns ErrDumpInterrupted (with partial data) when the table changed
// during the dump, which happens under churn; partial data must not be
// mistaken for the kernel's state, so after a few attempts it is an error.
func Dump[T any](list func() ([]T, error)) ([]T, error) {
	var err error
	for range dumpAttempts {
		var res []T
		res, err = list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return res, err
		}
	}
	return nil, fmt.Errorf("dump still inconsistent after %d attempts: %w", dumpAttempts, err)
}

// ListRoutes returns the unicast routes of family (netlink.FAMILY_V4 or
// FAMILY_V6) in the main table for which keep is true. Multipath and TOS
// routes are never returned: no backend makes them, so none can own them.
// Equivalent to: `ip -4 route show table main` (or -6).
func ListRoutes(nl Lister, family int, keep func(Route) bool) ([]Route, error) {
	if err := checkFamily(family); err != nil {
		return nil, err
	}
	if nhl, ok := nl.(nexthopLister); ok {
		return listRoutesNH(nhl, family, keep)
	}
	nrs, err := Dump(func() ([]netlink.Route, error) {
		return nl.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("route: list routes: %w", err)
	}
	var out []Route
	for _, nr := range nrs {
		r, ok := routeFrom(nr)
		if ok && keep(r) {
			out = append(out, r)
		}
	}
	return out, nil
}

// listRoutesNH is ListRoutes where routes may name nexthop objects: a
// route through one is listed with the object's gateway, link and onlink,
// so it compares equal to the Route that was installed whether or not the
// dump carried them (net.ipv4.nexthop_compat_mode=1 or 0). A route
// through a group or an object that is gone is not listed.
func listRoutesNH(nl nexthopLister, family int, keep func(Route) bool) ([]Route, error) {
	nhs, err := Dump(nl.NexthopList)
	if err != nil && !noNexthops(err) {
		return nil, fmt.Errorf("route: list nexthops: %w", err)
	}
	byID := make(map[uint32]Nexthop, len(nhs))
	for _, n := range nhs {
		byID[n.ID] = n
	}
	rs, err := Dump(func() ([]RouteNH, error) { return nl.RouteListNH(family) })
	if err != nil {
		return nil, fmt.Errorf("route: list routes: %w", err)
	}
	var out []Route
	for _, r := range rs {
		if r.NH != 0 {
			n, ok := byID[r.NH]
			if !ok || n.Other {
				continue
			}
			r.Gw, r.LinkIndex, r.OnLink = n.Gw, n.LinkIndex, n.OnLink
		}
		if keep(r.Route) {
			out = append(out, r.Route)
		}
	}
	return out, nil
}

// checkFamily refuses anything but IPv4 and IPv6: netlink's FAMILY_ALL
// would mix both into one answer, which no caller expects.
func checkFamily(family int) error {
	if family != netlink.FAMILY_V4 && family != netlink.FAMILY_V6 {
		return fmt.Errorf("route: address family %d is neither IPv4 nor IPv6", family)
	}
	return nil
}

func routeFrom(nr netlink.Route) (Route, bool) {
	if nr.Table != unix.RT_TABLE_MAIN || nr.Type != unix.RTN_UNICAST || nr.Tos != 0 ||
		len(nr.MultiPath) > 0 || nr.Dst == nil {
		return Route{}, false
	}
	dst, ok := prefixFrom(nr.Dst)
	if !ok {
		return Route{}, false
	}
	r := Route{
		Dst:       dst,
		LinkIndex: nr.LinkIndex,
		OnLink:    nr.Flags&int(netlink.FLAG_ONLINK) != 0,
		Metric:    nr.Priority,
	}
	if nr.Gw != nil {
		gw, ok := netip.AddrFromSlice(nr.Gw)
		if !ok {
			return Route{}, false
		}
		r.Gw = gw.Unmap()
	}
	return r, true
}

func prefixFrom(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones).Masked(), true
}

// ListNeighs returns the permanent neighbour entries of family
// (netlink.FAMILY_V4 or FAMILY_V6) on a link; the kernel's own (reachable,
// stale, …) entries are not anyone's to manage. Equivalent to:
// `ip -4 neigh show dev LINK nud permanent` (or -6).
func ListNeighs(nl Lister, family, linkIndex int) ([]Neigh, error) {
	if err := checkFamily(family); err != nil {
		return nil, err
	}
	ns, err := Dump(func() ([]netlink.Neigh, error) { return nl.NeighList(linkIndex, family) })
	if err != nil {
		return nil, fmt.Errorf("route: list neighbours of link %d: %w", linkIndex, err)
	}
	var out []Neigh
	for _, n := range ns {
		if n.LinkIndex != linkIndex || n.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		mac, okm := MACFrom(n.HardwareAddr)
		if !ok || !okm {
			continue
		}
		out = append(out, Neigh{IP: ip.Unmap(), MAC: mac, LinkIndex: linkIndex})
	}
	return out, nil
}

// ListFDB returns the permanent unicast FDB entries with a remote IP of a
// VXLAN link (not the all-zeros default destination, not learned entries).
// Equivalent to: `bridge fdb show dev LINK` filtered to `self permanent`.
func ListFDB(nl Lister, linkIndex int) ([]FDB, error) {
	ns, err := Dump(func() ([]netlink.Neigh, error) { return nl.NeighList(linkIndex, unix.AF_BRIDGE) })
	if err != nil {
		return nil, fmt.Errorf("route: list fdb of link %d: %w", linkIndex, err)
	}
	var out []FDB
	for _, n := range ns {
		if n.LinkIndex != linkIndex || n.State&netlink.NUD_PERMANENT == 0 || n.Flags&netlink.NTF_SELF == 0 {
			continue
		}
		mac, ok := MACFrom(n.HardwareAddr)
		if !ok || !mac.IsUnicast() {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		out = append(out, FDB{MAC: mac, Dst: ip.Unmap(), LinkIndex: linkIndex})
	}
	return out, nil
}
