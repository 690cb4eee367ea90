package route

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

var native = binary.NativeEndian

// Watch keeps a subscription to the kernel's notifications about what
// can take away or alter the entries a Table applied, so that a repair
// pass dumps the kernel's tables (seconds at tens of thousands of entries,
// during which the caller's event loop waits) only when something may be
// missing: deleted or replaced routes, deleted or altered neighbour and
// FDB entries, any change of the links the entries use, and deleted
// addresses (the kernel flushes the routes of a link that goes down, and
// of a gateway whose on-link address goes, without a notification per
// route). Lost notifications (a full socket buffer, a read error) make it
// suspect everything, so it errs on the side of a dump.
//
// Notifications wait in the socket's buffer and are read by Suspect in
// the caller's goroutine: there is no goroutine, and whatever the kernel
// notified before Suspect began is seen by it (a change made just before
// a repair pass is not left for the next one). Not safe for concurrent
// use.
type Watch struct {
	fd    int
	links map[int]bool
	buf   []byte

	seen     State    // entries notified as added or changed since the last Suspect
	gone     State    // ... as deleted
	viaNH    []nhNote // routes through nexthop objects, added, changed or deleted
	nexthops []nhNote // nexthop objects added, changed or deleted
	lost     bool
}

// nhNote is a notification about a route through a nexthop object or
// about an object.
type nhNote struct {
	route RouteNH
	nh    Nexthop
	del   bool
}

// watchBuffer is the socket's receive buffer: notifications of 5 s of
// churn must fit; our own sync of thousands of entries overflows it,
// which costs one dump.
const watchBuffer = 4 << 20

// NewWatch subscribes in the calling thread's network namespace; links are
// the indexes of the links whose changes matter (the device, the external
// interface). Close ends the subscription.
func NewWatch(links ...int) (*Watch, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("route: netlink socket for notifications: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, watchBuffer); err != nil {
		// Without CAP_NET_ADMIN the limit is rmem_max: smaller, not fatal.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, watchBuffer)
	}
	sa := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	for _, g := range []uint{unix.RTNLGRP_LINK, unix.RTNLGRP_NEIGH, unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_NEXTHOP} {
		sa.Groups |= 1 << (g - 1)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("route: subscribe to route, neighbour, link and address notifications: %w", err)
	}
	w := &Watch{fd: fd, buf: make([]byte, 64<<10)}
	w.SetLinks(links...)
	return w, nil
}

// SetLinks replaces the indexes of the links whose changes matter (after
// a device was recreated).
func (w *Watch) SetLinks(links ...int) {
	w.links = map[int]bool{}
	for _, l := range links {
		w.links[l] = true
	}
}

// Close ends the subscription.
func (w *Watch) Close() {
	if w.fd >= 0 {
		unix.Close(w.fd)
		w.fd = -1
	}
}

// read takes every queued notification, without waiting.
func (w *Watch) read() {
	for w.fd >= 0 {
		n, _, err := unix.Recvfrom(w.fd, w.buf, unix.MSG_DONTWAIT)
		switch {
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
			continue
		case err != nil: // ENOBUFS: notifications were dropped
			w.lost = true
			if err != unix.ENOBUFS {
				return
			}
			continue
		}
		msgs, err := syscall.ParseNetlinkMessage(w.buf[:n])
		if err != nil {
			w.lost = true
			continue
		}
		for _, m := range msgs {
			w.message(m)
		}
	}
}

func (w *Watch) message(m syscall.NetlinkMessage) {
	switch m.Header.Type {
	case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		rn, ok := parseRoute(m.Data)
		if !ok {
			return
		}
		r := rn.Route
		if rn.NH != 0 {
			// Resolved in Suspect, against the Table's objects.
			w.viaNH = append(w.viaNH, nhNote{route: rn, del: m.Header.Type == unix.RTM_DELROUTE})
		} else if m.Header.Type == unix.RTM_DELROUTE {
			w.gone.Routes = append(w.gone.Routes, r)
		} else {
			w.seen.Routes = append(w.seen.Routes, r)
		}
	case unix.RTM_NEWNEIGH, unix.RTM_DELNEIGH:
		n, err := netlink.NeighDeserialize(m.Data)
		if err != nil {
			w.lost = true
			return
		}
		w.neigh(m.Header.Type == unix.RTM_DELNEIGH, n)
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		if len(m.Data) >= unix.SizeofIfInfomsg && w.links[int(nl.DeserializeIfInfomsg(m.Data).Index)] {
			w.lost = true
		}
	case unix.RTM_NEWNEXTHOP, unix.RTM_DELNEXTHOP:
		if n, ok := parseNexthop(m.Data); ok {
			w.nexthops = append(w.nexthops, nhNote{nh: n, del: m.Header.Type == unix.RTM_DELNEXTHOP})
		}
	case unix.RTM_DELADDR:
		w.lost = true
	}
	if w.seen.Len()+w.gone.Len()+len(w.viaNH)+len(w.nexthops) > maxSeen {
		// Beyond this many, a dump is as cheap as checking them.
		w.lost = true
		w.seen, w.gone, w.viaNH, w.nexthops = State{}, State{}, nil, nil
	}
}

// maxSeen bounds what a Watch keeps between two Suspect calls.
const maxSeen = 1 << 16

