package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flannel-go/flannel/internal/kubetest"
	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/ns"
)

// labKubeCtl runs flannelctl with args and returns its combined output.
func labKubeCtl(env []string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(binDir, "flannelctl"), args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// requireKubeLab skips (fails in CI) unless `lab up --kube` can run: the
// kube-apiserver built and Debian's CNI plugins installed. It returns the
// directory of a freshly built flannel CNI plugin.
func requireKubeLab(t *testing.T) string {
	t.Helper()
	kubetest.Require(t)
	for _, p := range []string{"bridge", "host-local", "portmap"} {
		if _, err := os.Stat(filepath.Join("/usr/lib/cni", p)); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("/usr/lib/cni/%s missing in CI: scripts/setup.sh --test installs containernetworking-plugins", p)
			}
			t.Skipf("needs Debian's containernetworking-plugins (scripts/setup.sh --test): %v", err)
		}
	}
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "flannel"), "../cmd/flannel")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build cmd/flannel: %v\n%s", err, out)
	}
	return dir
}

// `lab up --kube` as a newcomer runs it: a Node per host with a podCIDR,
// flanneld in Kubernetes mode taking it, pods that got their address from
// it through CNI (the flannel plugin's saved delegate configuration, a
// veth on the bridge) and reach each other; a pod's DEL undoes its ADD;
// lab down leaves nothing.
func TestLabKubeCLI(t *testing.T) {
	cniDir := requireKubeLab(t)
	id := ns.Unique("fq")
	t.Cleanup(func() { _ = lab.Down(id) })
	out, err := labKubeCtl(os.Environ(), "lab", "up", "--kube", "--id", id, "--hosts", "2", "--backend", "host-gw",
		"--flanneld", filepath.Join(binDir, "flanneld"), "--cni-plugin", filepath.Join(cniDir, "flannel"))
	if err != nil {
		t.Fatalf("lab up --kube: %v\n%s", err, out)
	}
	t.Logf("lab up --kube:\n%s", out)
	for _, want := range []string{"kube-apiserver https://", "POD", "h1", "h2", "pod → pod", "all 2 pairs reach each other", "kubectl --kubeconfig"} {
		if !strings.Contains(out, want) {
			t.Errorf("lab up --kube output lacks %q", want)
		}
	}
	l, err := lab.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	if l.Kube == nil {
		t.Fatal("lab state has no Kubernetes part")
	}
	client, err := l.KubeClient()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, h := range l.Hosts {
		node, err := client.CoreV1().Nodes().Get(ctx, h.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cidr, err := netip.ParsePrefix(node.Spec.PodCIDR)
		if err != nil {
			t.Fatalf("node %s: podCIDR %q: %v", h.Name, node.Spec.PodCIDR, err)
		}
		if h.Subnet != cidr {
			t.Errorf("%s: flanneld leased %s, want its node's podCIDR %s", h.Name, h.Subnet, cidr)
		}
		if node.Annotations["flannel.alpha.coreos.com/kube-subnet-manager"] != "true" {
			t.Errorf("node %s lacks flanneld's annotations: %v", h.Name, node.Annotations)
		}
		assertCNIPod(t, l, h, cidr)
	}

	// A pod's DEL, as the kubelet runs it when the pod goes, undoes its
	// ADD; a second DEL succeeds.
	h1 := l.Hosts[0]
	ip := h1.Container
	if err := l.DelPod(ctx, h1); err != nil {
		t.Fatalf("DEL of h1's pod: %v", err)
	}
	if _, err := os.Stat(filepath.Join(l.CNIDataDir(h1), lab.PodID(h1))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the flannel plugin's saved configuration is still there after DEL: %v", err)
	}
	if _, err := os.Stat(filepath.Join(l.CNIDir(h1), "networks", "cbr0", ip.String())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("host-local still holds %s after DEL: %v", ip, err)
	}
	if v := vethsOn(t, h1.NS, "cni0"); len(v) != 0 {
		t.Errorf("veths %v still on h1's cni0 after DEL", v)
	}
	if err := l.DelPod(ctx, h1); err != nil {
		t.Errorf("a second DEL must succeed: %v", err)
	}

	if out, err := labKubeCtl(os.Environ(), "lab", "down", "--id", id); err != nil || !strings.Contains(out, "is down") {
		t.Errorf("lab down: %v\n%s", err, out)
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), id) {
			t.Errorf("namespace %s left after lab down", e.Name())
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline")); err == nil && strings.Contains(string(b), lab.Dir(id)+"/") {
			t.Errorf("process %s left after lab down: %s", p.Name(), strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}

// assertCNIPod checks host h's pod came from CNI with an address of the
// node's podCIDR: the flannel plugin saved the bridge + host-local
// configuration it delegated for that range, the pod's veth is on the
// bridge holding the range's gateway, and the pod's eth0 has the address.
func assertCNIPod(t *testing.T, l *lab.Lab, h *lab.Host, cidr netip.Prefix) {
	t.Helper()
	if !cidr.Contains(h.Container) || h.Container == cidr.Addr().Next() {
		t.Errorf("%s: pod address %s is not a pod address of the node's podCIDR %s", h.Name, h.Container, cidr)
	}
	saved := filepath.Join(l.CNIDataDir(h), lab.PodID(h))
	b, err := os.ReadFile(saved)
	if err != nil {
		t.Errorf("%s: the flannel plugin saved no delegate configuration: %v", h.Name, err)
	} else if !strings.Contains(string(b), fmt.Sprintf(`"ranges":[[{"subnet":%q}]]`, cidr.String())) || !strings.Contains(string(b), `"type":"bridge"`) {
		t.Errorf("%s: saved delegate configuration is not bridge + host-local on %s:\n%s", h.Name, cidr, b)
	}
	if v := vethsOn(t, h.NS, "cni0"); len(v) != 1 {
		t.Errorf("%s: veths on cni0 %v, want the pod's one", h.Name, v)
	}
	if got := nsOutput(h.NS, "ip", "-4", "-o", "addr", "show", "cni0"); !strings.Contains(got, cidr.Addr().Next().String()+"/"+fmt.Sprint(cidr.Bits())) {
		t.Errorf("%s: cni0 lacks the gateway %s of %s: %s", h.Name, cidr.Addr().Next(), cidr, got)
	}
	if got := nsOutput(h.CNS, "ip", "-4", "-o", "addr", "show", "eth0"); !strings.Contains(got, h.Container.String()+"/") {
		t.Errorf("%s: the pod's eth0 lacks %s: %s", h.Name, h.Container, got)
	}
}

// vethsOn lists the veths in namespace nsName enslaved to bridge br.
func vethsOn(t *testing.T, nsName, br string) []string {
	t.Helper()
	n, err := ns.Open(nsName)
	if err != nil {
		t.Fatal(err)
	}
	nh, err := n.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	bridge, err := nh.LinkByName(br)
	if err != nil {
		return nil
	}
	links, err := nh.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var veths []string
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); ok && l.Attrs().MasterIndex == bridge.Attrs().Index {
			veths = append(veths, l.Attrs().Name)
		}
	}
	return veths
}

