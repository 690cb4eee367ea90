package kube

import (
	"context"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/metadata"
)

// Why two kinds of object. Of a peer's Node flanneld reads its name, UID,
// annotations and spec.podCIDR(s); a Node's podCIDRs cannot change once
// set (the API server refuses it: "node updates may not change podCIDR
// except from \"\" to valid"), so after a node has been seen whole with
// them, everything of it that can still change is in its metadata. Most
// updates of a Node are the kubelet's status (conditions, images), and a
// kubelet's whole Node costs 9-11 KB a time in protobuf; its metadata 2-3.5
// KB, three quarters of that managedFields, which no request can leave out.
// So the initial state (and every re-list) is streamed as whole Nodes, and
// from the bookmark that ends it on, the watch carries only
// PartialObjectMetadata. A node first seen in that watch (created later,
// re-created with a new UID, or without podCIDRs when last seen whole) is
// read once with a GET; a node that is no peer (and not ours) is not read,
// since its podCIDRs do not matter until its flanneld annotates it.

// nodeLW lists and watches Nodes for the informer: whole Nodes for the
// initial state, metadata for the updates.
type nodeLW struct {
	s    *Source
	meta metadata.ResourceInterface
}

func (lw nodeLW) list(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
	return lw.s.client.CoreV1().Nodes().List(ctx, o)
}

func (lw nodeLW) watch(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	switch {
	case o.SendInitialEvents != nil && *o.SendInitialEvents:
		full, err := lw.s.client.CoreV1().Nodes().Watch(ctx, o)
		if err != nil {
			return nil, err
		}
		return splice(ctx, full, func(ctx context.Context, rv string) (watch.Interface, error) {
			next := metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: o.AllowWatchBookmarks, TimeoutSeconds: o.TimeoutSeconds}
			return lw.meta.Watch(ctx, next)
		}), nil
	case o.ResourceVersion == "" || o.ResourceVersion == "0":
		// Such a watch starts with synthetic ADDED events of every node
		// and no bookmark to end them: whole Nodes throughout.
		return lw.s.client.CoreV1().Nodes().Watch(ctx, o)
	default:
		return lw.meta.Watch(ctx, o)
	}
}

// splicedWatch passes on the events of a watch of whole Nodes up to and
// including the bookmark that ends its initial events, then those of the
// metadata watch that next opens at that bookmark's resource version.
type splicedWatch struct {
	out    chan watch.Event
	cancel context.CancelFunc
	done   chan struct{}
}

func splice(ctx context.Context, full watch.Interface, next func(context.Context, string) (watch.Interface, error)) *splicedWatch {
	ctx, cancel := context.WithCancel(ctx)
	w := &splicedWatch{out: make(chan watch.Event), cancel: cancel, done: make(chan struct{})}
	go w.run(ctx, full, next)
	return w
}

func (w *splicedWatch) ResultChan() <-chan watch.Event { return w.out }

// Stop ends the watch and waits for its goroutine.
func (w *splicedWatch) Stop() {
	w.cancel()
	<-w.done
}

func (w *splicedWatch) run(ctx context.Context, cur watch.Interface, next func(context.Context, string) (watch.Interface, error)) {
	defer close(w.done)
	defer close(w.out)
	spliced := false
	defer func() { cur.Stop() }()
	for {
		var ev watch.Event
		var ok bool
		select {
		case <-ctx.Done():
			return
		case ev, ok = <-cur.ResultChan():
		}
		if !ok {
			return
		}
		select {
		case <-ctx.Done():
			return
		case w.out <- ev:
		}
		if spliced || ev.Type != watch.Bookmark {
			continue
		}
		m, err := meta.Accessor(ev.Object)
		if err != nil || m.GetAnnotations()[metav1.InitialEventsAnnotationKey] != "true" {
			continue
		}
		cur.Stop()
		nw, err := next(ctx, m.GetResourceVersion())
		if err != nil {
			// Closing makes the reflector watch again from this
			// bookmark, which opens the metadata watch through
			// nodeLW.
			cur = watch.NewEmptyWatch()
			return
		}
		cur, spliced = nw, true
	}
}

// nodeSpec is what flanneld keeps of a Node seen whole: which node it was
// and its podCIDRs, which cannot change for that UID once set.
type nodeSpec struct {
	uid      string
	podCIDR  string
	podCIDRs []string
}

func (p nodeSpec) assigned() bool { return p.podCIDR != "" || len(p.podCIDRs) > 0 }

// cached is what the informer keeps of a Node on the metadata path: its
// name, UID, resource version and our annotations, and its podCIDRs when
// it came whole. A third of the size of a slimmed v1.Node.
type cached struct {
	metav1.ObjectMeta
	spec *nodeSpec // nil: it came as metadata
}

// transform is the informer's transform on the metadata path: whole Nodes
// and metadata both become cached. It is idempotent, as client-go needs
// (a streamed initial state is transformed, then handed on).
func (k Keys) transform(obj any) (any, error) {
	switch o := obj.(type) {
	case *v1.Node:
		p := nodeSpec{uid: string(o.UID), podCIDR: o.Spec.PodCIDR, podCIDRs: o.Spec.PodCIDRs}
		return &cached{ObjectMeta: k.slimMeta(&o.ObjectMeta), spec: &p}, nil
	case *metav1.PartialObjectMetadata:
		return &cached{ObjectMeta: k.slimMeta(&o.ObjectMeta)}, nil
	}
	return obj, nil // cached already, cache.DeletedFinalStateUnknown and the like
}

// slimMeta keeps of m the name, UID, resource version and our annotations.
func (k Keys) slimMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion, Annotations: k.ours(m.Annotations)}
}

// ours returns the annotations of a that flanneld reads; nil for none. The
// keys flanneld knows are stored as its own strings, not one copy a node.
func (k Keys) ours(a map[string]string) map[string]string {
	var out map[string]string
	for key, v := range a {
		if !k.mine(key) {
			continue
		}
		for _, c := range [...]string{k.SubnetKubeManaged, k.BackendType, k.BackendData, k.BackendV6Data, k.PublicIP,
			k.PublicIPv6, k.PublicIPOverwrite, k.PublicIPv6Overwrite, k.NodePublicIP, k.NodePublicIPv6} {
			if key == c {
				key = c
				break
			}
		}
		if out == nil {
			out = make(map[string]string, 8)
		}
		out[key] = v
	}
	return out
}

// nodeOf is the Node that metadata m describes, with spec p.
func nodeOf(m *metav1.ObjectMeta, p nodeSpec) *v1.Node {
	return &v1.Node{ObjectMeta: *m, Spec: v1.NodeSpec{PodCIDR: p.podCIDR, PodCIDRs: p.podCIDRs}}
}
