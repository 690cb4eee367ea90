package udp

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tunDev is our end of the TUN device. The device is not persistent: it
// disappears with the last close of its file, as upstream's does (see
// setPersist for the exception).
type tunDev struct {
	*pollFD
	name string
	vnet bool
}

// errNoOffload says the kernel refused virtio-net headers or TSO on the TUN.
var errNoOffload = errors.New("tun offloads unsupported")

// tunOffloads are what we take from the kernel: checksum offload and TCP
// segmentation for IPv4. Not UDP segmentation (USO): the kernel segments
// UDP super-packets before they reach us, which is rare traffic anyway.
const tunOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4

// openTUN creates a TUN device in the calling thread's network namespace,
// named by the kernel from pattern ("flannel%d" gives the first free
// flannel0, flannel1, ...). With vnet, frames carry a virtio-net header and
// the kernel may hand us TSO super-packets. Equivalent to:
// `ip tuntap add mode tun name flannelN` without `persist`.
func openTUN(pattern string, vnet bool) (*tunDev, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENODEV) {
		// A container without the device, or a kernel without tun.
		return nil, fmt.Errorf("udp backend needs /dev/net/tun (in a container: pass the device): open /dev/net/tun: %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	ifr, err := unix.NewIfreq(pattern)
	if err != nil {
		return nil, fmt.Errorf("tun name %q: %w", pattern, err)
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if vnet {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		if vnet && errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("create tun %s with vnet header: %w: %w", pattern, errNoOffload, err)
		}
		return nil, fmt.Errorf("create tun %s: %w", pattern, err)
	}
	name := ifr.Name()
	if vnet {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tunOffloads); err != nil {
			return nil, fmt.Errorf("tun %s: set offloads: %w: %w", name, errNoOffload, err)
		}
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("tun %s: set non-blocking: %w", name, err)
	}
	p, err := newPollFD(fd)
	if err != nil {
		return nil, fmt.Errorf("tun %s: %w", name, err)
	}
	ok = true
	return &tunDev{pollFD: p, name: name, vnet: vnet}, nil
}

// setPersist makes the device outlive (or not) the last close of its
// file. A device reopened by name keeps the setting it had, so it is set
// either way. Equivalent to `ip tuntap add mode tun name NAME persist`
// (or `del`, which only takes the flag off while the device is open).
func (t *tunDev) setPersist(on bool) error {
	v := 0
	if on {
		v = 1
	}
	if err := unix.IoctlSetInt(t.fd, unix.TUNSETPERSIST, v); err != nil {
		return fmt.Errorf("tun %s: set persist %v: %w", t.name, on, err)
	}
	return nil
}

// tunWriter writes frames into the TUN. Each goroutine that writes has its
// own, so the callback's fields need no lock; the method value is made once
// so a write allocates nothing.
type tunWriter struct {
	rc  syscall.RawConn
	iov []unix.Iovec
	n   int // iovecs in use
	err error
	fn  func(fd uintptr) bool
}

func newTunWriter(rc syscall.RawConn) *tunWriter {
	w := &tunWriter{rc: rc, iov: make([]unix.Iovec, maxPieces)}
	w.fn = w.do
	return w
}

func (w *tunWriter) do(fd uintptr) bool {
	for {
		_, _, e := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iov[0])), uintptr(w.n))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case 0:
			w.err = nil
		default:
			w.err = e
		}
		return true
	}
}

// writev writes one frame made of pieces (at most maxPieces).
func (w *tunWriter) writev(pieces [][]byte) error {
	w.n = 0
	for _, p := range pieces {
		if len(p) > 0 {
			setIov(&w.iov[w.n], p)
			w.n++
		}
	}
	err := w.rc.Write(w.fn)
	clear(w.iov[:w.n])
	if err != nil {
		return err
	}
	return w.err
}

// write writes one frame.
func (w *tunWriter) write(frame []byte) error {
	var one [1][]byte
	one[0] = frame
	return w.writev(one[:])
}

// tunReader reads frames from the TUN for the outbound path.
type tunReader struct {
	rc      syscall.RawConn
	buf     []byte
	pending func() bool // when true, EAGAIN returns instead of waiting
	n       int
	err     error
	fn      func(fd uintptr) bool
}

func newTunReader(rc syscall.RawConn, pending func() bool) *tunReader {
	r := &tunReader{rc: rc, pending: pending}
	r.fn = r.do
	return r
}

func (r *tunReader) do(fd uintptr) bool {
	for {
		n, err := unix.Read(int(fd), r.buf)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if !r.pending() {
				return false // park until readable
			}
		}
		r.n, r.err = n, err
		return true
	}
}

// read reads one frame into buf. It returns unix.EAGAIN without waiting
// when nothing is readable and pending() is true, so the caller can flush.
func (r *tunReader) read(buf []byte) (int, error) {
	r.buf = buf
	if err := r.rc.Read(r.fn); err != nil {
		return 0, err
	}
	return r.n, r.err
}
