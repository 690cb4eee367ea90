package fastpath

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Offsets into struct __sk_buff (include/uapi/linux/bpf.h).
const (
	skbLen     = 0
	skbData    = 76
	skbDataEnd = 80
	skbGSOSize = 176
	skbGSOSegs = 164
)

// Offsets into struct xdp_md.
const (
	xdpData    = 0
	xdpDataEnd = 4
)

// pullInsns leaves R2 = skb->data and R3 = skb->data_end with at least n
// bytes between them, pulling them into the linear part first if they
// are not there (a socket's datagram may carry only its headers there, its
// payload in a page); it jumps to fail if the packet is shorter. It
// clobbers R0-R5.
func pullInsns(n int32, label, fail string) asm.Instructions {
	return append(asm.Instructions{
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, n),
		asm.JLE.Reg(asm.R4, asm.R3, label),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, n),
		asm.FnSkbPullData.Call(),
		asm.JNE.Imm(asm.R0, 0, fail),
	}, append(boundInsns(n, fail),
		asm.Mov.Reg(asm.R4, asm.R4).WithSymbol(label),
	)...)
}

// boundInsns (re)loads R2 = skb->data and R3 = skb->data_end, as needed
// after any helper that may move the packet, and jumps to fail unless n
// bytes lie between them. It clobbers R4.
func boundInsns(n int32, fail string) asm.Instructions {
	return packetBoundInsns(skbData, skbDataEnd, n, fail)
}

// packetBoundInsns loads R2 and R3 from the context's data and data_end
// fields at the given offsets (R6 the context) and jumps to fail unless n
// bytes lie between them. It clobbers R4.
func packetBoundInsns(data, end int16, n int32, fail string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R2, asm.R6, data, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, end, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, n),
		asm.JGT.Reg(asm.R4, asm.R3, fail),
	}
}

// decTTLInsns decrements the TTL of the IPv4 header at R2+off and
// updates its checksum as ip_decrease_ttl does (the header's sum stays
// the same, so a CHECKSUM_COMPLETE skb->csum stays right); a TTL of 1 or
// less jumps to fail unchanged. done names the instruction's internal
// label, unique per program. It clobbers R4.
func decTTLInsns(off int16, fail, done string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R4, asm.R2, off+8, asm.Byte),
		asm.JLE.Imm(asm.R4, 1, fail),
		asm.Add.Imm(asm.R4, -1),
		asm.StoreMem(asm.R2, off+8, asm.R4, asm.Byte),
		asm.LoadMem(asm.R4, asm.R2, off+10, asm.Half),
		asm.Add.Imm(asm.R4, ttlCheckDelta),
		asm.JLT.Imm(asm.R4, 0xffff, done),
		asm.Add.Imm(asm.R4, 1),
		asm.StoreMem(asm.R2, off+10, asm.R4, asm.Half).WithSymbol(done),
	}
}

// Stack slots the programs keep a packet's count and size in across the
// helpers that reshape it.
const (
	fpSegs     = -24
	fpBytes    = -32
	fpEndpoint = -40 // the ingress program's endpoints key
)

// countInsns adds the packets and bytes kept at fpSegs and fpBytes to the
// per-CPU counters of direction key (statOut, statIn). It clobbers R0-R5.
func countInsns(key int32, label string) asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(asm.RFP, -4, int64(key), asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapStats),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, label),
		asm.LoadMem(asm.R1, asm.RFP, fpSegs, asm.DWord),
		asm.LoadMem(asm.R2, asm.R0, 0, asm.DWord),
		asm.Add.Reg(asm.R2, asm.R1),
		asm.StoreMem(asm.R0, 0, asm.R2, asm.DWord),
		asm.LoadMem(asm.R1, asm.RFP, fpBytes, asm.DWord),
		asm.LoadMem(asm.R2, asm.R0, 8, asm.DWord),
		asm.Add.Reg(asm.R2, asm.R1),
		asm.StoreMem(asm.R0, 8, asm.R2, asm.DWord),
		asm.Mov.Reg(asm.R0, asm.R0).WithSymbol(label),
	}
}

