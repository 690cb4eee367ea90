package route

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Why nexthop objects: the IPv4 FIB shares fib_info objects between
// routes and finds them through a hash that, for a route with its
// gateway inline, leaves the gateway out; thousands of routes through
// one device with distinct gateways (one per peer) share a bucket, and
// each insert scans all earlier ones (30,000 routes: 12 s of system
// time). A route that names a nexthop object by id is hashed by that id
// (the same 30,000: 0.45 s with their nexthops). Linux 5.3 and later.

// Nexthop is a nexthop object with one gateway (`ip nexthop`), as a
// Table makes them for IPv4 routes through a gateway.
type Nexthop struct {
	ID        uint32
	Gw        netip.Addr
	LinkIndex int
	OnLink    bool
	Protocol  uint8
	// Other is set for what a route cannot be resolved through to one
	// gateway: a group, a blackhole, an FDB nexthop.
	Other bool
}

func (n Nexthop) String() string {
	s := fmt.Sprintf("id %d via %s dev #%d proto %d", n.ID, n.Gw, n.LinkIndex, n.Protocol)
	if n.OnLink {
		s += " onlink"
	}
	return s
}

// RouteNH is a route as a dump shows it, with the id of the nexthop
// object it uses (0 for a route with its gateway inline). Gw, LinkIndex
// and OnLink are what the kernel reported, which without compat mode
// (net.ipv4.nexthop_compat_mode=0) is nothing for a route with a nexthop.
type RouteNH struct {
	Route
	NH uint32
}

// NexthopNetlink is what a Table needs, besides Netlink, to install IPv4
// routes through a gateway as routes to nexthop objects. *Handle has it;
// a Netlink without it gets classic routes.
type NexthopNetlink interface {
	// NexthopList returns every nexthop object. Equivalent to: `ip nexthop show`.
	NexthopList() ([]Nexthop, error)
	// NexthopAdd creates n and fails with EEXIST if its id is taken.
	// Equivalent to: `ip nexthop add id ID via GW dev LINK [onlink] proto P`.
	NexthopAdd(n Nexthop) error
	// NexthopDel deletes the nexthop id; the kernel deletes the routes
	// using it. Equivalent to: `ip nexthop del id ID`.
	NexthopDel(id uint32) error
	// RouteReplaceNH makes r's key (Dst, Metric) a route through the
	// nexthop id; r's gateway, link and onlink are the nexthop's.
	// Equivalent to: `ip route replace DST nhid ID [metric M]`.
	RouteReplaceNH(r Route, id uint32) error
	// RouteDelNH deletes r's key if it is a route through the nexthop
	// id, and fails with ESRCH otherwise.
	// Equivalent to: `ip route del DST nhid ID [metric M]`.
	RouteDelNH(r Route, id uint32) error
}

// nexthopLister is what ListRoutes needs to resolve routes that name a
// nexthop object; *Handle has it.
type nexthopLister interface {
	NexthopList() ([]Nexthop, error)
	RouteListNH(family int) ([]RouteNH, error)
}

// Handle is a *netlink.Handle that also speaks the nexthop messages
// netlink v1.3 has no API for, through a socket of its own in the same
// network namespace (the library keeps its sockets private).
type Handle struct {
	*netlink.Handle
	s *nl.SocketHandle

	// batchMu guards the batches' buffers, kept across calls: a Table
	// batches on every change, and allocating them each time would make
	// garbage per event.
	batchMu    sync.Mutex
	wbuf, rbuf []byte
}

var (
	_ Netlink        = (*Handle)(nil)
	_ Lister         = (*Handle)(nil)
	_ NexthopNetlink = (*Handle)(nil)
	_ nexthopLister  = (*Handle)(nil)
)

// NewHandle opens a Handle in the calling thread's network namespace.
func NewHandle() (*Handle, error) { return NewHandleAt(netns.None()) }

// NewHandleAt opens a Handle in the network namespace ns.
func NewHandleAt(ns netns.NsHandle) (*Handle, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("route: netlink handle: %w", err)
	}
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("route: netlink socket for nexthops: %w", err)
	}
	return &Handle{Handle: h, s: &nl.SocketHandle{Socket: s}}, nil
}

// Close closes both sockets.
func (h *Handle) Close() {
	h.Handle.Close()
	h.s.Close()
}

func (h *Handle) request(typ uint16, flags int, data ...nl.NetlinkRequestData) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(int(typ), flags)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: h.s}
	for _, d := range data {
		req.AddData(d)
	}
	return req
}

// Values of the kernel's uapi that x/sys/unix lacks.
const (
	rtaNHID     = 0x1e // RTA_NH_ID
	nhaFDB      = 0xb  // NHA_FDB
	sizeofNHMsg = 8    // struct nhmsg
)

// nhMsg is struct nhmsg.
type nhMsg struct {
	family, scope, protocol uint8
	flags                   uint32
}

func (m nhMsg) Len() int { return sizeofNHMsg }

func (m nhMsg) Serialize() []byte {
	b := make([]byte, sizeofNHMsg)
	b[0], b[1], b[2] = m.family, m.scope, m.protocol
	native.PutUint32(b[4:], m.flags)
	return b
}

// NexthopList: `ip nexthop show`.
func (h *Handle) NexthopList() ([]Nexthop, error) {
	msgs, err := h.request(unix.RTM_GETNEXTHOP, unix.NLM_F_DUMP, nhMsg{}).Execute(unix.NETLINK_ROUTE, unix.RTM_NEWNEXTHOP)
	if err != nil {
		return nil, err
	}
	out := make([]Nexthop, 0, len(msgs))
	for _, m := range msgs {
		if n, ok := parseNexthop(m); ok {
			out = append(out, n)
		}
	}
	return out, nil
}

