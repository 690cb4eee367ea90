package udp

import (
	"encoding/binary"
)

const (
	// maxGSOSegs is the kernel's UDP_MAX_SEGMENTS before Linux 6.11
	// (later kernels allow 128).
	maxGSOSegs = 64
	// maxGSOBytes is the most UDP payload one IPv4 sendmsg may carry.
	maxGSOBytes = 65535 - ipv4HeaderLen - 8
	// maxBatchSegs bounds the datagrams handed to one sendmmsg.
	maxBatchSegs = 1024
	// maxSegHdr is the largest IPv4 plus TCP header a split rewrites.
	maxSegHdr = 60 + 60

	tcpFlagFIN = 0x01
	tcpFlagSYN = 0x02
	tcpFlagRST = 0x04
	tcpFlagPSH = 0x08
	tcpFlagACK = 0x10
	tcpFlagURG = 0x20
	tcpFlagECE = 0x40
	tcpFlagCWR = 0x80
)

// segment is one datagram: an inner IPv4 packet, as a header and the data
// that follows it (data is empty when hdr is the whole packet). Keeping the
// two apart lets a TSO super-packet be split into MTU-sized packets without
// copying its payload: only the headers are rewritten, and the kernel
// gathers both pieces (iovecs) while it copies the datagram anyway.
type segment struct {
	hdr, data []byte
}

func (s *segment) size() int { return len(s.hdr) + len(s.data) }

// message is one sendmsg: n consecutive segments to one peer. With UDP GSO
// a message carries up to maxGSOSegs segments of segSize bytes, the last
// one possibly shorter; the kernel cuts it into one datagram per segment.
type message struct {
	peer     *peer
	first, n int // segments[first:first+n]
	segSize  int
	bytes    int
	closed   bool // the last segment was short: nothing may follow it
}

// batch is what one flush sends.
type batch struct {
	segs  []segment
	msgs  []message
	arena []byte // rewritten headers of split super-packets
	used  int
}

func newBatch() batch {
	return batch{
		segs:  make([]segment, 0, maxBatchSegs),
		msgs:  make([]message, 0, maxBatchSegs),
		arena: make([]byte, maxBatchSegs*maxSegHdr),
	}
}

func (b *batch) reset() {
	clear(b.segs) // drop references into read buffers
	b.segs = b.segs[:0]
	b.msgs = b.msgs[:0]
	b.used = 0
}

// outbound turns packets read from the TUN into batches of datagrams. It
// is used by one goroutine. send must transmit the whole batch before it
// returns (the batch points into the caller's read buffers).
type outbound struct {
	sh    *shared
	stats *counters
	vnet  bool // frames start with a virtio-net header
	gso   bool // a message may carry several segments (UDP GSO)

	send     func(*batch)
	writeTUN func(frame []byte) // for ICMP errors; errors are ignored

	b    batch
	icmp [vnetHdrLen + maxICMPLen]byte

	// One-entry lookup cache: consecutive packets mostly go to one host.
	cacheTable *table
	cacheDst   uint32
	cachePeer  *peer
}

func (o *outbound) pending() bool { return len(o.b.segs) > 0 }

// flush sends whatever is batched.
func (o *outbound) flush() {
	if len(o.b.segs) == 0 {
		return
	}
	o.send(&o.b)
	o.b.reset()
}

func (o *outbound) lookup(dst uint32) *peer {
	t := o.sh.peers.Load()
	if t == nil {
		return nil
	}
	if t == o.cacheTable && dst == o.cacheDst {
		return o.cachePeer
	}
	p := t.lookup(dst)
	o.cacheTable, o.cacheDst, o.cachePeer = t, dst, p
	return p
}

// packet handles one frame read from the TUN. The frame's memory must stay
// untouched until the next flush.
func (o *outbound) packet(frame []byte) {
	var vh vnetHdr
	pkt := frame
	if o.vnet {
		if len(frame) < vnetHdrLen {
			o.stats.malformed.Add(1)
			return
		}
		vh = decodeVnet(frame)
		pkt = frame[vnetHdrLen:]
	}
	ihl, total, ok := ipv4Header(pkt)
	if !ok {
		o.stats.malformed.Add(1)
		return
	}
	pkt = pkt[:total]
	nseg, thl := 1, 0
	if vh.gsoType != vnetGSONone {
		if vh.gsoType != vnetGSOTCPv4 || vh.gsoSize == 0 || pkt[ipOffProto] != protoTCP ||
			int(vh.csumStart) != ihl || len(pkt) < ihl+20 {
			o.stats.malformed.Add(1)
			return
		}
		// The kernel's hdrLen can cover the whole first packet on the
		// forwarding path; the TCP data offset is what counts.
		thl = int(pkt[ihl+12]>>4) * 4
		if thl < 20 || ihl+thl >= len(pkt) {
			o.stats.malformed.Add(1)
			return
		}
		mss := int(vh.gsoSize)
		nseg = (len(pkt) - ihl - thl + mss - 1) / mss
	}
	p := o.lookup(dstAddr(pkt))
	if p == nil {
		o.stats.noRoute.Add(uint64(nseg))
		o.unreachable(pkt, ihl)
		return
	}
	if !decTTL(pkt) {
		o.stats.ttl.Add(uint64(nseg))
		return
	}
	if vh.gsoType != vnetGSONone {
		o.splitTCP(p, pkt, ihl, thl, int(vh.gsoSize))
		return
	}
	if vh.flags&vnetFlagNeedsCsum != 0 && !completeChecksum(pkt, int(vh.csumStart), int(vh.csumOffset)) {
		o.stats.malformed.Add(1)
		return
	}
	o.add(p, pkt, nil)
}

