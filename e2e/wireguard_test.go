package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/flannel-go/flannel/internal/backend/wireguard"
	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/ns"
)

// wgDevice reads host h's flannel-wg (userspace here: through its UAPI
// socket, found from inside h's namespace).
func wgDevice(t *testing.T, h *lab.Host, dev string) (*wgtypes.Device, error) {
	t.Helper()
	n, err := ns.Open(h.NS)
	if err != nil {
		t.Fatal(err)
	}
	var d *wgtypes.Device
	err = n.Do(func() error {
		var err error
		d, err = wireguard.ReadDevice(dev)
		return err
	})
	return d, err
}

// leaseKey returns the PublicKey h's lease announces.
func leaseKey(t *testing.T, cli *clientv3.Client, h *lab.Host) wgtypes.Key {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := cli.Get(ctx, subnetKey(h.Subnet))
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("lease of %s: %v", h.Name, err)
	}
	var v struct{ BackendData json.RawMessage }
	if err := json.Unmarshal(r.Kvs[0].Value, &v); err != nil {
		t.Fatal(err)
	}
	d, err := wireguard.DecodeLeaseData(v.BackendData)
	if err != nil {
		t.Fatalf("lease of %s: %v", h.Name, err)
	}
	return d.PublicKey
}

func hasPeer(d *wgtypes.Device, k wgtypes.Key) bool {
	for _, p := range d.Peers {
		if p.PublicKey == k {
			return true
		}
	}
	return false
}

// Three hosts on WireGuard (userspace on this kernel): every container
// reaches every other; the underlay carries only WireGuard on its port and
// never the payload; deleting a lease removes the peer everywhere.
func TestWireGuardOverlay(t *testing.T) {
	l := startLab(t, labOpts(t, 3, backendConfig("wireguard")))
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	assertAllPairsPing(t, l)
	if !strings.Contains(logOf(l, h1), "running it in userspace") && !strings.Contains(logOf(l, h1), "created kernel device") {
		t.Errorf("flanneld did not log whether WireGuard runs in the kernel or in userspace")
	}
	for _, h := range l.Hosts {
		if st, err := os.Stat(l.KeyFile(h)); err != nil || st.Mode().Perm() != 0o400 {
			t.Errorf("%s: key file %s: %v, mode %v; want 0400", h.Name, l.KeyFile(h), err, st.Mode().Perm())
		}
	}

	t.Run("capture", func(t *testing.T) {
		const marker = "FLANNEL-SECRET-MARK" // ping -p repeats up to 16 bytes of it
		pattern := hex.EncodeToString([]byte(marker[:16]))
		dir := t.TempDir()
		under, inner := filepath.Join(dir, "eth0.pcap"), filepath.Join(dir, "c2.pcap")
		capU := startCapture(t, h1.NS, "eth0", under)
		capC := startCapture(t, h2.CNS, "eth0", inner)
		got, out := pingArgs(t, h1, h2.Container.String(), 5, "-p", pattern, "-s", "200")
		capU.stop()
		capC.stop()
		if got != 5 {
			t.Fatalf("marker pings: %d/5 answered\n%s", got, out)
		}
		if b, _ := os.ReadFile(inner); !bytes.Contains(b, []byte(marker[:16])) {
			t.Fatalf("the container's capture lacks the marker: the test sent no marker:\n%s\n%s", nsRun(t, h2.CNS, "tcpdump", "-nn", "-X", "-r", inner), capC.m.stop())
		}
		b, err := os.ReadFile(under)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(marker[:16])) {
			t.Errorf("the marker crossed the underlay in clear")
		}
		text := nsRun(t, h1.NS, "tcpdump", "-nn", "-r", under)
		wgPackets := 0
		for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
			switch {
			case line == "", strings.HasPrefix(line, "reading from"), strings.Contains(line, " ARP, "), etcdPort.MatchString(line),
				strings.Contains(line, " ICMP6, ") && (strings.Contains(line, " IP6 fe80::") || strings.Contains(line, " IP6 :: ")):
				// etcd (TCP 2379), ARP and IPv6 link-local chatter
				// (neighbour discovery, MLD) are the only other traffic
			case strings.Contains(line, ".51820 > ") && strings.Contains(line, ".51820: UDP"):
				wgPackets++
			default:
				t.Errorf("underlay packet that is not WireGuard on port 51820: %s", line)
			}
		}
		if wgPackets < 10 {
			t.Errorf("only %d WireGuard packets captured for 5 pings:\n%s", wgPackets, text)
		}
	})

	t.Run("bad public key", func(t *testing.T) {
		cli := etcdClient(t, l)
		bad := map[string]string{
			"10.5.250.0-24": `{"PublicIP":"192.168.100.210","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"bm90IGEga2V5","Port":51820}}`,
			"10.5.251.0-24": `{"PublicIP":"192.168.100.211","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"Port":51820}}`,
		}
		for k, v := range bad {
			etcdPut(t, cli, etcdPrefix+"/subnets/"+k, v)
		}
		for k := range bad {
			waitFor(t, 2*time.Second, "a warning naming "+k, func() bool { return warnsAbout(logOf(l, h1), k) })
			if line := firstLine(logOf(l, h1), k); !strings.Contains(line, "PublicKey") {
				t.Errorf("warning about %s does not say what is wrong: %s", k, line)
			}
		}
		d, err := wgDevice(t, h1, wireguard.DeviceV4)
		if err != nil || len(d.Peers) != 2 {
			t.Errorf("h1's peers with two bad leases: %v, %v; want the 2 good ones", d, err)
		}
		assertAllPairsPing(t, l)
	})

	t.Run("lease removed", func(t *testing.T) {
		cli := etcdClient(t, l)
		k3 := leaseKey(t, cli, h3)
		for _, h := range []*lab.Host{h1, h2} {
			d, err := wgDevice(t, h, wireguard.DeviceV4)
			if err != nil || !hasPeer(d, k3) {
				t.Fatalf("%s has no peer for h3 before the test: %v", h.Name, err)
			}
		}
		stopFlanneld(t, l, h3, syscall.SIGKILL)
		etcdDel(t, cli, subnetKey(h3.Subnet))
		for _, h := range []*lab.Host{h1, h2} {
			waitFor(t, 2*time.Second, h.Name+" to remove h3's peer", func() bool {
				d, err := wgDevice(t, h, wireguard.DeviceV4)
				return err == nil && !hasPeer(d, k3) && len(d.Peers) == 1
			})
		}
	})
}

