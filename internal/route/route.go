// Package route keeps the kernel's routes, neighbour (ARP) entries and
// bridge FDB entries that a backend owns equal to a desired set.
//
// Backends describe what they want as a State and call Table.Set; the
// Table diffs against what it has applied (not against a kernel dump, so a
// Sync of thousands of unchanged peers costs no syscalls), adds and
// replaces before it deletes (so a changed peer never loses its path), and
// keeps its record equal to what the kernel accepted, so a failed change is
// retried by the next Set. Load replaces that record with what a kernel
// dump shows, which is how a restarted or repairing backend learns about
// entries left behind or removed while it was not looking.
//
// Work per change is proportional to the change: Table.Update touches
// only the entries named, and Frame.Update keeps each peer's entries (and
// the claims that settle conflicts between peers, such as two peers with
// one VTEP MAC) by subnet, so one new lease among 65,000 costs what it
// costs among three. A Watch lets a periodic repair skip its dumps unless
// the kernel notified that an entry may be gone.
//
// On Linux 5.3 and later a Table given a *Handle installs IPv4 routes
// through a gateway as routes to nexthop objects (`ip route replace DST
// nhid ID`), one object per gateway, link and onlink: the IPv4 FIB hashes
// classic routes' shared nexthop data without the gateway, so tens of
// thousands of peers' routes through one device make each insert scan
// all earlier ones. Listings resolve a route's object, so the rest of the
// package sees the same Route either way. See nhtable_linux.go.
package route

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// MAC is an Ethernet address. Unlike net.HardwareAddr it is comparable, so
// entries holding one can be map keys and compared with ==.
type MAC [6]byte

// ParseMAC parses a 6-byte Ethernet address in any form net.ParseMAC
// accepts (aa:bb:cc:dd:ee:ff, aa-bb-…, aabb.ccdd.eeff).
func ParseMAC(s string) (MAC, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return MAC{}, err
	}
	m, ok := MACFrom(hw)
	if !ok {
		return MAC{}, fmt.Errorf("mac %q: not a 6-byte Ethernet address", s)
	}
	return m, nil
}

// MACFrom converts hw; ok is false unless hw is 6 bytes long.
func MACFrom(hw net.HardwareAddr) (m MAC, ok bool) {
	if len(hw) != len(m) {
		return m, false
	}
	copy(m[:], hw)
	return m, true
}

// HardwareAddr returns m in the form netlink wants.
func (m MAC) HardwareAddr() net.HardwareAddr { return append(net.HardwareAddr(nil), m[:]...) }

// String formats m as ip(8) does: c6:d2:32:6f:8f:44.
func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// IsZero reports whether m is 00:00:00:00:00:00 (an FDB default entry).
func (m MAC) IsZero() bool { return m == MAC{} }

// IsUnicast reports whether m is a non-zero individual (not group) address.
func (m MAC) IsUnicast() bool { return !m.IsZero() && m[0]&1 == 0 }

// Route is a unicast route in the main table. Key: Dst and Metric, as the
// kernel keys IPv4 routes (TOS is never set by us).
type Route struct {
	Dst       netip.Prefix
	Gw        netip.Addr // invalid for a device route
	LinkIndex int
	OnLink    bool // the gateway is on the link even if no address says so
	Metric    int
}

// String renders r roughly as `ip route` shows it, with the link by index.
func (r Route) String() string {
	var b strings.Builder
	b.WriteString(r.Dst.String())
	if r.Gw.IsValid() {
		b.WriteString(" via ")
		b.WriteString(r.Gw.String())
	}
	fmt.Fprintf(&b, " dev #%d", r.LinkIndex)
	if r.Metric != 0 {
		fmt.Fprintf(&b, " metric %d", r.Metric)
	}
	if r.OnLink {
		b.WriteString(" onlink")
	}
	return b.String()
}

// Neigh is a permanent neighbour (ARP) entry: IP on LinkIndex is at MAC.
type Neigh struct {
	IP        netip.Addr
	MAC       MAC
	LinkIndex int
}

func (n Neigh) String() string {
	return fmt.Sprintf("%s lladdr %s dev #%d", n.IP, n.MAC, n.LinkIndex)
}

// FDB is a permanent forwarding entry of a VXLAN device (`bridge fdb … self
// permanent`): frames for MAC are sent to the VTEP at Dst. The kernel allows
// several remotes per MAC, so the key is the whole entry.
type FDB struct {
	MAC       MAC
	Dst       netip.Addr
	LinkIndex int
}

func (f FDB) String() string {
	return fmt.Sprintf("%s dst %s dev #%d", f.MAC, f.Dst, f.LinkIndex)
}

// State is a set of entries. Order carries no meaning; duplicates (same
// key) resolve to the last one.
type State struct {
	Routes []Route
	Neighs []Neigh
	FDB    []FDB
}

// Len is the total number of entries.
func (s State) Len() int { return len(s.Routes) + len(s.Neighs) + len(s.FDB) }

// Changes counts what one Set did to the kernel.
type Changes struct {
	Added   int // added or replaced
	Removed int
	Failed  int
}

// None reports whether Set changed nothing and nothing failed.
func (c Changes) None() bool { return c == Changes{} }
