// Package iface chooses the external (underlay) interface flanneld sends
// through, and the address it advertises to peers, in upstream's order:
// --iface, then --iface-regex, then --iface-can-reach, else the interface
// carrying --public-ip, else the interface of the default route.
package iface

import "net/netip"

// ExtIface is the external (underlay) interface flanneld sends through.
type ExtIface struct {
	Name  string
	Index int
	MTU   int

	IfaceAddr  netip.Addr // IPv4 address on the interface
	ExtAddr    netip.Addr // IPv4 advertised to peers (--public-ip, else IfaceAddr)
	IfaceAddr6 netip.Addr // IPv6 counterparts; invalid when IPv6 is off
	ExtAddr6   netip.Addr
}
