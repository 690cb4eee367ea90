package lab

import (
	"encoding/json"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"

	"github.com/flannel-go/flannel/internal/kube"
)

// The fake peers' Nodes are what flanneld takes for peers, and about the
// size of a real kubelet's Node.
func TestKubeScaleNode(t *testing.T) {
	l := FakeLeases("vxlan", kubeScaleOwn, 1)[0]
	n := kubeletNode(peerName(0))
	n.Spec.PodCIDR, n.Spec.PodCIDRs = l.Subnet.String(), []string{l.Subnet.String()}
	n.Status = kubeletStatus(n.Name, time.Now())
	orig, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := strategicpatch.StrategicMergePatch(orig, flannelPatch(l, time.Now()), v1.Node{})
	if err != nil {
		t.Fatal(err)
	}
	var got v1.Node
	if err := json.Unmarshal(patched, &got); err != nil {
		t.Fatal(err)
	}
	const p = kube.DefaultAnnotationPrefix + "/"
	want := map[string]string{p + "kube-subnet-manager": "true", p + "backend-type": "vxlan",
		p + "backend-data": string(l.Attrs.BackendData), p + "public-ip": l.Attrs.PublicIP.String()}
	for k, v := range want {
		if got.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, got.Annotations[k], v)
		}
	}
	if got.Spec.PodCIDR != l.Subnet.String() {
		t.Errorf("podCIDR %q, want %s", got.Spec.PodCIDR, l.Subnet)
	}
	if len(got.Status.Conditions) != 5 || got.Annotations["node.alpha.kubernetes.io/ttl"] != "0" {
		t.Errorf("patch lost the kubelet's part: %+v", got.ObjectMeta)
	}
	if size := got.Size(); size < 8000 || size > 14000 {
		t.Errorf("a fake Node is %d B in protobuf; a kubelet's is 8-14 KB", size)
	}
}
