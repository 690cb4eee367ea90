package daemon

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel/internal/lease"
)

// ensureBlackhole adds a blackhole route for our own subnet so traffic to
// unused addresses in it is dropped here rather than sent back out.
// Equivalent to: `ip route replace blackhole 10.5.72.0/24`.
func ensureBlackhole(own lease.Lease) error {
	for _, sn := range []struct {
		ok  bool
		dst *net.IPNet
	}{
		{own.Subnet.IsValid(), prefixNet(own.Subnet.Addr().AsSlice(), own.Subnet.Bits())},
		{own.Subnet6.IsValid(), prefixNet(own.Subnet6.Addr().AsSlice(), own.Subnet6.Bits())},
	} {
		if !sn.ok {
			continue
		}
		r := &netlink.Route{Dst: sn.dst, Type: syscall.RTN_BLACKHOLE}
		if err := netlink.RouteAdd(r); err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("blackhole route %s: %w", sn.dst, err)
		}
	}
	return nil
}

func prefixNet(ip net.IP, bits int) *net.IPNet {
	return &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, len(ip)*8)}
}