// saveCountInsns keeps the packet's segment count (at least 1) and its
// length less hdr bytes on the stack for countInsns.
func saveCountInsns(hdr int32, label string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R1, asm.R6, skbGSOSegs, asm.Word),
		asm.JNE.Imm(asm.R1, 0, label),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreMem(asm.RFP, fpSegs, asm.R1, asm.DWord).WithSymbol(label),
		asm.LoadMem(asm.R1, asm.R6, skbLen, asm.Word),
		asm.Add.Imm(asm.R1, -hdr),
		asm.StoreMem(asm.RFP, fpBytes, asm.R1, asm.DWord),
	}
}

// Return codes and flags from include/uapi/linux/bpf.h.
const (
	tcxNext = -1 // not ours: let the next program or the stack have it
	tcxDrop = 2
	xdpDrop = 1 // XDP_DROP
	xdpPass = 2 // XDP_PASS

	adjRoomMAC = 1 // BPF_ADJ_ROOM_MAC

	adjRoomFixedGSO = 1 << 0 // BPF_F_ADJ_ROOM_FIXED_GSO
	adjRoomEncapL3  = 1 << 1 // BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
	adjRoomEncapUDP = 1 << 4 // BPF_F_ADJ_ROOM_ENCAP_L4_UDP

	redirectIngress = 1 // BPF_F_INGRESS
)

// Header sizes.
const (
	ethLen   = 14
	ipLen    = 20 // outer IPv4 header: no options
	udpLen   = 8
	encapLen = ipLen + udpLen
)

// Map names; the programs refer to them by these.
const (
	mapConfig    = "config"
	mapPeers     = "peers"
	mapPeerIPs   = "peer_ips"
	mapStats     = "stats"
	mapEndpoints = "endpoints"
)

// Keys of the stats map: one pair of counters per direction, and two
// subsets of statIn: the decapsulated packets delivered straight to a
// container, and those decapsulated in XDP.
const (
	statOut  = 0
	statIn   = 1
	statPeer = 2
	statXDP  = 3 // of statIn, those the XDP program decapsulated
	statKeys = 4
)

// maxEndpoints bounds the endpoints map: a /16 subnet's containers.
const maxEndpoints = 1 << 16

// maxPeers bounds the peer maps: a /8 network of /24 subnets.
const maxPeers = 1 << 16

// configInsns sets R9 to the config map's one element, or jumps to pass
// while there is none.
func configInsns(pass string) asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapConfig),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, pass),
		asm.Mov.Reg(asm.R9, asm.R0),
	}
}