// A SIGKILLed flanneld comes back with the same key (peers need no
// update) and a new userspace device; pings both ways lose at most a
// second's worth.
func TestWireGuardRestart(t *testing.T) {
	l := startLab(t, labOpts(t, 2, backendConfig("wireguard")))
	h1, h2 := l.Hosts[0], l.Hosts[1]
	cli := etcdClient(t, l)
	keyBefore := leaseKey(t, cli, h1)
	assertAllPairsPing(t, l)
	var ps []*lab.Pinger
	for _, p := range [][2]*lab.Host{{h1, h2}, {h2, h1}} {
		pg, err := l.StartPing(context.Background(), p[0], p[1].Container, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, pg)
	}
	time.Sleep(time.Second) // pings before the kill: the scenario, not synchronisation
	stopFlanneld(t, l, h1, syscall.SIGKILL)
	restartAndWait(t, l, h1)
	time.Sleep(2 * time.Second) // pings after the restart
	for _, p := range ps {
		r := p.Stop()
		t.Logf("ping %s → %s: %s, lost %v", p.From, p.To, r, r.Lost)
		if r.Sent < 20 {
			t.Errorf("ping %s → %s: only %d sent", p.From, p.To, r.Sent)
		}
		if len(r.Lost) > 10 {
			t.Errorf("ping %s → %s: %d lost at 10/s, more than a second's worth:\n%s", p.From, p.To, len(r.Lost), lossContext(r.Output))
		}
	}
	if k := leaseKey(t, cli, h1); k != keyBefore {
		t.Errorf("public key changed across the restart: %s → %s", keyBefore, k)
	}
	d, err := wgDevice(t, h2, wireguard.DeviceV4)
	if err != nil || len(d.Peers) != 1 || d.Peers[0].PublicKey != keyBefore {
		t.Errorf("h2's peers after h1's restart: %+v, %v; want the one, same key", d, err)
	}

	// The userspace device deleted by hand: flanneld recreates it (on
	// the kernel's delete notification) with its address, route and
	// peers, and traffic flows again within a couple of seconds.
	nsRun(t, h1.NS, "ip", "link", "del", wireguard.DeviceV4)
	took, ok := pollUntil(5*time.Second, func() bool {
		got, _ := pingArgs(t, h2, h1.Container.String(), 1)
		return got == 1
	})
	if !ok {
		t.Fatalf("no traffic from h2 to h1 5 s after h1's %s was deleted", wireguard.DeviceV4)
	}
	t.Logf("traffic back %s after the device was deleted", took.Round(time.Millisecond))
	if !strings.Contains(logOf(l, h1), "userspace device disappeared; recreating it") {
		t.Errorf("h1 did not log the recreation")
	}
}

