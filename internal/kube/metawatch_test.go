package kube_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	"github.com/flannel-go/flannel/internal/kube"
	"github.com/flannel-go/flannel/internal/kubetest"
	"github.com/flannel-go/flannel/internal/lab/kubeapi"
	"github.com/flannel-go/flannel/internal/lease"
)

// The metadata watch rests on this: the API server never changes a Node's
// podCIDRs once set, only from none to some. It refuses most attempts; a
// strategic merge of spec.podCIDRs alone is accepted and changes nothing.
func TestPodCIDRImmutable(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	c := r.admin.CoreV1().Nodes()
	for _, tc := range []struct {
		name, from, patch string
		ok                bool
	}{
		{"set late", ``, `{"spec":{"podCIDR":"10.244.50.0/24","podCIDRs":["10.244.50.0/24"]}}`, true},
		{"set late dual", ``, `{"spec":{"podCIDRs":["10.244.51.0/24","fd00:10:244:51::/64"]}}`, true},
		{"change", `10.244.52.0/24`, `{"spec":{"podCIDR":"10.244.53.0/24","podCIDRs":["10.244.53.0/24"]}}`, false},
		{"change podCIDRs only", `10.244.54.0/24`, `{"spec":{"podCIDRs":["10.244.55.0/24"]}}`, false},
		{"add a family", `10.244.56.0/24`, `{"spec":{"podCIDRs":["10.244.56.0/24","fd00:10:244:56::/64"]}}`, false},
		{"remove", `10.244.57.0/24`, `{"spec":{"podCIDR":null,"podCIDRs":null}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("imm-%x", len(tc.name)*1000+len(tc.patch))}}
			if tc.from != "" {
				n.Spec.PodCIDR, n.Spec.PodCIDRs = tc.from, []string{tc.from}
			}
			if _, err := c.Create(ctx, n, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			got, err := c.Patch(ctx, n.Name, types.StrategicMergePatchType, []byte(tc.patch), metav1.PatchOptions{})
			switch {
			case tc.ok && err != nil:
				t.Fatalf("patch %s: %v", tc.patch, err)
			case !tc.ok && err == nil:
				if got.Spec.PodCIDR != tc.from || len(got.Spec.PodCIDRs) != 1 || got.Spec.PodCIDRs[0] != tc.from {
					t.Fatalf("patch %s changed podCIDRs from %s to %q %q", tc.patch, tc.from, got.Spec.PodCIDR, got.Spec.PodCIDRs)
				}
				t.Logf("accepted, podCIDRs unchanged: %q", got.Spec.PodCIDRs)
			case !tc.ok && !apierrors.IsInvalid(err):
				t.Fatalf("patch %s: %v, want Invalid", tc.patch, err)
			case !tc.ok:
				t.Logf("refused as expected: %v", err)
			}
		})
	}
}

// counts are what a countedSource read: response bytes, and list
// requests of Nodes (not watches).
type counts struct{ bytes, lists atomic.Int64 }

type listCountingRT struct {
	rt http.RoundTripper
	c  *counts
}

func (l listCountingRT) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/nodes") && r.URL.Query().Get("watch") != "true" {
		l.c.lists.Add(1)
	}
	return l.rt.RoundTrip(r)
}

// countedSource is a Source as flanneld builds it (protobuf; node
// updates as metadata), with flanneld's RBAC, counting what it reads;
// upstream makes it JSON and whole Nodes, as upstream's flanneld reads
// them.
func countedSource(t *testing.T, r *rig, conf string, upstream bool) (*kube.Source, *counts) {
	t.Helper()
	cfg, err := kube.RESTConfig("", r.flannel)
	if err != nil {
		t.Fatal(err)
	}
	if upstream {
		cfg.ContentType, cfg.AcceptContentTypes = "application/json", "application/json"
	}
	n := new(counts)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return listCountingRT{kubeapi.CountBytes(&n.bytes)(rt), n}
	})
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m, err := metadata.NewForConfig(rest.CopyConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	s, err := kube.New(context.Background(), kube.Options{Client: c, Metadata: m, NodeName: "self", NetConfPath: conf,
		UpstreamWatch: upstream})
	if err != nil {
		t.Fatal(err)
	}
	return s, n
}

// peerNode is a kubelet-like Node (labels, status with images and
// conditions) that a flanneld has annotated.
func peerNode(name, ip string, cidrs ...string) *v1.Node {
	n := kubeletNode(name)
	n.Spec.PodCIDR, n.Spec.PodCIDRs = "", cidrs
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	n.Annotations = map[string]string{
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
		"flannel.alpha.coreos.com/backend-type":        "vxlan",
		"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"0a:58:0a:f4:00:01"}`,
		"flannel.alpha.coreos.com/public-ip":           ip,
		"flannel.alpha.coreos.com/public-ipv6":         "2001:db8::1",
		"flannel.alpha.coreos.com/backend-v6-data":     `{"VNI":1,"VtepMAC":"0a:58:0a:f4:00:02"}`,
	}
	return n
}

func createPeer(t *testing.T, c kubernetes.Interface, n *v1.Node) *v1.Node {
	t.Helper()
	ctx := ctxT(t)
	n, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{FieldManager: "kubelet"})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func setPublicIP(t *testing.T, c kubernetes.Interface, name, ip string) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":%q}}}`, ip)
	if _, err := c.CoreV1().Nodes().Patch(ctxT(t), name, types.StrategicMergePatchType, []byte(patch),
		metav1.PatchOptions{FieldManager: "flanneld"}, "status"); err != nil {
		t.Fatal(err)
	}
}

