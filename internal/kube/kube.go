// Package kube is flanneld's lease source in Kubernetes mode
// (--kube-subnet-mgr): this host's lease is its Node's spec.podCIDR(s), what
// peers need is published as node annotations in upstream flannel's exact
// form, and the peers are the nodes that carry those annotations, read
// through one slimmed-down informer.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"sync"

	"github.com/go-logr/logr"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

// DefaultNetConfPath is upstream's --net-config-path default, where the
// kube-flannel-cfg ConfigMap is mounted.
const DefaultNetConfPath = "/etc/kube-flannel/net-conf.json"

// Options mirror upstream's kube-mode flags and environment.
type Options struct {
	APIURL     string // --kube-api-url
	Kubeconfig string // --kubeconfig-file; with APIURL empty too: in-cluster config
	// AnnotationPrefix is --kube-annotation-prefix; empty means
	// DefaultAnnotationPrefix.
	AnnotationPrefix string
	// NetConfPath is --net-config-path; empty means DefaultNetConfPath.
	NetConfPath string
	// SetNodeNetworkUnavailable is --set-node-network-unavailable (upstream
	// default true): once flanneld is up, set the node's NetworkUnavailable
	// condition to False with reason FlannelIsUp.
	SetNodeNetworkUnavailable bool
	// NodeName, when empty, is taken from NODE_NAME, else from the
	// spec.nodeName of the pod POD_NAME in POD_NAMESPACE.
	NodeName string
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
	// Client, when set, is used instead of building one from APIURL and
	// Kubeconfig (tests, the lab).
	Client kubernetes.Interface
	// Metadata goes with Client: Watch takes node updates as metadata
	// through it (nodewatch.go). Nil with Client set: Watch watches whole
	// Nodes.
	Metadata metadata.Interface
	// UpstreamWatch makes Watch watch and keep whole Nodes, as upstream
	// does; only benchmarks set it, to compare.
	UpstreamWatch bool
	Log           *slog.Logger
}

// Source is the Kubernetes lease.Source. It is safe for concurrent use.
type Source struct {
	client  coreV1
	meta    metadata.Interface // nil: Watch watches whole Nodes
	keys    Keys
	node    string
	netConf string
	setCond bool
	log     *slog.Logger

	mu sync.Mutex
	// nc is the network config: the one Acquire was given, else the file
	// parsed by Watch.
	nc *netconf.Config
	// attrs is what Acquire was asked to publish; Keep re-applies it.
	attrs lease.Attrs
	// watching is set while Watch's informer has synced; own, gone and
	// ownChanged then tell Keep about our node without a request.
	watching   bool
	own        *v1.Node
	ownChanged chan struct{} // closed and replaced at each change of own
	watchers   int
	// seenRV is the resourceVersion of our node as last read by a GET,
	// which WatchOwn watches from.
	seenRV string

	// fullCache keeps whole Node objects in the informer, as upstream
	// does (Options.UpstreamWatch); only benchmarks set it.
	fullCache bool
}

var _ lease.Source = (*Source)(nil)

// ProtobufContentType is what the client asks the API server for: a Node in
// protobuf is about a third of its JSON.
const ProtobufContentType = runtime.ContentTypeProtobuf

// RESTConfig builds the client config as upstream does: --kube-api-url and
// --kubeconfig-file through clientcmd, in-cluster config when both are
// empty; then it asks for protobuf.
func RESTConfig(apiURL, kubeconfig string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if apiURL == "" && kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kube: in-cluster config (give --kubeconfig-file or --kube-api-url outside a pod): %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags(apiURL, kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kube: client config from --kube-api-url=%q --kubeconfig-file=%q: %w", apiURL, kubeconfig, err)
		}
	}
	cfg = rest.CopyConfig(cfg)
	cfg.ContentType = ProtobufContentType
	cfg.AcceptContentTypes = ProtobufContentType + ",application/json"
	cfg.UserAgent = "flanneld"
	// Watch reads each node that joins once, whole (nodewatch.go);
	// client-go's default of 5 requests a second, burst 10, would queue
	// those of a few nodes joining together by 200 ms each.
	cfg.QPS, cfg.Burst = 50, 100
	return cfg, nil
}

