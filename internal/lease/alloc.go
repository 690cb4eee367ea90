package lease

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"slices"

	"github.com/flannel-go/flannel/internal/netconf"
)

// maxCandidates is how many free subnets a random pick chooses among, as
// upstream. Picking at random, rather than the first free one, keeps hosts
// that start together from all racing for the same key.
const maxCandidates = 100

// Fits reports whether sn can be this host's IPv4 lease under cfg: the
// configured length, canonical, inside Network and between SubnetMin and
// SubnetMax. A lease that no longer fits (the config changed) must not be
// reused.
func Fits(cfg *netconf.Config, sn netip.Prefix) bool {
	return cfg != nil && cfg.EnableIPv4 && sn.Addr().Is4() &&
		fits(cfg.Network, cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax, sn)
}

// Fits6 is Fits for the IPv6 lease.
func Fits6(cfg *netconf.Config, sn netip.Prefix) bool {
	return cfg != nil && cfg.EnableIPv6 && sn.Addr().Is6() &&
		fits(cfg.IPv6Network, cfg.IPv6SubnetLen, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax, sn)
}

func fits(network netip.Prefix, subnetLen int, lo, hi netip.Addr, sn netip.Prefix) bool {
	return sn.IsValid() && sn.Bits() == subnetLen && sn.Masked() == sn &&
		network.Contains(sn.Addr()) &&
		sn.Addr().Compare(lo) >= 0 && sn.Addr().Compare(hi) <= 0
}

// FreeSubnets returns, in address order, up to limit subnets of length
// subnetLen inside network whose addresses lie between lo and hi
// (SubnetMin and SubnetMax) and
// which overlap none of taken. Taken prefixes may have any length (an
// operator's /16 reservation blocks every subnet inside it) and either
// family (the other family's are ignored).
//
// It costs O(len(taken) log len(taken) + limit): runs of taken subnets are
// skipped in one step, however large the network.
func FreeSubnets(network netip.Prefix, subnetLen int, lo, hi netip.Addr, taken []netip.Prefix, limit int) []netip.Prefix {
	if limit <= 0 || !network.IsValid() || !lo.IsValid() || !hi.IsValid() {
		return nil
	}
	network = network.Masked()
	is4 := network.Addr().Is4()
	bitLen := network.Addr().BitLen()
	if lo.Is4() != is4 || hi.Is4() != is4 || subnetLen < max(network.Bits(), 1) || subnetLen > bitLen {
		return nil
	}
	hostBits := bitLen - subnetLen
	step := lowOnes(hostBits).add(u128{lo: 1}) // 1 << hostBits; hostBits < 128

	// Candidates run from the first subnet boundary at or above both the
	// network and lo, to the last subnet at or below both.
	netFirst, netLast := span(network)
	first, overflow := alignUp(u128From(lo), hostBits)
	if overflow {
		return nil
	}
	first = maxU128(first, netFirst)
	last := minU128(alignDown(u128From(hi), hostBits), alignDown(netLast, hostBits))

	blocked := merge(taken, is4)
	var out []netip.Prefix
	j := 0
	for c := first; c.cmp(last) <= 0; {
		end := c.add(step.sub1()) // cannot overflow: c is aligned
		for j < len(blocked) && blocked[j].last.cmp(c) < 0 {
			j++
		}
		if j < len(blocked) && blocked[j].first.cmp(end) <= 0 {
			// Jump past the whole blocked range.
			next, overflow := blocked[j].last.inc()
			if overflow {
				break
			}
			if c, overflow = alignUp(next, hostBits); overflow {
				break
			}
			continue
		}
		out = append(out, netip.PrefixFrom(c.addr(is4), subnetLen))
		if len(out) == limit {
			break
		}
		var carry bool
		if c, carry = c.addCarry(step); carry {
			break
		}
	}
	return out
}

// PickFree picks a subnet at random among the first 100 free ones that
// FreeSubnets finds, or returns ErrNoFreeSubnet. A nil rng uses the
// automatically seeded global source.
func PickFree(rng *rand.Rand, network netip.Prefix, subnetLen int, lo, hi netip.Addr, taken []netip.Prefix) (netip.Prefix, error) {
	free := FreeSubnets(network, subnetLen, lo, hi, taken, maxCandidates)
	if len(free) == 0 {
		return netip.Prefix{}, fmt.Errorf("%w: every /%d of %s from %s to %s is taken", ErrNoFreeSubnet, subnetLen, network, lo, hi)
	}
	var i int
	if rng == nil {
		i = rand.IntN(len(free))
	} else {
		i = rng.IntN(len(free))
	}
	return free[i], nil
}

