package main

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/flannel-go/flannel/internal/doctor"
	"github.com/flannel-go/flannel/internal/kubetest"
	"github.com/flannel-go/flannel/internal/lab/kubeapi"
	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/ns"
	"github.com/flannel-go/flannel/internal/status"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

func nsRun(t *testing.T, n *ns.NS, args ...string) {
	t.Helper()
	if out, err := n.Run(context.Background(), args[0], args[1:]...); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestKubeStatusAndDoctor runs status and doctor for node n1 inside a
// namespace set up as flanneld leaves a vxlan host: eth0 holding the
// published public IP, flannel.1 with the published VTEP MAC.
func TestKubeStatusAndDoctor(t *testing.T) {
	netnstest.SkipUnlessModule(t, "vxlan")
	s := kubetest.Start(t, kubeapi.Options{})
	admin := kubetest.Client(t, s)
	createNode(t, admin, "n1", upstreamVXLAN("192.168.77.1", "aa:bb:cc:00:00:01"), "10.244.1.0/24")
	setNetworkUnavailable(t, admin, "n1", v1.ConditionFalse, "FlannelIsUp")
	createNode(t, admin, "fresh", nil) // no podCIDR, no flanneld yet

	dir := t.TempDir()
	subnetFile := filepath.Join(dir, "subnet.env")
	err := subnetenv.Write(subnetFile, subnetenv.Env{Network: netip.MustParsePrefix("10.244.0.0/16"),
		Subnet: netip.MustParsePrefix("10.244.1.1/24"), MTU: 1450, IPMasq: true})
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "net-conf.json")
	if err := os.WriteFile(conf, []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`), 0o644); err != nil {
		t.Fatal(err)
	}

	n := netnstest.New(t, "kctl")
	nsRun(t, n, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p") // no dummy module everywhere
	nsRun(t, n, "ip", "link", "set", "eth0p", "up")
	nsRun(t, n, "ip", "addr", "add", "192.168.77.1/24", "dev", "eth0")
	nsRun(t, n, "ip", "link", "set", "eth0", "up")
	nsRun(t, n, "ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dev", "eth0", "local", "192.168.77.1", "dstport", "8472", "nolearning")
	nsRun(t, n, "ip", "link", "set", "flannel.1", "address", "aa:bb:cc:00:00:01", "mtu", "1450", "up")
	nsRun(t, n, "ip", "addr", "add", "10.244.1.0/32", "dev", "flannel.1")
	nsRun(t, n, "sysctl", "-qw", "net.ipv4.ip_forward=1")

	c := cli{t: t, env: map[string]string{"KUBECONFIG": s.Kubeconfig, "NODE_NAME": "n1"}}
	files := []string{"--subnet-file=" + subnetFile, "--net-config-path=" + conf}
	// The commands read this host's devices in the namespace; their API
	// requests dial from other threads, in the test's namespace.
	inNS := func(args ...string) (stdout, stderr string, err error) {
		t.Helper()
		if e := n.Do(func() error {
			stdout, stderr, err = c.run("", append(args, files...)...)
			return nil
		}); e != nil {
			t.Fatal(e)
		}
		return stdout, stderr, err
	}

	out, errOut, err := inNS("status", "-o", "json")
	var st status.Status
	if jerr := json.Unmarshal([]byte(out), &st); jerr != nil {
		t.Fatalf("status -o json: %v %v\n%s\n%s", err, jerr, out, errOut)
	}
	if err != nil || len(st.Problems) > 0 {
		t.Errorf("status: %v, problems %q", err, st.Problems)
	}
	if st.Node == nil || st.Node.Name != "n1" || strings.Join(st.Node.PodCIDRs, ",") != "10.244.1.0/24" ||
		st.Node.NetworkUnavailable == nil || st.Node.NetworkUnavailable.Reason != "FlannelIsUp" ||
		st.Node.Annotations[upstreamPrefix+"backend-type"] != "vxlan" {
		t.Errorf("status node: %+v", st.Node)
	}
	if st.Lease == nil || st.Lease.Subnet != "10.244.1.0/24" || st.Lease.Node != "n1" || st.Lease.PublicIP != "192.168.77.1" ||
		st.Backend != "vxlan" || st.Device == nil || st.Device.Name != "flannel.1" || st.Device.State != "up" || st.Peers != 0 {
		t.Errorf("status: lease %+v backend %q device %+v peers %d", st.Lease, st.Backend, st.Device, st.Peers)
	}
	out, _, _ = inNS("status")
	if !strings.Contains(out, "n1, podCIDR 10.244.1.0/24, NetworkUnavailable=False (FlannelIsUp)") || !strings.Contains(out, "podCIDR of node n1") {
		t.Errorf("status table:\n%s", out)
	}

	// doctor: the kube checks pass; its exit status is today's (1 on any FAIL).
	findings := func(args ...string) ([]doctor.Finding, error) {
		t.Helper()
		out, errOut, err := inNS(append([]string{"doctor", "-o", "json", "--probe-timeout=300ms"}, args...)...)
		var fs []doctor.Finding
		if jerr := json.Unmarshal([]byte(out), &fs); jerr != nil {
			t.Fatalf("doctor -o json: %v %v\n%s\n%s", err, jerr, out, errOut)
		}
		for _, f := range fs {
			t.Log(f)
		}
		if (err != nil) != doctor.Failed(fs) {
			t.Errorf("doctor: err %v with Failed %v", err, doctor.Failed(fs))
		}
		return fs, err
	}
	level := func(fs []doctor.Finding, check string) (doctor.Level, string) {
		for _, f := range fs {
			if f.Check == check {
				return f.Level, f.Message + " " + f.Fix
			}
		}
		return -1, ""
	}
	fs, _ := findings()
	for _, check := range []string{"podCIDR", "annotations", "lease", "condition", "public-ip", "device", "vtep"} {
		if l, msg := level(fs, check); l != doctor.OK {
			t.Errorf("%s: %v %s", check, l, msg)
		}
	}

	// Another MAC on the device than the node publishes: a failure that
	// names both and the annotation.
	nsRun(t, n, "ip", "link", "set", "flannel.1", "address", "aa:bb:cc:00:00:09")
	fs, err = findings()
	if l, msg := level(fs, "vtep"); l != doctor.Fail || !strings.Contains(msg, "aa:bb:cc:00:00:09") || !strings.Contains(msg, "VtepMAC aa:bb:cc:00:00:01") ||
		!strings.Contains(msg, upstreamPrefix+"backend-data") || !strings.Contains(msg, "restart flanneld") {
		t.Errorf("vtep with another MAC: %v %s", l, msg)
	}
	if err == nil || !strings.Contains(err.Error(), "failed") {
		t.Errorf("doctor with a failed check: err %v", err)
	}

	// A node without podCIDR nor flanneld's annotations, named by flag.
	fs, _ = findings("--node-name=fresh")
	if l, msg := level(fs, "podCIDR"); l != doctor.Fail || !strings.Contains(msg, `node "fresh" has no podCIDR`) {
		t.Errorf("podCIDR of fresh: %v %s", l, msg)
	}
	if l, msg := level(fs, "annotations"); l != doctor.Fail || !strings.Contains(msg, upstreamPrefix+"kube-subnet-manager=true") {
		t.Errorf("annotations of fresh: %v %s", l, msg)
	}
	if l, _ := level(fs, "condition"); l != doctor.Warn {
		t.Errorf("condition of fresh: %v", l)
	}

	// The cloud node controller's NetworkUnavailable=True.
	setNetworkUnavailable(t, admin, "n1", v1.ConditionTrue, "NoRouteCreated")
	fs, _ = findings()
	if l, msg := level(fs, "condition"); l != doctor.Fail || !strings.Contains(msg, "NetworkUnavailable=True (NoRouteCreated") {
		t.Errorf("condition True: %v %s", l, msg)
	}
	out, _, err = inNS("status")
	if err == nil || !strings.Contains(err.Error(), "NetworkUnavailable=True") {
		t.Errorf("status with NetworkUnavailable=True: %v\n%s", err, out)
	}

	// An unknown node is one clear failure.
	fs, _ = findings("--node-name=nosuch")
	if l, msg := level(fs, "node"); l != doctor.Fail || !strings.Contains(msg, `node "nosuch": no such node`) {
		t.Errorf("unknown node: %v %s", l, msg)
	}
}
