package udp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sockBufSize is what we ask for SO_RCVBUF and SO_SNDBUF: enough to ride
// out a scheduling hiccup at 10 Gbit/s.
const sockBufSize = 8 << 20

// udpSock is the UDP socket peers send to, with the offloads it supports.
type udpSock struct {
	*pollFD
	gso bool // UDP_SEGMENT accepted (Linux 4.18)
	gro bool // UDP_GRO enabled (Linux 5.0)
}

// openUDP binds a UDP socket to addr in the calling thread's network
// namespace. A previous flanneld may still hold the port for a moment while
// it exits, so EADDRINUSE is retried until ctx ends or for a few seconds.
func openUDP(ctx context.Context, addr netip.AddrPort, wantGSO, wantGRO bool) (*udpSock, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := tryOpenUDP(addr, wantGSO, wantGRO)
		if !errors.Is(err, unix.EADDRINUSE) || time.Now().After(deadline) {
			return s, err
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (%w)", err, ctx.Err())
		case <-t.C:
		}
	}
}

func tryOpenUDP(addr netip.AddrPort, wantGSO, wantGRO bool) (*udpSock, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("udp socket: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	// The *FORCE variants (root) go past net.core.[rw]mem_max.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sockBufSize) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, sockBufSize)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sockBufSize) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sockBufSize)
	}
	sa := &unix.SockaddrInet4{Addr: addr.Addr().As4(), Port: int(addr.Port())}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, fmt.Errorf("udp bind %s: %w", addr, err)
	}
	s := &udpSock{}
	if wantGSO {
		_, err := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		s.gso = err == nil
	}
	if wantGRO {
		s.gro = unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
	}
	if s.pollFD, err = newPollFD(fd); err != nil {
		return nil, fmt.Errorf("udp %s: %w", addr, err)
	}
	ok = true
	return s, nil
}

var (
	cmsgHdrLen  = unix.CmsgLen(0)
	gsoCmsgLen  = unix.CmsgLen(2) // UDP_SEGMENT carries a u16
	gsoCmsgSpan = unix.CmsgSpace(2)
	rxOOBLen    = unix.CmsgSpace(4) * 2 // UDP_GRO carries an int; room for one more
)

// sender sends batches with sendmmsg(2). All its arrays are allocated once;
// a send allocates nothing.
type sender struct {
	rc    syscall.RawConn
	stats *counters
	log   *slog.Logger
	o     *outbound // its gso switch is turned off if the kernel rejects GSO
	gsoOn func(bool)

	mm    []unix.Mmsghdr
	iov   []unix.Iovec
	sa    []unix.RawSockaddrInet4
	oob   []byte
	split []unix.Mmsghdr // one message per segment, for the GSO fallback
	msgIv []int          // first iovec of each message

	fallbacks int // GSO messages resent one datagram at a time

	cur   []unix.Mmsghdr
	sent  int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

func newSender(rc syscall.RawConn, o *outbound, stats *counters, log *slog.Logger, gsoOn func(bool)) *sender {
	s := &sender{
		rc: rc, o: o, stats: stats, log: log, gsoOn: gsoOn,
		mm:    make([]unix.Mmsghdr, maxBatchSegs),
		iov:   make([]unix.Iovec, 2*maxBatchSegs),
		sa:    make([]unix.RawSockaddrInet4, maxBatchSegs),
		oob:   make([]byte, maxBatchSegs*gsoCmsgSpan),
		split: make([]unix.Mmsghdr, maxGSOSegs),
		msgIv: make([]int, maxBatchSegs+1),
	}
	for i := range maxBatchSegs {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&s.oob[i*gsoCmsgSpan]))
		h.Level = unix.IPPROTO_UDP
		h.Type = unix.UDP_SEGMENT
		h.SetLen(gsoCmsgLen)
	}
	s.fn = s.do
	return s
}

