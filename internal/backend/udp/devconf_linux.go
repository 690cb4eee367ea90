package udp

import (
	"encoding/binary"
	"fmt"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Per-device settings go through RTM_SETLINK, which needs only
// CAP_NET_ADMIN, never through /proc/sys/net/*/conf/<dev>/: systemd's
// ProtectKernelTunables and a container without privileges make /proc/sys
// read-only, and the kernel takes the same settings over netlink.
const (
	// ipv4DevconfAcceptLocal is IPV4_DEVCONF_ACCEPT_LOCAL of <linux/ip.h>,
	// the index of accept_local in IFLA_INET_CONF (x/sys/unix lacks it).
	ipv4DevconfAcceptLocal = 23
	// in6AddrGenModeNone is IN6_ADDR_GEN_MODE_NONE of <linux/if_link.h>.
	in6AddrGenModeNone = 1
)

// setAcceptLocal sets net.ipv4.conf.<dev>.accept_local=1 on device idx
// through rt, a NETLINK_ROUTE socket of the device's namespace. Equivalent
// to `sysctl net.ipv4.conf.flannel0.accept_local=1`.
func setAcceptLocal(rt *nl.NetlinkSocket, idx int) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: rt}}
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(idx)
	req.AddData(msg)
	req.AddData(acceptLocalAttr())
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// acceptLocalAttr is IFLA_AF_SPEC { AF_INET { IFLA_INET_CONF {
// IPV4_DEVCONF_ACCEPT_LOCAL: u32 1 } } }.
func acceptLocalAttr() *nl.RtAttr {
	one := make([]byte, 4)
	binary.NativeEndian.PutUint32(one, 1)
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	inet := spec.AddRtAttr(unix.AF_INET, nil)
	conf := inet.AddRtAttr(unix.IFLA_INET_CONF, nil)
	conf.AddRtAttr(ipv4DevconfAcceptLocal, one)
	return spec
}

// openRouteSocket opens a NETLINK_ROUTE socket in the calling thread's
// network namespace (no setns: that would need CAP_SYS_ADMIN).
func openRouteSocket() (*nl.NetlinkSocket, error) {
	s, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	return s, nil
}
