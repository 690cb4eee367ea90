package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	"github.com/flannel-go/flannel/internal/kube"
	"github.com/flannel-go/flannel/internal/lab/kubeapi"
	"github.com/flannel-go/flannel/internal/lease"
)

// This file is the Kubernetes-mode scale benchmark (`flannelctl lab scale
// --kube`): a real kube-apiserver on the lab's etcd holding thousands of
// kubelet-like Node objects of fake peers, and one real flanneld with
// --kube-subnet-mgr in the lab's one host.

// KubeScaleOptions say what RunKubeScale measures.
type KubeScaleOptions struct {
	APIServer string        // required: the kube-apiserver binary
	Peers     int           // required: fake peer Nodes created before flanneld starts
	NewNodes  int           // required: nodes that join one at a time afterwards, for the latency
	Interval  time.Duration // time between new nodes
	// Updates is the number of kubelet status updates the watch-bytes
	// figure is taken over; 0 means 200.
	Updates  int
	Progress io.Writer // optional: a line per step
	// SyncTimeout bounds the wait for the full sync; 0 means 2 minutes.
	SyncTimeout time.Duration
}

// KubeScaleResult holds the figures of one RunKubeScale.
type KubeScaleResult struct {
	CreateTime  time.Duration // creating the Peers Nodes, each as its four writers would
	SyncTime    time.Duration // flanneld's start → its last expected kernel entry
	SyncCPU     float64       // flanneld's CPU seconds until then
	Have, Want  Counts        // kernel entries after the sync, and those expected
	RSSSync     int64         // flanneld's RssAnon after the sync
	RSSEnd      int64         // and after the new nodes
	PeakRSS     int64         // VmHWM at the end
	Latencies   []time.Duration
	Before      int     // new nodes whose route appeared before their annotation patch returned
	NewNodeCPU  float64 // flanneld's CPU seconds per new node
	Ours        WatchCost
	Upstream    WatchCost // upstream's way: JSON, whole Nodes kept whole
	Updates     int       // status updates WatchCost.BytesPerUpdate is taken over
	BytesPerObj int       // a peer Node's size in protobuf, for scale
}

// WatchCost is what one way of watching the Nodes read from the API server.
type WatchCost struct {
	SyncTime         time.Duration // Watch's start → its Reset update
	SyncBytesPerNode float64       // read until then, per node
	HeapPerNode      float64       // Go heap the watch holds after its sync, per node
	BytesPerUpdate   float64       // read per kubelet status update afterwards
}

// kubeScaleOwn is the lab host's podCIDR; FakeLeases never hands it out
// (its /24s start at 10.0.1.0).
var kubeScaleOwn = netip.MustParsePrefix("10.0.0.0/24")

// kubeScaleRun is one benchmark run.
type kubeScaleRun struct {
	l     *Lab
	o     KubeScaleOptions
	r     KubeScaleResult
	api   *kubeapi.Server
	admin kubernetes.Interface
	conf  string // net-conf.json
}

func (s *kubeScaleRun) progress(format string, args ...any) {
	if s.o.Progress != nil {
		fmt.Fprintf(s.o.Progress, format, args...)
	}
}

// RunKubeScale measures l's one host running flanneld in Kubernetes mode
// (vxlan) against a real API server holding o.Peers Nodes: the time from
// its cold start until every route, neighbour and FDB entry exists, its
// memory, the latency from a new node's flannel annotations being written
// to its route existing, and what watching the Nodes reads from the API
// server, ours beside upstream's way, in the same run. l is a one-host lab
// built with NoFlanneld; the API server runs in its etcd namespace and is
// stopped before RunKubeScale returns.
func (l *Lab) RunKubeScale(ctx context.Context, o KubeScaleOptions) (KubeScaleResult, error) {
	if o.Updates <= 0 {
		o.Updates = 200
	}
	s := &kubeScaleRun{l: l, o: o}
	err := s.run(ctx)
	if s.api != nil {
		s.api.Stop()
	}
	return s.r, err
}