// completeChecksum finishes a partial checksum (CHECKSUM_PARTIAL): the
// field holds the pseudo-header sum, the rest is summed from start.
func completeChecksum(pkt []byte, start, off int) bool {
	at := start + off
	if start < ipv4HeaderLen || start > len(pkt) || at+2 > len(pkt) {
		return false
	}
	c := ^fold(sum(pkt[start:], 0))
	if c == 0 {
		c = 0xffff // as the kernel does (CSUM_MANGLED_0): 0 means "none" for UDP
	}
	binary.BigEndian.PutUint16(pkt[at:], c)
	return true
}

// splitTCP cuts a TSO super-packet into segments of mss data bytes, as the
// kernel's GSO would: per segment a fresh IP total length, id and header
// checksum, TCP sequence number and full checksum, FIN and PSH only on the
// last segment, CWR only on the first. The TTL is already decremented.
func (o *outbound) splitTCP(p *peer, pkt []byte, ihl, thl, mss int) {
	hl := ihl + thl
	data := pkt[hl:]
	seq := binary.BigEndian.Uint32(pkt[ihl+4:])
	id := binary.BigEndian.Uint16(pkt[ipOffID:])
	ps := pseudoSum(pkt, protoTCP)
	// The segments' IP headers differ only in total length and id: sum
	// the rest once.
	var tmpl [60]byte
	copy(tmpl[:], pkt[:ihl])
	clear(tmpl[ipOffLen : ipOffID+2])
	clear(tmpl[ipOffCsum : ipOffCsum+2])
	ipSum := sum(tmpl[:ihl], 0)
	for i, off := 0, 0; off < len(data); i, off = i+1, off+mss {
		end := min(off+mss, len(data))
		if o.b.used+hl > len(o.b.arena) || len(o.b.segs) == cap(o.b.segs) {
			o.flush()
		}
		h := o.b.arena[o.b.used : o.b.used+hl]
		o.b.used += hl
		copy(h, pkt[:hl])
		n := hl + end - off
		binary.BigEndian.PutUint16(h[ipOffLen:], uint16(n))
		binary.BigEndian.PutUint16(h[ipOffID:], id+uint16(i))
		binary.BigEndian.PutUint16(h[ipOffCsum:], ^fold(addBE16(addBE16(ipSum, uint16(n)), id+uint16(i))))
		t := h[ihl:]
		binary.BigEndian.PutUint32(t[4:], seq+uint32(off))
		if end < len(data) {
			t[13] &^= tcpFlagFIN | tcpFlagPSH
		}
		if i > 0 {
			t[13] &^= tcpFlagCWR
		}
		t[16], t[17] = 0, 0
		acc := sum(t, addBE16(ps, uint16(n-ihl)))
		acc = sum(data[off:end], acc)
		binary.BigEndian.PutUint16(t[16:], ^fold(acc))
		o.add(p, h, data[off:end])
	}
}

// add appends a segment for p, extending the last message when GSO allows.
func (o *outbound) add(p *peer, hdr, data []byte) {
	if len(o.b.segs) == cap(o.b.segs) {
		o.flush()
	}
	size := len(hdr) + len(data)
	o.b.segs = append(o.b.segs, segment{hdr: hdr, data: data})
	if o.gso && len(o.b.msgs) > 0 {
		m := &o.b.msgs[len(o.b.msgs)-1]
		if m.peer == p && !m.closed && size <= m.segSize && m.n < maxGSOSegs && m.bytes+size <= maxGSOBytes {
			m.n++
			m.bytes += size
			m.closed = size < m.segSize
			return
		}
	}
	o.b.msgs = append(o.b.msgs, message{
		peer: p, first: len(o.b.segs) - 1, n: 1, segSize: size, bytes: size,
	})
}

// unreachable writes an ICMP net unreachable for pkt back into the TUN,
// when one is due and we have an address to send it from.
func (o *outbound) unreachable(pkt []byte, ihl int) {
	own := o.sh.own.Load()
	if own == nil || o.writeTUN == nil {
		return
	}
	off := 0
	if o.vnet {
		clear(o.icmp[:vnetHdrLen])
		off = vnetHdrLen
	}
	if n := netUnreachable(o.icmp[off:], pkt, ihl, own.addr); n > 0 {
		o.writeTUN(o.icmp[:off+n])
	}
}
