package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/lab/labdocker"
	"github.com/flannel-go/flannel/internal/ns"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

const dockerImage = "flannel-e2e/busybox"

// The tutorial with a real Docker engine per host: dockerd started with
// the DOCKER_OPTS mk-docker-opts.sh makes of subnet.env gets docker0 on
// the host's flannel subnet with the overlay MTU, its containers get
// addresses there, and containers on different hosts ping each other by
// container IP, through Docker's FORWARD policy DROP.
func TestDocker(t *testing.T) {
	if err := labdocker.Check(); err != nil {
		t.Skip(err)
	}
	mk, err := filepath.Abs("../dist/mk-docker-opts.sh")
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "busybox.tar")
	if err := labdocker.BusyboxImage(img, "sh", "ping", "ip", "sleep", "cat"); err != nil {
		if errors.Is(err, labdocker.ErrNoDocker) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	for _, b := range []string{"vxlan", "udp"} {
		t.Run(b, func(t *testing.T) {
			if b == "udp" {
				if _, err := os.Stat("../internal/backend/udp"); err != nil {
					t.Skipf("no udp backend package: %v", err)
				}
			}
			o := labOpts(t, 2, backendConfig(b))
			o.ID = ns.Unique("fd")
			l := startLab(t, o)
			testDocker(t, l, labdocker.Options{MkDockerOpts: mk}, img)
		})
	}
}

// dockerHost is one lab host with its engine and container.
type dockerHost struct {
	h   *lab.Host
	d   *labdocker.Docker
	env subnetenv.Env
	ip  netip.Addr // the container's, as it sees it on eth0
}

