// Package routetest builds small multi-host networks out of namespaces for
// backend tests: hosts whose eth0 plugs into one bridge (the "switch", in a
// namespace of its own), containers behind each host, and a ping that runs
// inside a namespace. Everything is removed when the test ends.
package routetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/ns"
)

// Lab is one L2 segment: a bridge br0 in the switch namespace.
type Lab struct {
	t      testing.TB
	prefix string
	Switch *ns.NS
	ports  int
}

// NewLab creates the switch namespace; prefix names every namespace.
func NewLab(t testing.TB, prefix string) *Lab {
	t.Helper()
	l := &Lab{t: t, prefix: prefix, Switch: netnstest.New(t, prefix)}
	Run(t, l.Switch, "ip", "link", "add", "br0", "type", "bridge")
	Run(t, l.Switch, "ip", "link", "set", "br0", "up")
	return l
}

// Host is a namespace with eth0 on the lab's segment, forwarding on.
type Host struct {
	NS  *ns.NS
	Ext iface.ExtIface // eth0, IfaceAddr = ExtAddr = the underlay address
	t   testing.TB
	lab *Lab
}

// AddHost plugs a new host into the switch with the given underlay address
// (e.g. 192.168.100.1/24) on its eth0.
func (l *Lab) AddHost(addr netip.Prefix) *Host {
	l.t.Helper()
	h := &Host{NS: netnstest.New(l.t, l.prefix), t: l.t, lab: l}
	l.ports++
	port := fmt.Sprintf("p%d", l.ports)
	Run(l.t, l.Switch, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.NS.Name)
	Run(l.t, l.Switch, "ip", "link", "set", port, "master", "br0", "up")
	Run(l.t, h.NS, "ip", "addr", "add", addr.String(), "dev", "eth0")
	Run(l.t, h.NS, "ip", "link", "set", "eth0", "up")
	Sysctl(l.t, h.NS, "net/ipv4/ip_forward", "1")
	nh, err := h.NS.Handle()
	if err != nil {
		l.t.Fatal(err)
	}
	defer nh.Close()
	eth, err := nh.LinkByName("eth0")
	if err != nil {
		l.t.Fatal(err)
	}
	h.Ext = iface.ExtIface{
		Name:      "eth0",
		Index:     eth.Attrs().Index,
		MTU:       eth.Attrs().MTU,
		IfaceAddr: addr.Addr(),
		ExtAddr:   addr.Addr(),
	}
	return h
}

// AddContainer puts a container namespace behind the host, as the CNI
// bridge would: the host side veth0 gets subnet's .1, the container's eth0
// gets .2 with a default route via .1. It returns the container and its
// address.
func (h *Host) AddContainer(subnet netip.Prefix) (*ns.NS, netip.Addr) {
	h.t.Helper()
	c := netnstest.New(h.t, h.lab.prefix)
	gw := subnet.Addr().Next()
	addr := gw.Next()
	Run(h.t, h.NS, "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", c.Name)
	Run(h.t, h.NS, "ip", "addr", "add", netip.PrefixFrom(gw, subnet.Bits()).String(), "dev", "veth0")
	Run(h.t, h.NS, "ip", "link", "set", "veth0", "up")
	Run(h.t, c, "ip", "addr", "add", netip.PrefixFrom(addr, subnet.Bits()).String(), "dev", "eth0")
	Run(h.t, c, "ip", "link", "set", "eth0", "up")
	Run(h.t, c, "ip", "route", "add", "default", "via", gw.String())
	return c, addr
}

// Run runs a command inside n and fails the test if it fails.
func Run(t testing.TB, n *ns.NS, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := n.Run(ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Sysctl writes a /proc/sys/net value of namespace n (key like
// "net/ipv4/ip_forward").
func Sysctl(t testing.TB, n *ns.NS, key, value string) {
	t.Helper()
	if err := n.Do(func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	}); err != nil {
		t.Fatalf("sysctl %s=%s in %s: %v", key, value, n.Name, err)
	}
}

// Ping sends one ICMP echo from src (an address in n) to dst and waits up
// to timeout for the reply.
func Ping(n *ns.NS, src, dst netip.Addr, timeout time.Duration) error {
	var c *icmp.PacketConn
	// The socket belongs to the namespace it is created in, whichever
	// thread uses it afterwards.
	if err := n.Do(func() error {
		var err error
		c, err = icmp.ListenPacket("ip4:icmp", src.String())
		return err
	}); err != nil {
		return fmt.Errorf("ping %s → %s: listen: %w", src, dst, err)
	}
	defer c.Close()
	id, seq := rand.IntN(1<<16), rand.IntN(1<<16)
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("flannel")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return fmt.Errorf("ping %s → %s: send: %w", src, dst, err)
	}
	buf := make([]byte, 1500)
	for {
		nr, from, err := c.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("ping %s → %s: no reply: %w", src, dst, err)
		}
		if from.String() != dst.String() {
			continue
		}
		m, err := icmp.ParseMessage(1, buf[:nr])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == seq {
			return nil
		}
	}
}

// MustPing pings up to three times (the first packet may wait for ARP on
// the underlay) and fails the test if no reply comes.
func MustPing(t testing.TB, n *ns.NS, src, dst netip.Addr) {
	t.Helper()
	var err error
	for range 3 {
		if err = Ping(n, src, dst, time.Second); err == nil {
			return
		}
		t.Logf("retrying: %v", err)
	}
	t.Fatal(err)
}

// MustNotPing fails the test if dst answers within a second.
func MustNotPing(t testing.TB, n *ns.NS, src, dst netip.Addr) {
	t.Helper()
	err := Ping(n, src, dst, time.Second)
	if err == nil {
		t.Fatalf("ping %s → %s: got a reply, want none", src, dst)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		// An ICMP error or a send failure is as good as silence.
		t.Logf("ping %s → %s: %v", src, dst, err)
	}
}