func (s *sender) do(fd uintptr) bool {
	for s.sent < len(s.cur) {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd,
			uintptr(unsafe.Pointer(&s.cur[s.sent])), uintptr(len(s.cur)-s.sent), 0, 0, 0)
		switch e {
		case 0:
			s.sent += int(n)
			continue
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // socket buffer full: wait until writable
		}
		s.errno = e // for s.cur[s.sent]
		return true
	}
	return true
}

// sendmmsg sends mm until done or a message fails; it returns how many
// were sent and the failing message's errno. err is set only when the
// socket is closed.
func (s *sender) sendmmsg(mm []unix.Mmsghdr) (int, syscall.Errno, error) {
	s.cur, s.sent, s.errno = mm, 0, 0
	err := s.rc.Write(s.fn)
	s.cur = nil
	return s.sent, s.errno, err
}

func setIov(v *unix.Iovec, b []byte) {
	v.Base = &b[0]
	v.SetLen(len(b))
}

// send transmits b and counts what went out and what failed.
func (s *sender) send(b *batch) {
	pkts, bytes := s.build(b)
	mm := s.mm[:len(b.msgs)]
	for i := 0; i < len(mm); {
		k, errno, err := s.sendmmsg(mm[i:])
		i += k
		if err != nil { // closed: nothing more will go out
			for _, m := range b.msgs[i:] {
				s.stats.writeErrors.Add(uint64(m.n))
				pkts -= uint64(m.n)
				bytes -= uint64(m.bytes)
			}
			break
		}
		if i < len(mm) {
			n, nb := s.failed(b, i, errno)
			pkts -= n
			bytes -= nb
			i++
		}
	}
	s.stats.packets.Add(pkts)
	s.stats.bytes.Add(bytes)
}

// build fills the mmsghdrs for b and returns its packets and bytes.
func (s *sender) build(b *batch) (pkts, bytes uint64) {
	iv := 0
	for i := range b.msgs {
		m := &b.msgs[i]
		s.msgIv[i] = iv
		for _, sg := range b.segs[m.first : m.first+m.n] {
			setIov(&s.iov[iv], sg.hdr)
			iv++
			if len(sg.data) > 0 {
				setIov(&s.iov[iv], sg.data)
				iv++
			}
		}
		s.sa[i] = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: m.peer.ip}
		p := (*[2]byte)(unsafe.Pointer(&s.sa[i].Port))
		p[0], p[1] = byte(m.peer.port>>8), byte(m.peer.port)
		h := &s.mm[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&s.sa[i]))
		h.Namelen = unix.SizeofSockaddrInet4
		h.Iov = &s.iov[s.msgIv[i]]
		h.SetIovlen(iv - s.msgIv[i])
		if m.n > 1 {
			c := s.oob[i*gsoCmsgSpan : (i+1)*gsoCmsgSpan]
			*(*uint16)(unsafe.Pointer(&c[cmsgHdrLen])) = uint16(m.segSize)
			h.Control = &c[0]
			h.SetControllen(gsoCmsgSpan)
		} else {
			h.Control = nil
			h.SetControllen(0)
		}
		pkts += uint64(m.n)
		bytes += uint64(m.bytes)
	}
	s.msgIv[len(b.msgs)] = iv
	return pkts, bytes
}

