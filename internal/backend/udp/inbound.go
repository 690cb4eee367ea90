package udp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"log/slog"
	"syscall"
)

// Receive buffers: room for the largest datagram (or GRO batch) after a
// little headroom that keeps the payload 8-byte aligned.
const (
	rxHeadroom = 16
	rxBufLen   = rxHeadroom + 65535
)

// maxPieces bounds the iovecs of one TUN write (the kernel's UIO_MAXIOV is
// 1024).
const maxPieces = 1024

// inbound writes the packets of received datagrams into the TUN. It is used
// by one goroutine.
//
// With UDP GRO the kernel hands us up to 64 KiB of datagrams of one size
// from one sender in a single buffer. Runs of consecutive TCP segments of
// one flow are merged into one TSO super-packet: the first segment's
// headers are rewritten in place and the other segments' payloads are
// gathered behind it by writev, so one TUN write delivers them all, as the
// kernel's own GRO would for vxlan, without copying them in userspace. A
// run may go on into the next datagrams of the batch (a sender's 64 KiB
// super-packet needs two sendmsg calls once every segment has its own
// headers). The merged packet is marked CHECKSUM_PARTIAL, so the kernel
// does not verify the segments' TCP checksums: the outer UDP checksum,
// which the kernel has verified, already covered every byte of them on the
// wire.
type inbound struct {
	sh       *shared
	stats    *counters
	vnet     bool // frames written to the TUN start with a virtio-net header
	coalesce bool // merge TCP segments (requires vnet)

	// write puts one frame, given as consecutive pieces, into the TUN.
	write func(pieces [][]byte) error
	log   *slog.Logger // may be nil

	g       group // the packet being built, until done
	pieces  [][]byte
	pkts    [][]byte // the group's packets as they arrived, for the fallback
	headHdr [maxSegHdr]byte
	vh      [vnetHdrLen]byte
}

func newInbound(sh *shared, stats *counters, vnet bool, write func([][]byte) error) *inbound {
	return &inbound{sh: sh, stats: stats, vnet: vnet, coalesce: vnet, write: write,
		pieces: make([][]byte, 0, maxPieces), pkts: make([][]byte, 0, maxPieces)}
}

// group is the packet being built: one packet (head), possibly followed by
// the payloads of later TCP segments of its flow (in.pieces).
type group struct {
	active  bool
	head    []byte // the first packet, in its receive buffer
	total   int    // length of the merged packet
	n       int    // inner packets
	bytes   int    // their bytes on the wire
	tcp     bool   // head may take more segments
	closed  bool   // the last segment was short or had PSH
	ihl, hl int
	mss     int
	nextSeq uint32
}

// datagram handles the payload buf[off:off+n]. gsoSize > 0 says the payload
// is several datagrams of gsoSize bytes (the last may be shorter) that UDP
// GRO coalesced. The last packet may be held back to merge with the next
// datagram: buf must stay untouched until done is called.
func (in *inbound) datagram(buf []byte, off, n, gsoSize int) {
	own := in.sh.own.Load()
	end := off + n
	if gsoSize <= 0 || gsoSize > n {
		gsoSize = n
	}
	for pos := off; pos < end; pos += gsoSize {
		seg := buf[pos:min(pos+gsoSize, end)]
		_, total, ok := ipv4Header(seg)
		if !ok {
			in.flush()
			in.stats.malformed.Add(1)
			continue
		}
		pkt := seg[:total]
		// Only our subnet is delivered, and nobody else sends from it
		// (the device accepts local sources for our ICMP errors).
		if own == nil || !own.contains(dstAddr(pkt)) || own.contains(srcAddr(pkt)) {
			in.flush()
			in.stats.noRoute.Add(1)
			continue
		}
		if !decTTL(pkt) {
			in.flush()
			in.stats.ttl.Add(1)
			continue
		}
		if in.g.active && in.appendTo(pkt) {
			continue
		}
		in.flush()
		in.start(pkt)
	}
}

// done writes the packet held back, if any: call it after the last
// datagram of a batch, before reusing its buffers.
func (in *inbound) done() { in.flush() }

// start begins a group with pkt.
func (in *inbound) start(pkt []byte) {
	g := &in.g
	*g = group{active: true, head: pkt, total: len(pkt), n: 1, bytes: len(pkt)}
	in.pieces = in.pieces[:0]
	if in.vnet {
		in.pieces = append(in.pieces, in.vh[:])
	}
	in.pieces = append(in.pieces, pkt)
	in.pkts = append(in.pkts[:0], pkt)
	if !in.coalesce || pkt[0] != 0x45 || pkt[ipOffProto] != protoTCP ||
		binary.BigEndian.Uint16(pkt[ipOffFrag:])&(ipFlagMF|ipFragMask) != 0 || len(pkt) < ipv4HeaderLen+20 {
		return
	}
	t := pkt[ipv4HeaderLen:]
	thl := int(t[12]>>4) * 4
	hl := ipv4HeaderLen + thl
	if thl < 20 || hl >= len(pkt) {
		return // pure ACKs and bad headers travel alone
	}
	if t[13] != tcpFlagACK && t[13] != tcpFlagACK|tcpFlagECE {
		return // PSH, FIN, SYN, RST, URG, CWR end or stand alone
	}
	g.tcp = true
	copy(in.headHdr[:], pkt[:hl]) // merging rewrites it; the fallback restores it
	g.ihl, g.hl = ipv4HeaderLen, hl
	g.mss = len(pkt) - hl
	g.nextSeq = binary.BigEndian.Uint32(t[4:]) + uint32(g.mss)
}