// Pick chooses a free subnet for each family cfg enables, avoiding every
// subnet held in taken (leases and reservations alike). The subnet of a
// disabled family is left zero.
func Pick(rng *rand.Rand, cfg *netconf.Config, taken []Lease) (sn, sn6 netip.Prefix, err error) {
	used := make([]netip.Prefix, 0, 2*len(taken))
	for _, l := range taken {
		used = append(used, l.Subnet, l.Subnet6)
	}
	if cfg.EnableIPv4 {
		if sn, err = PickFree(rng, cfg.Network, cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax, used); err != nil {
			return netip.Prefix{}, netip.Prefix{}, err
		}
	}
	if cfg.EnableIPv6 {
		if sn6, err = PickFree(rng, cfg.IPv6Network, cfg.IPv6SubnetLen, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax, used); err != nil {
			return netip.Prefix{}, netip.Prefix{}, err
		}
	}
	return sn, sn6, nil
}

// interval is an inclusive address range.
type interval struct{ first, last u128 }

// merge turns the prefixes of one family into sorted, disjoint ranges, so
// the walk in FreeSubnets needs one pass over them.
func merge(ps []netip.Prefix, is4 bool) []interval {
	ivs := make([]interval, 0, len(ps))
	for _, p := range ps {
		if !p.IsValid() || p.Addr().Is4() != is4 {
			continue
		}
		first, last := span(p.Masked())
		ivs = append(ivs, interval{first, last})
	}
	slices.SortFunc(ivs, func(a, b interval) int { return a.first.cmp(b.first) })
	out := ivs[:0]
	for _, iv := range ivs {
		if n := len(out); n > 0 && iv.first.cmp(out[n-1].last) <= 0 {
			out[n-1].last = maxU128(out[n-1].last, iv.last)
			continue
		}
		out = append(out, iv)
	}
	return out
}

// span is the first and last address of a masked prefix.
func span(p netip.Prefix) (first, last u128) {
	first = u128From(p.Addr())
	hostBits := p.Addr().BitLen() - p.Bits()
	return first, first.or(lowOnes(hostBits))
}

// u128 is an address as a number: IPv4 in the low 32 bits, IPv6 in all
// 128, so both families share the arithmetic.
type u128 struct{ hi, lo uint64 }

func u128From(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func (u u128) addr(is4 bool) netip.Addr {
	if is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(u.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.hi)
	binary.BigEndian.PutUint64(b[8:], u.lo)
	return netip.AddrFrom16(b)
}

func (u u128) cmp(v u128) int {
	if c := cmp.Compare(u.hi, v.hi); c != 0 {
		return c
	}
	return cmp.Compare(u.lo, v.lo)
}

func (u u128) addCarry(v u128) (u128, bool) {
	lo, c := bits.Add64(u.lo, v.lo, 0)
	hi, c := bits.Add64(u.hi, v.hi, c)
	return u128{hi, lo}, c != 0
}

func (u u128) add(v u128) u128 { s, _ := u.addCarry(v); return s }

func (u u128) inc() (u128, bool) { return u.addCarry(u128{lo: 1}) }

// sub1 is u-1 for u > 0.
func (u u128) sub1() u128 {
	lo, b := bits.Sub64(u.lo, 1, 0)
	return u128{u.hi - b, lo}
}

func (u u128) or(v u128) u128     { return u128{u.hi | v.hi, u.lo | v.lo} }
func (u u128) andNot(v u128) u128 { return u128{u.hi &^ v.hi, u.lo &^ v.lo} }

// lowOnes is the number with the low n bits set: (1 << n) - 1.
func lowOnes(n int) u128 {
	switch {
	case n <= 0:
		return u128{}
	case n < 64:
		return u128{lo: 1<<n - 1}
	case n < 128:
		return u128{hi: 1<<(n-64) - 1, lo: ^uint64(0)}
	}
	return u128{^uint64(0), ^uint64(0)}
}

// alignUp rounds u up to a multiple of 1<<n; overflow reports running off
// the top of the address space.
func alignUp(u u128, n int) (u128, bool) {
	mask := lowOnes(n)
	if u.andNot(mask) == u {
		return u, false
	}
	return u.or(mask).inc()
}

func alignDown(u u128, n int) u128 { return u.andNot(lowOnes(n)) }

func maxU128(a, b u128) u128 {
	if a.cmp(b) >= 0 {
		return a
	}
	return b
}

func minU128(a, b u128) u128 {
	if a.cmp(b) <= 0 {
		return a
	}
	return b
}
