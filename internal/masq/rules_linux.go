package masq

import (
	"fmt"
	"net/netip"
)

// famRules is Rules for one address family.
type famRules struct {
	v6              bool
	on              bool // the family's Network is set
	network, subnet netip.Prefix
	masq, forward   bool
	fullyRandom     bool
}

func (f famRules) name() string {
	if f.v6 {
		return "ipv6"
	}
	return "ipv4"
}

// multicast is the destination range that is never masqueraded.
func (f famRules) multicast() netip.Prefix {
	if f.v6 {
		return netip.MustParsePrefix("ff00::/8")
	}
	return netip.MustParsePrefix("224.0.0.0/4")
}

// wantMasq and wantForward say whether the family's chains must exist.
func (f famRules) wantMasq() bool    { return f.on && f.masq }
func (f famRules) wantForward() bool { return f.on && f.forward }

// families validates r and splits it into IPv4 and IPv6 halves.
func (r Rules) families() ([2]famRules, error) {
	var out [2]famRules
	for i, v6 := range []bool{false, true} {
		netw, sub := r.Network, r.Subnet
		if v6 {
			netw, sub = r.Network6, r.Subnet6
		}
		f := famRules{v6: v6, masq: r.Masq, forward: r.Forward, fullyRandom: r.FullyRandom}
		out[i] = f
		if !netw.IsValid() {
			continue
		}
		if netw.Addr().Is6() != v6 || netw.Addr().Is4In6() {
			return out, fmt.Errorf("masq: network %s is not an %s prefix", netw, f.name())
		}
		f.on, f.network = true, netw.Masked()
		if r.Masq {
			if !sub.IsValid() {
				return out, fmt.Errorf("masq: masquerade for %s needs our own %s subnet", netw, f.name())
			}
			if sub.Addr().Is6() != v6 || sub.Addr().Is4In6() {
				return out, fmt.Errorf("masq: subnet %s is not an %s prefix", sub, f.name())
			}
			f.subnet = sub.Masked()
		}
		out[i] = f
	}
	return out, nil
}

// support is what we learned about an optional kernel or tool feature.
type support int

const (
	unknown support = iota
	supported
	unsupported
)
