package udp

import (
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel/internal/netnstest"
)

// TestRemoveLeftovers: a host that ran udp with the pinned eBPF datapath
// and now starts another backend loses the programs on both devices (XDP
// too), the
// pins and the persistent flannel0; with nothing left it is a no-op.
func TestRemoveLeftovers(t *testing.T) {
	pins := filepath.Join(netnstest.BPFFS(t), "h1")
	l := newLab(t, 2)
	nicWire(t, l)
	h1 := l.hosts[0]
	l.startWith(h1, settings{offloads: allOffloads, datapath: datapathEBPF, pinDir: pins})
	if h1.b.fast == nil {
		t.Fatalf("datapath %s, want ebpf", h1.b.Datapath())
	}
	if err := h1.b.Close(); err != nil {
		t.Fatal(err)
	}
	// ingress counts the programs on eth0's receive path: tcx ingress and
	// XDP.
	ingress := func() int {
		n := 0
		if err := h1.ns.Do(func() error {
			eth, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			r, err := link.QueryPrograms(link.QueryOptions{Target: eth.Attrs().Index, Attach: ebpf.AttachTCXIngress})
			if err != nil {
				return err
			}
			n = len(r.Programs)
			if x := eth.Attrs().Xdp; x != nil && x.Attached {
				n++
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	tunExists := func() bool {
		var ok bool
		_ = h1.ns.Do(func() error {
			_, err := net.InterfaceByName("flannel0")
			ok = err == nil
			return nil
		})
		return ok
	}
	if ingress() != 2 || !tunExists() {
		t.Fatalf("after Close: %d ingress programs, flannel0 kept %v; want the pinned datapath to stay", ingress(), tunExists())
	}

	for i := range 2 {
		if err := h1.ns.Do(func() error { return removeLeftoversIn(pins, slog.Default()) }); err != nil {
			t.Fatalf("removal %d: %v", i+1, err)
		}
	}
	if n := ingress(); n != 0 {
		t.Errorf("%d programs still on eth0's ingress", n)
	}
	if tunExists() {
		t.Error("flannel0 still exists")
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("pin directory: %v, want it gone", err)
	}
}