// `lab demo --kube` ends with the same line as the etcd-mode demo, and
// leaves nothing behind.
func TestLabKubeDemo(t *testing.T) {
	cniDir := requireKubeLab(t)
	id := ns.Unique("fq")
	t.Cleanup(func() { _ = lab.Down(id) })
	out, err := labKubeCtl(os.Environ(), "lab", "demo", "--kube", "--id", id,
		"--flanneld", filepath.Join(binDir, "flanneld"), "--cni-plugin", filepath.Join(cniDir, "flannel"))
	if err != nil {
		t.Fatalf("lab demo --kube: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 3 || lines[len(lines)-3] != "all 6 pairs reach each other" || lines[len(lines)-1] != "lab "+id+" is down" {
		t.Errorf("lab demo --kube must end with \"all 6 pairs reach each other\" and the lab going down:\n%s", out)
	}
	if !strings.Contains(out, "10.244.") {
		t.Errorf("lab demo --kube shows no address of the 10.244.0.0/16 pod network:\n%s", out)
	}
	if _, err := os.Stat(lab.Dir(id)); !os.IsNotExist(err) {
		t.Errorf("lab state %s left after lab demo", lab.Dir(id))
	}
}

// Without a built kube-apiserver `lab up --kube` fails at once, saying how
// to build it, and builds nothing.
func TestLabKubeWithoutAPIServer(t *testing.T) {
	id := ns.Unique("fq")
	t.Cleanup(func() { _ = lab.Down(id) })
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "KUBE_APISERVER=") && !strings.HasPrefix(e, "FLANNEL_CACHE=") {
			env = append(env, e)
		}
	}
	env = append(env, "FLANNEL_CACHE="+t.TempDir())
	start := time.Now()
	out, err := labKubeCtl(env, "lab", "up", "--kube", "--id", id, "--flanneld", filepath.Join(binDir, "flanneld"))
	if err == nil || !strings.Contains(out, "scripts/kube-apiserver.sh") {
		t.Errorf("lab up --kube without the kube-apiserver: %v, want an error naming scripts/kube-apiserver.sh:\n%s", err, out)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("lab up --kube took %v to fail, want at once", took)
	}
	if _, err := os.Stat(lab.Dir(id)); !os.IsNotExist(err) {
		t.Errorf("lab state %s made by a lab up that failed at once", lab.Dir(id))
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), id) {
			t.Errorf("namespace %s made by a lab up that failed at once", e.Name())
		}
	}
}