// egressInsns encapsulates packets that flannel0 would transmit (so data
// starts at the inner IPv4 header) whose destination has a peer.
func egressInsns() asm.Instructions {
	const pass, drop = "pass", "drop"
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // R6 = skb
	}
	insns = append(insns, configInsns(pass)...)
	insns = append(insns,
		asm.LoadMem(asm.R2, asm.R9, cfgExtIndex, asm.Word),
		asm.JEq.Imm(asm.R2, 0, pass),
	)
	// An IPv4 header must be there.
	insns = append(insns, pullInsns(20, "out_pulled", pass)...)
	insns = append(insns, asm.Instructions{
		asm.LoadMem(asm.R4, asm.R2, 0, asm.Byte),
		asm.And.Imm(asm.R4, 0xf0),
		asm.JNE.Imm(asm.R4, 0x40, pass),
		// Super-packets other than TCP (UDP GSO from a container) go to
		// userspace, which segments them: one that crossed a virtual wire
		// whole would reach the peer's socket as one giant datagram, as
		// its ingress program only takes TCP ones apart.
		asm.LoadMem(asm.R4, asm.R6, skbGSOSize, asm.Word),
		asm.JEq.Imm(asm.R4, 0, "not_gso"),
		asm.LoadMem(asm.R4, asm.R2, 9, asm.Byte),
		asm.JNE.Imm(asm.R4, 6, pass),
		asm.Mov.Imm(asm.R4, 0).WithSymbol("not_gso"),

		// R7 = the peer's public IP for the inner destination, or pass:
		// userspace answers net-unreachable.
		asm.StoreImm(asm.RFP, -16, 32, asm.Word),
		asm.LoadMem(asm.R4, asm.R2, 16, asm.Word),
		asm.StoreMem(asm.RFP, -12, asm.R4, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapPeers),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -16),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, pass),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word),
	}...)
	// Decrement the inner TTL as upstream's proxy does on top of the
	// kernel's routing (the userspace path does too); a packet that would
	// reach 0 goes to userspace, which drops and counts it.
	insns = append(insns, boundInsns(20, pass)...)
	insns = append(insns, decTTLInsns(0, pass, "ttl_csum")...)
	insns = append(insns, saveCountInsns(0, "out_segs")...)
	insns = append(insns, asm.Instructions{
		// Room for the outer IPv4 and UDP headers, the packet marked as
		// UDP-encapsulated so GSO cuts a super-packet into one datagram
		// per inner segment. FIXED_GSO keeps the inner segment size:
		// flannel0's MTU already left room for our 28 bytes. A packet
		// that is already encapsulated is refused (-EALREADY) and goes to
		// userspace unchanged.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, encapLen),
		asm.Mov.Imm(asm.R3, adjRoomMAC),
		asm.Mov.Imm(asm.R4, adjRoomFixedGSO|adjRoomEncapL3|adjRoomEncapUDP),
		asm.FnSkbAdjustRoom.Call(),
		asm.JNE.Imm(asm.R0, 0, pass),

		// flannel0 has no link layer, but bpf_redirect_neigh takes the
		// packet from behind an Ethernet header (and drops it if there is
		// none); it then resolves the next hop through the FIB and the
		// neighbour table and writes the real one.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, ethLen),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnSkbChangeHead.Call(),
		asm.JNE.Imm(asm.R0, 0, drop),
	}...)
	// Packet pointers are stale after the helpers above: reload.
	insns = append(insns, boundInsns(ethLen+encapLen, drop)...)
	insns = append(insns, asm.Instructions{
		asm.StoreImm(asm.R2, 12, int64(ethPIP), asm.Half),
		asm.Mov.Reg(asm.R8, asm.R2),
		asm.Add.Imm(asm.R8, ethLen), // R8 = outer IPv4 header

		// Outer IPv4: tot_len from skb->len (GSO fixes it per segment),
		// DF as a socket's datagrams carry it, TTL 64, protocol UDP.
		asm.StoreImm(asm.R8, 0, 0x45, asm.Byte),
		asm.StoreImm(asm.R8, 1, 0, asm.Byte),
		asm.LoadMem(asm.R4, asm.R6, skbLen, asm.Word),
		asm.Add.Imm(asm.R4, -ethLen),
		asm.Mov.Reg(asm.R5, asm.R4),
		asm.HostTo(asm.BE, asm.R5, asm.Half),
		asm.StoreMem(asm.R8, 2, asm.R5, asm.Half),
		asm.StoreImm(asm.R8, 4, 0, asm.Half),
		asm.StoreImm(asm.R8, 6, int64(ipDF), asm.Half),
		asm.StoreImm(asm.R8, 8, 64, asm.Byte),
		asm.StoreImm(asm.R8, 9, 17, asm.Byte),
		asm.StoreImm(asm.R8, 10, 0, asm.Half),
		asm.LoadMem(asm.R5, asm.R9, cfgPublicIP, asm.Word),
		asm.StoreMem(asm.R8, 12, asm.R5, asm.Word),
		asm.StoreMem(asm.R8, 16, asm.R7, asm.Word),

		// UDP: from and to our port, checksum 0 as upstream sends.
		asm.LoadMem(asm.R5, asm.R9, cfgPort, asm.Half),
		asm.StoreMem(asm.R8, 20, asm.R5, asm.Half),
		asm.StoreMem(asm.R8, 22, asm.R5, asm.Half),
		asm.Add.Imm(asm.R4, -ipLen),
		asm.HostTo(asm.BE, asm.R4, asm.Half),
		asm.StoreMem(asm.R8, 24, asm.R4, asm.Half),
		asm.StoreImm(asm.R8, 26, 0, asm.Half),

		// IPv4 header checksum: the one's complement sum of its words.
		asm.Mov.Imm(asm.R1, 0),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.R8),
		asm.Mov.Imm(asm.R4, ipLen),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnCsumDiff.Call(),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.And.Imm(asm.R1, 0xffff),
		asm.RSh.Imm(asm.R0, 16),
		asm.Add.Reg(asm.R0, asm.R1),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.And.Imm(asm.R1, 0xffff),
		asm.RSh.Imm(asm.R0, 16),
		asm.Add.Reg(asm.R0, asm.R1),
		asm.Xor.Imm(asm.R0, 0xffff),
		asm.StoreMem(asm.R8, 10, asm.R0, asm.Half),
	}...)
	insns = append(insns, countInsns(statOut, "out_counted")...)
	return append(insns, asm.Instructions{
		// Out of the external interface to the next hop for the peer.
		asm.LoadMem(asm.R1, asm.R9, cfgExtIndex, asm.Word),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Imm(asm.R3, 0),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRedirectNeigh.Call(),
		asm.Return(),

		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol(pass),
		asm.Return(),
		asm.Mov.Imm(asm.R0, tcxDrop).WithSymbol(drop),
		asm.Return(),
	}...)
}

