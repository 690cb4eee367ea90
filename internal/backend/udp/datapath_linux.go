package udp

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

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
// it. Goroutines may run on any thread: the fds keep the namespace they
// were opened in.
type datapath struct {
	tun  *tunDev
	sock *udpSock
	log  *slog.Logger

	gso     atomic.Bool // mirrors the outbound's switch, for Stats
	closing atomic.Bool

	wg  sync.WaitGroup
	mu  sync.Mutex
	err error // why a loop stopped early; guarded by mu
}

func startDatapath(tun *tunDev, sock *udpSock, sh *shared, out, in *counters, log *slog.Logger) *datapath {
	d := &datapath{tun: tun, sock: sock, log: log}
	d.gso.Store(sock.gso)

	o := &outbound{sh: sh, stats: out, vnet: tun.vnet, gso: sock.gso}
	icmpw := newTunWriter(tun.rc)
	o.writeTUN = func(frame []byte) { _ = icmpw.write(frame) }
	s := newSender(sock.rc, o, out, log, d.gso.Store)
	o.send = s.send
	o.b = newBatch()

	inw := newTunWriter(tun.rc)
	ib := newInbound(sh, in, tun.vnet, inw.writev)
	ib.log = log
	r := newReceiver(sock.rc, ib, in, rxBatch)

	d.wg.Add(2)
	go func() {
		defer d.wg.Done()
		d.stopped("tun to udp", runOutbound(tun, o))
	}()
	go func() {
		defer d.wg.Done()
		d.stopped("udp to tun", r.run())
	}()
	return d
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
	r := newTunReader(tun.rc, o.pending)
	idx := 0
	for {
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
	// A closed fd's RawConn reports poll's "use of closed file", which
	// is not os.ErrClosed; hence the flag.
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

// close closes both fds, which wakes and ends both loops, and waits.
func (d *datapath) close() error {
	d.closing.Store(true)
	err := errors.Join(d.tun.Close(), d.sock.Close())
	d.wg.Wait()
	return err
}
