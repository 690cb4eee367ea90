package status_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/kube"
	"github.com/flannel-go/flannel/internal/kubestate"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/status"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

// fakeKube is a cluster of flannel nodes for CollectKube.
type fakeKube struct {
	name    string
	nameErr error
	node    kubestate.Node
	nodeErr error
	leases  []kubestate.NodeLease
	cfgErr  error
}

func (k *fakeKube) NodeName(context.Context) (string, error) { return k.name, k.nameErr }
func (k *fakeKube) Node(_ context.Context, name string, _ *netconf.Config) (kubestate.Node, error) {
	if name != k.name {
		return kubestate.Node{}, errors.New("wrong node asked for")
	}
	return k.node, k.nodeErr
}
func (k *fakeKube) Leases(context.Context, *netconf.Config) ([]kubestate.NodeLease, error) {
	return k.leases, nil
}
func (k *fakeKube) NetConfig(context.Context) (*netconf.Config, string, error) {
	return nil, "", k.cfgErr
}

func nodeLease(sn, ip string) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}`)}}
}

func TestCollectKube(t *testing.T) {
	ctx := context.Background()
	keys, _ := kube.ParseAnnotationPrefix(kube.DefaultAnnotationPrefix)
	file := filepath.Join(t.TempDir(), "subnet.env")
	if err := subnetenv.Write(file, subnetenv.Env{Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.1.1/24"), MTU: 1450}); err != nil {
		t.Fatal(err)
	}
	o := status.Options{SubnetFile: file}
	dev := links{"flannel.1": {Name: "flannel.1", Up: true, MTU: 1450}}
	healthy := func() *fakeKube {
		own := nodeLease("10.244.1.0/24", "192.168.0.1")
		return &fakeKube{
			name: "n1",
			node: kubestate.Node{Name: "n1", PodCIDRs: []string{"10.244.1.0/24"}, Managed: true, Keys: keys, Lease: own,
				Annotations:        map[string]string{keys.BackendType: "vxlan"},
				NetworkUnavailable: &kubestate.Condition{Status: "False", Reason: "FlannelIsUp"}},
			leases: []kubestate.NodeLease{{Node: "n1", Lease: own}, {Node: "n2", Lease: nodeLease("10.244.2.0/24", "192.168.0.2")},
				{Node: "bad", Err: errors.New("annotation x: bad")}},
		}
	}

	st := status.CollectKube(ctx, o, healthy(), nil, dev)
	if len(st.Problems) != 0 || st.Backend != "vxlan" || st.Peers != 1 || st.Node == nil || st.Node.Name != "n1" ||
		st.Lease == nil || st.Lease.Node != "n1" || st.Lease.Subnet != "10.244.1.0/24" || st.Lease.Key != "" ||
		st.Device == nil || st.Device.Name != "flannel.1" || st.Device.State != "up" {
		t.Fatalf("healthy node: %+v", st)
	}

	for _, tc := range []struct {
		name string
		edit func(k *fakeKube)
		want string
	}{
		{"no node name", func(k *fakeKube) { k.nameErr = errors.New("kube: the node name is unknown") }, "node name is unknown"},
		{"no such node", func(k *fakeKube) { k.nodeErr = errors.New(`node "n1": no such node`) }, "no such node"},
		{"no podCIDR", func(k *fakeKube) {
			k.node.PodCIDRs, k.node.Lease, k.node.LeaseErr = nil, lease.Lease{}, kube.ErrPodCIDR
		}, `node "n1" has no podCIDR`},
		{"not published", func(k *fakeKube) {
			k.node.Managed, k.node.Lease, k.node.LeaseErr = false, lease.Lease{}, kube.ErrNotFlannelNode
		}, keys.SubnetKubeManaged + "=true"},
		{"bad annotations", func(k *fakeKube) {
			k.node.Lease, k.node.LeaseErr = lease.Lease{}, errors.New("annotation "+keys.PublicIP+`: "x" is not an IPv4 address`)
		}, keys.PublicIP},
		{"stale subnet.env", func(k *fakeKube) {
			k.node.Lease = nodeLease("10.244.7.0/24", "192.168.0.1")
		}, "subnet.env is stale"},
		{"NetworkUnavailable True", func(k *fakeKube) {
			k.node.NetworkUnavailable = &kubestate.Condition{Status: "True", Reason: "NoRouteCreated"}
		}, "NetworkUnavailable=True (NoRouteCreated"},
		{"broken config", func(k *fakeKube) {
			k.cfgErr = &netconf.Error{Reason: "is empty"}
		}, "is empty"},
	} {
		k := healthy()
		tc.edit(k)
		st := status.CollectKube(ctx, o, k, nil, dev)
		if !strings.Contains(strings.Join(st.Problems, "\n"), tc.want) {
			t.Errorf("%s: problems %q, want %q", tc.name, st.Problems, tc.want)
		}
	}
	// A config that is only missing, or unreadable, is no problem.
	k := healthy()
	k.cfgErr = errors.New("configmaps is forbidden")
	if st := status.CollectKube(ctx, o, k, nil, dev); len(st.Problems) != 0 {
		t.Errorf("unreadable ConfigMap: %q", st.Problems)
	}
	st = status.CollectKube(ctx, o, nil, errors.New("no configuration has been provided"), links{})
	if len(st.Problems) != 1 || !strings.Contains(st.Problems[0], "kubernetes: no configuration") {
		t.Errorf("no client: %q", st.Problems)
	}
}
