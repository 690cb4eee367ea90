package route

import (
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Why batches: a full sync at tens of thousands of peers makes four
// requests per peer (neighbour, FDB entry, nexthop object, route), and
// one request at a time costs a sendmsg, a recvmsg, a wake-up of the
// poller and the library's allocations for each; the kernel's own work
// per entry is a fraction of that. The kernel handles every message of
// one sendmsg in order before the call returns, and answers a request
// without NLM_F_ACK only if it fails, so a batch is one write and a read
// of its failures and of the last request's acknowledgement.

// request is one message of a batch: type, flags (NLM_F_ACK is the
// batch's to set) and body, the family header and attributes.
type request struct {
	typ   uint16
	flags uint16
	body  []byte
}

// batcher sends many requests and reports each one's outcome; *Handle is
// one. Tables given one apply adds in batches.
type batcher interface {
	batch(reqs []request) []error
}

var _ batcher = (*Handle)(nil)

// maxBatchBytes keeps a write below the socket's default send buffer
// (the kernel refuses a message larger than sk_sndbuf − 32).
const maxBatchBytes = 32 << 10

// batchSeq numbers batch messages apart from the library's requests on
// the same socket (it counts up from 1).
var batchSeq atomic.Uint32

func init() { batchSeq.Store(1 << 31) }

// batch sends reqs in writes of at most maxBatchBytes and returns each
// one's error (nil: done).
func (h *Handle) batch(reqs []request) []error {
	errs := make([]error, len(reqs))
	fd := h.s.Socket.GetFd()
	h.batchMu.Lock()
	defer h.batchMu.Unlock()
	if h.wbuf == nil {
		h.wbuf, h.rbuf = make([]byte, 0, maxBatchBytes), make([]byte, 64<<10)
	}
	buf := h.wbuf
	for start := 0; start < len(reqs); {
		end, size := start+1, msgLen(reqs[start])
		for end < len(reqs) && size+msgLen(reqs[end]) <= maxBatchBytes {
			size += msgLen(reqs[end])
			end++
		}
		first := batchSeq.Add(uint32(end-start)) - uint32(end-start) + 1
		buf = buf[:0]
		for i := start; i < end; i++ {
			buf = appendMsg(buf, reqs[i], first+uint32(i-start), i == end-1)
		}
		if err := sendBatch(fd, buf); err != nil {
			for i := start; i < end; i++ {
				errs[i] = err
			}
		} else if err := readBatch(fd, h.rbuf, first, errs[start:end]); err != nil {
			for i := start; i < end; i++ {
				if errs[i] == nil {
					errs[i] = err
				}
			}
		}
		start = end
	}
	return errs
}

func nlmAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

func msgLen(r request) int { return nlmAlign(unix.NLMSG_HDRLEN + len(r.body)) }

// appendMsg appends r with its netlink header; last asks for an
// acknowledgement.
func appendMsg(b []byte, r request, seq uint32, last bool) []byte {
	flags := r.flags | unix.NLM_F_REQUEST
	if last {
		flags |= unix.NLM_F_ACK
	}
	n := unix.NLMSG_HDRLEN + len(r.body)
	b = native.AppendUint32(b, uint32(n))
	b = native.AppendUint16(b, r.typ)
	b = native.AppendUint16(b, flags)
	b = native.AppendUint32(b, seq)
	b = native.AppendUint32(b, 0) // pid: the kernel fills it
	b = append(b, r.body...)
	for range nlmAlign(n) - n {
		b = append(b, 0)
	}
	return b
}

func sendBatch(fd int, b []byte) error {
	for {
		err := unix.Sendto(fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if err != unix.EINTR {
			if err != nil {
				return fmt.Errorf("route: netlink batch of %d bytes: %w", len(b), err)
			}
			return nil
		}
	}
}

// readBatch reads the answers to the messages numbered first, first+1, …
// (errs has one slot each) until the last one's. The kernel queued them
// all before the write returned, so nothing here waits; an empty socket
// before the last answer means answers were lost.
func readBatch(fd int, buf []byte, first uint32, errs []error) error {
	last := first + uint32(len(errs)) - 1
	for {
		n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return errors.New("route: netlink batch: the kernel's answers ended early")
		case err != nil:
			return fmt.Errorf("route: netlink batch: read answers: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("route: netlink batch: %w", err)
		}
		done := false
		for _, m := range msgs {
			seq := m.Header.Seq
			if m.Header.Type != unix.NLMSG_ERROR || seq < first || seq > last {
				continue // a late answer to an earlier request
			}
			if len(m.Data) < 4 {
				return errors.New("route: netlink batch: short error message")
			}
			if e := int32(native.Uint32(m.Data)); e != 0 {
				errs[seq-first] = syscall.Errno(-e)
			}
			done = done || seq == last
		}
		if done {
			return nil
		}
	}
}

// The bodies of the requests a Table batches, as the per-entry methods
// send them.

// neighSetReq: `ip neigh replace IP lladdr MAC dev LINK nud permanent`.
func neighSetReq(n Neigh) request {
	b := appendNdmsg(nil, uint8(familyOf(n.IP)), n.LinkIndex, unix.NUD_PERMANENT, 0, unix.RTN_UNICAST)
	b = appendAttr(b, unix.NDA_DST, n.IP.AsSlice())
	b = appendAttr(b, unix.NDA_LLADDR, n.MAC[:])
	return request{unix.RTM_NEWNEIGH, unix.NLM_F_CREATE | unix.NLM_F_REPLACE, b}
}

// fdbSetReq: `bridge fdb replace MAC dev LINK dst DST self permanent`.
func fdbSetReq(f FDB) request {
	b := appendNdmsg(nil, unix.AF_BRIDGE, f.LinkIndex, unix.NUD_PERMANENT, unix.NTF_SELF, 0)
	b = appendAttr(b, unix.NDA_DST, f.Dst.AsSlice())
	b = appendAttr(b, unix.NDA_LLADDR, f.MAC[:])
	return request{unix.RTM_NEWNEIGH, unix.NLM_F_CREATE | unix.NLM_F_REPLACE, b}
}

// nexthopAddReq: `ip nexthop add id ID via GW dev LINK [onlink] proto P`
// (IPv4 gateways only, as NexthopAdd).
func nexthopAddReq(n Nexthop) request {
	b := make([]byte, sizeofNHMsg, 40)
	b[0], b[2] = unix.AF_INET, n.Protocol
	if n.OnLink {
		native.PutUint32(b[4:], unix.RTNH_F_ONLINK)
	}
	b = appendAttr(b, unix.NHA_ID, native.AppendUint32(nil, n.ID))
	b = appendAttr(b, unix.NHA_OIF, native.AppendUint32(nil, uint32(n.LinkIndex)))
	b = appendAttr(b, unix.NHA_GATEWAY, n.Gw.AsSlice())
	return request{unix.RTM_NEWNEXTHOP, unix.NLM_F_CREATE | unix.NLM_F_EXCL, b}
}

// routeReplaceNHReq: `ip route replace DST nhid ID [metric M]` in the
// main table, proto boot, as RouteReplaceNH.
func routeReplaceNHReq(r Route, id uint32) request {
	b := make([]byte, unix.SizeofRtMsg, 48)
	b[0] = uint8(familyOf(r.Dst.Addr()))
	b[1] = uint8(r.Dst.Bits())
	b[4] = unix.RT_TABLE_MAIN
	b[5] = unix.RTPROT_BOOT
	b[6] = unix.RT_SCOPE_UNIVERSE
	b[7] = unix.RTN_UNICAST
	b = appendAttr(b, unix.RTA_DST, r.Dst.Addr().AsSlice())
	b = appendAttr(b, rtaNHID, native.AppendUint32(nil, id))
	if r.Metric != 0 {
		b = appendAttr(b, unix.RTA_PRIORITY, native.AppendUint32(nil, uint32(r.Metric)))
	}
	return request{unix.RTM_NEWROUTE, unix.NLM_F_CREATE | unix.NLM_F_REPLACE, b}
}

// appendNdmsg appends struct ndmsg.
func appendNdmsg(b []byte, family uint8, link int, state uint16, flags, typ uint8) []byte {
	b = append(b, family, 0, 0, 0)
	b = native.AppendUint32(b, uint32(link))
	b = native.AppendUint16(b, state)
	return append(b, flags, typ)
}

// appendAttr appends one attribute, padded.
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	n := unix.SizeofRtAttr + len(v)
	b = native.AppendUint16(b, uint16(n))
	b = native.AppendUint16(b, typ)
	b = append(b, v...)
	for range nlmAlign(n) - n {
		b = append(b, 0)
	}
	return b
}
