package kube

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

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
// when it must; differences found then arrive as ordinary events.
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

	f := newFeed(s, nc)
	logger := Logger(s.log)
	transform := cache.TransformFunc(s.keys.slim)
	if s.fullCache {
		transform = nil
	}
	_, ctrl := cache.NewInformerWithOptions(cache.InformerOptions{
		Logger: &logger,
		ListerWatcher: outlasting(&cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return s.client.CoreV1().Nodes().List(ctx, o)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return s.client.CoreV1().Nodes().Watch(ctx, o)
			},
		}, s.log),
		ObjectType: &v1.Node{},
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    f.set,
			UpdateFunc: func(_, n any) { f.set(n) },
			DeleteFunc: f.del,
		},
		Transform: transform,
	})
	ctx, cancel := context.WithCancel(ctx)
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

// feed turns the informer's node notifications, which arrive on the
// informer's goroutine, into lease events queued for Watch's goroutine.
type feed struct {
	s    *Source
	nc   *netconf.Config
	kick chan struct{} // capacity 1: pending has events

	mu      sync.Mutex
	peers   map[string]lease.Lease // node name → lease, for valid peers only
	warned  map[string]string      // node name → the complaint logged for it
	pending []lease.Event
}

func newFeed(s *Source, nc *netconf.Config) *feed {
	return &feed{
		s: s, nc: nc,
		kick:   make(chan struct{}, 1),
		peers:  make(map[string]lease.Lease),
		warned: make(map[string]string),
	}
}

func (f *feed) set(obj any) {
	n, ok := obj.(*v1.Node)
	if !ok {
		return
	}
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
	switch o := obj.(type) {
	case *v1.Node:
		name = o.Name
	case cache.DeletedFinalStateUnknown:
		// Nodes are cluster-scoped: the key is the name.
		name = o.Key
	default:
		return
	}
	if name == f.s.node {
		f.s.setOwn(nil)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.warned, name)
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
