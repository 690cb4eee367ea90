package kube

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/flannel-go/flannel/internal/backoff"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

// Watch runs the one informer on Nodes that this source holds. It calls fn
// with a Reset update of every peer's lease (this node's own included once
// it is annotated) when the informer has synced, then with each batch of
// changes, until ctx ends. A peer is a node carrying kube-subnet-manager=true
// whose annotations and podCIDRs make a valid lease; a change of any one
// field of it is an update, and a node that stops qualifying is removed.
// client-go's reflector retries a lost connection by itself and re-lists
// when it must; differences found then arrive as ordinary events. The
// informer takes the initial state as whole Nodes and later updates as
// metadata alone (nodewatch.go says why that is enough).
//
// The network config (for its address families) is the one Acquire was
// given, else net-conf.json. Only one Watch may run at a time.
func (s *Source) Watch(ctx context.Context, fn func(lease.Update)) error {
	nc, err := s.netConfig(ctx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.watchers > 0 {
		s.mu.Unlock()
		return errors.New("kube: Watch is already running")
	}
	s.watchers++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.watchers--
		s.watching = false
		s.own = nil
		s.notifyOwnLocked() // Keep goes back to reading the node itself
		s.mu.Unlock()
	}()

	ctx, cancel := context.WithCancel(ctx)
	f := newFeed(ctx, s, nc)
	logger := Logger(s.log)
	opts := cache.InformerOptions{
		Logger: &logger,
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    f.set,
			UpdateFunc: func(_, n any) { f.set(n) },
			DeleteFunc: f.del,
		},
	}
	switch {
	case s.fullCache:
		// Upstream's way, for the benchmark: whole Nodes, kept whole.
		opts.ListerWatcher, opts.ObjectType = s.nodeListWatch(), &v1.Node{}
	case s.meta == nil:
		opts.ListerWatcher, opts.ObjectType = s.nodeListWatch(), &v1.Node{}
		opts.Transform = s.keys.slim
	default:
		// Whole Nodes and metadata both (nodewatch.go), so no one
		// ObjectType.
		lw := nodeLW{s: s, meta: s.meta.Resource(v1.SchemeGroupVersion.WithResource("nodes"))}
		opts.ListerWatcher = &cache.ListWatch{ListWithContextFunc: lw.list, WatchFuncWithContext: lw.watch}
		opts.Transform = s.keys.transform
	}
	opts.ListerWatcher = outlasting(opts.ListerWatcher, s.log)
	_, ctrl := cache.NewInformerWithOptions(opts)
	var wg sync.WaitGroup
	wg.Go(func() { ctrl.RunWithContext(ctx) })
	defer func() {
		cancel()
		wg.Wait()
	}()

	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-ctrl.HasSyncedChecker().Done():
	}
	f.mu.Lock()
	reset := lease.Update{Reset: true, Leases: f.snapshot()}
	f.pending = nil
	f.mu.Unlock()
	s.mu.Lock()
	s.watching = true
	s.notifyOwnLocked()
	s.mu.Unlock()
	fn(reset)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-f.kick:
		}
		f.mu.Lock()
		evs := f.pending
		f.pending = nil
		f.mu.Unlock()
		if len(evs) > 0 {
			fn(lease.Update{Events: evs})
		}
	}
}

// nodeListWatch lists and watches whole Nodes.
func (s *Source) nodeListWatch() *cache.ListWatch {
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return s.client.CoreV1().Nodes().List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return s.client.CoreV1().Nodes().Watch(ctx, o)
		},
	}
}

// feed turns the informer's node notifications, which arrive on the
// informer's goroutine, into lease events queued for Watch's goroutine.
type feed struct {
	ctx  context.Context // Watch's: ends the reads of nodes
	s    *Source
	nc   *netconf.Config
	kick chan struct{} // capacity 1: pending has events

	mu      sync.Mutex
	peers   map[string]lease.Lease // node name → lease, for valid peers only
	warned  map[string]string      // node name → the complaint logged for it
	known   map[string]nodeSpec    // node name → its UID and podCIDRs when last seen whole
	pending []lease.Event
}

func newFeed(ctx context.Context, s *Source, nc *netconf.Config) *feed {
	return &feed{
		ctx: ctx, s: s, nc: nc,
		kick:   make(chan struct{}, 1),
		peers:  make(map[string]lease.Lease),
		warned: make(map[string]string),
		known:  make(map[string]nodeSpec),
	}
}

// set takes a node added or updated: a whole (slimmed) Node, or its
// metadata alone, or either as cached.
func (f *feed) set(obj any) {
	switch o := obj.(type) {
	case *v1.Node:
		f.mu.Lock()
		f.known[o.Name] = nodeSpec{uid: string(o.UID), podCIDR: o.Spec.PodCIDR, podCIDRs: o.Spec.PodCIDRs}
		f.mu.Unlock()
		f.setNode(o)
	case *cached:
		if o.spec == nil {
			f.setMeta(&o.ObjectMeta)
			return
		}
		f.mu.Lock()
		f.known[o.Name] = *o.spec
		f.mu.Unlock()
		f.setNode(nodeOf(&o.ObjectMeta, *o.spec))
	case *metav1.PartialObjectMetadata:
		f.setMeta(&o.ObjectMeta)
	}
}