// One host with another PSK: nothing reaches it, the others are fine,
// and the doctor on it says why.
func TestWireGuardWrongPSK(t *testing.T) {
	const psk1, psk2 = "GGZ+XEaV7qd6tdx+rCTgUG56ldO6CLnbvtx0n9lE8Ds=", "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
	cfg := func(psk string) string {
		return fmt.Sprintf(`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","PSK":%q}}`, psk)
	}
	o := labOpts(t, 3, cfg(psk1))
	o.NoFlanneld = true
	l := startLab(t, o)
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	startHost(t, l, h1)
	startHost(t, l, h2)
	// flanneld reads the config once at start: h3 gets the other PSK.
	cli := etcdClient(t, l)
	etcdPut(t, cli, etcdPrefix+"/config", cfg(psk2))
	startHost(t, l, h3)
	ctx := context.Background()
	l.WaitConverged(ctx, 5*time.Second) // false: h3 is cut off
	for _, p := range [][2]*lab.Host{{h1, h2}, {h2, h1}} {
		if got, out, _ := l.Ping(ctx, p[0], p[1].Container, 3, 200*time.Millisecond); got != 3 {
			t.Errorf("%s → %s (same PSK): %d/3\n%s", p[0].Name, p[1].Name, got, out)
		}
	}
	for _, p := range [][2]*lab.Host{{h1, h3}, {h3, h1}, {h2, h3}} {
		if got, _, _ := l.Ping(ctx, p[0], p[1].Container, 3, 200*time.Millisecond); got != 0 {
			t.Errorf("%s → %s (other PSK): %d/3 answered, want none", p[0].Name, p[1].Name, got)
		}
	}
	opsWantFail(t, l, h3, "wireguard", "no handshake", "PSK")
	// h1 runs the PSK the config no longer holds: its doctor says so.
	opsWantFail(t, l, h1, "wireguard", "PSK other than the one in the network config")
}

// etcdPort matches a tcpdump line of etcd's traffic: port 2379 at either
// end (the ".2379" of a timestamp such as 20.237962 is not one).
var etcdPort = regexp.MustCompile(`\.2379[ :]`)

// capture is a tcpdump writing one interface's packets to a file.
type capture struct {
	m    *netMonitor
	file string
}

// startCapture runs tcpdump on dev in namespace nsName, writing to file,
// and returns once it is listening.
func startCapture(t *testing.T, nsName, dev, file string) *capture {
	t.Helper()
	c := &capture{file: file}
	c.m = startMonitor(t, nsName, "tcpdump", "-Z", "root", "--immediate-mode", "-nn", "-U", "-i", dev, "-w", file)
	waitFor(t, 5*time.Second, "tcpdump to listen on "+dev, func() bool {
		c.m.mu.Lock()
		defer c.m.mu.Unlock()
		return strings.Contains(c.m.out.String(), "listening on")
	})
	return c
}

// stop ends the capture; SIGINT lets tcpdump flush the file.
func (c *capture) stop() {
	if c.m.cmd.ProcessState == nil {
		_ = c.m.cmd.Process.Signal(syscall.SIGINT)
		done := make(chan struct{})
		go func() { _ = c.m.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = c.m.cmd.Process.Kill()
			<-done
		}
		<-c.m.done
	}
}

// pingArgs pings dst count times from h's container with extra ping
// arguments, and returns how many were answered.
func pingArgs(t *testing.T, h *lab.Host, dst string, count int, extra ...string) (int, string) {
	t.Helper()
	n, err := ns.Open(h.CNS)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-n", "-q", "-c", fmt.Sprint(count), "-i", "0.1", "-W", "1"}, extra...)
	out, _ := n.Command(context.Background(), "ping", append(args, dst)...).CombinedOutput()
	s := string(out)
	for _, line := range strings.Split(s, "\n") {
		if i := strings.Index(line, " received"); i > 0 {
			f := strings.Fields(line[:i])
			var got int
			fmt.Sscan(f[len(f)-1], &got)
			return got, s
		}
	}
	return 0, s
}