func (s *kubeScaleRun) run(ctx context.Context) error {
	h := s.l.Hosts[0]
	if err := s.startAPI(ctx); err != nil {
		return err
	}
	kubeconfig, err := s.flannelIdentity(ctx)
	if err != nil {
		return err
	}
	s.conf = filepath.Join(s.l.Dir, h.Name, "net-conf.json")
	if err := os.MkdirAll(filepath.Dir(s.conf), 0o755); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`{"Network":%q,"SubnetLen":24,"Backend":{"Type":"vxlan"}}`, ScaleNetwork)
	if err := os.WriteFile(s.conf, []byte(cfg), 0o644); err != nil {
		return err
	}
	if err := s.l.DeleteLink(h, "flannel.1"); err != nil {
		return err
	}
	if err := s.l.AddOnLinkRoute(h, ScaleUnderlay); err != nil {
		return err
	}

	// Our host's Node: the kubelet's and the controller-manager's part;
	// flanneld adds its own.
	beat := time.Now()
	if err := s.createNode(ctx, h.Name, kubeScaleOwn, nil, beat); err != nil {
		return err
	}
	all := FakeLeases("vxlan", kubeScaleOwn, s.o.Peers+s.o.NewNodes)
	initial, later := all[:s.o.Peers], all[s.o.Peers:]
	start := time.Now()
	if err := s.createPeers(ctx, initial, beat); err != nil {
		return err
	}
	s.r.CreateTime = time.Since(start)
	s.progress("created %d kubelet-like peer Nodes in %s\n", len(initial), s.r.CreateTime.Round(time.Millisecond))
	if n, err := s.admin.CoreV1().Nodes().Get(ctx, peerName(0), metav1.GetOptions{}); err == nil {
		s.r.BytesPerObj = n.Size()
	}

	w, err := WatchEntries(h.NS)
	if err != nil {
		return err
	}
	defer w.Close()
	expect, err := ExpectedEntries("vxlan", initial)
	if err != nil {
		return err
	}
	w.Expect(expect)
	s.r.Want = Counts{Routes: len(expect.Routes), Neighs: len(expect.Neighs), FDB: len(expect.FDB)}

	h.Env = []string{"NODE_NAME=" + h.Name}
	h.Args = []string{"--kube-subnet-mgr", "--kubeconfig-file=" + kubeconfig, "--net-config-path=" + s.conf}
	if err := s.measureSync(ctx, w); err != nil {
		return err
	}
	if err := s.measureNew(ctx, w, later); err != nil {
		return err
	}
	return s.measureWatch(ctx)
}

// startAPI runs kube-apiserver in the etcd namespace, on the lab's etcd.
func (s *kubeScaleRun) startAPI(ctx context.Context) error {
	if len(s.l.EtcdEndpoints) == 0 {
		return errors.New("lab: no etcd for the API server")
	}
	from := s.l.EtcdNS
	if s.l.EtcdPID == 0 && len(s.l.Hosts) > 0 {
		from = s.l.Hosts[0].NS
	}
	host, _, err := net.SplitHostPort(strings.TrimPrefix(s.l.EtcdEndpoints[0], "http://"))
	if err != nil {
		return fmt.Errorf("lab: etcd endpoint %s: %w", s.l.EtcdEndpoints[0], err)
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("lab: etcd endpoint %s: %w", s.l.EtcdEndpoints[0], err)
	}
	dir := filepath.Join(s.l.Dir, "kube-apiserver")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	dial := DialerIn(from)
	start := time.Now()
	s.api, err = kubeapi.Launch(ctx, kubeapi.Options{
		Binary:  s.o.APIServer,
		Etcd:    s.l.EtcdEndpoints,
		Dir:     dir,
		Address: addr,
		Wrap:    []string{"ip", "netns", "exec", from},
		Dial:    func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) },
		// Thousands of Nodes are created at once; the default
		// in-flight limits would throttle the benchmark's own writes.
		Args: []string{"--max-requests-inflight=2000", "--max-mutating-requests-inflight=1000"},
	})
	if err != nil {
		return err
	}
	if s.admin, err = s.api.Client(); err != nil {
		return err
	}
	s.progress("kube-apiserver ready at %s in %s (log %s)\n", s.api.URL, time.Since(start).Round(time.Millisecond), s.api.Log)
	return nil
}

