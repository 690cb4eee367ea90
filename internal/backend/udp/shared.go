package udp

import (
	"net/netip"
	"sync/atomic"
)

// shared is the state the control plane (Configure, Sync) hands to the
// forwarding loops. Both fields are swapped whole, never mutated, so the
// loops only ever do an atomic load per batch or packet.
type shared struct {
	own   atomic.Pointer[ownState] // nil until Configure
	peers atomic.Pointer[table]    // nil until the first Sync
}

// ownState is our lease as the loops need it.
type ownState struct {
	subnet    netip.Prefix
	addr      [4]byte // the subnet's network address: the TUN's address and the source of our ICMP errors
	net, mask uint32
}

func newOwnState(subnet netip.Prefix) *ownState {
	s := subnet.Masked()
	o := &ownState{subnet: s, addr: s.Addr().As4(), net: addrBits(s.Addr())}
	if s.Bits() > 0 {
		o.mask = ^uint32(0) << (32 - s.Bits())
	}
	return o
}

func (o *ownState) contains(a uint32) bool { return a&o.mask == o.net }