// failed handles an error on message i and returns the packets and bytes
// of it that were lost. A GSO message the kernel refuses is resent one
// datagram at a time, so a flow is never dropped for an offload; EIO means
// the egress device cannot checksum GSO packets, so GSO is turned off.
func (s *sender) failed(b *batch, i int, errno syscall.Errno) (uint64, uint64) {
	m := &b.msgs[i]
	if m.n == 1 || (errno != unix.EIO && errno != unix.EINVAL && errno != unix.EMSGSIZE) {
		s.stats.writeErrors.Add(uint64(m.n))
		return uint64(m.n), uint64(m.bytes)
	}
	s.fallbacks++
	if errno == unix.EIO && s.o.gso {
		s.o.gso = false
		s.gsoOn(false)
		s.log.Warn("kernel refused UDP GSO, sending one datagram per syscall from now on", "err", errno)
	}
	iv := s.msgIv[i]
	for j, sg := range b.segs[m.first : m.first+m.n] {
		h := &s.split[j].Hdr
		*h = s.mm[i].Hdr
		h.Control = nil
		h.SetControllen(0)
		h.Iov = &s.iov[iv]
		nv := 1
		if len(sg.data) > 0 {
			nv = 2
		}
		h.SetIovlen(nv)
		iv += nv
	}
	var lost, lostBytes uint64
	split := s.split[:m.n]
	for j := 0; j < len(split); {
		k, _, err := s.sendmmsg(split[j:])
		j += k
		if err != nil {
			for _, sg := range b.segs[m.first+j : m.first+m.n] {
				lost++
				lostBytes += uint64(sg.size())
			}
			break
		}
		if j < len(split) {
			lost++
			lostBytes += uint64(b.segs[m.first+j].size())
			j++
		}
	}
	s.stats.writeErrors.Add(lost)
	return lost, lostBytes
}

// receiver reads datagrams with recvmmsg(2) into buffers with headroom for
// a virtio-net header, so a single packet can be written to the TUN where
// it lies.
type receiver struct {
	rc    syscall.RawConn
	in    *inbound
	stats *counters

	mm   []unix.Mmsghdr
	iov  []unix.Iovec
	bufs [][]byte
	oob  []byte

	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

func newReceiver(rc syscall.RawConn, in *inbound, stats *counters, batch int) *receiver {
	r := &receiver{
		rc: rc, in: in, stats: stats,
		mm:   make([]unix.Mmsghdr, batch),
		iov:  make([]unix.Iovec, batch),
		bufs: make([][]byte, batch),
		oob:  make([]byte, batch*rxOOBLen),
	}
	for i := range batch {
		r.bufs[i] = make([]byte, rxBufLen)
		setIov(&r.iov[i], r.bufs[i][rxHeadroom:])
		h := &r.mm[i].Hdr
		h.Iov = &r.iov[i]
		h.SetIovlen(1)
		h.Control = &r.oob[i*rxOOBLen]
		h.SetControllen(rxOOBLen)
	}
	r.fn = r.do
	return r
}

func (r *receiver) do(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd,
			uintptr(unsafe.Pointer(&r.mm[0])), uintptr(len(r.mm)), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.n, r.errno = int(n), e
		return true
	}
}

// run receives until the socket is closed.
func (r *receiver) run() error {
	var y yielder
	for {
		y.maybe()
		if err := r.rc.Read(r.fn); err != nil {
			return err
		}
		if r.errno != 0 {
			// Transient: an ICMP error queued on the socket, ENOMEM.
			continue
		}
		for i := range r.n {
			h := &r.mm[i]
			if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
				r.stats.malformed.Add(1)
			} else {
				gso := groSize(r.oob[i*rxOOBLen : i*rxOOBLen+int(h.Hdr.Controllen)])
				r.in.datagram(r.bufs[i], rxHeadroom, int(h.Len), gso)
			}
			h.Hdr.Flags = 0
			h.Hdr.SetControllen(rxOOBLen)
		}
		r.in.done()
	}
}

// groSize returns the segment size from a UDP_GRO control message, or 0.
func groSize(oob []byte) int {
	for len(oob) >= cmsgHdrLen {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < cmsgHdrLen || l > len(oob) {
			return 0
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && l >= cmsgHdrLen+4 {
			return int(*(*int32)(unsafe.Pointer(&oob[cmsgHdrLen])))
		}
		next := unix.CmsgSpace(l - cmsgHdrLen)
		if next > len(oob) {
			return 0
		}
		oob = oob[next:]
	}
	return 0
}