// parseRoute reads a route message (a notification, a dump's answer) as
// ListRoutes reads a dump, with the id of the nexthop object the route
// uses, if any.
func parseRoute(b []byte) (RouteNH, bool) {
	if len(b) < unix.SizeofRtMsg {
		return RouteNH{}, false
	}
	msg := nl.DeserializeRtMsg(b)
	attrs, ok := parseAttrs(b[unix.SizeofRtMsg:])
	if !ok {
		return RouteNH{}, false
	}
	var nh uint32
	nr := netlink.Route{Table: int(msg.Table), Type: int(msg.Type), Tos: int(msg.Tos), Flags: int(msg.Flags)}
	ipOf := func(v []byte) net.IP {
		if msg.Family == unix.AF_INET && len(v) == 4 || msg.Family == unix.AF_INET6 && len(v) == 16 {
			return net.IP(v)
		}
		return nil
	}
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.RTA_DST:
			if ip := ipOf(a.Value); ip != nil {
				nr.Dst = &net.IPNet{IP: ip, Mask: net.CIDRMask(int(msg.Dst_len), 8*len(ip))}
			}
		case unix.RTA_GATEWAY:
			nr.Gw = ipOf(a.Value)
		case unix.RTA_OIF:
			if len(a.Value) == 4 {
				nr.LinkIndex = int(native.Uint32(a.Value))
			}
		case unix.RTA_PRIORITY:
			if len(a.Value) == 4 {
				nr.Priority = int(native.Uint32(a.Value))
			}
		case unix.RTA_TABLE:
			if len(a.Value) == 4 {
				nr.Table = int(native.Uint32(a.Value))
			}
		case rtaNHID:
			if len(a.Value) == 4 {
				nh = native.Uint32(a.Value)
			}
		case unix.RTA_MULTIPATH:
			return RouteNH{}, false
		}
	}
	r, ok := routeFrom(nr)
	return RouteNH{r, nh}, ok
}

func (w *Watch) neigh(del bool, u *netlink.Neigh) {
	mac, okm := MACFrom(u.HardwareAddr)
	ip, ok := netip.AddrFromSlice(u.IP)
	if !ok {
		return
	}
	ip = ip.Unmap()
	into := &w.seen
	if del {
		into = &w.gone
	}
	switch {
	case u.Family == unix.AF_BRIDGE:
		if okm && (del || u.State&netlink.NUD_PERMANENT != 0) {
			into.FDB = append(into.FDB, FDB{MAC: mac, Dst: ip, LinkIndex: u.LinkIndex})
		}
	default:
		// A neighbour that is no longer permanent is no longer what we
		// applied: keep it as changed with a MAC that cannot match.
		if !del && (u.State&netlink.NUD_PERMANENT == 0 || !okm) {
			mac = MAC{1}
		}
		into.Neighs = append(into.Neighs, Neigh{IP: ip, MAC: mac, LinkIndex: u.LinkIndex})
	}
}

// Suspect reports whether, since the last call, the kernel notified
// anything that may have removed or altered an entry t has applied, or
// lost notifications; it starts the next period. Notifications of our
// own changes match t's record and are not suspect, except those of an
// entry changed again since, which costs a needless dump at worst.
func (w *Watch) Suspect(t *Table) bool {
	w.read()
	seen, gone, lost, links := w.seen, w.gone, w.lost, w.links
	viaNH, nexthops := w.viaNH, w.nexthops
	w.seen, w.gone, w.lost, w.viaNH, w.nexthops = State{}, State{}, false, nil, nil
	if lost || w.fd < 0 {
		return true
	}
	// An object of ours deleted or changed by someone (the kernel drops
	// the routes through a deleted one, notifying them only in compat
	// mode). Our own deletions left the record before they are read here.
	for _, e := range nexthops {
		if t.nh == nil {
			break
		}
		if k, ok := t.nh.keyOf(e.nh.ID); ok && (e.del || k != nhKeyFrom(e.nh.Gw, e.nh.LinkIndex, e.nh.OnLink)) {
			return true
		}
	}
	// A route through an object is what the object says (without compat
	// mode the notification carries nothing else); one through an object
	// not ours is no route we applied.
	for _, e := range viaNH {
		r := e.route.Route
		if t.nh != nil {
			if k, ok := t.nh.keyOf(e.route.NH); ok {
				r.Gw, r.LinkIndex, r.OnLink = k.gateway(), int(k.link), k.onLink
			}
		}
		if e.del {
			gone.Routes = append(gone.Routes, r)
		} else {
			seen.Routes = append(seen.Routes, r)
		}
	}
	for _, r := range gone.Routes {
		if _, ok := t.routes[r.key()]; ok {
			return true
		}
	}
	for _, r := range seen.Routes {
		k, v := packRoute(r)
		if a, ok := t.routes[k]; ok && a != v {
			return true
		}
	}
	for _, n := range gone.Neighs {
		if _, ok := t.neighs[n.key()]; ok {
			return true
		}
	}
	for _, n := range seen.Neighs {
		if a, ok := t.neighs[n.key()]; ok && a != n.MAC {
			return true
		}
	}
	for _, f := range gone.FDB {
		if _, ok := t.fdb[f.key()]; ok {
			return true
		}
	}
	// The kernel replaces an FDB entry's first remote in place: a
	// permanent entry we did not apply on a link we use may have taken
	// the place of one we did.
	for _, f := range seen.FDB {
		if _, ok := t.fdb[f.key()]; !ok && f.MAC.IsUnicast() && links[f.LinkIndex] {
			return true
		}
	}
	return false
}