// appendTo merges pkt into the group if it is the next segment of its flow
// with nothing in its headers that merging would lose (the rules of the
// kernel's tcp_gro_receive).
func (in *inbound) appendTo(pkt []byte) bool {
	g := &in.g
	if !g.tcp || g.closed || len(pkt) <= g.hl || len(pkt)-g.hl > g.mss ||
		g.total+len(pkt)-g.hl > 0xffff || len(in.pieces) == cap(in.pieces) {
		return false
	}
	head := g.head
	be := binary.BigEndian
	if pkt[0] != 0x45 || pkt[1] != head[1] || pkt[ipOffTTL] != head[ipOffTTL] || pkt[ipOffProto] != protoTCP ||
		be.Uint16(pkt[ipOffFrag:]) != be.Uint16(head[ipOffFrag:]) ||
		be.Uint64(pkt[ipOffSrc:]) != be.Uint64(head[ipOffSrc:]) { // source and destination
		return false
	}
	t, ht := pkt[g.ihl:g.hl], head[g.ihl:g.hl]
	flags := t[13]
	if t[12] != ht[12] || flags&^tcpFlagPSH != ht[13] ||
		be.Uint32(t[4:]) != g.nextSeq ||
		be.Uint32(t[0:]) != be.Uint32(ht[0:]) || // ports
		be.Uint32(t[8:]) != be.Uint32(ht[8:]) || // ack
		!bytes.Equal(t[20:], ht[20:]) { // options
		return false
	}
	payload := pkt[g.hl:]
	in.pieces = append(in.pieces, payload)
	in.pkts = append(in.pkts, pkt)
	g.total += len(payload)
	g.n++
	g.bytes += len(pkt)
	g.nextSeq += uint32(len(payload))
	copy(ht[14:16], t[14:16]) // the latest window, as GRO does
	if flags&tcpFlagPSH != 0 {
		ht[13] |= tcpFlagPSH
		g.closed = true
	}
	if len(payload) < g.mss {
		g.closed = true
	}
	return true
}

// flush writes the group to the TUN and ends it.
func (in *inbound) flush() {
	g := &in.g
	if !g.active {
		return
	}
	g.active = false
	if in.vnet {
		if g.n > 1 {
			pkt := g.head
			binary.BigEndian.PutUint16(pkt[ipOffLen:], uint16(g.total))
			setIPChecksum(pkt[:g.ihl])
			// CHECKSUM_PARTIAL wants the pseudo-header sum, not inverted.
			ps := addBE16(pseudoSum(pkt, protoTCP), uint16(g.total-g.ihl))
			binary.BigEndian.PutUint16(pkt[g.ihl+16:], fold(ps))
			vnetHdr{
				flags:      vnetFlagNeedsCsum,
				gsoType:    vnetGSOTCPv4,
				hdrLen:     uint16(g.hl),
				gsoSize:    uint16(g.mss),
				csumStart:  uint16(g.ihl),
				csumOffset: 16,
			}.encode(in.vh[:])
		} else {
			clear(in.vh[:])
		}
	}
	err := in.write(in.pieces)
	if err != nil && g.n > 1 {
		in.unmerge(err)
	} else if err != nil {
		in.stats.writeErrors.Add(1)
	} else {
		in.stats.packets.Add(uint64(g.n))
		in.stats.bytes.Add(uint64(g.bytes))
	}
	clear(in.pieces) // drop references into receive buffers
	clear(in.pkts)
	g.head = nil
}

// unmerge writes the packets of a merged group one by one after the
// kernel refused the super-packet, so a flow never stalls on the offload;
// EINVAL means the kernel does not take our TSO writes at all, so merging
// stops for good.
func (in *inbound) unmerge(err error) {
	g := &in.g
	if errors.Is(err, syscall.EINVAL) && in.coalesce {
		in.coalesce = false
		if in.log != nil {
			in.log.Warn("kernel refused a coalesced TUN write, writing one packet per syscall from now on", "err", err)
		}
	}
	copy(g.head, in.headHdr[:g.hl])
	clear(in.vh[:])
	for _, p := range in.pkts {
		in.pieces = in.pieces[:0]
		if in.vnet {
			in.pieces = append(in.pieces, in.vh[:])
		}
		in.pieces = append(in.pieces, p)
		if in.write(in.pieces) != nil {
			in.stats.writeErrors.Add(1)
			continue
		}
		in.stats.packets.Add(1)
		in.stats.bytes.Add(uint64(len(p)))
	}
}