// flannelIdentity binds upstream's ClusterRole (dist/kube-flannel.yml) to
// flanneld's ServiceAccount user and writes its kubeconfig, so flanneld
// runs with no more rights than upstream grants.
func (s *kubeScaleRun) flannelIdentity(ctx context.Context) (string, error) {
	const user = "system:serviceaccount:kube-flannel:flannel"
	if err := kubeapi.GrantFlannelRole(ctx, s.admin, user); err != nil {
		return "", fmt.Errorf("lab: %w", err)
	}
	return s.api.WriteKubeconfig("flanneld.kubeconfig", user)
}

func peerName(i int) string { return fmt.Sprintf("peer-%05d", i) }

// createPeers creates a Node per lease with 16 writers at a time.
func (s *kubeScaleRun) createPeers(ctx context.Context, leases []lease.Lease, beat time.Time) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := make(chan int)
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	var done atomic.Int64
	for range 16 {
		wg.Go(func() {
			for i := range ch {
				l := leases[i]
				if err := s.createNode(ctx, peerName(i), l.Subnet, &l, beat); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					continue
				}
				if n := done.Add(1); n%1000 == 0 {
					s.progress("  %d/%d\n", n, len(leases))
				}
			}
		})
	}
feed:
	for i := range leases {
		select {
		case ch <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(ch)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// createNode makes a Node as a real cluster's writers do, each leaving
// its managedFields entry: the kubelet creates it (labels, annotations)
// and reports its status, the controller-manager assigns the podCIDR,
// and, when l is given, the node's flanneld publishes l in annotations
// and sets NetworkUnavailable=False.
func (s *kubeScaleRun) createNode(ctx context.Context, name string, podCIDR netip.Prefix, l *lease.Lease, beat time.Time) error {
	if err := s.joinNode(ctx, name, podCIDR, beat); err != nil {
		return err
	}
	if l == nil {
		return nil
	}
	return s.annotate(ctx, name, *l, beat)
}

// joinNode is a node before its flanneld runs: the kubelet's and the
// controller-manager's writes.
func (s *kubeScaleRun) joinNode(ctx context.Context, name string, podCIDR netip.Prefix, beat time.Time) error {
	nodes := s.admin.CoreV1().Nodes()
	if _, err := nodes.Create(ctx, kubeletNode(name), metav1.CreateOptions{FieldManager: "kubelet"}); err != nil {
		return fmt.Errorf("lab: create node %s: %w", name, err)
	}
	cidr := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`, podCIDR, podCIDR)
	n, err := nodes.Patch(ctx, name, types.StrategicMergePatchType, []byte(cidr),
		metav1.PatchOptions{FieldManager: "kube-controller-manager"})
	if err != nil {
		return fmt.Errorf("lab: assign podCIDR to node %s: %w", name, err)
	}
	n.Status = kubeletStatus(name, beat)
	if _, err := nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{FieldManager: "kubelet"}); err != nil {
		return fmt.Errorf("lab: node %s status: %w", name, err)
	}
	return nil
}

// annotate is what a peer's flanneld writes: upstream's annotations and
// the NetworkUnavailable condition, through the status subresource.
func (s *kubeScaleRun) annotate(ctx context.Context, name string, l lease.Lease, beat time.Time) error {
	_, err := s.admin.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, flannelPatch(l, beat),
		metav1.PatchOptions{FieldManager: "flanneld"}, "status")
	if err != nil {
		return fmt.Errorf("lab: annotate node %s: %w", name, err)
	}
	return nil
}

// flannelPatch is upstream flanneld's two writes to its node, as one.
func flannelPatch(l lease.Lease, beat time.Time) []byte {
	const p = kube.DefaultAnnotationPrefix + "/"
	at := metav1.NewTime(beat)
	patch := map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{
			p + "kube-subnet-manager": "true",
			p + "backend-type":        l.Attrs.BackendType,
			p + "backend-data":        string(l.Attrs.BackendData),
			p + "public-ip":           l.Attrs.PublicIP.String(),
		}},
		"status": map[string]any{"conditions": []v1.NodeCondition{{
			Type: v1.NodeNetworkUnavailable, Status: v1.ConditionFalse, Reason: kube.ReasonFlannelIsUp,
			Message: "Flannel is running on this node", LastTransitionTime: at, LastHeartbeatTime: at,
		}}},
	}
	b, err := json.Marshal(patch)
	if err != nil {
		panic(err) // maps of strings and a NodeCondition always marshal
	}
	return b
}

// heartbeat is a kubelet status report: every condition's heartbeat time.
func (s *kubeScaleRun) heartbeat(ctx context.Context, name string, beat time.Time) error {
	var conds []string
	for _, c := range kubeletConditions {
		conds = append(conds, fmt.Sprintf(`{"type":%q,"lastHeartbeatTime":%q}`, c, beat.UTC().Format(time.RFC3339)))
	}
	patch := `{"status":{"conditions":[` + strings.Join(conds, ",") + `]}}`
	_, err := s.admin.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, []byte(patch),
		metav1.PatchOptions{FieldManager: "kubelet"}, "status")
	if err != nil {
		return fmt.Errorf("lab: heartbeat of node %s: %w", name, err)
	}
	return nil
}

var kubeletConditions = []v1.NodeConditionType{v1.NodeMemoryPressure, v1.NodeDiskPressure, v1.NodePIDPressure, v1.NodeReady}

// kubeletNode is a Node as a kubelet (with kubeadm) registers it.
func kubeletNode(name string) *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: name,
		Labels: map[string]string{
			"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
			"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux", "kubernetes.io/hostname": name,
			"node.kubernetes.io/instance-type": "m5.large",
			"topology.kubernetes.io/region":    "eu-west-1", "topology.kubernetes.io/zone": "eu-west-1a",
		},
		Annotations: map[string]string{
			"kubeadm.alpha.kubernetes.io/cri-socket":                 "unix:///var/run/containerd/containerd.sock",
			"node.alpha.kubernetes.io/ttl":                           "0",
			"volumes.kubernetes.io/controller-managed-attach-detach": "true",
		},
	}}
}

// kubeletStatus is a kubelet's status report: capacity, conditions,
// addresses, system info and some forty cached images.
func kubeletStatus(name string, beat time.Time) v1.NodeStatus {
	q := resource.MustParse
	st := v1.NodeStatus{
		Capacity: v1.ResourceList{v1.ResourceCPU: q("2"), v1.ResourceMemory: q("8006564Ki"), v1.ResourcePods: q("110"),
			v1.ResourceEphemeralStorage: q("101430960Ki"), "hugepages-1Gi": q("0"), "hugepages-2Mi": q("0")},
		Allocatable: v1.ResourceList{v1.ResourceCPU: q("1930m"), v1.ResourceMemory: q("7264164Ki"), v1.ResourcePods: q("110"),
			v1.ResourceEphemeralStorage: q("93478772582"), "hugepages-1Gi": q("0"), "hugepages-2Mi": q("0")},
		Addresses:       []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "198.18.0.1"}, {Type: v1.NodeHostName, Address: name}},
		DaemonEndpoints: v1.NodeDaemonEndpoints{KubeletEndpoint: v1.DaemonEndpoint{Port: 10250}},
		NodeInfo: v1.NodeSystemInfo{MachineID: "ec2a8f0e7d5b4a6c9e1f3b2d4c6a8e0f", SystemUUID: "ec2a8f0e-7d5b-4a6c-9e1f-3b2d4c6a8e0f",
			BootID: "5d2c1b0a-9f8e-4d7c-b6a5-f4e3d2c1b0a9", KernelVersion: "6.12.0-1-amd64", OSImage: "Debian GNU/Linux 13 (trixie)",
			ContainerRuntimeVersion: "containerd://2.1.4", KubeletVersion: "v1.37.2",
			OperatingSystem: "linux", Architecture: "amd64"},
	}
	for _, c := range kubeletConditions {
		st.Conditions = append(st.Conditions, v1.NodeCondition{Type: c, Status: v1.ConditionFalse, Reason: "KubeletHasSufficient" + string(c),
			Message: "kubelet has sufficient " + string(c), LastHeartbeatTime: metav1.NewTime(beat), LastTransitionTime: metav1.NewTime(beat.Add(-time.Hour))})
	}
	st.Conditions[len(st.Conditions)-1].Status, st.Conditions[len(st.Conditions)-1].Reason = v1.ConditionTrue, "KubeletReady"
	st.Conditions[len(st.Conditions)-1].Message = "kubelet is posting ready status"
	for i := range 40 {
		st.Images = append(st.Images, v1.ContainerImage{
			Names: []string{fmt.Sprintf("registry.example.com/team/app-%02d@sha256:%064x", i, i*7919),
				fmt.Sprintf("registry.example.com/team/app-%02d:v1.%d.0", i, i)},
			SizeBytes: int64(10_000_000 + 7919*i)})
	}
	return st
}

// measureSync starts flanneld and waits for every expected entry.
func (s *kubeScaleRun) measureSync(ctx context.Context, w *EntryWatch) error {
	h := s.l.Hosts[0]
	s.progress("starting flanneld (kube mode); waiting for %d routes, %d neighbours, %d FDB entries...\n",
		s.r.Want.Routes, s.r.Want.Neighs, s.r.Want.FDB)
	var err error
	if s.r.SyncTime, s.r.RSSSync, s.r.SyncCPU, err = s.l.startAndSync(ctx, h, w, s.o.SyncTimeout); err != nil {
		return err
	}
	if s.r.Have, err = CountEntries(h.NS, "flannel.1", netip.Prefix{}); err != nil {
		return err
	}
	s.progress("full sync in %s\n", s.r.SyncTime.Round(time.Millisecond))
	return nil
}

// measureNew makes nodes join one at a time, paced by s.o.Interval: the
// kubelet and the controller-manager write each (untimed), then its
// flanneld's annotation patch, timed from its return to the route
// existing.
func (s *kubeScaleRun) measureNew(ctx context.Context, w *EntryWatch, leases []lease.Lease) error {
	pid := s.l.Hosts[0].FlanneldPID
	s.progress("%d nodes join, one every %s...\n", len(leases), s.o.Interval)
	n, err := timeNewPeers(ctx, w, pid, "vxlan", s.o.Interval, leases, func(i int, l lease.Lease) (string, error) {
		name := peerName(s.o.Peers + i)
		beat := time.Now()
		if err := s.joinNode(ctx, name, l.Subnet, beat); err != nil {
			return "", err
		}
		return fmt.Sprintf("new node %s (%s)", name, l.Subnet), s.annotate(ctx, name, l, beat)
	})
	if err != nil {
		return err
	}
	s.r.Latencies, s.r.Before, s.r.NewNodeCPU = n.latencies, n.before, n.cpuPerPeer
	s.r.RSSEnd, s.r.PeakRSS, err = endMemory(pid)
	return err
}

// watcher is one way of watching the Nodes, run in this process with
// flanneld's own code (package kube), its bytes counted.
type watcher struct {
	name    string
	bytes   atomic.Int64
	updates chan lease.Update
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	err     error
}

// startWatcher runs a kube.Source's Watch as flanneld does (protobuf,
// updates as metadata) or, upstream, as upstream's flanneld does (JSON,
// whole Nodes kept whole), and waits for its Reset.
func (s *kubeScaleRun) startWatcher(ctx context.Context, name string, upstream bool, cost *WatchCost) (*watcher, error) {
	cfg, err := s.api.RESTConfig()
	if err != nil {
		return nil, err
	}
	cfg.ContentType, cfg.AcceptContentTypes = kube.ProtobufContentType, kube.ProtobufContentType+",application/json"
	if upstream {
		cfg.ContentType, cfg.AcceptContentTypes = "application/json", "application/json"
	}
	w := &watcher{name: name, updates: make(chan lease.Update, 1024)}
	cfg.Wrap(kubeapi.CountBytes(&w.bytes))
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	m, err := metadata.NewForConfig(rest.CopyConfig(cfg))
	if err != nil {
		return nil, err
	}
	src, err := kube.New(ctx, kube.Options{Client: c, Metadata: m, NodeName: s.l.Hosts[0].Name, NetConfPath: s.conf,
		UpstreamWatch: upstream})
	if err != nil {
		return nil, err
	}
	heap0 := heapInuse()
	wctx, cancel := context.WithCancel(ctx)
	w.cancel = cancel
	start := time.Now()
	w.wg.Go(func() {
		w.err = src.Watch(wctx, func(u lease.Update) {
			select {
			case w.updates <- u:
			case <-wctx.Done():
			}
		})
	})
	select {
	case u := <-w.updates:
		cost.SyncTime = time.Since(start)
		cost.SyncBytesPerNode = float64(w.bytes.Load()) / float64(len(u.Leases)+1)
		cost.HeapPerNode = float64(heapInuse()-heap0) / float64(len(u.Leases)+1)
	case <-time.After(5 * time.Minute):
		w.stop()
		return nil, fmt.Errorf("watch %s: no Reset within 5 min: %v", name, w.err)
	}
	return w, nil
}

func (w *watcher) stop() {
	w.cancel()
	w.wg.Wait()
}

// until waits for an update with an event for subnet sn.
func (w *watcher) until(ctx context.Context, sn netip.Prefix) error {
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	for {
		select {
		case u := <-w.updates:
			for _, e := range u.Events {
				if e.Lease.Subnet == sn {
					return nil
				}
			}
		case <-t.C:
			return fmt.Errorf("watch %s: no event for %s within a minute", w.name, sn)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// measureWatch runs our watch and upstream's way side by side (their
// initial syncs one after the other, so neither slows the other), then
// sends kubelet status updates to random peers, and a last change that
// both must report, and divides what each read by the updates.
func (s *kubeScaleRun) measureWatch(ctx context.Context) error {
	s.progress("watching the %d Nodes as flanneld does and as upstream does...\n", s.o.Peers+s.o.NewNodes+1)
	ours, err := s.startWatcher(ctx, "ours", false, &s.r.Ours)
	if err != nil {
		return err
	}
	defer ours.stop()
	up, err := s.startWatcher(ctx, "upstream", true, &s.r.Upstream)
	if err != nil {
		return err
	}
	defer up.stop()
	o0, u0 := ours.bytes.Load(), up.bytes.Load()
	n := s.o.Peers + s.o.NewNodes
	beat := time.Now()
	for i := range s.o.Updates {
		if err := s.heartbeat(ctx, peerName(rand.IntN(n)), beat.Add(time.Duration(i+1)*time.Second)); err != nil {
			return err
		}
	}
	// The last update is one both must report: a peer's public IP.
	const p = kube.DefaultAnnotationPrefix + "/"
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"172.20.255.254"}}}`, p+"public-ip")
	if _, err := s.admin.CoreV1().Nodes().Patch(ctx, peerName(0), types.StrategicMergePatchType, []byte(patch),
		metav1.PatchOptions{FieldManager: "flanneld"}, "status"); err != nil {
		return fmt.Errorf("lab: change node %s: %w", peerName(0), err)
	}
	sn := FakeLeases("vxlan", kubeScaleOwn, 1)[0].Subnet
	for _, w := range []*watcher{ours, up} {
		if err := w.until(ctx, sn); err != nil {
			return err
		}
	}
	s.r.Updates = s.o.Updates + 1
	s.r.Ours.BytesPerUpdate = float64(ours.bytes.Load()-o0) / float64(s.r.Updates)
	s.r.Upstream.BytesPerUpdate = float64(up.bytes.Load()-u0) / float64(s.r.Updates)
	return nil
}

// heapInuse is the Go heap in use after a collection.
func heapInuse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}