// Offsets in a received frame: Ethernet, outer IPv4 (no options), UDP,
// inner IPv4.
const (
	inIP    = ethLen
	inUDP   = inIP + ipLen
	inInner = inUDP + udpLen
)

// matchOuterInsns jumps to pass unless R2 (packet data at the Ethernet
// header, at least inInner+20 bytes before data_end) holds an IPv4/UDP
// datagram for our public IP and port (R9 the config) whose payload is
// exactly one IPv4 packet. It clobbers R4 and R5.
func matchOuterInsns(pass string) asm.Instructions {
	return asm.Instructions{
		// Outer: IPv4 without options, UDP, not a fragment, to our
		// public IP and port.
		asm.LoadMem(asm.R4, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R4, ethPIP, pass),
		asm.LoadMem(asm.R4, asm.R2, inIP, asm.Byte),
		asm.JNE.Imm(asm.R4, 0x45, pass),
		asm.LoadMem(asm.R4, asm.R2, inIP+9, asm.Byte),
		asm.JNE.Imm(asm.R4, 17, pass),
		asm.LoadMem(asm.R4, asm.R2, inIP+6, asm.Half),
		asm.And.Imm(asm.R4, fragMask),
		asm.JNE.Imm(asm.R4, 0, pass),
		asm.LoadMem(asm.R4, asm.R2, inIP+16, asm.Word),
		asm.LoadMem(asm.R5, asm.R9, cfgPublicIP, asm.Word),
		asm.JNE.Reg(asm.R4, asm.R5, pass),
		asm.LoadMem(asm.R4, asm.R2, inUDP+2, asm.Half),
		asm.LoadMem(asm.R5, asm.R9, cfgPort, asm.Half),
		asm.JNE.Reg(asm.R4, asm.R5, pass),

		// Exactly one IPv4 packet: its length is the datagram's payload.
		// Modulo 2^16: a super-packet of nearly 64 KiB that crossed a
		// virtual wire whole carries the outer length our egress program
		// wrote, which wraps (segmentation rewrites it per segment).
		asm.LoadMem(asm.R4, asm.R2, inIP+2, asm.Half),
		asm.HostTo(asm.BE, asm.R4, asm.Half),
		asm.LoadMem(asm.R5, asm.R2, inInner+2, asm.Half),
		asm.HostTo(asm.BE, asm.R5, asm.Half),
		asm.Add.Imm(asm.R5, encapLen),
		asm.And.Imm(asm.R5, 0xffff),
		asm.JNE.Reg(asm.R4, asm.R5, pass),
		asm.LoadMem(asm.R4, asm.R2, inInner, asm.Byte),
		asm.And.Imm(asm.R4, 0xf0),
		asm.JNE.Imm(asm.R4, 0x40, pass),
	}
}

// matchInnerInsns jumps to pass unless the IPv4 packet at R2+off is for
// our subnet and not from it (the userspace path's rule), and leaves its
// destination on the stack at fpEndpoint, the endpoints map's key. It
// clobbers R0, R4 and R5.
func matchInnerInsns(off int16, pass string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R5, asm.R9, cfgOwnMask, asm.Word),
		asm.LoadMem(asm.R0, asm.R9, cfgOwnNet, asm.Word),
		asm.LoadMem(asm.R4, asm.R2, off+16, asm.Word),
		asm.And.Reg(asm.R4, asm.R5),
		asm.JNE.Reg(asm.R4, asm.R0, pass),
		asm.LoadMem(asm.R4, asm.R2, off+12, asm.Word),
		asm.And.Reg(asm.R4, asm.R5),
		asm.JEq.Reg(asm.R4, asm.R0, pass),
		asm.LoadMem(asm.R4, asm.R2, off+16, asm.Word),
		asm.StoreMem(asm.RFP, fpEndpoint, asm.R4, asm.Word),
	}
}

