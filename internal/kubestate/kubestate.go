// Package kubestate reads flannel's state in a Kubernetes cluster for the
// operator's commands (flannelctl leases, status and doctor with
// --kubeconfig): the lease each flannel node publishes, one node's
// podCIDRs, annotations and NetworkUnavailable condition, and the network
// config. It reads nodes through internal/kube's parser, so it sees them
// exactly as flanneld's peers do, and never writes.
package kubestate

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flannel-go/flannel/internal/kube"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

// Options say how to reach the cluster and read flannel's annotations.
type Options struct {
	// Kubeconfig is kubectl's --kubeconfig. Empty: as kubectl, the files
	// listed in $KUBECONFIG (merged), else ~/.kube/config, else the
	// in-cluster config of a pod.
	Kubeconfig string
	// Context is kubectl's --context; empty means the current one.
	Context string
	// AnnotationPrefix is flanneld's --kube-annotation-prefix; empty means
	// kube.DefaultAnnotationPrefix.
	AnnotationPrefix string
	// NodeName is this host's node; empty: NODE_NAME, else the node of the
	// pod POD_NAME in POD_NAMESPACE, as flanneld finds it.
	NodeName string
	// NetConfPath is flanneld's --net-config-path; empty means
	// kube.DefaultNetConfPath.
	NetConfPath string
	Timeout     time.Duration // of each request; 0: none
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
	// Client, when set, is used instead of one built from the kubeconfig.
	Client corev1client.CoreV1Interface
}

// Cluster is a read-only view of flannel in one cluster, for one command:
// not safe for concurrent use (NodeName caches its answer).
type Cluster struct {
	client  corev1client.CoreV1Interface
	keys    kube.Keys
	node    string
	netConf string
	getenv  func(string) string
	server  string
}

// Open checks the options and builds the client; it sends no request.
func Open(o Options) (*Cluster, error) {
	prefix := cmp.Or(o.AnnotationPrefix, kube.DefaultAnnotationPrefix)
	keys, err := kube.ParseAnnotationPrefix(prefix)
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		keys:    keys,
		node:    o.NodeName,
		netConf: cmp.Or(o.NetConfPath, kube.DefaultNetConfPath),
		getenv:  o.Getenv,
		client:  o.Client,
	}
	if c.getenv == nil {
		c.getenv = os.Getenv
	}
	if c.client == nil {
		cfg, err := RESTConfig(o.Kubeconfig, o.Context, c.getenv)
		if err != nil {
			return nil, err
		}
		cfg.Timeout = o.Timeout
		cl, err := corev1client.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("kube client: %w", err)
		}
		c.client, c.server = cl, cfg.Host
	}
	return c, nil
}

// RESTConfig loads the client config as kubectl does: kubeconfig when
// given, else the files of $KUBECONFIG (as read by getenv), else
// ~/.kube/config, else the in-cluster config. It asks for protobuf, as
// flanneld does.
func RESTConfig(kubeconfig, context string, getenv func(string) string) (*rest.Config, error) {
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig}
	where := "--kubeconfig=" + kubeconfig
	if kubeconfig == "" {
		if env := getenv(clientcmd.RecommendedConfigPathEnvVar); env != "" {
			rules.Precedence = filepath.SplitList(env)
			where = "$KUBECONFIG=" + env
		} else {
			rules.Precedence = []string{clientcmd.RecommendedHomeFile}
			where = clientcmd.RecommendedHomeFile + " (no --kubeconfig, no $KUBECONFIG)"
		}
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: context})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kube client config from %s: %w", where, err)
	}
	cfg = rest.CopyConfig(cfg)
	cfg.ContentType = kube.ProtobufContentType
	cfg.AcceptContentTypes = kube.ProtobufContentType + ",application/json"
	cfg.UserAgent = "flannelctl"
	return cfg, nil
}

// Keys are the annotation names in use.
func (c *Cluster) Keys() kube.Keys { return c.keys }

// Server is the API server's URL, "" when the client was given.
func (c *Cluster) Server() string { return c.server }

// NodeName is this host's node, as flanneld finds it.
func (c *Cluster) NodeName(ctx context.Context) (string, error) {
	if c.node != "" {
		return c.node, nil
	}
	n, err := kube.ResolveNodeName(ctx, c.client, c.getenv)
	if err != nil {
		return "", fmt.Errorf("%w (or give --node-name)", err)
	}
	c.node = n
	return n, nil
}

