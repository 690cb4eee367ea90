package udp

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// tunReadBufs is how many TUN frames (each up to 64 KiB) may be
	// batched before one sendmmsg.
	tunReadBufs = 8
	// rxBatch is how many datagrams one recvmmsg may return.
	rxBatch = 32
)

// datapath is the two forwarding goroutines and the fds they use. Sync
// never touches it; only Repair (after the device vanished) and Close stop
// it. Each goroutine is locked to a thread of its own, which sleeps in
// ppoll when there is nothing to forward (see pollFD); the fds keep the
// namespace they were opened in, whatever the thread's.
type datapath struct {
	tun  *tunDev
	sock *udpSock
	log  *slog.Logger

	procs   bool        // raised GOMAXPROCS by loops at start
	gso     atomic.Bool // mirrors the outbound's switch, for Stats
	closing atomic.Bool

	wg  sync.WaitGroup
	mu  sync.Mutex
	err error // why a loop stopped early; guarded by mu
}

func startDatapath(tun *tunDev, sock *udpSock, sh *shared, out, in *counters, log *slog.Logger, procs bool) *datapath {
	d := &datapath{tun: tun, sock: sock, log: log, procs: procs}
	d.gso.Store(sock.gso)

	o := &outbound{sh: sh, stats: out, vnet: tun.vnet, gso: sock.gso}
	icmpw := newTunWriter(tun.conn())
	o.writeTUN = func(frame []byte) { _ = icmpw.write(frame) }
	s := newSender(sock.conn(), o, out, log, d.gso.Store)
	o.send = s.send
	o.b = newBatch()

	inw := newTunWriter(tun.conn())
	ib := newInbound(sh, in, tun.vnet, inw.writev)
	ib.log = log
	r := newReceiver(sock.conn(), ib, in, rxBatch)

	if procs {
		addProcs(loops)
	}
	d.wg.Add(loops)
	go func() {
		defer d.wg.Done()
		runtime.LockOSThread()
		d.stopped("tun to udp", runOutbound(tun, o))
	}()
	go func() {
		defer d.wg.Done()
		runtime.LockOSThread()
		d.stopped("udp to tun", r.run())
	}()
	return d
}

// loops is the number of forwarding goroutines of a datapath.
const loops = 2

var procsMu sync.Mutex

// addProcs raises GOMAXPROCS by n (or lowers it, n < 0), when the process
// allows it (Options.RaiseGOMAXPROCS says why).
func addProcs(n int) {
	procsMu.Lock()
	defer procsMu.Unlock()
	runtime.GOMAXPROCS(max(1, runtime.GOMAXPROCS(0)+n))
}

// runOutbound reads the TUN until it is closed. Frames are read without
// waiting while a batch is pending, and the batch is sent when nothing more
// is readable or the buffers run out: under load many packets share one
// sendmmsg, when idle each packet goes out at once.
func runOutbound(tun *tunDev, o *outbound) error {
	bufs := make([][]byte, tunReadBufs)
	for i := range bufs {
		bufs[i] = make([]byte, vnetHdrLen+65535)
	}
	r := newTunReader(tun.conn(), o.pending)
	idx := 0
	var y yielder
	for {
		y.maybe()
		n, err := r.read(bufs[idx])
		switch {
		case err == unix.EAGAIN:
			o.flush()
			idx = 0
			continue
		case err != nil:
			return err
		}
		o.packet(bufs[idx][:n])
		if !o.pending() {
			idx = 0
		} else if idx++; idx == len(bufs) {
			o.flush()
			idx = 0
		}
	}
}

func (d *datapath) stopped(loop string, err error) {
	if d.closing.Load() || errors.Is(err, os.ErrClosed) {
		return
	}
	d.mu.Lock()
	if d.err == nil {
		d.err = fmt.Errorf("udp: %s loop: %w", loop, err)
	}
	d.mu.Unlock()
	d.log.Error("forwarding stopped", "loop", loop, "err", err)
}

// failure returns why a loop stopped, or nil while both run.
func (d *datapath) failure() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

func (d *datapath) offloads() Offloads {
	return Offloads{TUNVnet: d.tun.vnet, UDPGSO: d.gso.Load(), UDPGRO: d.sock.gro}
}

// close wakes and ends both loops, waits for them, then closes the fds.
func (d *datapath) close() error {
	d.closing.Store(true)
	d.tun.shutdown()
	d.sock.shutdown()
	d.wg.Wait()
	if d.procs {
		addProcs(-loops)
	}
	return errors.Join(d.tun.Close(), d.sock.Close())
}

// yielder lets a forwarding loop give up its P every few milliseconds.
// A goroutine that only ever runs syscalls never reschedules, so every
// 10 ms the runtime's sysmon forcibly takes its P away and then polls every
// 20 µs for a while, in case more such work appears: thousands of wakeups a
// second on a machine whose CPUs we need. A timely Gosched avoids both.
type yielder struct {
	n    uint
	last time.Time
}

func (y *yielder) maybe() {
	if y.n++; y.n%16 != 0 {
		return
	}
	if now := time.Now(); now.Sub(y.last) >= 5*time.Millisecond {
		y.last = now
		runtime.Gosched()
	}
}
