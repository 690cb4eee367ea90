package route

import (
	"encoding/binary"
	"iter"
	"net/netip"
)

// packedWant is a Want as a Frame keeps it for each peer: one string, in
// which the problem and the claims are substrings (read without
// allocating) and the entries are encoded compactly. A vxlan peer's Want
// takes about 90 bytes so, against about 380 with its slices; at 65,000
// peers that is 19 MB less. Addresses lose their zone (no entry has one).
//
// Layout: problem, then the claims, each as a length and bytes; then the
// routes, neighbours and FDB entries, each list as a count and entries.
type packedWant string

func packWant(w Want) packedWant {
	return packedWant(appendWant(make([]byte, 0, 16+len(w.Problem)+32*len(w.Claims)+16*w.State.Len()), w))
}

// appendWant appends w, packed, to b.
func appendWant(b []byte, w Want) []byte {
	b = appendString(b, w.Problem)
	b = binary.AppendUvarint(b, uint64(len(w.Claims)))
	for _, c := range w.Claims {
		b = appendString(b, c)
	}
	b = binary.AppendUvarint(b, uint64(len(w.Routes)))
	for _, r := range w.Routes {
		b = appendAddr(b, r.Dst.Addr())
		b = append(b, byte(r.Dst.Bits()+1))
		b = appendAddr(b, r.Gw)
		b = binary.AppendVarint(b, int64(r.LinkIndex))
		b = binary.AppendVarint(b, int64(r.Metric))
		b = append(b, boolByte(r.OnLink))
	}
	b = binary.AppendUvarint(b, uint64(len(w.Neighs)))
	for _, n := range w.Neighs {
		b = appendAddr(b, n.IP)
		b = append(b, n.MAC[:]...)
		b = binary.AppendVarint(b, int64(n.LinkIndex))
	}
	b = binary.AppendUvarint(b, uint64(len(w.FDB)))
	for _, f := range w.FDB {
		b = append(b, f.MAC[:]...)
		b = appendAddr(b, f.Dst)
		b = binary.AppendVarint(b, int64(f.LinkIndex))
	}
	return b
}

// problem is the Want's Problem.
func (p packedWant) problem() string {
	r := reader{s: string(p)}
	return r.str()
}

// claims yields the Want's Claims.
func (p packedWant) claims() iter.Seq[string] {
	return func(yield func(string) bool) {
		r := reader{s: string(p)}
		r.str()
		for range r.uvarint() {
			if !yield(r.str()) {
				return
			}
		}
	}
}

// appendTo appends the Want's entries to s.
func (p packedWant) appendTo(s *State) {
	r := reader{s: string(p)}
	r.str()
	for range r.uvarint() {
		r.str()
	}
	for range r.uvarint() {
		a := r.addr()
		bits := int(r.byte()) - 1
		var dst netip.Prefix
		if a.IsValid() || bits >= 0 {
			dst = netip.PrefixFrom(a, bits)
		}
		gw := r.addr()
		link, metric := r.varint(), r.varint()
		s.Routes = append(s.Routes, Route{Dst: dst, Gw: gw, LinkIndex: link, Metric: metric, OnLink: r.byte() != 0})
	}
	for range r.uvarint() {
		ip, mac := r.addr(), r.mac()
		s.Neighs = append(s.Neighs, Neigh{IP: ip, MAC: mac, LinkIndex: r.varint()})
	}
	for range r.uvarint() {
		mac, dst := r.mac(), r.addr()
		s.FDB = append(s.FDB, FDB{MAC: mac, Dst: dst, LinkIndex: r.varint()})
	}
}

// state is the Want's entries.
func (p packedWant) state() State {
	var s State
	p.appendTo(&s)
	return s
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

func appendAddr(b []byte, a netip.Addr) []byte {
	switch {
	case a.Is4():
		v := a.As4()
		return append(append(b, 4), v[:]...)
	case a.Is6():
		v := a.As16()
		return append(append(b, 6), v[:]...)
	}
	return append(b, 0)
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// reader reads what packWant wrote; the input is always its output, so
// it does not check for truncation beyond what slicing does.
type reader struct {
	s string
}

func (r *reader) byte() byte {
	c := r.s[0]
	r.s = r.s[1:]
	return c
}

// uvarint and varint read binary.AppendUvarint's and AppendVarint's
// encodings.
func (r *reader) uvarint() uint64 {
	var v uint64
	for shift := 0; ; shift += 7 {
		c := r.byte()
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return v
		}
	}
}

func (r *reader) varint() int {
	u := r.uvarint()
	v := int64(u >> 1)
	if u&1 != 0 {
		v = ^v
	}
	return int(v)
}

func (r *reader) str() string {
	n := r.uvarint()
	s := r.s[:n]
	r.s = r.s[n:]
	return s
}

func (r *reader) mac() MAC {
	var m MAC
	copy(m[:], r.s[:6])
	r.s = r.s[6:]
	return m
}

func (r *reader) addr() netip.Addr {
	var n int
	switch r.byte() {
	case 4:
		n = 4
	case 6:
		n = 16
	default:
		return netip.Addr{}
	}
	a, _ := netip.AddrFromSlice([]byte(r.s[:n]))
	r.s = r.s[n:]
	return a
}
