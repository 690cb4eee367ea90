package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/flannel-go/flannel/internal/kubetest"
	"github.com/flannel-go/flannel/internal/lab/kubeapi"
	"github.com/flannel-go/flannel/internal/status"
)

// Upstream flanneld's annotations, byte for byte as it writes them.
const upstreamPrefix = "flannel.alpha.coreos.com/"

func upstreamVXLAN(ip, mac string) map[string]string {
	return map[string]string{
		upstreamPrefix + "kube-subnet-manager": "true",
		upstreamPrefix + "backend-type":        "vxlan",
		upstreamPrefix + "backend-data":        `{"VNI":1,"VtepMAC":"` + mac + `"}`,
		upstreamPrefix + "public-ip":           ip,
	}
}

func kctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// createNode creates a node with annotations and pod CIDRs, as the
// kubelet, the controller-manager and flanneld would have left it.
func createNode(t *testing.T, c kubernetes.Interface, name string, ann map[string]string, podCIDRs ...string) {
	t.Helper()
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDRs[0], podCIDRs
	}
	if _, err := c.CoreV1().Nodes().Create(kctx(t), n, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
}

// setNetworkUnavailable sets the node's condition as upstream's
// CompleteLease does (or as the cloud node controller, with True).
func setNetworkUnavailable(t *testing.T, c kubernetes.Interface, name string, st v1.ConditionStatus, reason string) {
	t.Helper()
	ctx := kctx(t)
	n, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	n.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeNetworkUnavailable, Status: st, Reason: reason,
		Message: "set by the test", LastTransitionTime: now, LastHeartbeatTime: now}}
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestKubeLeases runs leases list and show against a real API server
// whose nodes carry upstream's annotations.
func TestKubeLeases(t *testing.T) {
	s := kubetest.Start(t, kubeapi.Options{})
	admin := kubetest.Client(t, s)
	createNode(t, admin, "n2", upstreamVXLAN("192.168.1.12", "aa:bb:cc:00:00:02"), "10.244.2.0/24")
	createNode(t, admin, "n1", upstreamVXLAN("192.168.1.11", "aa:bb:cc:00:00:01"), "10.244.1.0/24")
	dual := upstreamVXLAN("192.168.1.13", "aa:bb:cc:00:00:03")
	dual[upstreamPrefix+"backend-v6-data"] = `{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:33"}`
	dual[upstreamPrefix+"public-ipv6"] = "fd00::13"
	createNode(t, admin, "n3", dual, "10.244.3.0/24", "fd00:10:244:3::/64")
	hostgw := map[string]string{
		upstreamPrefix + "kube-subnet-manager": "true",
		upstreamPrefix + "backend-type":        "host-gw",
		upstreamPrefix + "backend-data":        "null",
		upstreamPrefix + "public-ip":           "192.168.1.14",
		upstreamPrefix + "public-ip-overwrite": "192.168.1.14",
	}
	createNode(t, admin, "n4", hostgw, "10.244.4.0/24")
	createNode(t, admin, "plain", nil, "10.244.5.0/24") // no flanneld: not a lease
	bad := upstreamVXLAN("not-an-ip", "aa:bb:cc:00:00:06")
	createNode(t, admin, "bad", bad, "10.244.6.0/24")
	custom := map[string]string{
		"example.com/x-kube-subnet-manager": "true",
		"example.com/x-backend-type":        "vxlan",
		"example.com/x-backend-data":        `{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:07"}`,
		"example.com/x-public-ip":           "192.168.1.17",
	}
	createNode(t, admin, "custom", custom, "10.244.7.0/24")
	setNetworkUnavailable(t, admin, "n1", v1.ConditionFalse, "FlannelIsUp")

	// $KUBECONFIG alone selects Kubernetes mode, as for kubectl.
	c := cli{t: t, env: map[string]string{"KUBECONFIG": s.Kubeconfig}}
	out, errOut, err := c.run("", "leases", "list")
	if err != nil {
		t.Fatalf("leases list: %v\n%s", err, errOut)
	}
	rows := strings.Split(strings.TrimSpace(out), "\n")
	want := [][]string{
		{"SUBNET", "PUBLIC", "IP", "BACKEND", "VTEP", "MAC", "NODE"},
		{"10.244.1.0/24", "192.168.1.11", "vxlan", "aa:bb:cc:00:00:01", "n1"},
		{"10.244.2.0/24", "192.168.1.12", "vxlan", "aa:bb:cc:00:00:02", "n2"},
		{"10.244.3.0/24,fd00:10:244:3::/64", "192.168.1.13,fd00::13", "vxlan", "aa:bb:cc:00:00:03", "n3"},
		{"10.244.4.0/24", "192.168.1.14", "host-gw", "-", "n4"},
		{"-", "-", "-", "-", "bad"},
	}
	if len(rows) != len(want) {
		t.Fatalf("leases list:\n%s", out)
	}
	for i, w := range want {
		if got := strings.Fields(rows[i]); !slices.Equal(got, w) {
			t.Errorf("row %d = %q, want %q", i, got, w)
		}
	}
	if !strings.Contains(errOut, `node "bad"`) || !strings.Contains(errOut, "public-ip") || !strings.Contains(errOut, "peers ignore it") {
		t.Errorf("stderr does not name the bad node and annotation: %q", errOut)
	}

	var list []status.LeaseInfo
	if err := json.Unmarshal([]byte(c.ok("leases", "list", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 5 {
		t.Fatalf("json: %d leases, want 5: %+v", len(list), list)
	}
	l := list[0]
	if l.Node != "n1" || l.Subnet != "10.244.1.0/24" || l.PublicIP != "192.168.1.11" || l.Backend != "vxlan" ||
		compact(l.BackendData) != `{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:01"}` || l.Reserved || l.Expires != nil || l.Key != "" || l.Error != "" {
		t.Errorf("json n1: %+v", l)
	}
	if l := list[2]; l.Subnet6 != "fd00:10:244:3::/64" || l.PublicIPv6 != "fd00::13" || compact(l.BackendV6Data) != `{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:33"}` {
		t.Errorf("json n3 (dual stack): %+v", l)
	}
	if l := list[3]; l.Backend != "host-gw" || len(l.BackendData) != 0 {
		t.Errorf("json n4 (host-gw): %+v", l)
	}
	if l := list[4]; l.Node != "bad" || !strings.Contains(l.Error, "public-ip") || l.Subnet != "" {
		t.Errorf("json bad: %+v", l)
	}
	// The JSON has the etcd mode's field names.
	raw := c.ok("leases", "list", "-o", "json")
	for _, k := range []string{`"subnet"`, `"publicIP"`, `"backend"`, `"backendData"`, `"reserved"`, `"node"`} {
		if !strings.Contains(raw, k) {
			t.Errorf("json lacks %s:\n%s", k, raw)
		}
	}

	// The flags work before the command too, and the binary's exit status
	// is 0.
	if code, got, errOut := runCLI(t, nil, "--kubeconfig="+s.Kubeconfig, "-o", "json", "leases", "list"); code != 0 || got != raw {
		t.Errorf("flags before the command: exit %d\n%s\n%s", code, got, errOut)
	}

	// show takes a node name, a CIDR or an etcd-style key.
	kc := "--kubeconfig=" + s.Kubeconfig
	c = cli{t: t, env: map[string]string{}}
	byName := c.ok("leases", "show", "n1", kc)
	for _, w := range []string{"node:", "n1", "10.244.1.0/24", "192.168.1.11", "aa:bb:cc:00:00:01", "NetworkUnavailable: False (FlannelIsUp)"} {
		if !strings.Contains(byName, w) {
			t.Errorf("show n1 lacks %q:\n%s", w, byName)
		}
	}
	if byCIDR := c.ok("leases", "show", "10.244.1.0/24", kc); byCIDR != byName {
		t.Errorf("show by CIDR:\n%s\nby name:\n%s", byCIDR, byName)
	}
	if byKey := c.ok("leases", "show", kc, "10.244.1.0-24"); byKey != byName {
		t.Errorf("show by key:\n%s", byKey)
	}
	if v6 := c.ok("leases", "show", "fd00:10:244:3::/64", kc); !strings.Contains(v6, "n3") || !strings.Contains(v6, "fd00::13") {
		t.Errorf("show by IPv6 CIDR:\n%s", v6)
	}
	if n4 := c.ok("leases", "show", "n4", kc); !strings.Contains(n4, "public-ip-overwrite=192.168.1.14") || !strings.Contains(n4, "NetworkUnavailable: none") {
		t.Errorf("show n4:\n%s", n4)
	}
	var one status.LeaseInfo
	if err := json.Unmarshal([]byte(c.ok("leases", "show", "n2", "-o", "json", kc)), &one); err != nil || one.Node != "n2" || one.Subnet != "10.244.2.0/24" {
		t.Errorf("show -o json: %+v %v", one, err)
	}
	for arg, want := range map[string]string{
		"plain":         `no flannel.alpha.coreos.com/kube-subnet-manager=true`,
		"nosuch":        `node "nosuch": no such node`,
		"10.244.9.0/24": "no flannel node has podCIDR 10.244.9.0/24",
		"bad":           `node "bad": annotation flannel.alpha.coreos.com/public-ip`,
	} {
		if err := c.fails("leases", "show", arg, kc); !strings.Contains(err, want) {
			t.Errorf("show %s: %s, want %q", arg, err, want)
		}
	}
	if err := c.fails("leases", "reserve", "10.244.9.0/24", "192.168.1.20", kc); !strings.Contains(err, "podCIDR") {
		t.Errorf("reserve in Kubernetes mode: %s", err)
	}
	if err := c.fails("config", "set", "{}", kc); !strings.Contains(err, "kube-flannel-cfg") {
		t.Errorf("config set in Kubernetes mode: %s", err)
	}
	if err := c.fails("config", "get", kc, "--net-config-path=/nonexistent"); !strings.Contains(err, "nor a ConfigMap kube-flannel-cfg") {
		t.Errorf("config get without a config: %s", err)
	}
	const cm = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`
	_, err = admin.CoreV1().Namespaces().Create(kctx(t), &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-flannel"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = admin.CoreV1().ConfigMaps("kube-flannel").Create(kctx(t), &v1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-flannel-cfg"},
		Data: map[string]string{"net-conf.json": cm}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if out, errOut, err := c.run("", "config", "get", kc, "--net-config-path=/nonexistent"); err != nil || out != cm+"\n" || !strings.Contains(errOut, "ConfigMap kube-flannel/kube-flannel-cfg") {
		t.Errorf("config get from the ConfigMap: %v\n%s\n%s", err, out, errOut)
	}

	// A custom prefix, with upstream's normalisation (a path part gets "-").
	out = c.ok("leases", "list", kc, "--kube-annotation-prefix=example.com/x")
	if rows := strings.Split(strings.TrimSpace(out), "\n"); len(rows) != 2 || !strings.Contains(rows[1], "custom") || !strings.Contains(rows[1], "aa:bb:cc:00:00:07") {
		t.Errorf("custom prefix:\n%s", out)
	}
	c.env["FLANNELD_KUBE_ANNOTATION_PREFIX"] = "example.com/x"
	if got := c.ok("leases", "list", kc); got != out {
		t.Errorf("FLANNELD_KUBE_ANNOTATION_PREFIX:\n%s", got)
	}
	delete(c.env, "FLANNELD_KUBE_ANNOTATION_PREFIX")

	// The network config restricts the families and networks, as for
	// flanneld: outside Network is no lease.
	conf := filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(conf, []byte(`{"Network":"10.244.0.0/22","Backend":{"Type":"vxlan"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, err = c.run("", "leases", "list", kc, "--net-config-path="+conf)
	if err != nil || !strings.Contains(errOut, "outside Network 10.244.0.0/22") || strings.Count(out, "\n") != 6 {
		t.Errorf("with a config: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
}

// TestKubeLeasesWithFlannelsRole: flannelctl on a node may only have
// flanneld's rights (upstream's ClusterRole: nodes get/list/watch), which
// do not include reading the ConfigMap.
func TestKubeLeasesWithFlannelsRole(t *testing.T) {
	s := kubetest.Start(t, kubeapi.Options{})
	admin := kubetest.Client(t, s)
	ctx := kctx(t)
	if err := kubeapi.GrantFlannelRole(ctx, admin, "flanneld"); err != nil {
		t.Fatal(err)
	}
	kc, err := s.WriteKubeconfig("flanneld.kubeconfig", "flanneld")
	if err != nil {
		t.Fatal(err)
	}
	createNode(t, admin, "n1", upstreamVXLAN("192.168.1.11", "aa:bb:cc:00:00:01"), "10.244.1.0/24")
	c := cli{t: t, env: map[string]string{"KUBECONFIG": kc}}
	// RBAC takes a moment to reach the authorizer's cache.
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, errOut, err := c.run("", "leases", "list")
		if err == nil {
			if !strings.Contains(out, "aa:bb:cc:00:00:01") || errOut != "" {
				t.Errorf("leases list as flanneld:\n%s\nstderr: %s", out, errOut)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leases list as flanneld: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Without rights the error is the API server's, named.
	nobody, err := s.WriteKubeconfig("nobody.kubeconfig", "nobody")
	if err != nil {
		t.Fatal(err)
	}
	c.env["KUBECONFIG"] = nobody
	if err := c.fails("leases", "list"); !strings.Contains(err, "list nodes") || !strings.Contains(err, "forbidden") {
		t.Errorf("leases list without rights: %s", err)
	}
}

func TestKubeMode(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		args []string
		kube bool
		err  string
	}{
		{nil, nil, false, ""},
		{map[string]string{"KUBECONFIG": "/k"}, nil, true, ""},
		{nil, []string{"--kubeconfig=/k"}, true, ""},
		{nil, []string{"--kube-subnet-mgr"}, true, ""},
		{map[string]string{"FLANNELD_KUBE_SUBNET_MGR": "true"}, nil, true, ""},
		{map[string]string{"KUBECONFIG": "/k"}, []string{"--etcd-endpoints=http://e:2379"}, false, ""},
		{map[string]string{"KUBECONFIG": "/k", "FLANNELD_ETCD_ENDPOINTS": "http://e:2379"}, nil, false, ""},
		{map[string]string{"KUBECONFIG": "/k"}, []string{"--kube-subnet-mgr=false"}, false, ""},
		{map[string]string{"FLANNELD_ETCD_ENDPOINTS": "http://e:2379"}, []string{"--kubeconfig=/k"}, true, ""},
		{nil, []string{"--kubeconfig=/k", "--etcd-prefix=/x"}, false, "reads no etcd"},
		{nil, []string{"--kubeconfig=/k", "--kube-subnet-mgr=false"}, false, "needs Kubernetes mode"},
		{nil, []string{"--kube-subnet-mgr", "--kube-annotation-prefix=a/b/c"}, false, "at most one"},
	} {
		getenv := func(k string) string { return tc.env[k] }
		f := newFlags("test", opsEnv{stderr: &bytes.Buffer{}})
		c, output := f.register()
		_, err := f.parse(tc.args, getenv)
		if err == nil {
			err = c.resolve(getenv, *output)
		}
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("env %v args %v: err %v, want %q", tc.env, tc.args, err, tc.err)
			}
			continue
		}
		if err != nil || c.kube.on != tc.kube {
			t.Errorf("env %v args %v: kube %v err %v, want kube %v", tc.env, tc.args, c.kube.on, err, tc.kube)
		}
	}
}

func compact(raw json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return "invalid: " + string(raw)
	}
	return b.String()
}
