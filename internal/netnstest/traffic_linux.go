package netnstest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel/internal/ns"
)

// Run runs a command (typically `ip -n NS ...`) and fails t with its
// output if it fails or takes more than 10 seconds.
func Run(t testing.TB, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
}

// NICWire switches off the transmit offloads of dev in n, so that it
// behaves as a NIC's wire: the kernel segments and checksums packets
// (encapsulated ones too) before they leave, where a veth would
// otherwise hand GSO super-packets and unfinished checksums across to
// the other namespace; and it switches GRO on, as a NIC's driver runs it
// (a veth does not by default).
func NICWire(t testing.TB, n *ns.NS, dev string) {
	t.Helper()
	Run(t, "ip", "netns", "exec", n.Name, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off",
		"tx-udp_tnl-segmentation", "off", "tx-udp_tnl-csum-segmentation", "off", "tx-udp-segmentation", "off", "gro", "on")
}

// BPFFS mounts a private bpf filesystem for the test's pins and unmounts
// it when the test ends; it skips t where bpffs cannot be mounted.
func BPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Skipf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// Transfer sends size pseudo-random bytes over TCP from namespace from to
// a listener on addr in namespace to, and fails t unless exactly those
// bytes arrived (same length and SHA-256). It returns the time from the
// connection's first write to the receiver's end of stream.
func Transfer(t testing.TB, from, to *ns.NS, addr netip.Addr, size int) time.Duration {
	t.Helper()
	var ln net.Listener
	if err := to.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	res := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			res <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		h := sha256.New()
		n, err := io.Copy(h, c)
		r := result{n: n, err: err}
		copy(r.sum[:], h.Sum(nil))
		res <- r
	}()
	var c net.Conn
	if err := from.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	start := time.Now()
	h := sha256.New()
	r := rand.NewChaCha8([32]byte{byte(size)})
	buf := make([]byte, 256<<10)
	for left := size; left > 0; {
		chunk := buf[:min(len(buf), left)]
		r.Read(chunk)
		h.Write(chunk)
		if _, err := c.Write(chunk); err != nil {
			t.Fatalf("send: %v", err)
		}
		left -= len(chunk)
	}
	c.(*net.TCPConn).CloseWrite()
	got := <-res
	elapsed := time.Since(start)
	if got.err != nil {
		t.Fatalf("receive: %v after %d bytes", got.err, got.n)
	}
	if want := [32]byte(h.Sum(nil)); got.n != int64(size) || got.sum != want {
		t.Fatalf("received %d bytes with sha256 %x; sent %d bytes with sha256 %x", got.n, got.sum, size, want)
	}
	return elapsed
}

// Container plugs namespace ctr into host as a container is: a veth
// "ctr" in host holding gw, its peer "eth0" in ctr holding addr (in gw's
// prefix) with a default route via gw, both up. mtu 0 keeps the default.
func Container(t testing.TB, host, ctr *ns.NS, gw, addr netip.Prefix, mtu int) {
	t.Helper()
	link := []string{"ip", "-n", host.Name, "link", "add", "ctr"}
	peer := []string{"peer", "name", "eth0"}
	if mtu > 0 {
		m := strconv.Itoa(mtu)
		link, peer = append(link, "mtu", m), append(peer, "mtu", m)
	}
	Run(t, slices.Concat(link, []string{"type", "veth"}, peer, []string{"netns", ctr.Name})...)
	Run(t, "ip", "-n", host.Name, "addr", "add", gw.String(), "dev", "ctr")
	Run(t, "ip", "-n", host.Name, "link", "set", "ctr", "up")
	Run(t, "ip", "-n", ctr.Name, "addr", "add", addr.String(), "dev", "eth0")
	Run(t, "ip", "-n", ctr.Name, "link", "set", "eth0", "up")
	Run(t, "ip", "-n", ctr.Name, "route", "add", "default", "via", gw.Addr().String())
}

// Capture hands every frame crossing an interface to a function, on a
// goroutine of its own, until Stop.
type Capture struct {
	fd   int
	stop atomic.Bool
	wg   sync.WaitGroup
}

// StartCapture captures on ifname in n with an AF_PACKET socket of
// sockType (unix.SOCK_DGRAM: IP packets; unix.SOCK_RAW: Ethernet frames),
// both ways, and calls handle with each frame (in a buffer reused for
// the next) and where it came from. With vnetHdr each frame starts with a
// virtio_net_hdr, which gives a GSO frame's segment size. The capture
// stops when the test ends if not before.
func StartCapture(t testing.TB, n *ns.NS, ifname string, sockType int, vnetHdr bool,
	handle func(frame []byte, from *unix.SockaddrLinklayer)) *Capture {
	t.Helper()
	fd, err := packetSocket(n, ifname, sockType, vnetHdr)
	if err != nil {
		t.Fatal(err)
	}
	c := &Capture{fd: fd}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		buf := make([]byte, 128<<10)
		for !c.stop.Load() {
			m, from, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil {
				continue // timeout: check stop
			}
			ll, _ := from.(*unix.SockaddrLinklayer)
			handle(buf[:m], ll)
		}
	}()
	t.Cleanup(c.Stop)
	return c
}

// Stop ends the capture; once it returns, handle is not called again.
func (c *Capture) Stop() {
	if c.stop.Swap(true) {
		return
	}
	c.wg.Wait()
	unix.Close(c.fd)
}

// packetSocket opens inside n an AF_PACKET socket of sockType
// (unix.SOCK_DGRAM: IP packets; unix.SOCK_RAW: Ethernet frames) that sees
// every frame crossing ifname, both ways. It listens to all protocols
// (ETH_P_ALL) because such taps run before tc ingress, where an eBPF
// program may take a packet away from the others. Reads time out every
// 100 ms so that a reading loop can check whether to stop. With vnetHdr
// each frame starts with a virtio_net_hdr, which gives a GSO frame's
// segment size.
func packetSocket(n *ns.NS, ifname string, sockType int, vnetHdr bool) (int, error) {
	fd := -1
	err := n.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		if fd, err = unix.Socket(unix.AF_PACKET, sockType|unix.SOCK_CLOEXEC, proto); err != nil {
			return err
		}
		if vnetHdr {
			if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
				return err
			}
		}
		// Best effort: a capture under load drops what does not fit.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
		tv := unix.Timeval{Usec: 100000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index})
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("packet socket on %s in %s: %w", ifname, n.Name, err)
	}
	return fd, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
