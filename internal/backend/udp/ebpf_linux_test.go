package udp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel/internal/netnstest"
)

// nicWire makes each lab host's underlay veth behave as a NIC's wire
// (see nicTypes).
func nicWire(t *testing.T, l *lab) {
	t.Helper()
	for _, h := range l.hosts {
		netnstest.NICWire(t, h.ns, "eth0")
	}
}

func TestEBPFEndToEnd(t *testing.T) {
	l := newLab(t, 3)
	nicWire(t, l)
	for _, h := range l.hosts {
		l.startWith(h, settings{offloads: allOffloads, raiseProcs: true, datapath: datapathEBPF})
		if got := h.b.Datapath(); got != "ebpf" {
			t.Fatalf("h%d datapath %s, want ebpf", h.i, got)
		}
	}
	l.syncAll()
	h1, h2 := l.hosts[0], l.hosts[1]
	for _, h := range l.hosts {
		checkHostState(t, h)
	}
	capt := startCapture(t, l.sw, "s1")
	l.pingAll(t)

	// No peer: the program passes it to the TUN, and userspace answers
	// net-unreachable as before.
	mustNetUnreachable(t, h1)

	before := h1.b.Stats()
	d := transfer(t, h1, h2, 64<<20)
	t.Logf("64 MiB h1→h2 in %v (%.2f Gbit/s)", d, float64(64<<20)*8/d.Seconds()/1e9)
	d = transfer(t, h2, h1, 16<<20)
	t.Logf("16 MiB h2→h1 in %v", d)
	after := h1.b.Stats()

	datagrams, gsoFrames, bad := capt.result()
	t.Logf("capture on h1's switch port: %d datagrams, %d GSO frames, largest %d bytes", datagrams, gsoFrames, capt.maxLen)
	if len(bad) > 0 {
		t.Errorf("datagrams that are not exactly one IPv4 packet: %v", bad)
	}
	if datagrams < 1000 { // the capture drops some under load; the counters below count them all
		t.Errorf("capture saw only %d datagrams of the transfers", datagrams)
	}
	if gsoFrames != 0 || capt.maxLen > 1500 {
		t.Errorf("%d GSO frames and datagrams up to %d bytes crossed the wire (MTU 1500)", gsoFrames, capt.maxLen)
	}
	// The kernel carried the transfers: the userspace loops saw almost
	// nothing of them, the programs' counters all of them.
	if n := after.Out.Packets - before.Out.Packets + after.In.Packets - before.In.Packets; n > 1000 {
		t.Errorf("userspace forwarded %d packets during the transfers", n)
	}
	if e := after.EBPF; e == nil || e.OutBytes < 64<<20 || e.InBytes < 16<<20 || e.OutPackets < 40000 {
		t.Errorf("h1's eBPF counters %+v after 64 MiB out and 16 MiB in", e)
	}
	// On a NIC's wire (GRO on) the XDP program decapsulated what came
	// in, before GRO.
	if e, b := after.EBPF, before.EBPF; e != nil && b != nil {
		if x := e.XDPBytes - b.XDPBytes; x < 16<<20 {
			t.Errorf("XDP decapsulated %d bytes of the 16 MiB received", x)
		}
	}
}

// TestAutoDeclinesVirtualUnderlay: on a veth underlay the auto mode keeps
// the userspace datapath (and says why in the log).
func TestAutoDeclinesVirtualUnderlay(t *testing.T) {
	l := newLab(t, 2)
	for _, h := range l.hosts {
		l.startWith(h, settings{offloads: allOffloads, datapath: datapathAuto})
		if got := h.b.Datapath(); got != "userspace" {
			t.Errorf("h%d datapath %s on a veth underlay, want userspace", h.i, got)
		}
	}
	l.syncAll()
	mustPing(t, l.hosts[0].ctr, l.hosts[1].ctrAddr)
}

// vethCountsAsNIC lets auto mode take the lab's veths for NICs until t
// ends.
func vethCountsAsNIC(t *testing.T) {
	old := nicTypes
	nicTypes = append(slices.Clone(nicTypes), "veth")
	t.Cleanup(func() { nicTypes = old })
}

