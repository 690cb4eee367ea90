package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/ns"
)

// The CNI path across hosts: each lab host's flanneld writes subnet.env,
// the flannel CNI plugin (run as a runtime runs it, in the host's
// namespace) gives a pod there an address through Debian's bridge and
// host-local, and pods on different hosts ping each other through the
// overlay, at the overlay's MTU.
func TestCNIAcrossHosts(t *testing.T) {
	const plugins = "/usr/lib/cni"
	if _, err := os.Stat(filepath.Join(plugins, "bridge")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s/bridge missing in CI: scripts/setup.sh --test installs containernetworking-plugins", plugins)
		}
		t.Skipf("needs Debian's containernetworking-plugins in %s (scripts/setup.sh --test): %v", plugins, err)
	}
	cniBin := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(cniBin, "flannel"), "../cmd/flannel")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build cmd/flannel: %v\n%s", err, out)
	}
	for _, b := range []string{"vxlan", "host-gw"} {
		t.Run(b, func(t *testing.T) {
			o := labOpts(t, 2, backendConfig(b))
			o.ID = ns.Unique("fk")
			o.NoContainers = true
			l := startLab(t, o)
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			var pods []*ns.NS
			var ips []netip.Addr
			for _, h := range l.Hosts {
				pod := netnstest.New(t, "fkp")
				ip := cniAdd(t, ctx, l, h, pod, plugins+string(os.PathListSeparator)+cniBin)
				pods, ips = append(pods, pod), append(ips, ip)
			}
			// -w: keep trying until a reply, while flanneld programs the
			// route to the other host's new lease.
			for i, j := range []int{1, 0} {
				if out, err := pods[i].Run(ctx, "ping", "-c", "1", "-w", "20", ips[j].String()); err != nil {
					t.Errorf("pod on %s → pod on %s (%s): %v\n%s", l.Hosts[i].Name, l.Hosts[j].Name, ips[j], err, out)
				}
			}
			mtu := l.Hosts[0].MTU
			if out, err := pods[0].Run(ctx, "ping", "-c", "1", "-W", "5", "-M", "do", "-s", fmt.Sprint(mtu-28), ips[1].String()); err != nil {
				t.Errorf("full-MTU (%d) ping across, don't fragment: %v\n%s", mtu, err, out)
			}
		})
	}
}

// cniAdd runs the plugin's ADD for pod on host h and checks the pod's
// address is in h's subnet with h's MTU.
func cniAdd(t *testing.T, ctx context.Context, l *lab.Lab, h *lab.Host, pod *ns.NS, cniPath string) netip.Addr {
	t.Helper()
	dir := t.TempDir()
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel", "subnetFile": %q,
		"dataDir": %q, "delegate": {"hairpinMode": true}, "ipam": {"dataDir": %q}}`,
		l.SubnetFile(h), filepath.Join(dir, "flannel"), filepath.Join(dir, "host-local"))
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", h.NS, filepath.Join(filepath.SplitList(cniPath)[1], "flannel"))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "CNI_COMMAND=ADD", "CNI_CONTAINERID=pod-" + h.Name,
		"CNI_NETNS=/run/netns/" + pod.Name, "CNI_IFNAME=eth0", "CNI_PATH=" + cniPath}
	cmd.Stdin = bytes.NewReader([]byte(conf))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ADD on %s: %v\n%s\n%s", h.Name, err, stdout.Bytes(), stderr.Bytes())
	}
	var res current.Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || len(res.IPs) != 1 {
		t.Fatalf("ADD on %s printed %s: %v", h.Name, stdout.Bytes(), err)
	}
	ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	if !h.Subnet.Contains(ip) {
		t.Errorf("pod on %s got %s, outside the host's subnet %s", h.Name, ip, h.Subnet)
	}
	nh, err := pod.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	if eth0, err := nh.LinkByName("eth0"); err != nil || eth0.Attrs().MTU != h.MTU {
		t.Errorf("pod on %s: eth0 %v, %v; want MTU %d", h.Name, eth0, err, h.MTU)
	}
	return ip
}
