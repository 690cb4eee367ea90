package netnstest

import (
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
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
// the other namespace.
func NICWire(t testing.TB, n *ns.NS, dev string) {
	t.Helper()
	Run(t, "ip", "netns", "exec", n.Name, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off",
		"tx-udp_tnl-segmentation", "off", "tx-udp_tnl-csum-segmentation", "off", "tx-udp-segmentation", "off")
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