// setMeta completes a node's metadata with the podCIDRs last seen of it.
// When there are none to trust (a node not seen whole yet, re-created with
// a new UID, or without podCIDRs then), it reads the whole node, unless the
// node is no peer and not ours, for whom podCIDRs do not matter yet.
func (f *feed) setMeta(m *metav1.ObjectMeta) {
	f.mu.Lock()
	p, ok := f.known[m.Name]
	f.mu.Unlock()
	switch {
	case ok && p.uid == string(m.UID) && p.assigned():
	case m.Name != f.s.node && m.Annotations[f.s.keys.SubnetKubeManaged] != "true":
		p = nodeSpec{} // nodeLease stops at errNotPeer before the podCIDRs
	default:
		n, err := f.fetch(m.Name)
		if err != nil {
			// Gone (its deletion is on its way) or Watch is ending.
			return
		}
		slim, _ := f.s.keys.transform(n)
		f.set(slim)
		return
	}
	f.setNode(nodeOf(m, p))
}

// fetch reads node name whole, retrying until it is read, found absent or
// Watch ends.
func (f *feed) fetch(name string) (*v1.Node, error) {
	retry := backoff.Backoff{Min: 500 * time.Millisecond, Max: 30 * time.Second, Jitter: backoff.Within10}
	for {
		n, err := f.s.client.CoreV1().Nodes().Get(f.ctx, name, metav1.GetOptions{})
		if err == nil || apierrors.IsNotFound(err) || f.ctx.Err() != nil {
			return n, err
		}
		d := retry.Next()
		f.s.log.Warn("read node seen in the watch", "node", name, "err", err, "retry_in", d)
		if err := backoff.Sleep(f.ctx, d); err != nil {
			return nil, err
		}
	}
}

func (f *feed) setNode(n *v1.Node) {
	if n.Name == f.s.node {
		f.s.setOwn(n)
	}
	l, err := nodeLease(n, f.s.keys, f.nc)
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case err == nil:
		delete(f.warned, n.Name)
		f.apply(n.Name, &l)
	case errors.Is(err, errNotPeer):
		delete(f.warned, n.Name)
		f.apply(n.Name, nil)
	default:
		if f.warned[n.Name] != err.Error() {
			f.warned[n.Name] = err.Error()
			f.s.log.Warn("ignoring node with unusable flannel annotations", "node", n.Name, "err", err)
		}
		f.apply(n.Name, nil)
	}
}

func (f *feed) del(obj any) {
	var name string
	if o, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		// Nodes are cluster-scoped: the key is the name.
		name = o.Key
	} else if m, err := meta.Accessor(obj); err == nil {
		name = m.GetName()
	} else {
		return
	}
	if name == f.s.node {
		f.s.setOwn(nil)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.warned, name)
	delete(f.known, name)
	f.apply(name, nil)
}

// apply records node name's lease (nil: it has none) and queues the events
// that tell the change: a new lease is Added, a lost one Removed, changed
// attributes an Added of the new value, a changed subnet a Removed of the
// old and an Added of the new. An update that changes nothing flanneld
// reads (status, labels, heartbeats) queues nothing.
func (f *feed) apply(name string, l *lease.Lease) {
	old, had := f.peers[name]
	var evs []lease.Event
	switch {
	case l == nil && !had:
		return
	case l == nil:
		delete(f.peers, name)
		evs = append(evs, removed(old))
	default:
		if had && sameLease(old, *l) {
			return
		}
		if had && (old.Subnet != l.Subnet || old.Subnet6 != l.Subnet6) {
			evs = append(evs, removed(old))
		}
		f.peers[name] = *l
		evs = append(evs, lease.Event{Type: lease.Added, Lease: *l})
	}
	f.pending = append(f.pending, evs...)
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

func removed(l lease.Lease) lease.Event {
	return lease.Event{Type: lease.Removed, Lease: lease.Lease{Subnet: l.Subnet, Subnet6: l.Subnet6}}
}

func sameLease(a, b lease.Lease) bool {
	return a.Subnet == b.Subnet && a.Subnet6 == b.Subnet6 && a.Attrs.Equal(b.Attrs)
}

// snapshot lists every peer's lease, ordered by node name.
func (f *feed) snapshot() []lease.Lease {
	out := make([]lease.Lease, 0, len(f.peers))
	for _, name := range slices.Sorted(maps.Keys(f.peers)) {
		out = append(out, f.peers[name])
	}
	return out
}

// setOwn records our node as the informer sees it and wakes Keep when
// something Keep looks at changed.
func (s *Source) setOwn(n *v1.Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n != nil && s.own != nil && maps.Equal(n.Annotations, s.own.Annotations) &&
		n.Spec.PodCIDR == s.own.Spec.PodCIDR && slices.Equal(n.Spec.PodCIDRs, s.own.Spec.PodCIDRs) {
		s.own = n
		return
	}
	s.own = n
	s.notifyOwnLocked()
}

func (s *Source) notifyOwnLocked() {
	close(s.ownChanged)
	s.ownChanged = make(chan struct{})
}
