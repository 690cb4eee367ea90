package udp

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pollFD is a non-blocking fd that the forwarding loops wait on with
// ppoll(2) in their own thread instead of through the Go runtime's
// netpoller. With the netpoller every wakeup passes through the runtime's
// epoll thread and often a second thread handoff; on a 2-core VM, where
// each wakeup of a halted CPU costs an exit to the hypervisor, that made
// half again as many context switches (52,000 a second against 35,000,
// at lower throughput). A loop blocked in ppoll is woken by the kernel directly, and the
// fd is never registered with epoll, so readiness wakes nobody else.
//
// shutdown wakes every waiter through an eventfd; the fd itself is closed
// only after the loops have returned, so it is never reused under them.
type pollFD struct {
	fd      int
	stop    int // eventfd, readable once shut down
	down    atomic.Bool
	closeMu sync.Mutex
	closed  bool
}

func newPollFD(fd int) (*pollFD, error) {
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &pollFD{fd: fd, stop: stop}, nil
}

// shutdown makes every wait return os.ErrClosed, now and from now on.
func (p *pollFD) shutdown() {
	if p.down.Swap(true) {
		return
	}
	one := [8]byte{1}
	_, _ = unix.Write(p.stop, one[:])
}

// Close shuts down and closes both fds. Call it when no loop uses p.
func (p *pollFD) Close() error {
	p.shutdown()
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	if p.closed {
		return os.ErrClosed
	}
	p.closed = true
	unix.Close(p.stop)
	return unix.Close(p.fd)
}

// conn returns a waiter for one goroutine. It implements syscall.RawConn,
// which is all the loops need; each goroutine has its own so that the
// pollfd array it passes to the kernel needs no lock and no allocation.
func (p *pollFD) conn() *pollConn {
	c := &pollConn{p: p}
	c.fds[0].Fd = int32(p.fd)
	c.fds[1] = unix.PollFd{Fd: int32(p.stop), Events: unix.POLLIN}
	return c
}

type pollConn struct {
	p   *pollFD
	fds [2]unix.PollFd
}

var _ syscall.RawConn = (*pollConn)(nil)

func (c *pollConn) Control(f func(fd uintptr)) error {
	if c.p.down.Load() {
		return os.ErrClosed
	}
	f(uintptr(c.p.fd))
	return nil
}

func (c *pollConn) Read(f func(fd uintptr) bool) error  { return c.wait(f, unix.POLLIN) }
func (c *pollConn) Write(f func(fd uintptr) bool) error { return c.wait(f, unix.POLLOUT) }

// wait calls f until it returns true, sleeping in ppoll until the fd is
// ready for events whenever f returns false (it saw EAGAIN).
func (c *pollConn) wait(f func(fd uintptr) bool, events int16) error {
	for {
		if c.p.down.Load() {
			return os.ErrClosed
		}
		if f(uintptr(c.p.fd)) {
			return nil
		}
		c.fds[0].Events, c.fds[0].Revents, c.fds[1].Revents = events, 0, 0
		_, _, e := unix.Syscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&c.fds[0])), 2, 0, 0, 0, 0)
		if e != 0 && e != unix.EINTR {
			return fmt.Errorf("ppoll: %w", e)
		}
	}
}
