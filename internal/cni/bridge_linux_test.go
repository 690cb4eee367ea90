package cni_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sigs.k8s.io/yaml"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/ns"
)

// debianCNI is where Debian's containernetworking-plugins puts bridge,
// host-local, portmap, ….
const debianCNI = "/usr/lib/cni"

// skipUnlessPlugins skips the test unless the real delegate plugins are
// installed; in CI (where scripts/setup.sh --test installs them) their
// absence is a failure.
func skipUnlessPlugins(t *testing.T) {
	t.Helper()
	netnstest.SkipUnlessRoot(t)
	for _, p := range []string{"bridge", "host-local", "portmap"} {
		if _, err := os.Stat(filepath.Join(debianCNI, p)); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s/%s missing in CI: scripts/setup.sh --test installs containernetworking-plugins", debianCNI, p)
			}
			t.Skipf("needs Debian's containernetworking-plugins in %s (scripts/setup.sh --test installs it): %v", debianCNI, err)
		}
	}
}

// buildPlugin builds cmd/flannel, static as `make build` builds it, into
// a directory removed after the test, and returns that directory.
func buildPlugin(t *testing.T) string {
	t.Helper()
	// go test does not always run with the toolchain on PATH; the
	// project's documented place is the fallback.
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	dir := t.TempDir()
	cmd := exec.Command(goBin, "build", "-o", filepath.Join(dir, "flannel"), "github.com/flannel-go/flannel/cmd/flannel")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build cmd/flannel: %v\n%s", err, out)
	}
	return dir
}

// runtimeEnv is one call of the plugin binary as a container runtime
// makes it: the CNI_* environment, the configuration on stdin, run in the
// "host" namespace, where the bridge and the veths' host ends live.
type runtimeEnv struct {
	host    *ns.NS
	binDir  string
	cniPath string
}

type callResult struct {
	stdout []byte
	err    error        // non-nil when the plugin exited non-zero
	cniErr *types.Error // the error it printed, if any
}

func (r *runtimeEnv) call(ctx context.Context, t *testing.T, command, containerID, netns string, conf []byte) callResult {
	t.Helper()
	cmd := r.host.Command(ctx, filepath.Join(r.binDir, "flannel"))
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + containerID,
		"CNI_NETNS=" + netns,
		"CNI_IFNAME=eth0",
		"CNI_PATH=" + r.cniPath,
	}
	cmd.Stdin = bytes.NewReader(conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := callResult{stdout: stdout.Bytes(), err: err}
	if err != nil {
		var te types.Error
		if json.Unmarshal(stdout.Bytes(), &te) == nil && te.Code != 0 {
			res.cniErr = &te
		}
		t.Logf("%s %s: %v\nstdout: %s\nstderr: %s", command, containerID, err, stdout.Bytes(), stderr.Bytes())
	}
	return res
}

func netnsPath(n *ns.NS) string { return "/run/netns/" + n.Name }

