package route

import "net/netip"

// The Table records what the kernel accepted in maps of tens of thousands
// of entries, one set per peer. The entries themselves hold netip values,
// which carry a pointer (the zone) and, as map keys and values, repeat the
// key in the value: 120 bytes a route, 72 a neighbour, 80 an FDB entry.
// The record keeps them packed instead, without pointers (the collector
// never scans the maps) and with the key only once: 48, 32 and 28 bytes.

// addr is a netip.Addr without its zone (no entry of the package has one).
type addr struct {
	b   [16]byte // IPv4 in the first 4
	fam uint8    // 0 (invalid), 4 or 6
}

func packAddr(a netip.Addr) addr {
	switch {
	case a.Is4():
		var c addr
		v := a.As4()
		copy(c.b[:], v[:])
		c.fam = 4
		return c
	case a.Is6():
		return addr{b: a.As16(), fam: 6}
	}
	return addr{}
}

func (c addr) unpack() netip.Addr {
	switch c.fam {
	case 4:
		return netip.AddrFrom4([4]byte(c.b[:4]))
	case 6:
		return netip.AddrFrom16(c.b)
	}
	return netip.Addr{}
}

// routeKey is a route's key, Dst and Metric, as the kernel keys IPv4
// routes (TOS is never set by us).
type routeKey struct {
	dst    addr
	bits   int8 // Dst.Bits(): -1 for an invalid prefix
	metric uint32
}

// routeVal is the rest of a route.
type routeVal struct {
	gw     addr
	onLink bool
	link   int32
}

func (r Route) key() routeKey {
	return routeKey{packAddr(r.Dst.Addr()), int8(r.Dst.Bits()), uint32(r.Metric)}
}

func packRoute(r Route) (routeKey, routeVal) {
	return r.key(), routeVal{packAddr(r.Gw), r.OnLink, int32(r.LinkIndex)}
}

func unpackRoute(k routeKey, v routeVal) Route {
	var dst netip.Prefix
	if k.bits >= 0 || k.dst.fam != 0 {
		dst = netip.PrefixFrom(k.dst.unpack(), int(k.bits))
	}
	return Route{Dst: dst, Gw: v.gw.unpack(), LinkIndex: int(v.link), OnLink: v.onLink, Metric: int(k.metric)}
}

// neighKey is a neighbour entry's key: its address on its link.
type neighKey struct {
	ip   addr
	link int32
}

func (n Neigh) key() neighKey { return neighKey{packAddr(n.IP), int32(n.LinkIndex)} }

func packNeigh(n Neigh) (neighKey, MAC) { return n.key(), n.MAC }

func unpackNeigh(k neighKey, m MAC) Neigh {
	return Neigh{IP: k.ip.unpack(), MAC: m, LinkIndex: int(k.link)}
}

// fdbKey is an FDB entry, which is its own key.
type fdbKey struct {
	mac  MAC
	dst  addr
	link int32
}

func (f FDB) key() fdbKey { return fdbKey{f.MAC, packAddr(f.Dst), int32(f.LinkIndex)} }

func packFDB(f FDB) (fdbKey, struct{}) { return f.key(), struct{}{} }

func unpackFDB(k fdbKey, _ struct{}) FDB {
	return FDB{MAC: k.mac, Dst: k.dst.unpack(), LinkIndex: int(k.link)}
}

// codec turns one kind of entry E into the key and value the record holds
// and back.
type codec[E any, K, V comparable] struct {
	pack   func(E) (K, V)
	unpack func(K, V) E
}

var (
	routeCodec = codec[Route, routeKey, routeVal]{packRoute, unpackRoute}
	neighCodec = codec[Neigh, neighKey, MAC]{packNeigh, unpackNeigh}
	fdbCodec   = codec[FDB, fdbKey, struct{}]{packFDB, unpackFDB}
)

// keyed returns es packed into a map; a later duplicate key wins.
func (c codec[E, K, V]) keyed(es []E) map[K]V {
	m := make(map[K]V, len(es))
	for _, e := range es {
		k, v := c.pack(e)
		m[k] = v
	}
	return m
}
