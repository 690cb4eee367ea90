package doctor

import (
	"context"
	"encoding/binary"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/ns"
)

func sh(t *testing.T, n *ns.NS, args ...string) {
	t.Helper()
	if _, err := n.Run(context.Background(), args[0], args[1:]...); err != nil {
		t.Fatal(err)
	}
}

// ethtoolShows is what `ethtool -k` says about feature on dev.
func ethtoolShows(t *testing.T, n *ns.NS, dev, feature string) bool {
	t.Helper()
	out, err := n.Run(context.Background(), "ethtool", "-k", dev)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), feature+": "); ok {
			return strings.HasPrefix(v, "on")
		}
	}
	t.Fatalf("ethtool -k %s shows no %s:\n%s", dev, feature, out)
	return false
}

func TestTxChecksumOffloadMatchesEthtool(t *testing.T) {
	netnstest.SkipUnlessModule(t, "vxlan")
	if _, err := exec.LookPath("ethtool"); err != nil {
		t.Skip("no ethtool binary to compare with")
	}
	n := netnstest.New(t, "fo")
	sh(t, n, "ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "local", "127.0.0.1")
	sys := NewSystem()
	read := func() bool {
		var on bool
		if err := n.Do(func() error {
			var err error
			on, err = sys.TxChecksumOffload("vx0")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return on
	}
	for _, setting := range []string{"on", "off", "on"} {
		sh(t, n, "ethtool", "-K", "vx0", "tx-checksum-ip-generic", setting)
		if got, want := read(), ethtoolShows(t, n, "vx0", "tx-checksum-ip-generic"); got != want || got != (setting == "on") {
			t.Errorf("after ethtool -K %s: read %v, ethtool -k shows %v", setting, got, want)
		}
	}
	err := n.Do(func() error { _, err := sys.TxChecksumOffload("nosuchdev"); return err })
	if err == nil {
		t.Error("no error for a missing device")
	}
}

// TestProbe builds A — R — B with a 1300-byte link between R and B.
func TestProbe(t *testing.T) {
	a, r, b := netnstest.New(t, "fo"), netnstest.New(t, "fo"), netnstest.New(t, "fo")
	sh(t, a, "ip", "link", "add", "a0", "type", "veth", "peer", "name", "r0", "netns", r.Name)
	sh(t, r, "ip", "link", "add", "r1", "mtu", "1300", "type", "veth", "peer", "name", "b0", "netns", b.Name)
	sh(t, b, "ip", "link", "set", "b0", "mtu", "1300")
	sh(t, a, "ip", "addr", "add", "10.99.1.2/24", "dev", "a0")
	sh(t, r, "ip", "addr", "add", "10.99.1.1/24", "dev", "r0")
	sh(t, r, "ip", "addr", "add", "10.99.2.1/24", "dev", "r1")
	sh(t, b, "ip", "addr", "add", "10.99.2.2/24", "dev", "b0")
	sh(t, a, "ip", "link", "set", "a0", "up")
	sh(t, r, "ip", "link", "set", "r0", "up")
	sh(t, r, "ip", "link", "set", "r1", "up")
	sh(t, b, "ip", "link", "set", "b0", "up")
	sh(t, a, "ip", "route", "add", "default", "via", "10.99.1.1")
	sh(t, b, "ip", "route", "add", "default", "via", "10.99.2.1")
	sh(t, r, "sysctl", "-qw", "net.ipv4.ip_forward=1")

	bAddr, gone, rAddr := netip.MustParseAddr("10.99.2.2"), netip.MustParseAddr("10.99.2.99"), netip.MustParseAddr("10.99.1.1")
	probes := []Probe{
		{Dst: bAddr},                       // answered
		{Dst: gone},                        // nobody there
		{Dst: bAddr, Size: 1400, DF: true}, // R reports MTU 1300
		{Dst: bAddr, Size: 1400},           // R fragments it
		{Dst: rAddr, Size: 1600, DF: true}, // larger than a0 itself
		{Dst: bAddr, Size: 1300, DF: true}, // fits exactly
	}
	var res []ProbeResult
	start := time.Now()
	if err := a.Do(func() error {
		res = NewSystem().Probe(context.Background(), probes, 900*time.Millisecond)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("probing took %s with a 900ms timeout", d)
	}
	want := []ProbeResult{{Replied: true}, {}, {PathMTU: 1300}, {Replied: true}, {TooBig: true, RouteMTU: 1500}, {Replied: true}}
	for i := range probes {
		if res[i] != want[i] {
			t.Errorf("probe %+v: got %+v, want %+v", probes[i], res[i], want[i])
		}
	}

	// The router's report is now the kernel's cached path MTU for B.
	if err := a.Do(func() error {
		res = NewSystem().Probe(context.Background(), []Probe{{Dst: bAddr, Size: 1400, DF: true}}, 300*time.Millisecond)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := (ProbeResult{TooBig: true, RouteMTU: 1300}); res[0] != want {
		t.Errorf("DF probe after the router's report: got %+v, want %+v", res[0], want)
	}
}

func TestParseICMP(t *testing.T) {
	token := []byte("abcdefgh")
	req := echoRequest(0x1234, 7, token, 0)
	if len(req)+ipHdrLen != smallProbe || checksum(req) != 0 {
		t.Fatalf("echo request: %d bytes, checksum over it %#x", len(req), checksum(req))
	}
	reply := append([]byte(nil), req...)
	reply[0] = 0
	if seq, ok, _, match := parseICMP(reply, 0x1234, token); !match || !ok || seq != 7 {
		t.Errorf("reply: seq %d reply %v match %v", seq, ok, match)
	}
	if _, _, _, match := parseICMP(reply, 0x4321, token); match {
		t.Error("reply to another ID matched")
	}
	if _, _, _, match := parseICMP(reply, 0x1234, []byte("zzzzzzzz")); match {
		t.Error("reply with another token matched")
	}
	// Fragmentation needed, quoting our request after a 20-byte header.
	fn := make([]byte, 8+20+8)
	fn[0], fn[1] = 3, 4
	binary.BigEndian.PutUint16(fn[6:], 1280)
	fn[8] = 0x45
	fn[8+9] = 1
	copy(fn[28:], req[:8])
	if seq, ok, mtu, match := parseICMP(fn, 0x1234, token); !match || ok || seq != 7 || mtu != 1280 {
		t.Errorf("frag needed: seq %d reply %v mtu %d match %v", seq, ok, mtu, match)
	}
}

func FuzzParseICMP(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0x12, 0x34, 0, 7, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'})
	f.Add([]byte{3, 4, 0, 0, 0, 0, 5, 0, 0x4f, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		seq, _, mtu, ok := parseICMP(b, 0x1234, []byte("abcdefgh"))
		if ok && (seq < 0 || seq > 0xffff || mtu < 0) {
			t.Errorf("seq %d mtu %d", seq, mtu)
		}
	})
}
