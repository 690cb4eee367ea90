package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/ns"
)

// blockedPort is the container port the receiving host's firewall
// refuses new connections to.
const blockedPort = 5999

// TestUDPEBPFStatefulFirewall: the udp backend's eBPF datapath with its
// default delivery, under a stateful firewall on the receiving host as
// firewalld or kube-proxy would have it (`ct state invalid drop` in
// forward) plus a rule refusing new inbound connections to one port of
// the container: a connection to another port carries 16 MiB intact, one
// to the refused port fails, and conntrack finds no packet invalid. (With
// FLANNEL_UDP_DELIVER=direct the same firewall lets no connection from
// another host through: the README says why it is opt-in.) The receiving
// host also filters reverse paths strictly, and a packet socket is open on
// its external interface, as tcpdump's would be: what the XDP program
// decapsulated must still enter the stack on flannel0, where the route
// back to its source leads.
func TestUDPEBPFStatefulFirewall(t *testing.T) {
	l, h1, h2 := firewalledUDPLab(t)
	c1, c2 := containerNS(t, h1), containerNS(t, h2)
	netnstest.Run(t, "ip", "netns", "exec", h2.NS, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.eth0.rp_filter=1")
	hostNS, err := ns.Open(h2.NS)
	if err != nil {
		t.Fatal(err)
	}
	tapped := 0
	tap := netnstest.StartCapture(t, hostNS, "eth0", unix.SOCK_DGRAM, false,
		func([]byte, *unix.SockaddrLinklayer) { tapped++ })
	t.Logf("16 MiB in %v", netnstest.Transfer(t, c1, c2, h2.Container, 16<<20))
	tap.Stop()
	if tapped == 0 {
		t.Error("the packet socket on h2's eth0 saw nothing")
	}
	if err := tryDial(c1, c2, h2.Container, blockedPort); err == nil {
		t.Error("a new connection to the refused port got through")
	}
	if n := invalidDropped(t, h2); n != 0 {
		t.Errorf("conntrack found %d packets invalid", n)
	}
	if log := logOf(l, h2); !strings.Contains(log, "deliver=bridge") {
		t.Errorf("%s does not forward in the kernel, delivering through the bridge:\n%s", h2.Name, log)
	}
}

// firewalledUDPLab is two hosts on a NIC-like wire running the udp
// backend's eBPF datapath with the default delivery, h2 with a stateful
// firewall in forward.
func firewalledUDPLab(t *testing.T) (*lab.Lab, *lab.Host, *lab.Host) {
	t.Helper()
	l := ebpfUDPLab(t)
	ctx := context.Background()
	h1, h2 := l.Hosts[0], l.Hosts[1]
	ruleset := fmt.Sprintf(`table inet fw {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state invalid counter drop
		ct state new ip daddr %s tcp dport %d counter drop
	}
}`, h2.Container, blockedPort)
	cmd := exec.Command("ip", "netns", "exec", h2.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s", h2.NS, err, out)
	}
	waitFor(t, 10*time.Second, "udp peers to reach each other", func() bool {
		got, _, _ := l.Ping(ctx, h1, h2.Container, 1, 100*time.Millisecond)
		return got == 1
	})
	return l, h1, h2
}

func containerNS(t *testing.T, h *lab.Host) *ns.NS {
	t.Helper()
	n, err := ns.Open(h.CNS)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// tryDial connects from namespace from to a listener on addr:port in
// namespace to and reads the one byte the listener sends.
func tryDial(from, to *ns.NS, addr netip.Addr, port int) error {
	var ln net.Listener
	if err := to.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(addr, uint16(port)).String())
		return err
	}); err != nil {
		return err
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if c, err := ln.Accept(); err == nil {
			_, _ = c.Write([]byte{1})
			c.Close()
		}
	}()
	defer func() { ln.Close(); <-served }()
	return from.Do(func() error {
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		_, err = c.Read(make([]byte, 1))
		return err
	})
}

var invalidCounter = regexp.MustCompile(`ct state invalid counter packets (\d+) bytes \d+ drop`)

// invalidDropped reads h's invalid-drop counter.
func invalidDropped(t *testing.T, h *lab.Host) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", h.NS, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v: %s", err, out)
	}
	m := invalidCounter.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no invalid-drop counter in\n%s", out)
	}
	var n int
	if _, err := fmt.Sscan(m[1], &n); err != nil {
		t.Fatal(err)
	}
	return n
}