// NodeLease is the lease a flannel node publishes.
type NodeLease struct {
	Node  string
	Lease lease.Lease // zero when Err is set
	// Err says why the node's annotations or podCIDRs make no lease
	// (flanneld's peers ignore it then).
	Err error
}

// Leases returns a NodeLease for every node that carries
// kube-subnet-manager=true, in subnet order, those with an Err last by
// name. nc is the network config (its families, and the networks the
// podCIDRs must lie in); nil reads each node for the families it has.
func (c *Cluster) Leases(ctx context.Context, nc *netconf.Config) ([]NodeLease, error) {
	list, err := c.client.Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var out []NodeLease
	for i := range list.Items {
		n := &list.Items[i]
		l, err := kube.NodeLease(n, c.keys, nc)
		if errors.Is(err, kube.ErrNotFlannelNode) {
			continue
		}
		out = append(out, NodeLease{Node: n.Name, Lease: l, Err: err})
	}
	slices.SortFunc(out, func(a, b NodeLease) int {
		if (a.Err == nil) != (b.Err == nil) {
			if a.Err == nil {
				return -1
			}
			return 1
		}
		return cmp.Or(
			a.Lease.Subnet.Addr().Compare(b.Lease.Subnet.Addr()),
			a.Lease.Subnet6.Addr().Compare(b.Lease.Subnet6.Addr()),
			strings.Compare(a.Node, b.Node))
	})
	return out, nil
}

// Condition is a node condition.
type Condition struct {
	Status             string    `json:"status"`
	Reason             string    `json:"reason,omitempty"`
	Message            string    `json:"message,omitempty"`
	LastTransitionTime time.Time `json:"lastTransitionTime,omitzero"`
}

// Node is what flannel has to do with one node.
type Node struct {
	Name string
	// PodCIDRs is spec.podCIDRs, else spec.podCIDR alone; empty while
	// none is assigned.
	PodCIDRs []string
	// Managed: the node carries kube-subnet-manager=true.
	Managed bool
	// Annotations are the node's annotations under Keys.Prefix.
	Annotations map[string]string
	Keys        kube.Keys
	// Lease is what the node publishes, valid when LeaseErr is nil.
	Lease    lease.Lease
	LeaseErr error
	// NetworkUnavailable is the node's condition of that type, nil when
	// it has none.
	NetworkUnavailable *Condition
}

// ErrNoNode wraps the error of Node for a node that does not exist.
var ErrNoNode = errors.New("no such node")

// Node reads the named node. nc is as for Leases.
func (c *Cluster) Node(ctx context.Context, name string, nc *netconf.Config) (Node, error) {
	n, err := c.client.Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Node{}, fmt.Errorf("node %q: %w (`kubectl get nodes` lists them)", name, ErrNoNode)
	}
	if err != nil {
		return Node{}, fmt.Errorf("get node %q: %w", name, err)
	}
	return c.fromNode(n, nc), nil
}

func (c *Cluster) fromNode(n *v1.Node, nc *netconf.Config) Node {
	out := Node{Name: n.Name, Keys: c.keys, Managed: n.Annotations[c.keys.SubnetKubeManaged] == "true"}
	out.PodCIDRs = slices.Clone(n.Spec.PodCIDRs)
	if len(out.PodCIDRs) == 0 && n.Spec.PodCIDR != "" {
		out.PodCIDRs = []string{n.Spec.PodCIDR}
	}
	out.Annotations = maps.Collect(func(yield func(string, string) bool) {
		for k, v := range n.Annotations {
			if strings.HasPrefix(k, c.keys.Prefix) && !yield(k, v) {
				return
			}
		}
	})
	out.Lease, out.LeaseErr = kube.NodeLease(n, c.keys, nc)
	for _, cond := range n.Status.Conditions {
		if cond.Type == v1.NodeNetworkUnavailable {
			out.NetworkUnavailable = &Condition{Status: string(cond.Status), Reason: cond.Reason,
				Message: cond.Message, LastTransitionTime: cond.LastTransitionTime.Time}
		}
	}
	return out
}

