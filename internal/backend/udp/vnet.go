package udp

import "encoding/binary"

// virtio_net_hdr (include/uapi/linux/virtio_net.h), which a TUN opened with
// IFF_VNET_HDR puts in front of every packet, in host byte order. It is how
// the kernel hands us TSO super-packets of up to 64 KiB (and takes them
// back), so one read or write moves dozens of MTU-sized packets.
const (
	vnetHdrLen = 10

	vnetFlagNeedsCsum = 1 // checksum from csumStart to the end, store at csumStart+csumOffset

	vnetGSONone  = 0
	vnetGSOTCPv4 = 1
)

type vnetHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
}

func decodeVnet(b []byte) vnetHdr {
	return vnetHdr{
		flags:      b[0],
		gsoType:    b[1],
		hdrLen:     binary.NativeEndian.Uint16(b[2:]),
		gsoSize:    binary.NativeEndian.Uint16(b[4:]),
		csumStart:  binary.NativeEndian.Uint16(b[6:]),
		csumOffset: binary.NativeEndian.Uint16(b[8:]),
	}
}

func (h vnetHdr) encode(b []byte) {
	b[0] = h.flags
	b[1] = h.gsoType
	binary.NativeEndian.PutUint16(b[2:], h.hdrLen)
	binary.NativeEndian.PutUint16(b[4:], h.gsoSize)
	binary.NativeEndian.PutUint16(b[6:], h.csumStart)
	binary.NativeEndian.PutUint16(b[8:], h.csumOffset)
}