func testDocker(t *testing.T, l *lab.Lab, o labdocker.Options, img string) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	hosts := make([]*dockerHost, len(l.Hosts))
	for i, h := range l.Hosts {
		env, err := subnetenv.Read(l.SubnetFile(h))
		if err != nil {
			t.Fatal(err)
		}
		hosts[i] = &dockerHost{h: h, env: env}
		// A host as it boots: forwarding off (the lab turned it on).
		// Docker then turns it on itself and, doing so, sets the
		// FORWARD policy to DROP.
		nsSysctl(t, h.NS, "net/ipv4/ip_forward", "0")
	}

	// Both engines start at once: each takes seconds.
	var wg sync.WaitGroup
	errs := make([]error, len(hosts))
	for i, dh := range hosts {
		wg.Go(func() {
			d, err := labdocker.Start(ctx, l, dh.h, o)
			dh.d, errs[i] = d, err
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		// Each stop takes a second or so: both at once.
		var wg sync.WaitGroup
		for _, dh := range hosts {
			if dh.d == nil {
				continue
			}
			if t.Failed() {
				b, _ := os.ReadFile(dh.d.LogFile())
				t.Logf("--- %s dockerd log (last 4 KiB):\n%s", dh.h.Name, tailBytes(b, 4096))
			}
			wg.Go(func() {
				if err := dh.d.Stop(); err != nil {
					t.Errorf("stop dockerd on %s: %v", dh.h.Name, err)
				}
			})
		}
		wg.Wait()
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}

	for i, dh := range hosts {
		t.Logf("%s: DOCKER_OPTS=%q", dh.h.Name, dh.d.Opts)
		if _, err := dh.d.Run(ctx, "import", img, dockerImage); err != nil {
			t.Fatal(err)
		}
		name := "c" + strconv.Itoa(i+1)
		if _, err := dh.d.Run(ctx, "run", "-d", "--name", name, dockerImage, "sleep", "3600"); err != nil {
			t.Fatal(err)
		}
		assertContainerNet(t, ctx, dh, name)
		// After the container: an empty bridge keeps MTU 1500 whatever
		// --mtu says; with a port it is the ports' MTU.
		assertDocker0(t, dh)
		assertForwardDrop(t, ctx, dh.h)
	}

	for i, from := range hosts {
		to := hosts[1-i]
		wg.Go(func() {
			name := "c" + strconv.Itoa(i+1)
			if err := dockerPing(ctx, from.d, name, to.ip); err != nil {
				t.Errorf("%s on %s → %s on %s: %v", name, from.h.Name, to.ip, to.h.Name, err)
			}
		})
	}
	wg.Wait()
}

var inetAddrRE = regexp.MustCompile(`\binet (\S+)`)

// assertContainerNet checks, from inside the container, that eth0 has an
// address in the host's flannel subnet (not the bridge's own) and the
// flannel MTU, and records the address.
func assertContainerNet(t *testing.T, ctx context.Context, dh *dockerHost, name string) {
	t.Helper()
	out, err := dh.d.Run(ctx, "exec", name, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	m := inetAddrRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("%s on %s: no IPv4 address on eth0:\n%s", name, dh.h.Name, out)
	}
	p, err := netip.ParsePrefix(m[1])
	if err != nil {
		t.Fatalf("%s on %s: eth0 address %q: %v", name, dh.h.Name, m[1], err)
	}
	if p.Masked() != dh.env.Subnet.Masked() || p.Addr() == dh.env.Subnet.Addr() {
		t.Errorf("%s on %s: eth0 has %s; want a container address in FLANNEL_SUBNET=%s", name, dh.h.Name, p, dh.env.Subnet)
	}
	dh.ip = p.Addr()
	out, err = dh.d.Run(ctx, "exec", name, "cat", "/sys/class/net/eth0/mtu")
	if err != nil {
		t.Fatal(err)
	}
	if mtu, _ := strconv.Atoi(strings.TrimSpace(out)); mtu != dh.env.MTU {
		t.Errorf("%s on %s: eth0 MTU %q; want FLANNEL_MTU=%d", name, dh.h.Name, strings.TrimSpace(out), dh.env.MTU)
	}
}

// assertDocker0 checks that dockerd's bridge holds FLANNEL_SUBNET and has
// FLANNEL_MTU.
func assertDocker0(t *testing.T, dh *dockerHost) {
	t.Helper()
	hn, err := ns.Open(dh.h.NS)
	if err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Prefix
	var mtu int
	err = hn.Do(func() error {
		br, err := netlink.LinkByName("docker0")
		if err != nil {
			return err
		}
		mtu = br.Attrs().MTU
		list, err := netlink.AddrList(br, netlink.FAMILY_V4)
		for _, a := range list {
			ip, _ := netip.AddrFromSlice(a.IP)
			ones, _ := a.Mask.Size()
			addrs = append(addrs, netip.PrefixFrom(ip.Unmap(), ones))
		}
		return err
	})
	if err != nil {
		t.Fatalf("%s: docker0: %v", dh.h.Name, err)
	}
	if len(addrs) != 1 || addrs[0] != dh.env.Subnet {
		t.Errorf("%s: docker0 has %v; want exactly FLANNEL_SUBNET=%s", dh.h.Name, addrs, dh.env.Subnet)
	}
	if mtu != dh.env.MTU {
		t.Errorf("%s: docker0 MTU %d; want FLANNEL_MTU=%d", dh.h.Name, mtu, dh.env.MTU)
	}
}

// assertForwardDrop checks that Docker has set the FORWARD policy to
// DROP, so that packets from other hosts reach containers only through
// flanneld's forward rules.
func assertForwardDrop(t *testing.T, ctx context.Context, h *lab.Host) {
	t.Helper()
	hn, err := ns.Open(h.NS)
	if err != nil {
		t.Fatal(err)
	}
	out, err := hn.Run(ctx, "iptables", "-w", "-S", "FORWARD")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "-P FORWARD DROP\n") {
		t.Errorf("%s: FORWARD policy is not DROP, so the ping would not prove flanneld's forward rules matter:\n%s", h.Name, out)
	}
}

var pingReceivedRE = regexp.MustCompile(`(\d+) packets received`)

// dockerPing waits (20 s at most) until container name reaches dst, as
// flanneld may not have learned the peer's lease yet, then wants 3 of 3
// answers.
func dockerPing(ctx context.Context, d *labdocker.Docker, name string, dst netip.Addr) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := d.Run(ctx, "exec", name, "ping", "-c", "1", "-W", "1", dst.String())
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("no answer within 20 s: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, err := d.Run(ctx, "exec", name, "ping", "-c", "3", "-W", "2", dst.String())
	m := pingReceivedRE.FindStringSubmatch(out)
	if err != nil || m == nil || m[1] != "3" {
		return fmt.Errorf("ping -c 3: want 3 answers: %v\n%s", err, out)
	}
	return nil
}

// nsSysctl writes a /proc/sys value inside namespace nsName.
func nsSysctl(t *testing.T, nsName, key, value string) {
	t.Helper()
	n, err := ns.Open(nsName)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Do(func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	}); err != nil {
		t.Fatalf("%s: sysctl %s=%s: %v", nsName, key, value, err)
	}
}

func tailBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