// matchPeerInsns jumps to pass unless the outer source of the datagram at
// R2 is a peer we know. It clobbers R0-R5.
func matchPeerInsns(pass string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R4, asm.R2, inIP+12, asm.Word),
		asm.StoreMem(asm.RFP, -8, asm.R4, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapPeerIPs),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, pass),
	}
}

// endpointInsns sets R7 to the endpoints map's entry for the key at
// fpEndpoint: the local container the inner packet is for, or 0. It
// clobbers R0-R5.
func endpointInsns() asm.Instructions {
	return asm.Instructions{
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapEndpoints),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, fpEndpoint),
		asm.FnMapLookupElem.Call(),
		asm.Mov.Reg(asm.R7, asm.R0),
	}
}

// ingressInsns decapsulates datagrams on the external interface that are
// for our public IP and port, come from a known peer and carry exactly one
// IPv4 packet for our subnet, and hands the inner packet to flannel0's
// ingress. Everything else, batches of datagrams that GRO merged
// included, goes on unchanged.
// Packets the XDP program already decapsulated (the mark as their
// Ethernet source) are only delivered.
func ingressInsns() asm.Instructions {
	const pass, toTUN, deliver = "pass", "to_tun", "deliver"
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R8, asm.R6, skbGSOSize, asm.Word), // R8 = gso_size
	}
	insns = append(insns, configInsns(pass)...)
	insns = append(insns,
		asm.LoadMem(asm.R2, asm.R9, cfgTUNIndex, asm.Word),
		asm.JEq.Imm(asm.R2, 0, pass),
	)
	// Decapsulated by our XDP program: it wrote the mark as the Ethernet
	// source address.
	insns = append(insns, pullInsns(ethLen+20, "head_pulled", pass)...)
	insns = append(insns,
		asm.LoadMem(asm.R4, asm.R2, 6, asm.Word),
		asm.LoadMem(asm.R5, asm.R9, cfgMark, asm.Word),
		asm.JNE.Reg(asm.R4, asm.R5, "encapsulated"),
		asm.LoadMem(asm.R4, asm.R2, 10, asm.Half),
		asm.LoadMem(asm.R5, asm.R9, cfgMark+4, asm.Half),
		asm.JNE.Reg(asm.R4, asm.R5, "encapsulated"),
	)
	// The program checked all this; checked again so that nothing but
	// a packet for our subnet is ever delivered, whoever marked it.
	insns = append(insns,
		asm.LoadMem(asm.R4, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R4, ethPIP, pass),
		asm.LoadMem(asm.R4, asm.R2, ethLen, asm.Byte),
		asm.And.Imm(asm.R4, 0xf0),
		asm.JNE.Imm(asm.R4, 0x40, pass),
	)
	insns = append(insns, matchInnerInsns(ethLen, pass)...)
	insns = append(insns, endpointInsns()...)
	insns = append(insns, saveCountInsns(ethLen, "xdp_segs")...)
	insns = append(insns, countInsns(statXDP, "xdp_counted")...)
	insns = append(insns, asm.Ja.Label(deliver))

	pull := pullInsns(inInner+20, "in_pulled", pass)
	pull[0] = pull[0].WithSymbol("encapsulated")
	insns = append(insns, pull...)
	insns = append(insns, matchOuterInsns(pass)...)
	insns = append(insns, asm.Instructions{
		// A GSO packet passes that check only if it is one of our
		// egress program's TCP super-packets that crossed a virtual wire
		// whole (outer and inner lengths cover the whole packet); GRO or
		// UDP_SEGMENT batches of datagrams fail it, as their first inner
		// packet is one segment long. Only TCP ones are taken: adjust_room
		// refuses other GSO types.
		asm.JEq.Imm(asm.R8, 0, "one"),
		asm.LoadMem(asm.R4, asm.R2, inInner+9, asm.Byte),
		asm.JNE.Imm(asm.R4, 6, pass),
		asm.Mov.Reg(asm.R4, asm.R4).WithSymbol("one"),
	}...)
	insns = append(insns, matchInnerInsns(inInner, pass)...)
	insns = append(insns, matchPeerInsns(pass)...)
	insns = append(insns, endpointInsns()...)
	// Take the outer headers out from behind the Ethernet header; the
	// redirect to a device without a link layer takes that off too.
	insns = append(insns, saveCountInsns(ethLen+encapLen, "in_segs")...)
	insns = append(insns, asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, -encapLen),
		asm.Mov.Imm(asm.R3, adjRoomMAC),
		asm.Mov.Imm(asm.R4, adjRoomFixedGSO),
		asm.FnSkbAdjustRoom.Call(),
		asm.JNE.Imm(asm.R0, 0, pass),
	}...)
	count := countInsns(statIn, "in_counted")
	count[0] = count[0].WithSymbol(deliver)
	insns = append(insns, count...)
	insns = append(insns, peerInsns(toTUN)...)
	return append(insns, asm.Instructions{
		asm.LoadMem(asm.R1, asm.R9, cfgTUNIndex, asm.Word).WithSymbol(toTUN),
		asm.Mov.Imm(asm.R2, redirectIngress),
		asm.FnRedirect.Call(),
		asm.Return(),

		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol(pass),
		asm.Return(),
	}...)
}

