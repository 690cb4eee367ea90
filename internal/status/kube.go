package status

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/flannel-go/flannel/internal/kubestate"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

// NodeStatus is this host's Node as flannel uses it (Kubernetes mode).
type NodeStatus struct {
	Name     string   `json:"name"`
	PodCIDRs []string `json:"podCIDRs"`
	// Annotations are flannel's: those under the annotation prefix.
	Annotations        map[string]string    `json:"annotations,omitempty"`
	NetworkUnavailable *kubestate.Condition `json:"networkUnavailable,omitempty"`
}

// Kube is what the report reads from the API server in Kubernetes mode;
// *kubestate.Cluster is it.
type Kube interface {
	NodeName(ctx context.Context) (string, error)
	Node(ctx context.Context, name string, nc *netconf.Config) (kubestate.Node, error)
	Leases(ctx context.Context, nc *netconf.Config) ([]kubestate.NodeLease, error)
	NetConfig(ctx context.Context) (*netconf.Config, string, error)
}

var _ Kube = (*kubestate.Cluster)(nil)

// CollectKube assembles the report in Kubernetes mode: this host's lease
// is its Node's podCIDR with flannel's annotations, the peers are the other
// flannel nodes. k is nil when no client could be built, with openErr
// saying why.
func CollectKube(ctx context.Context, o Options, k Kube, openErr error, sys Links) Status {
	st := Status{SubnetFile: o.SubnetFile, Problems: []string{}}
	env, envErr := st.readEnv(o.SubnetFile)
	if k == nil {
		st.problem("kubernetes: %v", openErr)
		st.finish(ctx, o, nil, nil, sys)
		return st
	}
	cfg, own := st.fromKube(ctx, k, env, envErr)
	st.finish(ctx, o, cfg, own, sys)
	return st
}

func (st *Status) fromKube(ctx context.Context, k Kube, env subnetEnv, envErr error) (*netconf.Config, *lease.Lease) {
	// The config is optional here: on a host where flanneld runs in a pod
	// the file is not on the host, and the ConfigMap may not be readable
	// with the node's credentials. Only one that is there and wrong is a
	// problem.
	cfg, _, err := k.NetConfig(ctx)
	if ne := (*netconf.Error)(nil); errors.As(err, &ne) {
		st.problem("%v", err)
	}
	name, err := k.NodeName(ctx)
	if err != nil {
		st.problem("%v", err)
		return cfg, nil
	}
	n, err := k.Node(ctx, name, cfg)
	if err != nil {
		st.problem("%v", err)
		return cfg, nil
	}
	st.Node = &NodeStatus{Name: n.Name, PodCIDRs: n.PodCIDRs, Annotations: n.Annotations, NetworkUnavailable: n.NetworkUnavailable}
	var own *lease.Lease
	switch {
	case len(n.PodCIDRs) == 0:
		st.problem("node %q has no podCIDR assigned (spec.podCIDR)", n.Name)
	case !n.Managed:
		st.problem("node %q carries no %s=true: flanneld has not published its lease", n.Name, n.Keys.SubnetKubeManaged)
	case n.LeaseErr != nil:
		st.problem("node %q: %v", n.Name, n.LeaseErr)
	default:
		own = &n.Lease
		j := NodeInfo(n.Name, n.Lease)
		st.Lease = &j
		if envErr == nil && env.Subnet.IsValid() && env.Subnet.Masked() != own.Subnet && own.Subnet.IsValid() {
			st.problem("subnet.env's FLANNEL_SUBNET=%s is not in node %q's podCIDR %s: subnet.env is stale", env.Subnet, n.Name, own.Subnet)
		}
	}
	if c := n.NetworkUnavailable; c != nil && c.Status == "True" {
		st.problem("node %q has condition NetworkUnavailable=True (%s): no pods are scheduled there", n.Name, strings.TrimSpace(c.Reason+" "+c.Message))
	}
	ls, err := k.Leases(ctx, cfg)
	if err != nil {
		st.problem("%v", err)
		return cfg, own
	}
	for _, l := range ls {
		if l.Node != n.Name && l.Err == nil {
			st.Peers++
		}
	}
	return cfg, own
}

// nodeRow is the node line of Print.
func nodeRow(n *NodeStatus) string {
	cidrs := "no podCIDR"
	if len(n.PodCIDRs) > 0 {
		cidrs = "podCIDR " + strings.Join(n.PodCIDRs, ",")
	}
	cond := "no NetworkUnavailable condition"
	if c := n.NetworkUnavailable; c != nil {
		cond = fmt.Sprintf("NetworkUnavailable=%s", c.Status)
		if c.Reason != "" {
			cond += " (" + c.Reason + ")"
		}
	}
	return fmt.Sprintf("%s, %s, %s", n.Name, cidrs, cond)
}
