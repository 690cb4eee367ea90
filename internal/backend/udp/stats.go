package udp

import "sync/atomic"

// Stats is a snapshot of the datapath counters, for export as metrics.
// Packets and bytes count inner IPv4 packets (one per UDP datagram on the
// wire), however many of them travelled together through an offload.
type Stats struct {
	Out Direction // TUN to UDP: packets our containers send to peers
	In  Direction // UDP to TUN: packets peers send to our containers
	// Offloads says which kernel offloads the datapath is using now (one
	// can be switched off at run time after a failure).
	Offloads Offloads
	// EBPF counts what the eBPF datapath forwarded in the kernel, nil
	// while it is not running. Out and In above then count only what its
	// programs passed on to userspace.
	EBPF *EBPFStats
}

// EBPFStats counts the eBPF datapath's packets (each segment of a
// super-packet counts) and bytes (inner IPv4 bytes as the kernel held
// them: a super-packet's headers count once).
type EBPFStats struct {
	OutPackets, OutBytes uint64
	InPackets, InBytes   uint64
	// Of In, delivered straight to a local container's veth.
	DirectPackets, DirectBytes uint64
	// Of In, decapsulated by the XDP program (before GRO).
	XDPPackets, XDPBytes uint64
}

// Direction counts one direction of the datapath.
type Direction struct {
	Packets uint64 // forwarded
	Bytes   uint64 // forwarded, inner IPv4 bytes
	Drops   Drops
}

// Drops counts packets dropped, by reason.
type Drops struct {
	// NoRoute: outbound, no peer subnet holds the destination (an ICMP net
	// unreachable is written back when allowed); inbound, the destination
	// is not in our subnet, the source is (spoofed), or we have no lease
	// yet.
	NoRoute uint64
	TTL     uint64 // the TTL would reach zero
	// Malformed: not IPv4, truncated, bad lengths or offload header, or a
	// datagram larger than the receive buffer.
	Malformed  uint64
	WriteError uint64 // the kernel refused the send or the TUN write
}

// Offloads says which offloads are active.
type Offloads struct {
	TUNVnet bool // TUN with virtio-net headers: TSO reads, coalesced writes
	UDPGSO  bool // sendmsg with UDP_SEGMENT
	UDPGRO  bool // UDP_GRO on the socket
}

// counters is one direction's live counters. Each direction is written by
// one goroutine; the padding keeps the two on separate cache lines.
type counters struct {
	packets, bytes                       atomic.Uint64
	noRoute, ttl, malformed, writeErrors atomic.Uint64
	_                                    [64]byte
}

func (c *counters) snapshot() Direction {
	return Direction{
		Packets: c.packets.Load(),
		Bytes:   c.bytes.Load(),
		Drops: Drops{
			NoRoute:    c.noRoute.Load(),
			TTL:        c.ttl.Load(),
			Malformed:  c.malformed.Load(),
			WriteError: c.writeErrors.Load(),
		},
	}
}