// wantOne takes the next update and checks it is the one event want.
func wantOne(t *testing.T, ch <-chan lease.Update, what string, want func(lease.Event) bool) lease.Event {
	t.Helper()
	u := next(t, ch)
	if u.Reset || len(u.Events) != 1 || !want(u.Events[0]) {
		t.Fatalf("%s: update %+v", what, u)
	}
	return u.Events[0]
}

// TestWatchMetadata runs our Watch (whole Nodes for the initial state,
// metadata for updates) beside upstream's way (JSON, whole Nodes) against
// the real API server: the same events for status updates (none),
// annotation changes, new nodes, a podCIDR assigned late, a node deleted
// and re-created with another podCIDR; and what a status update costs on
// the wire, ours at most a third of upstream's.
func TestWatchMetadata(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	m1 := createPeer(t, r.admin, peerNode("m1", "192.0.2.31", "10.244.31.0/24"))

	ours, oursBytes := countedSource(t, r, r.confPath, false)
	up, upBytes := countedSource(t, r, r.confPath, true)
	chs := []<-chan lease.Update{feed(t, ours), feed(t, up)}
	for _, ch := range chs {
		if u := next(t, ch); !u.Reset || !hasSubnet(u.Leases, "10.244.31.0/24") {
			t.Fatalf("first update = %+v", u)
		}
	}

	// Status updates are no events; they cost ours a third of upstream's.
	o0, u0 := oursBytes.bytes.Load(), upBytes.bytes.Load()
	const beats = 20
	for i := range beats {
		m1.Status = kubeletStatus(m1.CreationTimestamp.Add(time.Duration(i) * 10 * time.Second))
		var err error
		if m1, err = r.admin.CoreV1().Nodes().UpdateStatus(ctx, m1, metav1.UpdateOptions{FieldManager: "kubelet"}); err != nil {
			t.Fatal(err)
		}
	}
	setPublicIP(t, r.admin, "m1", "192.0.2.131")
	for _, ch := range chs {
		wantOne(t, ch, "public-ip changed after status updates", func(e lease.Event) bool {
			return e.Type == lease.Added && e.Lease.Attrs.PublicIP.String() == "192.0.2.131" && e.Lease.Subnet.String() == "10.244.31.0/24"
		})
	}
	ob, ub := (oursBytes.bytes.Load()-o0)/(beats+1), (upBytes.bytes.Load()-u0)/(beats+1)
	t.Logf("watch bytes per node update: ours %d, upstream's way %d (%.0f%%)", ob, ub, 100*float64(ob)/float64(ub))
	if 3*ob > ub {
		t.Errorf("ours %d bytes per update, more than a third of upstream's %d", ob, ub)
	}

	// A node created after the sync, seen first in the metadata watch.
	createPeer(t, r.admin, peerNode("m2", "192.0.2.32", "10.244.32.0/24"))
	for _, ch := range chs {
		wantOne(t, ch, "new node", func(e lease.Event) bool {
			return e.Type == lease.Added && e.Lease.Subnet.String() == "10.244.32.0/24" && e.Lease.Attrs.PublicIP.String() == "192.0.2.32"
		})
	}

	// Annotated before its podCIDR (by hand: flanneld itself waits for
	// it): no lease until the podCIDR is assigned.
	createPeer(t, r.admin, peerNode("m3", "192.0.2.33"))
	r.assignPodCIDR(t, "m3", "10.244.33.0/24")
	for _, ch := range chs {
		wantOne(t, ch, "podCIDR assigned late", func(e lease.Event) bool {
			return e.Type == lease.Added && e.Lease.Subnet.String() == "10.244.33.0/24"
		})
	}

	// Deleted, then re-created under the same name with another podCIDR:
	// the new UID is read whole, not taken for the old node.
	if err := r.admin.CoreV1().Nodes().Delete(ctx, "m1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, ch := range chs {
		wantOne(t, ch, "deleted", func(e lease.Event) bool {
			return e.Type == lease.Removed && e.Lease.Subnet.String() == "10.244.31.0/24"
		})
	}
	createPeer(t, r.admin, peerNode("m1", "192.0.2.39", "10.244.39.0/24"))
	for _, ch := range chs {
		wantOne(t, ch, "re-created", func(e lease.Event) bool {
			return e.Type == lease.Added && e.Lease.Subnet.String() == "10.244.39.0/24" && e.Lease.Attrs.PublicIP.String() == "192.0.2.39"
		})
	}
	setPublicIP(t, r.admin, "m1", "192.0.2.139")
	for _, ch := range chs {
		wantOne(t, ch, "re-created node's annotation changed", func(e lease.Event) bool {
			return e.Type == lease.Added && e.Lease.Subnet.String() == "10.244.39.0/24" && e.Lease.Attrs.PublicIP.String() == "192.0.2.139"
		})
	}

	// The initial state streamed (WatchList), unless the client was told
	// not to, as on API servers without it: then listed.
	lists := oursBytes.lists.Load()
	if noWatchList := os.Getenv("KUBE_FEATURE_WatchListClient") == "false"; noWatchList != (lists > 0) {
		t.Errorf("%d list requests with KUBE_FEATURE_WatchListClient=%q", lists, os.Getenv("KUBE_FEATURE_WatchListClient"))
	}
}