// TestRealBridge runs the built plugin the way a runtime does, delegating
// to Debian's bridge and host-local plugins, with a "host" namespace
// holding cni0 and two "pod" namespaces.
func TestRealBridge(t *testing.T) {
	skipUnlessPlugins(t)
	binDir := buildPlugin(t)
	host := netnstest.New(t, "cnih")
	pod1 := netnstest.New(t, "cnip")
	pod2 := netnstest.New(t, "cnip")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dir := t.TempDir()
	subnetFile := filepath.Join(dir, "run", "subnet.env")
	dataDir := filepath.Join(dir, "flannel")
	ipamDir := filepath.Join(dir, "host-local") // not /var/lib/cni/networks: the test leaves the host alone
	r := &runtimeEnv{host: host, binDir: binDir, cniPath: debianCNI + string(os.PathListSeparator) + binDir}
	conf := func(version string, extra string) []byte {
		return fmt.Appendf(nil, `{"cniVersion": %q, "name": "flannel-test", "type": "flannel",
			"subnetFile": %q, "dataDir": %q, "ipam": {"dataDir": %q}%s}`, version, subnetFile, dataDir, ipamDir, extra)
	}
	// Debian's plugins (1.1.1) speak CNI up to 1.0.0, and the delegate gets
	// the network's version; STATUS (1.1.0) is answered by flannel alone.
	conf10, conf11 := conf("1.0.0", ""), conf("1.1.0", "")

	t.Run("STATUS and ADD before subnet.env", func(t *testing.T) {
		res := r.call(ctx, t, "STATUS", "", "", conf11)
		if res.cniErr == nil || res.cniErr.Code != types.ErrPluginNotAvailable || !strings.Contains(res.cniErr.Msg, subnetFile) {
			t.Errorf("STATUS = %+v, want not available (50) naming %s", res.cniErr, subnetFile)
		}
		res = r.call(ctx, t, "ADD", "early", netnsPath(pod1), conf10)
		if res.cniErr == nil || res.cniErr.Code != types.ErrTryAgainLater || !strings.Contains(res.cniErr.Msg, subnetFile) ||
			!strings.Contains(res.cniErr.Details, "flanneld is running") {
			t.Errorf("ADD = %+v, want try again later (11) naming %s and flanneld", res.cniErr, subnetFile)
		}
		if res := r.call(ctx, t, "DEL", "early", netnsPath(pod1), conf10); res.err != nil {
			t.Errorf("DEL after the failed ADD: %v", res.err)
		}
	})

	if err := os.MkdirAll(filepath.Dir(subnetFile), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Run("malformed subnet.env", func(t *testing.T) {
		writeFile(t, subnetFile, "FLANNEL_NETWORK=10.66.0.0/16\nFLANNEL_SUBNET=10.66.7.1\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n")
		res := r.call(ctx, t, "ADD", "bad", netnsPath(pod1), conf10)
		if res.cniErr == nil || !strings.Contains(res.cniErr.Msg, subnetFile+" is malformed") || !strings.Contains(res.cniErr.Msg, "FLANNEL_SUBNET") {
			t.Errorf("ADD = %+v, want an error naming %s and FLANNEL_SUBNET", res.cniErr, subnetFile)
		}
		if res := r.call(ctx, t, "STATUS", "", "", conf11); res.cniErr == nil || res.cniErr.Code != types.ErrPluginNotAvailable {
			t.Errorf("STATUS with a malformed subnet.env = %+v, want not available (50)", res.cniErr)
		}
	})

	writeFile(t, subnetFile, "FLANNEL_NETWORK=10.66.0.0/16\nFLANNEL_SUBNET=10.66.7.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n")
	if res := r.call(ctx, t, "STATUS", "", "", conf11); res.err != nil {
		t.Fatalf("STATUS with subnet.env: %v", res.err)
	}

	// Pod 1: the plugin run by hand, as a runtime runs it.
	res := r.call(ctx, t, "ADD", "pod1", netnsPath(pod1), conf10)
	if res.err != nil {
		t.Fatalf("ADD pod1: %v", res.err)
	}
	result, err := current.NewResult(res.stdout)
	if err != nil {
		t.Fatalf("ADD pod1 printed %s: %v", res.stdout, err)
	}
	ip1 := checkPod(t, pod1, result.(*current.Result))
	if st, err := os.Stat(filepath.Join(dataDir, "pod1")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("saved configuration: %v, %v; want a 0600 file", st, err)
	}
	checkBridge(t, host)

	// Pod 2: through libcni with the conflist of dist/kube-flannel.yml
	// (flannel, then portmap), as containerd and CRI-O drive it; only its
	// paths are the test's.
	list, err := libcni.ConfListFromBytes(conflistOfManifest(t, subnetFile, dataDir, ipamDir))
	if err != nil {
		t.Fatal(err)
	}
	cniConf := libcni.NewCNIConfigWithCacheDir([]string{debianCNI, binDir}, filepath.Join(dir, "cache"), nil)
	rt := &libcni.RuntimeConf{ContainerID: "pod2", NetNS: netnsPath(pod2), IfName: "eth0"}
	var res2 types.Result
	if err := host.Do(func() (err error) {
		res2, err = cniConf.AddNetworkList(ctx, list, rt)
		return err
	}); err != nil {
		t.Fatalf("libcni ADD pod2: %v", err)
	}
	r2, err := current.NewResultFromResult(res2)
	if err != nil {
		t.Fatal(err)
	}
	ip2 := checkPod(t, pod2, r2)

	t.Run("pods ping each other", func(t *testing.T) {
		if out, err := pod1.Run(ctx, "ping", "-c", "1", "-W", "5", ip2.String()); err != nil {
			t.Errorf("pod1 → pod2: %v\n%s", err, out)
		}
		if out, err := pod2.Run(ctx, "ping", "-c", "1", "-W", "5", "-s", "1372", "-M", "do", ip1.String()); err != nil {
			t.Errorf("pod2 → pod1, full MTU, don't fragment: %v\n%s", err, out)
		}
	})

	t.Run("CHECK", func(t *testing.T) {
		withPrev := conf("1.0.0", `, "prevResult": `+string(res.stdout))
		if res := r.call(ctx, t, "CHECK", "pod1", netnsPath(pod1), withPrev); res.err != nil {
			t.Errorf("CHECK pod1: %v", res.err)
		}
		if err := host.Do(func() error { return cniConf.CheckNetworkList(ctx, list, rt) }); err != nil {
			t.Errorf("libcni CHECK pod2: %v", err)
		}
		// The veth deleted behind the runtime's back: CHECK must say so.
		if err := pod2.Do(func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			return netlink.LinkDel(l)
		}); err != nil {
			t.Fatal(err)
		}
		if err := host.Do(func() error { return cniConf.CheckNetworkList(ctx, list, rt) }); err == nil {
			t.Errorf("libcni CHECK pod2 passed with its veth deleted")
		}
	})

	t.Run("DEL", func(t *testing.T) {
		if res := r.call(ctx, t, "DEL", "pod1", netnsPath(pod1), conf10); res.err != nil {
			t.Fatalf("DEL pod1: %v", res.err)
		}
		if err := pod1.Do(func() error { _, err := netlink.LinkByName("eth0"); return err }); err == nil {
			t.Errorf("pod1's eth0 still there after DEL")
		}
		if _, err := os.Stat(filepath.Join(dataDir, "pod1")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("saved configuration still there after DEL: %v", err)
		}
		if _, err := os.Stat(filepath.Join(ipamDir, "flannel-test", ip1.String())); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("host-local still holds %s after DEL: %v", ip1, err)
		}
		if res := r.call(ctx, t, "DEL", "pod1", netnsPath(pod1), conf10); res.err != nil {
			t.Errorf("second DEL pod1: %v", res.err)
		}
		if err := host.Do(func() error { return cniConf.DelNetworkList(ctx, list, rt) }); err != nil {
			t.Errorf("libcni DEL pod2: %v", err)
		}
		if err := host.Do(func() error { return cniConf.DelNetworkList(ctx, list, rt) }); err != nil {
			t.Errorf("second libcni DEL pod2: %v", err)
		}
		if entries, _ := os.ReadDir(dataDir); len(entries) != 0 {
			t.Errorf("dataDir holds %v after every DEL", entries)
		}
		h, err := host.Handle()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		links, _ := h.LinkList()
		for _, l := range links {
			if l.Type() == "veth" {
				t.Errorf("veth %s left in the host namespace", l.Attrs().Name)
			}
		}
	})
}