// parseNexthop reads an RTM_NEWNEXTHOP message (after its header).
func parseNexthop(b []byte) (Nexthop, bool) {
	if len(b) < sizeofNHMsg {
		return Nexthop{}, false
	}
	n := Nexthop{Protocol: b[2], OnLink: native.Uint32(b[4:])&unix.RTNH_F_ONLINK != 0}
	family := b[0]
	attrs, ok := parseAttrs(b[sizeofNHMsg:])
	if !ok {
		return Nexthop{}, false
	}
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.NHA_ID:
			if len(a.Value) == 4 {
				n.ID = native.Uint32(a.Value)
			}
		case unix.NHA_OIF:
			if len(a.Value) == 4 {
				n.LinkIndex = int(native.Uint32(a.Value))
			}
		case unix.NHA_GATEWAY:
			if ip, ok := netip.AddrFromSlice(a.Value); ok && (family == unix.AF_INET) == (len(a.Value) == 4) {
				n.Gw = ip
			}
		case unix.NHA_GROUP, unix.NHA_BLACKHOLE, nhaFDB:
			n.Other = true
		}
	}
	return n, n.ID != 0
}

// parseAttrs splits a message's attributes. (nl.ParseRouteAttr panics
// on some malformed input; these messages may be anyone's.)
func parseAttrs(b []byte) ([]syscall.NetlinkRouteAttr, bool) {
	var out []syscall.NetlinkRouteAttr
	for len(b) >= unix.SizeofRtAttr {
		l := int(native.Uint16(b))
		if l < unix.SizeofRtAttr || l > len(b) {
			return nil, false
		}
		out = append(out, syscall.NetlinkRouteAttr{
			Attr:  syscall.RtAttr{Len: uint16(l), Type: native.Uint16(b[2:]) & nl.NLA_TYPE_MASK},
			Value: b[unix.SizeofRtAttr:l],
		})
		b = b[min(len(b), (l+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1)):]
	}
	return out, true
}

// NexthopAdd: `ip nexthop add id ID via GW dev LINK [onlink] proto P`.
func (h *Handle) NexthopAdd(n Nexthop) error {
	if !n.Gw.Is4() {
		return fmt.Errorf("route: nexthop %s: only IPv4 gateways", n)
	}
	m := nhMsg{family: unix.AF_INET, protocol: n.Protocol}
	if n.OnLink {
		m.flags = unix.RTNH_F_ONLINK
	}
	req := h.request(unix.RTM_NEWNEXTHOP, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK, m,
		nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(n.ID)),
		nl.NewRtAttr(unix.NHA_OIF, nl.Uint32Attr(uint32(n.LinkIndex))),
		nl.NewRtAttr(unix.NHA_GATEWAY, n.Gw.AsSlice()))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// NexthopDel: `ip nexthop del id ID`.
func (h *Handle) NexthopDel(id uint32) error {
	req := h.request(unix.RTM_DELNEXTHOP, unix.NLM_F_ACK, nhMsg{}, nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(id)))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// RouteReplaceNH: `ip route replace DST nhid ID [metric M]`, proto boot
// as netlink gives routes.
func (h *Handle) RouteReplaceNH(r Route, id uint32) error {
	msg := nl.NewRtMsg() // main table, universe scope, unicast, proto boot
	msg.Family = uint8(familyOf(r.Dst.Addr()))
	msg.Dst_len = uint8(r.Dst.Bits())
	req := h.request(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK, msg,
		nl.NewRtAttr(unix.RTA_DST, r.Dst.Addr().AsSlice()),
		nl.NewRtAttr(rtaNHID, nl.Uint32Attr(id)))
	if r.Metric != 0 {
		req.AddData(nl.NewRtAttr(unix.RTA_PRIORITY, nl.Uint32Attr(uint32(r.Metric))))
	}
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// RouteDelNH: `ip route del DST nhid ID [metric M]`.
func (h *Handle) RouteDelNH(r Route, id uint32) error {
	msg := nl.NewRtDelMsg() // main table, any scope
	msg.Family = uint8(familyOf(r.Dst.Addr()))
	msg.Dst_len = uint8(r.Dst.Bits())
	req := h.request(unix.RTM_DELROUTE, unix.NLM_F_ACK, msg,
		nl.NewRtAttr(unix.RTA_DST, r.Dst.Addr().AsSlice()),
		nl.NewRtAttr(rtaNHID, nl.Uint32Attr(id)))
	if r.Metric != 0 {
		req.AddData(nl.NewRtAttr(unix.RTA_PRIORITY, nl.Uint32Attr(uint32(r.Metric))))
	}
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// RouteListNH returns the unicast routes of family in the main table,
// with their nexthop ids. Equivalent to: `ip -4 route show table main`
// (or -6). A dump that changed while it ran is ErrDumpInterrupted, with
// the partial answer.
func (h *Handle) RouteListNH(family int) ([]RouteNH, error) {
	msg := &nl.RtMsg{RtMsg: unix.RtMsg{Family: uint8(family)}}
	msgs, err := h.request(unix.RTM_GETROUTE, unix.NLM_F_DUMP, msg).Execute(unix.NETLINK_ROUTE, unix.RTM_NEWROUTE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, err
	}
	var out []RouteNH
	for _, m := range msgs {
		if r, ok := parseRoute(m); ok {
			out = append(out, r)
		}
	}
	return out, err
}

// noNexthops reports whether err says the kernel has no nexthop objects
// (before Linux 5.3 RTM_*NEXTHOP are unknown messages).
func noNexthops(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EPROTONOSUPPORT)
}
