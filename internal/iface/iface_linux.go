package iface

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Options are the interface-selection flags.
type Options struct {
	Ifaces   []string // --iface: names or IPs, tried in order
	Regexes  []string // --iface-regex: matched against IPs, then names
	CanReach string   // --iface-can-reach
	PublicIP string   // --public-ip
	// PublicIPv6 and IPv6 select the IPv6 address too (dual stack).
	PublicIPv6 string
	IPv6       bool
}

// Lookup returns the external interface for o.
func Lookup(o Options) (ExtIface, error) {
	var pub, pub6 netip.Addr
	var err error
	if o.PublicIP != "" {
		if pub, err = netip.ParseAddr(o.PublicIP); err != nil || !pub.Is4() {
			return ExtIface{}, fmt.Errorf("--public-ip %q is not an IPv4 address", o.PublicIP)
		}
	}
	if o.PublicIPv6 != "" {
		if pub6, err = netip.ParseAddr(o.PublicIPv6); err != nil || !pub6.Is6() {
			return ExtIface{}, fmt.Errorf("--public-ipv6 %q is not an IPv6 address", o.PublicIPv6)
		}
	}

	link, addr, err := choose(o, pub)
	if err != nil {
		return ExtIface{}, err
	}
	attrs := link.Attrs()
	if attrs.MTU == 0 {
		return ExtIface{}, fmt.Errorf("interface %s has MTU 0", attrs.Name)
	}
	ext := ExtIface{Name: attrs.Name, Index: attrs.Index, MTU: attrs.MTU, IfaceAddr: addr, ExtAddr: addr}
	if pub.IsValid() {
		ext.ExtAddr = pub
	}
	if o.IPv6 {
		a6, err := firstAddr(link, netlink.FAMILY_V6)
		if err != nil {
			return ExtIface{}, err
		}
		ext.IfaceAddr6, ext.ExtAddr6 = a6, a6
		if pub6.IsValid() {
			ext.ExtAddr6 = pub6
		}
	}
	return ext, nil
}

func choose(o Options, pub netip.Addr) (netlink.Link, netip.Addr, error) {
	for _, want := range o.Ifaces {
		if l, a, err := byNameOrIP(want); err == nil {
			return l, a, nil
		}
	}
	if len(o.Regexes) > 0 {
		if l, a, err := byRegex(o.Regexes); err == nil {
			return l, a, nil
		} else if !errors.Is(err, errNoMatch) {
			return nil, netip.Addr{}, err
		}
	}
	if o.CanReach != "" {
		ip, err := netip.ParseAddr(o.CanReach)
		if err != nil {
			return nil, netip.Addr{}, fmt.Errorf("--iface-can-reach %q is not an IP address", o.CanReach)
		}
		if l, a, err := byRoute(ip); err == nil {
			return l, a, nil
		}
	}
	if len(o.Ifaces) > 0 || len(o.Regexes) > 0 || o.CanReach != "" {
		return nil, netip.Addr{}, fmt.Errorf("no interface matches --iface %v --iface-regex %v --iface-can-reach %q",
			o.Ifaces, o.Regexes, o.CanReach)
	}
	if pub.IsValid() {
		l, a, err := byNameOrIP(pub.String())
		if err != nil {
			return nil, netip.Addr{}, fmt.Errorf("--public-ip %s is not an address of this host; name the interface with --iface", pub)
		}
		return l, a, nil
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: nil}, netlink.RT_FILTER_DST)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, netip.Addr{}, fmt.Errorf("list default routes: %w", err)
	}
	for _, r := range routes {
		if r.LinkIndex <= 0 || (r.Dst != nil && !isDefault(r.Dst)) {
			continue
		}
		l, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		a, err := firstAddr(l, netlink.FAMILY_V4)
		if err == nil {
			return l, a, nil
		}
	}
	return nil, netip.Addr{}, errors.New("no default route: name the external interface with --iface")
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

var errNoMatch = errors.New("no match")

func byNameOrIP(s string) (netlink.Link, netip.Addr, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, netip.Addr{}, err
		}
		for _, l := range links {
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_ALL)
			for _, a := range addrs {
				if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
					return l, ip, nil
				}
			}
		}
		return nil, netip.Addr{}, errNoMatch
	}
	l, err := netlink.LinkByName(s)
	if err != nil {
		return nil, netip.Addr{}, err
	}
	a, err := firstAddr(l, netlink.FAMILY_V4)
	return l, a, err
}

func byRegex(exprs []string) (netlink.Link, netip.Addr, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, netip.Addr{}, err
	}
	for _, e := range exprs {
		re, err := regexp.Compile(e)
		if err != nil {
			return nil, netip.Addr{}, fmt.Errorf("--iface-regex %q: %w", e, err)
		}
		// IPs first, then names, as upstream.
		for _, l := range links {
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
			for _, a := range addrs {
				if re.MatchString(a.IP.String()) {
					ip, _ := netip.AddrFromSlice(a.IP)
					return l, ip.Unmap(), nil
				}
			}
		}
		for _, l := range links {
			if re.MatchString(l.Attrs().Name) {
				if a, err := firstAddr(l, netlink.FAMILY_V4); err == nil {
					return l, a, nil
				}
			}
		}
	}
	return nil, netip.Addr{}, errNoMatch
}

func byRoute(dst netip.Addr) (netlink.Link, netip.Addr, error) {
	routes, err := netlink.RouteGet(dst.AsSlice())
	if err != nil || len(routes) == 0 {
		return nil, netip.Addr{}, fmt.Errorf("no route to %s: %v", dst, err)
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return nil, netip.Addr{}, err
	}
	if src, ok := netip.AddrFromSlice(routes[0].Src); ok {
		return l, src.Unmap(), nil
	}
	a, err := firstAddr(l, netlink.FAMILY_V4)
	return l, a, err
}

// firstAddr picks the interface's address as upstream ranks them: global
// before link-local, permanent before autoconfigured, primary before
// secondary; deprecated and tentative addresses are skipped.
func firstAddr(l netlink.Link, family int) (netip.Addr, error) {
	addrs, err := netlink.AddrList(l, family)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
	}
	best, bestRank := netip.Addr{}, -1
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if a.Flags&(unix.IFA_F_DEPRECATED|unix.IFA_F_TENTATIVE) != 0 || ip.IsLoopback() {
			continue
		}
		rank := 0
		switch {
		case ip.IsGlobalUnicast():
			rank = 8
		case ip.IsLinkLocalUnicast():
			rank = 0
		default:
			continue
		}
		if a.Flags&unix.IFA_F_PERMANENT != 0 {
			rank += 4
		}
		if a.Flags&unix.IFA_F_SECONDARY == 0 && a.Flags&unix.IFA_F_TEMPORARY == 0 {
			rank += 2
		}
		if rank > bestRank {
			best, bestRank = ip, rank
		}
	}
	if !best.IsValid() {
		fam := "IPv4"
		if family == netlink.FAMILY_V6 {
			fam = "IPv6"
		}
		return netip.Addr{}, fmt.Errorf("interface %s has no usable %s address", l.Attrs().Name, strings.TrimSpace(fam))
	}
	return best, nil
}