// TestWatchMetadataListFallback runs TestWatchMetadata with client-go's
// WatchList off (its feature gates are read once per process, so in a
// child process): the initial state is listed, updates come as metadata.
func TestWatchMetadataListFallback(t *testing.T) {
	if os.Getenv("KUBE_FEATURE_WatchListClient") != "" {
		t.Skip("in the child")
	}
	kubetest.Require(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestWatchMetadata$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "KUBE_FEATURE_WatchListClient=false")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestWatchMetadata ") {
		t.Fatalf("TestWatchMetadata without WatchList: %v\n%s", err, out)
	}
	for line := range strings.Lines(string(out)) {
		if strings.Contains(line, "watch bytes per node update") {
			t.Log(strings.TrimSpace(line))
		}
	}
}

// TestWatchMetadataDualStack: both podCIDRs of a node seen whole carry
// over to its metadata updates, whether it was in the initial state or
// created later.
func TestWatchMetadataDualStack(t *testing.T) {
	r := newRig(t)
	const dualConf = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`
	conf := filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(conf, []byte(dualConf), 0o644); err != nil {
		t.Fatal(err)
	}
	createPeer(t, r.admin, peerNode("d1", "192.0.2.41", "10.244.41.0/24", "fd00:10:244:41::/64"))
	s, _ := countedSource(t, r, conf, false)
	ch := feed(t, s)
	if u := next(t, ch); !u.Reset || len(u.Leases) != 1 || u.Leases[0].Subnet6.String() != "fd00:10:244:41::/64" {
		t.Fatalf("first update = %+v", u)
	}
	createPeer(t, r.admin, peerNode("d2", "192.0.2.42", "10.244.42.0/24", "fd00:10:244:42::/64"))
	wantOne(t, ch, "new dual-stack node", func(e lease.Event) bool {
		return e.Type == lease.Added && e.Lease.Subnet.String() == "10.244.42.0/24" && e.Lease.Subnet6.String() == "fd00:10:244:42::/64"
	})
	for _, name := range []string{"d1", "d2"} {
		setPublicIP(t, r.admin, name, "192.0.2.140")
		wantOne(t, ch, name+"'s annotation changed", func(e lease.Event) bool {
			return e.Type == lease.Added && e.Lease.Subnet.IsValid() && e.Lease.Subnet6.IsValid() && e.Lease.Attrs.PublicIP.String() == "192.0.2.140"
		})
	}
}
