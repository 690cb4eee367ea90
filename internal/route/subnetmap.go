package route

import (
	"iter"
	"net/netip"
)

// subnetMap is a map by subnet for the Frame's peers. A flannel lease's
// subnet is IPv4, and an IPv4 prefix fits in a uint64 key, which a map
// holds in 16 bytes a slot where a netip.Prefix key (with its zone
// pointer) takes 40: at 65,000 peers, 4 MB less. Other prefixes, which no
// backend gives today, have a map of their own.
type subnetMap[V any] struct {
	v4    map[uint64]V
	other map[netip.Prefix]V
}

func newSubnetMap[V any](n int) subnetMap[V] {
	return subnetMap[V]{v4: make(map[uint64]V, n), other: map[netip.Prefix]V{}}
}

// key4 is sn's key in v4, if sn is an IPv4 prefix: the address above its
// length.
func key4(sn netip.Prefix) (uint64, bool) {
	a := sn.Addr()
	if !a.Is4() || !sn.IsValid() {
		return 0, false
	}
	b := a.As4()
	return uint64(b[0])<<32 | uint64(b[1])<<24 | uint64(b[2])<<16 | uint64(b[3])<<8 | uint64(sn.Bits()), true
}

func prefix4(k uint64) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(k >> 32), byte(k >> 24), byte(k >> 16), byte(k >> 8)}), int(k&0xff))
}

func (m subnetMap[V]) get(sn netip.Prefix) (V, bool) {
	if k, ok := key4(sn); ok {
		v, ok := m.v4[k]
		return v, ok
	}
	v, ok := m.other[sn]
	return v, ok
}

func (m subnetMap[V]) set(sn netip.Prefix, v V) {
	if k, ok := key4(sn); ok {
		m.v4[k] = v
	} else {
		m.other[sn] = v
	}
}

func (m subnetMap[V]) del(sn netip.Prefix) {
	if k, ok := key4(sn); ok {
		delete(m.v4, k)
	} else {
		delete(m.other, sn)
	}
}

func (m subnetMap[V]) len() int { return len(m.v4) + len(m.other) }

// all yields every subnet and its value, in no order.
func (m subnetMap[V]) all() iter.Seq2[netip.Prefix, V] {
	return func(yield func(netip.Prefix, V) bool) {
		for k, v := range m.v4 {
			if !yield(prefix4(k), v) {
				return
			}
		}
		for sn, v := range m.other {
			if !yield(sn, v) {
				return
			}
		}
	}
}
