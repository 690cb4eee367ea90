package udp

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"
)

// peer is one remote host: its subnet and the UDP endpoint its packets go
// to (its PublicIP and our Port, as upstream: every host uses one port).
type peer struct {
	subnet netip.Prefix
	ip     [4]byte
	port   uint16
}

func (p *peer) endpoint() netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4(p.ip), p.port)
}

// table maps a destination address to the peer whose subnet contains it,
// longest prefix first. It is immutable once built: Sync builds a new one
// and swaps a pointer, so the forwarding loops read it without locks.
//
// Leases in one network almost always share one prefix length, so a lookup
// is usually a single array index: each prefix length is a level, and a
// level whose prefixes all lie inside the network and number at most 2^16
// possible slots is a dense array indexed by the subnet number; other levels
// fall back to a map.
type table struct {
	peers  []peer
	levels []level // longest prefix first
}

type level struct {
	shift  uint   // 32 - prefix length
	base   uint32 // first subnet number of the network, for dense levels
	dense  []int32
	sparse map[uint32]int32
}

const maxDenseBits = 16

// newTable builds a table of peers. network is the overlay network; it only
// decides which levels can be dense. A later duplicate of a subnet wins.
func newTable(peers []peer, network netip.Prefix) *table {
	t := &table{peers: slices.Clone(peers)}
	byLen := map[int][]int32{}
	for i, p := range t.peers {
		byLen[p.subnet.Bits()] = append(byLen[p.subnet.Bits()], int32(i))
	}
	lens := make([]int, 0, len(byLen))
	for l := range byLen {
		lens = append(lens, l)
	}
	slices.SortFunc(lens, func(a, b int) int { return cmp.Compare(b, a) })
	for _, bitsLen := range lens {
		idx := byLen[bitsLen]
		lv := level{shift: uint(32 - bitsLen)}
		dense := network.IsValid() && network.Addr().Is4() &&
			bitsLen >= network.Bits() && bitsLen-network.Bits() <= maxDenseBits
		for _, i := range idx {
			dense = dense && network.Contains(t.peers[i].subnet.Addr())
		}
		if dense {
			lv.base = addrBits(network.Addr()) >> lv.shift
			lv.dense = make([]int32, 1<<(bitsLen-network.Bits()))
			for j := range lv.dense {
				lv.dense[j] = -1
			}
			for _, i := range idx {
				lv.dense[addrBits(t.peers[i].subnet.Addr())>>lv.shift-lv.base] = i
			}
		} else {
			lv.sparse = make(map[uint32]int32, len(idx))
			for _, i := range idx {
				lv.sparse[addrBits(t.peers[i].subnet.Addr())>>lv.shift] = i
			}
		}
		t.levels = append(t.levels, lv)
	}
	return t
}

func addrBits(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// lookup returns the peer for dst, or nil.
func (t *table) lookup(dst uint32) *peer {
	for i := range t.levels {
		lv := &t.levels[i]
		k := dst >> lv.shift
		if lv.dense != nil {
			if j := k - lv.base; j < uint32(len(lv.dense)) {
				if p := lv.dense[j]; p >= 0 {
					return &t.peers[p]
				}
			}
			continue
		}
		if p, ok := lv.sparse[k]; ok {
			return &t.peers[p]
		}
	}
	return nil
}