// xdpInsns decapsulates, before GRO, the datagrams the ingress program
// would, so that GRO merges the inner TCP segments and the ingress
// program only delivers the result. Decapsulated after GRO instead, a
// NIC's datagrams reach the host's forwarding one by one, and a
// super-packet that crossed a virtual wire keeps its tunnel GSO type,
// which the bridge then segments in software.
//
// The inner packet gets an Ethernet header to our address (the frame's
// destination) from the mark, a random address that nothing on the wire
// has; the ingress program knows decapsulated packets by it. XDP metadata
// would not do: it is lost when a packet socket (tcpdump) shares the skb.
func xdpInsns() asm.Instructions {
	const pass = "pass"
	insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}
	insns = append(insns, configInsns(pass)...)
	insns = append(insns,
		asm.LoadMem(asm.R2, asm.R9, cfgTUNIndex, asm.Word),
		asm.JEq.Imm(asm.R2, 0, pass),
	)
	insns = append(insns, xdpBoundInsns(inInner+20, pass)...)
	insns = append(insns, matchOuterInsns(pass)...)
	insns = append(insns, matchInnerInsns(inInner, pass)...)
	insns = append(insns, matchPeerInsns(pass)...)
	insns = append(insns, xdpBoundInsns(ethLen, pass)...)
	insns = append(insns,
		// The destination address, kept in R7 and R8 across the helper.
		asm.LoadMem(asm.R7, asm.R2, 0, asm.Word),
		asm.LoadMem(asm.R8, asm.R2, 4, asm.Half),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, encapLen),
		asm.FnXdpAdjustHead.Call(),
		asm.JNE.Imm(asm.R0, 0, pass),
	)
	insns = append(insns, xdpBoundInsns(ethLen, "drop")...)
	return append(insns,
		asm.StoreMem(asm.R2, 0, asm.R7, asm.Word),
		asm.StoreMem(asm.R2, 4, asm.R8, asm.Half),
		asm.LoadMem(asm.R4, asm.R9, cfgMark, asm.Word),
		asm.StoreMem(asm.R2, 6, asm.R4, asm.Word),
		asm.LoadMem(asm.R4, asm.R9, cfgMark+4, asm.Half),
		asm.StoreMem(asm.R2, 10, asm.R4, asm.Half),
		asm.StoreImm(asm.R2, 12, int64(ethPIP), asm.Half),
		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol(pass),
		asm.Return(),
		// Unreachable: adjust_head leaves at least the inner packet.
		asm.Mov.Imm(asm.R0, xdpDrop).WithSymbol("drop"),
		asm.Return(),
	)
}

// xdpBoundInsns is boundInsns for an XDP program.
func xdpBoundInsns(n int32, fail string) asm.Instructions {
	return packetBoundInsns(xdpData, xdpDataEnd, n, fail)
}