// TestAutoChoosesEBPF: where the external interface is a NIC (here the
// veth counts as one, given a NIC's offloads) and the programs load, auto
// mode forwards known peers in the kernel, decapsulating in XDP.
func TestAutoChoosesEBPF(t *testing.T) {
	vethCountsAsNIC(t)
	l := newLab(t, 2)
	nicWire(t, l)
	for _, h := range l.hosts {
		l.startWith(h, settings{offloads: allOffloads, datapath: datapathAuto})
		if got := h.b.Datapath(); got != "ebpf" {
			t.Fatalf("h%d datapath %s on a NIC, want ebpf", h.i, got)
		}
	}
	l.syncAll()
	h1, h2 := l.hosts[0], l.hosts[1]
	mustPing(t, h1.ctr, h2.ctrAddr)
	before := h2.b.Stats()
	transfer(t, h1, h2, 16<<20)
	after := h2.b.Stats()
	if after.EBPF == nil || before.EBPF == nil || after.EBPF.XDPBytes-before.EBPF.XDPBytes < 16<<20 {
		t.Errorf("h2's eBPF counters %+v after 16 MiB in", after.EBPF)
	}
}

// TestEBPFRestart: with pins, the kernel goes on forwarding while no
// flanneld runs; the next one reopens the same TUN and adopts the
// programs and maps; one that runs the userspace datapath takes them away
// and lets the TUN die with its fd again, as upstream's does.
func TestEBPFRestart(t *testing.T) {
	pins := netnstest.BPFFS(t)
	l := newLab(t, 2)
	nicWire(t, l)
	set := func(h *host, mode datapathMode) settings {
		return settings{offloads: allOffloads, datapath: mode, pinDir: filepath.Join(pins, fmt.Sprintf("h%d", h.i))}
	}
	for _, h := range l.hosts {
		l.startWith(h, set(h, datapathEBPF))
	}
	l.syncAll()
	h1, h2 := l.hosts[0], l.hosts[1]
	mustPing(t, h1.ctr, h2.ctrAddr)

	if err := h1.b.Close(); err != nil {
		t.Fatal(err)
	}
	// No process on h1: both directions still cross in h1's kernel.
	mustPing(t, h1.ctr, h2.ctrAddr)
	mustPing(t, h2.ctr, h1.ctrAddr)

	l.startWith(h1, set(h1, datapathEBPF))
	if h1.b.Device() != "flannel0" || h1.b.fast == nil || !h1.b.fast.Adopted() {
		t.Fatalf("restarted backend: device %s, datapath %s; want the adopted flannel0", h1.b.Device(), h1.b.Datapath())
	}
	l.syncAll()
	checkHostState(t, h1)
	mustPing(t, h1.ctr, h2.ctrAddr)
	mustPing(t, h2.ctr, h1.ctrAddr)

	// Back to userspace: the pins go, traffic goes on through userspace.
	if err := h1.b.Close(); err != nil {
		t.Fatal(err)
	}
	l.startWith(h1, set(h1, datapathUserspace))
	l.syncAll()
	if _, err := os.Stat(filepath.Join(pins, "h1")); !os.IsNotExist(err) {
		t.Errorf("pins of h1 after a start in userspace: %v", err)
	}
	if h1.b.Device() != "flannel0" {
		t.Errorf("userspace backend opened %s, not the existing flannel0", h1.b.Device())
	}
	mustPing(t, h1.ctr, h2.ctrAddr)
	mustPing(t, h2.ctr, h1.ctrAddr)
	closeAndCheckTUNGone(t, h1, "the userspace backend")
}

// TestEBPFVirtualWire: with the eBPF datapath forced on both ends of a
// plain veth underlay, TCP super-packets cross whole (as vxlan's do in
// this lab) and the receiving program takes them apart; the data arrives
// intact both ways without passing through userspace.
func TestEBPFVirtualWire(t *testing.T) {
	l := newLab(t, 2)
	for _, h := range l.hosts {
		l.startWith(h, settings{offloads: allOffloads, raiseProcs: true, datapath: datapathEBPF})
	}
	l.syncAll()
	h1, h2 := l.hosts[0], l.hosts[1]
	mustPing(t, h1.ctr, h2.ctrAddr)
	before := h2.b.Stats()
	d := transfer(t, h1, h2, 64<<20)
	t.Logf("64 MiB h1→h2 in %v (%.2f Gbit/s)", d, float64(64<<20)*8/d.Seconds()/1e9)
	transfer(t, h2, h1, 16<<20)
	after := h2.b.Stats()
	if n := after.In.Packets - before.In.Packets + after.Out.Packets - before.Out.Packets; n > 1000 {
		t.Errorf("userspace forwarded %d packets during the transfers", n)
	}
}

