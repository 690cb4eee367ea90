// Package udp is flannel's udp backend: a userspace datapath that carries
// each container packet as the payload of one UDP datagram between hosts.
// It is wire-compatible with upstream flannel's udp backend (port 8285, no
// header, leases without a BackendType), so mixed clusters work.
//
// # Design notes
//
// Host state, as upstream: a TUN device named by the kernel from
// "flannel%d" (so flannel0), with address <subnet network address>/32,
// MTU = external MTU − 28 (IPv4 and UDP headers) and one route for the whole
// flannel network; a UDP socket on the external interface address. Peers are
// found by longest-prefix match of the inner destination in a table that
// Sync swaps atomically; the forwarding loops never lock. The TUN is not
// persistent (it vanishes with the process, as upstream's), so a restart
// recreates it, its address and its route; that takes milliseconds.
//
// Upstream moves one packet per syscall. This datapath moves up to 64 KiB
// per syscall in each direction, with the kernel doing the slicing:
//
//	container TCP ──TSO 64 KiB──▶ TUN (virtio-net header) ──read──▶ split headers
//	  ──sendmmsg, UDP_SEGMENT, payload by iovec──▶ kernel cuts MTU-sized datagrams
//	peer socket with UDP_GRO ◀── up to 64 KiB of datagrams in one recvmmsg slot
//	  ──merge a flow's segments, gather by iovec──▶ one TSO writev into the TUN
//
// Payload bytes are never copied in userspace: segment headers are
// rewritten in a side buffer (out) or in place (in), and the kernel gathers
// headers and payloads while it copies them anyway. The only per-byte work
// in userspace is the TCP checksum of each segment sent, which the kernel
// leaves to us (CHECKSUM_PARTIAL) and which upstream peers need. Each
// offload is probed at start and logged; a kernel that later refuses UDP
// GSO gets the batch resent one datagram at a time (and GSO switched off
// after EIO), without losing the flow. Every datagram on the wire is still
// exactly one IPv4 packet, so upstream peers, which read one packet per
// datagram, interoperate.
//
// Deliberate differences from upstream, none visible on the wire: the TUN
// has no qdisc (a TUN never pushes back on it, so it only costs CPU), it
// accepts packets with a local source address (our ICMP errors come from
// the device's own address, as upstream's do, and the kernel would
// otherwise drop them as martians), IPv6 is off on it, and datagrams from
// peers are only delivered to our own subnet and never from it.
//
// The environment variable FLANNEL_UDP_OFFLOAD, which flanneld's main reads
// into Options.Offloads, selects offloads for tests and benchmarks: "on"
// (the default) or "" uses all the kernel supports,
// "off" none (plain TUN, one datagram per packet, still batched by
// sendmmsg/recvmmsg), or a comma-separated list of those to use out of
// "tun" (virtio-net headers: TSO reads, coalesced writes), "gso" and "gro".
//
// FLANNEL_UDP_DATAPATH (Options.Datapath) chooses "auto", "ebpf" or
// "userspace": with eBPF (package fastpath) programs in the kernel
// forward known peers' packets in the same wire format and pass the rest
// on to the loops here. auto uses it on a NIC where the programs load
// (ebpf_linux.go says when it declines); the loops here are then the
// fallback. With
// its maps and links pinned, the TUN is made persistent so that the
// kernel goes on forwarding across a restart, and the next start reopens
// it by name.
package udp
