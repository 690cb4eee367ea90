package udp

import (
	"context"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/netnstest"
	"golang.org/x/sys/unix"
)

// TestDeviceConf: the per-device settings set over netlink land: the
// kernel shows accept_local=1 for flannel0 in /proc/sys (read, not
// written, here), and the device has IPv6 address generation off and no
// IPv6 address, so the kernel
// sends nothing IPv6 into it. Repair sets them again on a rebuilt device.
func TestDeviceConf(t *testing.T) {
	l := newLab(t, 1)
	h := l.hosts[0]
	l.start(h, allOffloads)
	check := func() {
		t.Helper()
		out, err := h.ns.Run(context.Background(), "cat", "/proc/sys/net/ipv4/conf/flannel0/accept_local")
		if err != nil || strings.TrimSpace(out) != "1" {
			t.Errorf("accept_local = %q (%v), want 1", out, err)
		}
		out, err = h.ns.Run(context.Background(), "ip", "-d", "link", "show", "flannel0")
		if err != nil || !strings.Contains(out, "addrgenmode none") {
			t.Errorf("flannel0 without addrgenmode none (%v):\n%s", err, out)
		}
		nl, err := h.ns.Handle()
		if err != nil {
			t.Fatal(err)
		}
		defer nl.Close()
		link, err := nl.LinkByName("flannel0")
		if err != nil {
			t.Fatal(err)
		}
		if addrs, err := nl.AddrList(link, unix.AF_INET6); err == nil && len(addrs) > 0 {
			t.Errorf("flannel0 has IPv6 addresses %v, want none", addrs)
		}
	}
	check()
	netnstest.Run(t, "ip", "-n", h.ns.Name, "link", "del", "flannel0")
	if err := h.b.Repair(context.Background()); err != nil {
		t.Fatal(err)
	}
	check()
}

// TestNoNamespaceSwitchWithoutHook: a backend without the test hook
// rebuilds in the calling thread's namespace (flanneld's only one) and
// never switches, so it needs no CAP_SYS_ADMIN. The rebuild here runs in
// the lab host's namespace, entered by the test, not by the backend.
func TestNoNamespaceSwitchWithoutHook(t *testing.T) {
	l := newLab(t, 1)
	h := l.hosts[0]
	l.start(h, allOffloads)
	h.b.inNS = nil
	netnstest.Run(t, "ip", "-n", h.ns.Name, "link", "del", "flannel0")
	if err := h.ns.Do(func() error { return h.b.Repair(context.Background()) }); err != nil {
		t.Fatal(err)
	}
	checkHostState(t, h)
}
