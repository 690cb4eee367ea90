package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flannel-go/flannel/internal/lab/kubeapi"
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/ns"
)

// KubeOptions put a lab in Kubernetes mode (Options.Kube, or StartKube on
// a lab built with NoFlanneld): a real kube-apiserver on the lab's etcd,
// one Node per host, flanneld with --kube-subnet-mgr.
type KubeOptions struct {
	// APIServer is the kube-apiserver binary (kubeapi.Binary); required.
	APIServer string
	// Manifest is dist/kube-flannel.yml; required. It is applied with
	// kubectl, so flanneld's credentials carry exactly its RBAC, and its
	// cni-conf.json is the conflist pods are created with.
	Manifest string
	// Kubectl is the kubectl binary; default: kubectl on $PATH.
	Kubectl string
	// NetConf is flanneld's net-conf.json; Up uses Options.Config.
	NetConf string
	// Detach lets the API server outlive this process (flannelctl lab
	// up); Down stops it. Without it the server dies with the process.
	Detach bool
	// CNIPath, when set, makes Up give each host its pod through CNI, as
	// a kubelet would: the directories holding the flannel plugin and
	// the plugins it delegates to (bridge, host-local, portmap).
	// Without it Up gives hosts docker0-style containers.
	CNIPath []string
}

// KubeState is what a lab in Kubernetes mode records for later commands.
type KubeState struct {
	URL             string   // the API server, reachable from the lab's namespaces
	AdminKubeconfig string   // an admin (system:masters)
	Kubeconfig      string   // flanneld's: the manifest's ServiceAccount
	NetConf         string   // flanneld's --net-config-path
	CNIPath         []string `json:",omitempty"`
}

// Kube is the Kubernetes side of a running lab, for the process that
// started it.
type Kube struct {
	API    *kubeapi.Server
	Client kubernetes.Interface    // an admin's
	CIDRs  map[string]netip.Prefix // node name (the host's) → podCIDR
}

// flannelUser is who flanneld authenticates as: the manifest's
// ServiceAccount, so a missing permission in its ClusterRole shows.
const flannelUser = "system:serviceaccount:kube-flannel:flannel"

// StartKube runs a kube-apiserver in the lab's etcd namespace on the
// lab's etcd, applies the manifest, creates a Node per host with a podCIDR
// (as the controller-manager's node IPAM would; there is none) and sets
// each host's flanneld flags and NODE_NAME for --kube-subnet-mgr. It does
// not start flanneld. Down stops the server.
func (l *Lab) StartKube(ctx context.Context, o KubeOptions) (*Kube, error) {
	if o.APIServer == "" || o.Manifest == "" {
		return nil, errors.New("lab: Kubernetes mode needs the kube-apiserver binary and the manifest")
	}
	nc, err := netconf.Parse([]byte(o.NetConf))
	if err != nil {
		return nil, fmt.Errorf("lab: net-conf.json: %w", err)
	}
	cidrs := map[string]netip.Prefix{}
	for i, h := range l.Hosts {
		if cidrs[h.Name], err = NodeCIDR(nc, i+1); err != nil {
			return nil, fmt.Errorf("lab: podCIDR of %s: %w", h.Name, err)
		}
	}
	kubectl := o.Kubectl
	if kubectl == "" {
		if kubectl, err = exec.LookPath("kubectl"); err != nil {
			return nil, errors.New("lab: no kubectl on $PATH: it applies the manifest")
		}
	}
	var addr netip.Addr
	etcdNS, err := ns.Open(l.EtcdNS)
	if err != nil {
		return nil, err
	}
	if err := etcdNS.Do(func() (err error) { addr, err = firstAddr("eth0"); return err }); err != nil {
		return nil, fmt.Errorf("lab: address for the API server: %w", err)
	}
	dir := filepath.Join(l.Dir, "kube")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	dial := DialerIn(l.EtcdNS)
	api, err := kubeapi.Launch(ctx, kubeapi.Options{
		Binary:  o.APIServer,
		Etcd:    l.EtcdEndpoints,
		Dir:     dir,
		Address: addr,
		Wrap:    []string{"ip", "netns", "exec", l.EtcdNS},
		Dial:    func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) },
		Detach:  o.Detach,
		// Without it the server waits a minute on SIGTERM for flanneld's
		// watches to end by themselves; lab down would have to kill it.
		Args: []string{"--shutdown-watch-termination-grace-period=1s"},
	})
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	k, err := l.setupKube(ctx, o, api, kubectl, cidrs)
	if err != nil {
		api.Stop()
		return nil, err
	}
	return k, nil
}

func (l *Lab) setupKube(ctx context.Context, o KubeOptions, api *kubeapi.Server, kubectl string, cidrs map[string]netip.Prefix) (*Kube, error) {
	client, err := api.Client()
	if err != nil {
		return nil, fmt.Errorf("lab: kube client: %w", err)
	}
	actx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(actx, "ip", "netns", "exec", l.EtcdNS,
		kubectl, "--kubeconfig", api.Kubeconfig, "apply", "--server-side", "-f", o.Manifest).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("lab: kubectl apply -f %s: %w\n%s", o.Manifest, err, out)
	}
	kubeconfig, err := api.WriteKubeconfig("flanneld.kubeconfig", flannelUser)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	netConf := filepath.Join(l.Dir, "net-conf.json")
	if err := os.WriteFile(netConf, []byte(o.NetConf), 0o644); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	for _, h := range l.Hosts {
		cidr := cidrs[h.Name]
		n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: h.Name, Labels: map[string]string{"kubernetes.io/os": "linux"}}}
		n.Spec.PodCIDR, n.Spec.PodCIDRs = cidr.String(), []string{cidr.String()}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		n, err := client.CoreV1().Nodes().Create(cctx, n, metav1.CreateOptions{})
		if err == nil {
			// What the kubelet reports, for `kubectl get nodes -o wide`.
			n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: h.Addr.String()}, {Type: v1.NodeHostName, Address: h.Name}}
			_, err = client.CoreV1().Nodes().UpdateStatus(cctx, n, metav1.UpdateOptions{})
		}
		cancel()
		if err != nil {
			return nil, fmt.Errorf("lab: create node %s: %w", h.Name, err)
		}
		h.Env = append(h.Env, "NODE_NAME="+h.Name)
		h.Args = append(h.Args, "--kube-subnet-mgr", "--kubeconfig-file="+kubeconfig, "--net-config-path="+netConf)
	}
	l.Kube = &KubeState{URL: api.URL, AdminKubeconfig: api.Kubeconfig, Kubeconfig: kubeconfig, NetConf: netConf, CNIPath: o.CNIPath}
	if err := l.save(); err != nil {
		return nil, err
	}
	return &Kube{API: api, Client: client, CIDRs: cidrs}, nil
}

// KubeClient returns an admin's client for the API server of a lab in
// Kubernetes mode, from any process: its connections are made from inside
// the lab's etcd namespace, where the server listens.
func (l *Lab) KubeClient() (kubernetes.Interface, error) {
	if l.Kube == nil {
		return nil, fmt.Errorf("lab %s is not in Kubernetes mode (lab up --kube)", l.ID)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", l.Kube.AdminKubeconfig)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	dial := DialerIn(l.EtcdNS)
	cfg.Dial = func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) }
	return kubernetes.NewForConfig(cfg)
}
