package daemon

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/flannel-go/flannel/internal/lease"
)

// overlaps is the reference the peer set is held to (peerset_test.go):
// the whole-set computation the daemon made before it kept the set
// incrementally. It returns, by key, why peer leases must be ignored for
// overlapping another peer's lease (checkPeer handles our own). Hosts
// only lease SubnetLen subnets, and never one that overlaps a lease, so
// when two leases overlap, the one of another length is garbage or was
// written by hand; routing it would divert part of the other host's
// traffic (a /25 inside a peer's /24 wins by longest match). That one is
// ignored and the other kept. Same-length overlaps (one subnet under two
// keys) are not decided here.
//
// It costs one pass when every lease has the configured length, and a
// sort otherwise.
func overlaps(subnetLen int, peers map[string]lease.Lease) map[string]string {
	odd := false
	for _, l := range peers {
		if l.Subnet.IsValid() && l.Subnet.Bits() != subnetLen {
			odd = true
			break
		}
	}
	if !odd {
		return nil
	}
	type item struct {
		key string
		sn  netip.Prefix
	}
	items := make([]item, 0, len(peers))
	for k, l := range peers {
		if l.Subnet.IsValid() {
			items = append(items, item{k, l.Subnet.Masked()})
		}
	}
	// By address, the wider prefix first: every prefix then follows the
	// prefixes containing it, which the sweep keeps on a stack.
	slices.SortFunc(items, func(a, b item) int {
		if c := a.sn.Addr().Compare(b.sn.Addr()); c != 0 {
			return c
		}
		if c := cmp.Compare(a.sn.Bits(), b.sn.Bits()); c != 0 {
			return c
		}
		return strings.Compare(a.key, b.key)
	})
	out := map[string]string{}
	var open []item
	for _, it := range items {
		for len(open) > 0 && !open[len(open)-1].sn.Contains(it.sn.Addr()) {
			open = open[:len(open)-1]
		}
		for _, o := range open {
			if o.sn.Bits() == it.sn.Bits() {
				continue
			}
			if it.sn.Bits() != subnetLen {
				out[it.key] = fmt.Sprintf("subnet %s overlaps the lease %s", it.sn, o.key)
			}
			if o.sn.Bits() != subnetLen {
				out[o.key] = fmt.Sprintf("subnet %s overlaps the lease %s", o.sn, it.key)
			}
		}
		open = append(open, it)
	}
	return out
}