// New builds the source: it validates the annotation prefix, connects the
// client and resolves the node name (which may read the pod from the API).
func New(ctx context.Context, o Options) (*Source, error) {
	prefix := o.AnnotationPrefix
	if prefix == "" {
		prefix = DefaultAnnotationPrefix
	}
	keys, err := ParseAnnotationPrefix(prefix)
	if err != nil {
		return nil, err
	}
	s := &Source{
		keys:       keys,
		netConf:    o.NetConfPath,
		setCond:    o.SetNodeNetworkUnavailable,
		log:        o.Log,
		ownChanged: make(chan struct{}),
		fullCache:  o.UpstreamWatch,
	}
	if s.netConf == "" {
		s.netConf = DefaultNetConfPath
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if o.Client != nil {
		s.client = coreV1{o.Client.CoreV1()}
		s.meta = o.Metadata
	} else {
		cfg, err := RESTConfig(o.APIURL, o.Kubeconfig)
		if err != nil {
			return nil, err
		}
		c, err := corev1client.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("kube: client: %w", err)
		}
		s.client = coreV1{c}
		if s.meta, err = metadata.NewForConfig(cfg); err != nil {
			return nil, fmt.Errorf("kube: metadata client: %w", err)
		}
	}
	getenv := o.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	s.node = o.NodeName
	if s.node == "" {
		if s.node, err = nodeName(ctx, s.client, getenv); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// nodeName finds this host's node as upstream does: NODE_NAME, else the
// node that the pod POD_NAME in POD_NAMESPACE runs on.
func nodeName(ctx context.Context, c coreV1, getenv func(string) string) (string, error) {
	if n := getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	pod, ns := getenv("POD_NAME"), getenv("POD_NAMESPACE")
	if pod == "" || ns == "" {
		return "", errors.New("kube: the node name is unknown: set NODE_NAME, or POD_NAME and POD_NAMESPACE (the DaemonSet sets them through the downward API)")
	}
	p, err := c.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("kube: node name from pod %s/%s: %w", ns, pod, err)
	}
	if p.Spec.NodeName == "" {
		return "", fmt.Errorf("kube: node name from pod %s/%s: its spec.nodeName is empty", ns, pod)
	}
	return p.Spec.NodeName, nil
}

// WatchOnlyForPeers reports that Watch serves only the set of peers:
// Acquire takes the podCIDR the controller-manager assigned, and Keep
// reads the node itself while no Watch runs. So a flanneld whose backend
// forwards to no peer (alloc) need run no informer on the nodes.
func (s *Source) WatchOnlyForPeers() bool { return true }

// OwnChanged returns a channel closed at the next change of this node's
// podCIDRs or annotations that Watch's informer sees (and when a Watch
// starts or ends), so that a caller whose Acquire failed for want of a
// podCIDR can try again as soon as one is assigned.
func (s *Source) OwnChanged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ownChanged
}

// NodeName is the node this flanneld runs on.
func (s *Source) NodeName() string { return s.node }

// Keys are the annotation names in use.
func (s *Source) Keys() Keys { return s.keys }

// Logger adapts a slog.Logger for client-go's InformerOptions and
// klog.SetLogger.
func Logger(l *slog.Logger) logr.Logger { return logr.FromSlogHandler(l.Handler()) }

// Config reads net-conf.json. A missing file is an error wrapping
// lease.ErrNoConfig that names it.
func (s *Source) Config(ctx context.Context) ([]byte, error) {
	b, err := os.ReadFile(s.netConf)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist; write the network config there (in a cluster: the net-conf.json key of the kube-flannel-cfg ConfigMap)", lease.ErrNoConfig, s.netConf)
	}
	if err != nil {
		return nil, fmt.Errorf("kube: read network config: %w", err)
	}
	return b, nil
}

// netConfig is the parsed config: Acquire's, else the file's.
func (s *Source) netConfig(ctx context.Context) (*netconf.Config, error) {
	s.mu.Lock()
	nc := s.nc
	s.mu.Unlock()
	if nc != nil {
		return nc, nil
	}
	b, err := s.Config(ctx)
	if err != nil {
		return nil, err
	}
	nc, err = netconf.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("kube: %s: %w", s.netConf, err)
	}
	s.mu.Lock()
	if s.nc == nil {
		s.nc = nc
	}
	nc = s.nc
	s.mu.Unlock()
	return nc, nil
}