// checkPod checks the pod's eth0 against subnet.env and the result:
// an address in FLANNEL_SUBNET, the MTU, and the route to FLANNEL_NETWORK
// through the bridge's address.
func checkPod(t *testing.T, pod *ns.NS, res *current.Result) netip.Addr {
	t.Helper()
	subnet := netip.MustParsePrefix("10.66.7.0/24")
	gw := net.ParseIP("10.66.7.1").To4()
	if len(res.IPs) != 1 {
		t.Fatalf("result has IPs %v, want one", res.IPs)
	}
	ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	if !subnet.Contains(ip) || ip == netip.MustParseAddr("10.66.7.1") {
		t.Errorf("pod address %s not a host address of %s", ip, subnet)
	}
	if !res.IPs[0].Gateway.Equal(gw) {
		t.Errorf("result gateway %s, want %s", res.IPs[0].Gateway, gw)
	}
	h, err := pod.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatalf("pod has no eth0: %v", err)
	}
	if link.Attrs().MTU != 1400 {
		t.Errorf("eth0 MTU %d, want FLANNEL_MTU 1400", link.Attrs().MTU)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != ip.String()+"/24" {
		t.Errorf("eth0 addresses %v, want %s/24", addrs, ip)
	}
	routes, err := h.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range routes {
		got = append(got, fmt.Sprintf("%v via %v", r.Dst, r.Gw))
	}
	for _, want := range []string{"10.66.0.0/16 via 10.66.7.1", "10.66.7.0/24 via <nil>"} {
		if !slices.Contains(got, want) {
			t.Errorf("pod routes %q lack %q", got, want)
		}
	}
	return ip
}