// peerInsns delivers the decapsulated packet (data at the Ethernet
// header, R7 the endpoint or 0) straight into a local container's
// namespace with bpf_redirect_peer, as the kernel would after routing it
// to the bridge and the bridge to the container's port: a new Ethernet
// header from the bridge to the container, the TTL decremented. Without
// an endpoint, or with a TTL the kernel must answer (time exceeded), it
// jumps to fallback, delivery through flannel0. There is no MTU check,
// which forwarding would make against the bridge: the packet fit the
// sender's flannel0, whose MTU (the external one less 28) is also the
// bridge's and the containers' here.
//
// Why that is not a super-packet problem: a GSO packet that crossed a
// virtual wire whole keeps its UDP-tunnel GSO type and encapsulation mark
// after decapsulation on this kernel, so forwarding it through a bridge
// (no hw_enc_features) segments and checksums it in software. Delivered
// to a socket in the container's namespace, it is received whole. (The
// flag that clears them, BPF_F_ADJ_ROOM_DECAP_L4_UDP = 1<<10, is refused
// with -EINVAL by 6.18's bpf_skb_adjust_room.)
func peerInsns(fallback string) asm.Instructions {
	insns := asm.Instructions{asm.JEq.Imm(asm.R7, 0, fallback)}
	insns = append(insns, boundInsns(ethLen+ipLen, fallback)...)
	// The TTL as ip_forward decrements it.
	insns = append(insns, decTTLInsns(ethLen, fallback, "peer_csum")...)
	return append(insns, append(asm.Instructions{
		// Ethernet: bridge → container; the type stays IPv4.
		asm.LoadMem(asm.R4, asm.R7, epMAC, asm.Word),
		asm.StoreMem(asm.R2, 0, asm.R4, asm.Word),
		asm.LoadMem(asm.R4, asm.R7, epMAC+4, asm.Half),
		asm.StoreMem(asm.R2, 4, asm.R4, asm.Half),
		asm.LoadMem(asm.R4, asm.R7, epSrcMAC, asm.Half),
		asm.StoreMem(asm.R2, 6, asm.R4, asm.Half),
		asm.LoadMem(asm.R4, asm.R7, epSrcMAC+2, asm.Word),
		asm.StoreMem(asm.R2, 8, asm.R4, asm.Word),
	}, append(countInsns(statPeer, "peer_counted"),
		asm.LoadMem(asm.R1, asm.R7, epIfindex, asm.Word),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirectPeer.Call(),
		asm.Return(),
	)...)...)
}

// spec is the collection: five maps and three programs.
func spec() *ebpf.CollectionSpec {
	return &ebpf.CollectionSpec{
		Maps: map[string]*ebpf.MapSpec{
			mapConfig: {
				Name: mapConfig, Type: ebpf.Array,
				KeySize: 4, ValueSize: cfgSize, MaxEntries: 1,
				Pinning: ebpf.PinByName,
			},
			mapPeers: {
				Name: mapPeers, Type: ebpf.LPMTrie,
				KeySize: 8, ValueSize: 4, MaxEntries: maxPeers,
				Flags:   bpfFNoPrealloc,
				Pinning: ebpf.PinByName,
			},
			mapPeerIPs: {
				Name: mapPeerIPs, Type: ebpf.Hash,
				KeySize: 4, ValueSize: 4, MaxEntries: maxPeers,
				Pinning: ebpf.PinByName,
			},
			mapStats: {
				Name: mapStats, Type: ebpf.PerCPUArray,
				KeySize: 4, ValueSize: 16, MaxEntries: statKeys,
				Pinning: ebpf.PinByName,
			},
			// Not pinned: it is this process's view of the local
			// containers, emptied when the process stops watching them
			// (see Close), so that programs left running behind a
			// stopped flanneld never deliver to a veth that is gone or
			// whose index was reused.
			mapEndpoints: {
				Name: mapEndpoints, Type: ebpf.Hash,
				KeySize: 4, ValueSize: epSize, MaxEntries: maxEndpoints,
				Pinning: ebpf.PinNone,
			},
		},
		Programs: map[string]*ebpf.ProgramSpec{
			progEgress: {
				Name: progEgress, Type: ebpf.SchedCLS, AttachType: ebpf.AttachTCXEgress,
				License: license, Instructions: egressInsns(),
			},
			progIngress: {
				Name: progIngress, Type: ebpf.SchedCLS, AttachType: ebpf.AttachTCXIngress,
				License: license, Instructions: ingressInsns(),
			},
			progXDP: {
				Name: progXDP, Type: ebpf.XDP, AttachType: ebpf.AttachXDP,
				License: license, Instructions: xdpInsns(),
			},
		},
	}
}

// license is GPL-compatible, as the kernel requires of programs that
// call some of the helpers used here.
const license = "Dual BSD/GPL"

const (
	progEgress  = "flannel_udp_out"
	progIngress = "flannel_udp_in"
	progXDP     = "flannel_udp_xdp"

	bpfFNoPrealloc = 1 // BPF_F_NO_PREALLOC, required for LPM tries
)