// TestAutoFallsBack: when auto mode chooses eBPF (here the veth counts as
// a NIC) but the programs cannot be set up (pins on a filesystem that
// takes none), the backend starts over in userspace with UDP GRO and the
// same flannel0, and forwards.
func TestAutoFallsBack(t *testing.T) {
	vethCountsAsNIC(t)
	l := newLab(t, 2)
	h1, h2 := l.hosts[0], l.hosts[1]
	l.start(h2, allOffloads)
	l.startWith(h1, settings{offloads: allOffloads, datapath: datapathAuto, pinDir: t.TempDir()})
	b := h1.b
	if b.Datapath() != "userspace" || b.Device() != "flannel0" || !b.Stats().Offloads.UDPGRO {
		t.Fatalf("after the fallback: datapath %s, device %s, offloads %+v", b.Datapath(), b.Device(), b.Stats().Offloads)
	}
	l.syncAll()
	mustPing(t, h1.ctr, h2.ctrAddr)
	if err := h1.ns.Do(func() error {
		if _, err := net.InterfaceByName("flannel1"); err == nil {
			return errors.New("a second TUN flannel1 exists")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// TestMixedDatapaths: on a NIC-like wire a host forwarding in userspace
// and one forwarding with eBPF carry bulk TCP both ways (each reads the
// other's datagrams: the format is the same), and the eBPF host's
// programs carry both directions (a socket's datagrams arrive with only
// their headers in the linear part: the ingress program pulls them in).
func TestMixedDatapaths(t *testing.T) {
	l := newLab(t, 2)
	nicWire(t, l)
	h1, h2 := l.hosts[0], l.hosts[1]
	l.startWith(h1, settings{offloads: allOffloads, raiseProcs: true, datapath: datapathUserspace})
	l.startWith(h2, settings{offloads: allOffloads, raiseProcs: true, datapath: datapathEBPF})
	l.syncAll()
	mustPing(t, h1.ctr, h2.ctrAddr)
	transfer(t, h1, h2, 16<<20)
	transfer(t, h2, h1, 16<<20)
	if e := h2.b.Stats().EBPF; e == nil || e.InBytes < 16<<20 || e.OutBytes < 16<<20 {
		t.Errorf("h2's eBPF counters %+v after 16 MiB each way", e)
	}
}

// TestEBPFReadOnlyPins: with the bpf filesystem mounted read-only (a unit
// without the drop-in's ReadWritePaths), the forced eBPF datapath still
// forwards, only unpinned: the TUN is not kept persistent, so it goes
// with the backend as upstream's does.
func TestEBPFReadOnlyPins(t *testing.T) {
	pins := netnstest.BPFFS(t)
	if err := unix.Mount("", pins, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Skipf("remount bpffs read-only: %v", err)
	}
	l := newLab(t, 2)
	nicWire(t, l)
	h1, h2 := l.hosts[0], l.hosts[1]
	l.startWith(h1, settings{offloads: allOffloads, datapath: datapathEBPF, pinDir: filepath.Join(pins, "h1")})
	l.startWith(h2, settings{offloads: allOffloads, datapath: datapathEBPF, pinDir: filepath.Join(netnstest.BPFFS(t), "h2")})
	if h1.b.Datapath() != "ebpf" || h1.b.persist {
		t.Fatalf("with read-only pins: datapath %s, persistent TUN %v; want ebpf, not persistent", h1.b.Datapath(), h1.b.persist)
	}
	l.syncAll()
	mustPing(t, h1.ctr, h2.ctrAddr)
	mustPing(t, h2.ctr, h1.ctrAddr)
	closeAndCheckTUNGone(t, h1, "an unpinned backend")
}

// closeAndCheckTUNGone closes h's backend and checks that flannel0 goes
// with it, as a TUN that is not persistent does (upstream's behaviour).
func closeAndCheckTUNGone(t *testing.T, h *host, what string) {
	t.Helper()
	if err := h.b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(2*time.Second, func() error {
		return h.ns.Do(func() error {
			if _, err := net.InterfaceByName("flannel0"); err == nil {
				return errors.New("flannel0 outlived " + what)
			}
			return nil
		})
	}); err != nil {
		t.Error(err)
	}
}