// checkBridge checks the host side: cni0 holds the gateway address
// FLANNEL_SUBNET names, with the MTU.
func checkBridge(t *testing.T, host *ns.NS) {
	t.Helper()
	h, err := host.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	br, err := h.LinkByName("cni0")
	if err != nil {
		t.Fatalf("no cni0 in the host namespace: %v", err)
	}
	if br.Type() != "bridge" || br.Attrs().MTU != 1400 {
		t.Errorf("cni0 is a %s with MTU %d, want a bridge with 1400", br.Type(), br.Attrs().MTU)
	}
	addrs, _ := h.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.66.7.1/24" {
		t.Errorf("cni0 addresses %v, want 10.66.7.1/24", addrs)
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRealBridgeDualStack: with FLANNEL_IPV6_* the pods get an address of
// each family from host-local and routes to both flannel networks, and
// reach each other over both.
func TestRealBridgeDualStack(t *testing.T) {
	skipUnlessPlugins(t)
	binDir := buildPlugin(t)
	host := netnstest.New(t, "cnih")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	subnetFile := filepath.Join(dir, "subnet.env")
	writeFile(t, subnetFile, "FLANNEL_NETWORK=10.67.0.0/16\nFLANNEL_SUBNET=10.67.3.1/24\n"+
		"FLANNEL_IPV6_NETWORK=fd67::/48\nFLANNEL_IPV6_SUBNET=fd67:0:0:3::1/64\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n")
	conf := fmt.Appendf(nil, `{"cniVersion": "1.0.0", "name": "flannel-dual", "type": "flannel",
		"subnetFile": %q, "dataDir": %q, "ipam": {"dataDir": %q}}`, subnetFile, filepath.Join(dir, "flannel"), filepath.Join(dir, "host-local"))
	r := &runtimeEnv{host: host, binDir: binDir, cniPath: debianCNI + string(os.PathListSeparator) + binDir}

	var pods []*ns.NS
	var addrs [][]netip.Addr
	for i := range 2 {
		pod := netnstest.New(t, "cnip")
		id := fmt.Sprintf("dual%d", i)
		res := r.call(ctx, t, "ADD", id, netnsPath(pod), conf)
		if res.err != nil {
			t.Fatalf("ADD %s: %v", id, res.err)
		}
		result, err := current.NewResult(res.stdout)
		if err != nil {
			t.Fatal(err)
		}
		var got []netip.Addr
		for _, ip := range result.(*current.Result).IPs {
			a, _ := netip.AddrFromSlice(ip.Address.IP)
			got = append(got, a.Unmap())
		}
		if len(got) != 2 || !netip.MustParsePrefix("10.67.3.0/24").Contains(got[0]) || !netip.MustParsePrefix("fd67:0:0:3::/64").Contains(got[1]) {
			t.Fatalf("ADD %s: addresses %v, want one in 10.67.3.0/24 and one in fd67:0:0:3::/64", id, got)
		}
		h, err := pod.Handle()
		if err != nil {
			t.Fatal(err)
		}
		routes, err := h.RouteList(nil, netlink.FAMILY_ALL)
		h.Close()
		if err != nil {
			t.Fatal(err)
		}
		var rs []string
		for _, rt := range routes {
			rs = append(rs, fmt.Sprintf("%v via %v", rt.Dst, rt.Gw))
		}
		for _, want := range []string{"10.67.0.0/16 via 10.67.3.1", "fd67::/48 via fd67:0:0:3::1"} {
			if !slices.Contains(rs, want) {
				t.Errorf("%s routes %q lack %q", id, rs, want)
			}
		}
		pods, addrs = append(pods, pod), append(addrs, got)
	}
	for _, dst := range addrs[1] {
		if out, err := pods[0].Run(ctx, "ping", "-c", "1", "-W", "5", dst.String()); err != nil {
			t.Errorf("pod 0 → %s: %v\n%s", dst, err, out)
		}
	}
	for i := range pods {
		if res := r.call(ctx, t, "DEL", fmt.Sprintf("dual%d", i), netnsPath(pods[i]), conf); res.err != nil {
			t.Errorf("DEL dual%d: %v", i, res.err)
		}
	}
}

// conflistOfManifest is the cni-conf.json of dist/kube-flannel.yml's
// ConfigMap, with the flannel entry's files moved to the test's
// directories (subnetFile, dataDir and host-local's dataDir).
func conflistOfManifest(t *testing.T, subnetFile, dataDir, ipamDir string) []byte {
	t.Helper()
	raw, err := os.ReadFile("../../dist/kube-flannel.yml")
	if err != nil {
		t.Fatal(err)
	}
	var conflist string
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var obj struct {
			Kind string            `json:"kind"`
			Data map[string]string `json:"data"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("dist/kube-flannel.yml: %v", err)
		}
		if obj.Kind == "ConfigMap" {
			conflist = obj.Data["cni-conf.json"]
		}
	}
	var list map[string]any
	if err := json.Unmarshal([]byte(conflist), &list); err != nil {
		t.Fatalf("the manifest's cni-conf.json: %v\n%s", err, conflist)
	}
	plugins, _ := list["plugins"].([]any)
	if len(plugins) != 2 {
		t.Fatalf("the manifest's conflist has %d plugins, want flannel and portmap", len(plugins))
	}
	flannel := plugins[0].(map[string]any)
	if flannel["type"] != "flannel" {
		t.Fatalf("the manifest's first plugin is %v, want flannel", flannel["type"])
	}
	flannel["subnetFile"], flannel["dataDir"] = subnetFile, dataDir
	flannel["ipam"] = map[string]any{"dataDir": ipamDir}
	out, err := json.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
