// Package masq keeps flannel's traffic rules in the kernel: masquerade for
// traffic leaving the flannel Network (--ip-masq) and FORWARD accept rules
// for it (--iptables-forward-rules), through iptables or nftables, with
// exactly upstream flannel's chains, rules and comments so that either
// implementation can take over a host the other one configured.
//
// Apply is a check-and-repair: it reads what is in the kernel and changes
// only what differs, so rules that are already right are never flushed and
// re-added (no gap for traffic, no reset counters). The caller runs it at
// start and every --iptables-resync seconds.
package masq

import (
	"fmt"
	"net/netip"
)

// Kind is the rule implementation, chosen by the network config's
// EnableNFTables.
type Kind int

const (
	IPTables Kind = iota // iptables-restore / iptables-save (nft or legacy, whichever `iptables` is)
	NFTables             // native nftables over netlink
)

func (k Kind) String() string {
	switch k {
	case IPTables:
		return "iptables"
	case NFTables:
		return "nftables"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Rules is the desired state. An invalid Network (or Network6) turns the
// family off: flannel's rules for it are removed if a previous run left
// them.
type Rules struct {
	Network, Network6 netip.Prefix // the flannel Network(s)
	Subnet, Subnet6   netip.Prefix // our own lease subnet(s); required with Masq
	Masq              bool         // --ip-masq
	FullyRandom       bool         // --random-fully / fully-random when supported (!--ip-masq-fully-random-disable)
	Forward           bool         // --iptables-forward-rules
}