// Auto mode over a dual-stack underlay whose IPv6 addresses are public
// (the IPv4 ones private): endpoints are IPv6, and although ListenPortV6
// differs from ListenPort the handshake works (upstream advertises
// ListenPortV6 there while its one device listens on ListenPort).
func TestWireGuardAutoIPv6Endpoint(t *testing.T) {
	cfg := `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48",` +
		`"Backend":{"Type":"wireguard","Mode":"auto","ListenPort":51830,"ListenPortV6":51831}}`
	o := labOpts(t, 3, cfg, "-iface=eth0")
	o.Underlay6 = netip.MustParsePrefix("2001:db8:100::/64")
	l := startLab(t, o)
	assertAllPairsPing(t, l)
	for _, h := range l.Hosts {
		d, err := wgDevice(t, h, wireguard.DeviceV4)
		if err != nil {
			t.Fatal(err)
		}
		if d.ListenPort != 51830 || len(d.Peers) != 2 {
			t.Errorf("%s: port %d, %d peers; want 51830 and 2", h.Name, d.ListenPort, len(d.Peers))
		}
		for _, p := range d.Peers {
			ep := p.Endpoint.AddrPort()
			if !ep.Addr().Is6() || ep.Addr().Is4In6() || ep.Port() != 51830 || p.LastHandshakeTime.IsZero() {
				t.Errorf("%s: peer endpoint %s (handshake %v); want an IPv6 endpoint on port 51830 with a handshake", h.Name, ep, p.LastHandshakeTime)
			}
			if len(p.AllowedIPs) != 2 {
				t.Errorf("%s: peer AllowedIPs %v; want the IPv4 and IPv6 subnets", h.Name, p.AllowedIPs)
			}
		}
	}
}

// Separate mode (the default) on a dual-stack network: flannel-wg carries
// IPv4 subnets to IPv4 endpoints on ListenPort, flannel-wg-v6 IPv6
// subnets to IPv6 endpoints on ListenPortV6, and both handshake.
func TestWireGuardSeparateDualStack(t *testing.T) {
	cfg := `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"wireguard"}}`
	o := labOpts(t, 2, cfg, "-iface=eth0")
	o.Underlay6 = netip.MustParsePrefix("fd01:100::/64")
	l := startLab(t, o)
	assertAllPairsPing(t, l)
	for _, h := range l.Hosts {
		for _, c := range []struct {
			dev  string
			port int
			v6   bool
		}{{wireguard.DeviceV4, 51820, false}, {wireguard.DeviceV6, 51821, true}} {
			var d *wgtypes.Device
			waitFor(t, 5*time.Second, h.Name+"'s "+c.dev+" to handshake", func() bool {
				var err error
				d, err = wgDevice(t, h, c.dev)
				return err == nil && len(d.Peers) == 1 && !d.Peers[0].LastHandshakeTime.IsZero()
			})
			p := d.Peers[0]
			ep := p.Endpoint.AddrPort()
			if d.ListenPort != c.port || ep.Port() != uint16(c.port) || ep.Addr().Unmap().Is6() != c.v6 {
				t.Errorf("%s %s: listens on %d, peer endpoint %s; want port %d, IPv6 %v", h.Name, c.dev, d.ListenPort, ep, c.port, c.v6)
			}
			if len(p.AllowedIPs) != 1 || (p.AllowedIPs[0].IP.To4() == nil) != c.v6 {
				t.Errorf("%s %s: AllowedIPs %v; want the one subnet of its family", h.Name, c.dev, p.AllowedIPs)
			}
		}
	}
}

// A malformed key file is one start-up error naming the file, and the
// file is left for the operator (it is this host's identity).
func TestWireGuardBadKeyFile(t *testing.T) {
	o := labOpts(t, 1, backendConfig("wireguard"))
	o.NoFlanneld = true
	l := startLab(t, o)
	h := l.Hosts[0]
	if err := os.WriteFile(l.KeyFile(h), []byte("garbage\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	if err := l.StartFlanneld(h); err != nil {
		t.Fatal(err)
	}
	pid := h.FlanneldPID
	waitFor(t, 10*time.Second, "flanneld to exit", func() bool { return !lab.Alive(pid) })
	log := logOf(l, h)
	if n := strings.Count(log, "level=ERROR"); n != 1 || !strings.Contains(firstLine(log, "level=ERROR"), l.KeyFile(h)) {
		t.Errorf("want one error naming %s, got %d:\n%s", l.KeyFile(h), n, log)
	}
	if b, _ := os.ReadFile(l.KeyFile(h)); string(b) != "garbage\n" {
		t.Errorf("the malformed key file was replaced")
	}
	h.FlanneldPID = 0
}
