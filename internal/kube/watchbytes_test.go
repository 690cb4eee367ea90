package kube_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/flannel-go/flannel/internal/kube"
	"github.com/flannel-go/flannel/internal/kubetest"
	"github.com/flannel-go/flannel/internal/lab/kubeapi"
)

func counted(t testing.TB, cfg *rest.Config) (kubernetes.Interface, *atomic.Int64) {
	n := new(atomic.Int64)
	cfg = rest.CopyConfig(cfg)
	cfg.Wrap(kubeapi.CountBytes(n))
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, n
}

// kubeletNode is a Node as a kubelet keeps it: labels, capacity, a few
// dozen cached images, the usual conditions.
func kubeletNode(name string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
		"node.kubernetes.io/instance-type": "m5.large", "topology.kubernetes.io/zone": "eu-west-1a",
	}}}
	n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.244.77.0/24", []string{"10.244.77.0/24"}
	return n
}

func kubeletStatus(beat time.Time) v1.NodeStatus {
	st := v1.NodeStatus{
		Capacity:    v1.ResourceList{v1.ResourceCPU: resource.MustParse("2"), v1.ResourceMemory: resource.MustParse("8Gi"), v1.ResourcePods: resource.MustParse("110")},
		Allocatable: v1.ResourceList{v1.ResourceCPU: resource.MustParse("1900m"), v1.ResourceMemory: resource.MustParse("7Gi"), v1.ResourcePods: resource.MustParse("110")},
		Addresses:   []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.0.2.77"}, {Type: v1.NodeHostName, Address: "node77"}},
		NodeInfo:    v1.NodeSystemInfo{KernelVersion: "6.12.0-1-amd64", OSImage: "Debian GNU/Linux 13 (trixie)", ContainerRuntimeVersion: "containerd://2.1.4", KubeletVersion: "v1.37.2", OperatingSystem: "linux", Architecture: "amd64"},
	}
	for _, c := range []v1.NodeConditionType{v1.NodeMemoryPressure, v1.NodeDiskPressure, v1.NodePIDPressure, v1.NodeReady} {
		st.Conditions = append(st.Conditions, v1.NodeCondition{Type: c, Status: v1.ConditionFalse, Reason: "KubeletHasSufficient" + string(c),
			Message: "kubelet has sufficient " + string(c), LastHeartbeatTime: metav1.NewTime(beat), LastTransitionTime: metav1.NewTime(beat.Add(-time.Hour))})
	}
	for i := range 40 {
		st.Images = append(st.Images, v1.ContainerImage{
			Names:     []string{fmt.Sprintf("registry.example.com/team/app-%02d@sha256:%064x", i, i), fmt.Sprintf("registry.example.com/team/app-%02d:v1.%d", i, i)},
			SizeBytes: int64(10_000_000 + i)})
	}
	return st
}

// TestWatchBytesPerUpdate measures what one Node status update costs on
// a watch of whole Nodes: protobuf beside upstream's way (JSON). A
// measurement, logged; it asserts only that protobuf is the smaller.
// Watch itself takes updates as metadata: TestWatchMetadata measures that.
func TestWatchBytesPerUpdate(t *testing.T) {
	s := kubetest.Start(t, kubeapi.Options{})
	admin := kubetest.Client(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n, err := admin.CoreV1().Nodes().Create(ctx, kubeletNode("node77"), metav1.CreateOptions{FieldManager: "kubelet"})
	if err != nil {
		t.Fatal(err)
	}

	base, err := kube.RESTConfig("", s.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	jsonCfg, err := s.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	// client-go v0.37 asks for protobuf by default; upstream's release
	// (client-go of its day) asks for JSON, as does any client told to.
	jsonCfg.ContentType, jsonCfg.AcceptContentTypes = "application/json", "application/json"
	pbClient, pbBytes := counted(t, base)
	jsonClient, jsonBytes := counted(t, jsonCfg)
	var ws []watch.Interface
	for _, c := range []kubernetes.Interface{pbClient, jsonClient} {
		w, err := c.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{ResourceVersion: n.ResourceVersion})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		ws = append(ws, w)
	}

	const updates = 20
	beat := time.Now()
	for i := range updates {
		n.Status = kubeletStatus(beat.Add(time.Duration(i) * 10 * time.Second))
		if n, err = admin.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{FieldManager: "kubelet"}); err != nil {
			t.Fatal(err)
		}
		for _, w := range ws {
			select {
			case <-w.ResultChan():
			case <-ctx.Done():
				t.Fatal("watch event missing")
			}
		}
	}
	pb, js := pbBytes.Load()/updates, jsonBytes.Load()/updates
	t.Logf("watch bytes per Node status update: protobuf %d, JSON %d (%.0f%%)", pb, js, 100*float64(pb)/float64(js))
	if pb >= js {
		t.Errorf("protobuf %d bytes per update, not less than JSON's %d", pb, js)
	}
}