// getNode reads our node from the API server.
func (s *Source) getNode(ctx context.Context) (*v1.Node, error) {
	n, err := s.client.CoreV1().Nodes().Get(ctx, s.node, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("kube: get node %q: %w", s.node, err)
	}
	s.mu.Lock()
	s.seenRV = n.ResourceVersion
	s.mu.Unlock()
	return n, nil
}

// WatchOwn returns at the first change of this node since the last time
// it was read (by Acquire), or when ctx ends: how a flanneld that runs no
// informer (the alloc backend's) learns at once that its podCIDR was
// assigned. It watches the one node, from the version last read, so a
// change in between is not missed; history too old to watch from counts
// as a change. An error means the caller falls back to its timer.
func (s *Source) WatchOwn(ctx context.Context) error {
	s.mu.Lock()
	rv := s.seenRV
	s.mu.Unlock()
	w, err := s.client.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{
		FieldSelector:   fields.OneTermEqualSelector("metadata.name", s.node).String(),
		ResourceVersion: rv,
	})
	if err != nil {
		if apierrors.IsGone(err) || apierrors.IsResourceExpired(err) {
			return nil
		}
		return fmt.Errorf("kube: watch node %q: %w", s.node, err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-w.ResultChan():
			if !ok {
				return fmt.Errorf("kube: watch node %q: ended", s.node)
			}
			if ev.Type == watch.Bookmark {
				continue
			}
			if ev.Type == watch.Error {
				if st := apierrors.FromObject(ev.Object); apierrors.IsGone(st) || apierrors.IsResourceExpired(st) {
					return nil
				}
				return fmt.Errorf("kube: watch node %q: %w", s.node, apierrors.FromObject(ev.Object))
			}
			return nil
		}
	}
}

// PrevAttrs returns the attributes this node published before (its own
// annotations, read under the configured prefix), so that a backend can
// keep what peers already know across a restart that lost the device: the
// vxlan backend reuses the VtepMAC of BackendData. Zero Attrs when the node
// carries none; fields that do not parse are left zero.
func (s *Source) PrevAttrs(ctx context.Context) (lease.Attrs, error) {
	n, err := s.getNode(ctx)
	if err != nil {
		return lease.Attrs{}, err
	}
	a := n.Annotations
	if a[s.keys.SubnetKubeManaged] != "true" {
		return lease.Attrs{}, nil
	}
	out := lease.Attrs{BackendType: a[s.keys.BackendType]}
	out.PublicIP, _ = annotationAddr(a, s.keys.PublicIP, false)
	out.PublicIPv6, _ = annotationAddr(a, s.keys.PublicIPv6, true)
	out.BackendData, _ = annotationJSON(a, s.keys.BackendData)
	out.BackendV6Data, _ = annotationJSON(a, s.keys.BackendV6Data)
	return out, nil
}

// NodePublicIP returns the node-public-ip and node-public-ipv6 annotations
// that an operator set on this node (invalid when absent). Upstream uses
// them as --public-ip / --public-ipv6 when those flags are not given; the
// address must be local, so it also picks the external interface.
func (s *Source) NodePublicIP(ctx context.Context) (v4, v6 netip.Addr, err error) {
	n, err := s.getNode(ctx)
	if err != nil {
		return v4, v6, err
	}
	if _, ok := n.Annotations[s.keys.NodePublicIP]; ok {
		if v4, err = annotationAddr(n.Annotations, s.keys.NodePublicIP, false); err != nil {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("kube: node %q: %w", s.node, err)
		}
	}
	if _, ok := n.Annotations[s.keys.NodePublicIPv6]; ok {
		if v6, err = annotationAddr(n.Annotations, s.keys.NodePublicIPv6, true); err != nil {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("kube: node %q: %w", s.node, err)
		}
	}
	return v4, v6, nil
}

// coreV1 is the one API group flanneld uses. Holding only its client,
// rather than a whole clientset, keeps every other group's client code out
// of the flanneld binary.
type coreV1 struct{ corev1client.CoreV1Interface }

// CoreV1 lets call sites read as they would with a clientset.
func (c coreV1) CoreV1() corev1client.CoreV1Interface { return c.CoreV1Interface }
