package e2e

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lab"
)

// The udp backend's datapath lives in flanneld, so a restart interrupts
// it: a SIGKILLed flanneld started again must forward within 1 s. Pings at
// 10/s both ways across the restart may lose at most 1 s worth.
func TestUDPRestartResumesWithinASecond(t *testing.T) {
	l := startLab(t, labOpts(t, 2, backendConfig("udp")))
	h1, h2 := l.Hosts[0], l.Hosts[1]
	ctx := context.Background()
	waitFor(t, 10*time.Second, "udp peers to reach each other", func() bool {
		got, _, _ := l.Ping(ctx, h1, h2.Container, 1, 100*time.Millisecond)
		return got == 1
	})
	there, err := l.StartPing(ctx, h1, h2.Container, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	back, err := l.StartPing(ctx, h2, h1.Container, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	readyBefore := countReady(t, l, h1)
	killed := time.Now()
	if err := l.StopFlanneld(h1, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := l.StartFlanneld(h1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the restarted flanneld to be ready", func() bool { return countReady(t, l, h1) > readyBefore })
	t.Logf("kill → ready again: %s", time.Since(killed).Round(time.Millisecond))
	// Let a further second of pings run on the restored path.
	time.Sleep(time.Second)
	for name, p := range map[string]*lab.Pinger{"h1→h2": there, "h2→h1": back} {
		r := p.Stop()
		if r.Sent < 10 {
			t.Errorf("%s: only %d pings sent", name, r.Sent)
		}
		if lost := r.Sent - r.Received; lost > 10 {
			t.Errorf("%s: %d of %d pings lost across the restart (lost seq %v): forwarding took over 1 s to resume", name, lost, r.Sent, r.Lost)
		} else {
			t.Logf("%s: %d of %d pings lost across the restart", name, lost, r.Sent)
		}
	}
}

// ebpfUDPLab is two hosts on a NIC-like underlay whose flanneld run the
// udp backend with FLANNEL_UDP_DATAPATH=ebpf.
func ebpfUDPLab(t *testing.T) *lab.Lab {
	t.Helper()
	o := labOpts(t, 2, backendConfig("udp"))
	o.NoFlanneld = true
	l := startLab(t, o)
	if err := l.NICWire(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, h := range l.Hosts {
		h.Env = append(h.Env, "FLANNEL_UDP_DATAPATH=ebpf")
		startHost(t, l, h)
	}
	return l
}

// TestUDPEBPFDatapath runs flanneld with FLANNEL_UDP_DATAPATH=ebpf on a
// NIC-like underlay: it says so in its log (with XDP decapsulation, as
// the wire runs GRO), containers reach each other
// both ways, and after a SIGKILL the restarted flanneld forwards again
// within a second.
func TestUDPEBPFDatapath(t *testing.T) {
	l := ebpfUDPLab(t)
	ctx := context.Background()
	h1, h2 := l.Hosts[0], l.Hosts[1]
	for _, h := range l.Hosts {
		if log := logOf(l, h); !strings.Contains(log, "forwarding known peers in the kernel (eBPF)") || !strings.Contains(log, "xdp=true") {
			t.Fatalf("%s: no eBPF datapath with XDP (the wire runs GRO) in the log:\n%s", h.Name, log)
		}
	}
	waitFor(t, 10*time.Second, "udp peers to reach each other", func() bool {
		got, _, _ := l.Ping(ctx, h1, h2.Container, 1, 100*time.Millisecond)
		return got == 1
	})
	if got, out, err := l.Ping(ctx, h2, h1.Container, 3, 100*time.Millisecond); got != 3 {
		t.Fatalf("h2 → h1: %d of 3 (%v): %s", got, err, out)
	}

	there, err := l.StartPing(ctx, h1, h2.Container, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	readyBefore := countReady(t, l, h1)
	if err := l.StopFlanneld(h1, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := l.StartFlanneld(h1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the restarted flanneld to be ready", func() bool { return countReady(t, l, h1) > readyBefore })
	time.Sleep(time.Second)
	r := there.Stop()
	if lost := r.Sent - r.Received; r.Sent < 10 || lost > 10 {
		t.Errorf("h1→h2: %d of %d pings lost across the restart (lost seq %v)", lost, r.Sent, r.Lost)
	} else {
		t.Logf("h1→h2: %d of %d pings lost across the restart", lost, r.Sent)
	}
}