// Find returns the lease for arg: one of a flannel node's podCIDRs
// (10.244.1.0/24, fd00:10:244:1::/64, or the etcd-style key 10.244.1.0-24),
// else a node name.
func (c *Cluster) Find(ctx context.Context, arg string, nc *netconf.Config) (NodeLease, error) {
	var sn, sn6 netip.Prefix
	if strings.Contains(arg, "/") {
		p, err := netip.ParsePrefix(arg)
		if err != nil {
			return NodeLease{}, fmt.Errorf("subnet %q: %w", arg, err)
		}
		if p.Masked() != p {
			return NodeLease{}, fmt.Errorf("subnet %q has host bits set; did you mean %s?", arg, p.Masked())
		}
		if p.Addr().Is4() {
			sn = p
		} else {
			sn6 = p
		}
	} else if k4, k6, err := lease.ParseKey(arg); err == nil {
		sn, sn6 = k4, k6
	}
	if sn.IsValid() || sn6.IsValid() {
		ls, err := c.Leases(ctx, nc)
		if err != nil {
			return NodeLease{}, err
		}
		for _, l := range ls {
			if l.Err == nil && (!sn.IsValid() || l.Lease.Subnet == sn) && (!sn6.IsValid() || l.Lease.Subnet6 == sn6) {
				return l, nil
			}
		}
		// A node may be named like a key (10.244.1.0-24 is a DNS name).
		if strings.Contains(arg, "/") {
			return NodeLease{}, fmt.Errorf("no flannel node has podCIDR %s (`flannelctl leases list` shows them all)", arg)
		}
		if _, err := c.client.Nodes().Get(ctx, arg, metav1.GetOptions{}); err != nil {
			return NodeLease{}, fmt.Errorf("no flannel node has podCIDR %s (`flannelctl leases list` shows them all)", cmp.Or(prefixString(sn), prefixString(sn6)))
		}
	}
	n, err := c.Node(ctx, arg, nc)
	if err != nil {
		return NodeLease{}, err
	}
	if !n.Managed {
		return NodeLease{}, fmt.Errorf("node %q carries no %s=true annotation: no flanneld has published a lease there", arg, c.keys.SubnetKubeManaged)
	}
	return NodeLease{Node: n.Name, Lease: n.Lease, Err: n.LeaseErr}, nil
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

// Namespaces where the manifests put the kube-flannel-cfg ConfigMap:
// today's, and kube-system before v0.20.
var configNamespaces = []string{"kube-flannel", "kube-system"}

const (
	configMapName = "kube-flannel-cfg"
	configMapKey  = "net-conf.json"
)

// RawNetConfig reads the network config as written: the file at
// --net-config-path when it exists (on a host that runs flanneld outside a
// pod), else the net-conf.json key of the kube-flannel-cfg ConfigMap that
// the manifest mounts there. where names the one read. An error wrapping
// lease.ErrNoConfig means neither exists.
func (c *Cluster) RawNetConfig(ctx context.Context) (raw []byte, where string, err error) {
	b, err := os.ReadFile(c.netConf)
	switch {
	case err == nil:
		return b, c.netConf, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, c.netConf, fmt.Errorf("read network config: %w", err)
	}
	for _, ns := range configNamespaces {
		cm, err := c.client.ConfigMaps(ns).Get(ctx, configMapName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("read ConfigMap %s/%s: %w", ns, configMapName, err)
		}
		where = fmt.Sprintf("ConfigMap %s/%s key %s", ns, configMapName, configMapKey)
		s, ok := cm.Data[configMapKey]
		if !ok {
			return nil, where, fmt.Errorf("%s is missing: %w", where, lease.ErrNoConfig)
		}
		return []byte(s), where, nil
	}
	return nil, "", fmt.Errorf("%s does not exist, nor a ConfigMap %s in %s: %w",
		c.netConf, configMapName, strings.Join(configNamespaces, " or "), lease.ErrNoConfig)
}

// NetConfig is RawNetConfig parsed; an invalid config is a *netconf.Error.
func (c *Cluster) NetConfig(ctx context.Context) (cfg *netconf.Config, where string, err error) {
	b, where, err := c.RawNetConfig(ctx)
	if err != nil {
		return nil, where, err
	}
	cfg, err = netconf.Parse(b)
	if err != nil {
		return nil, where, fmt.Errorf("the network config in %s is invalid: %w", where, err)
	}
	return cfg, where, nil
}
