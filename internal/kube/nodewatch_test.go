package kube

import (
	"context"
	"errors"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/flannel-go/flannel/internal/lease"
)

func recv(t *testing.T, w watch.Interface) (watch.Event, bool) {
	t.Helper()
	select {
	case ev, ok := <-w.ResultChan():
		return ev, ok
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10 s")
		return watch.Event{}, false
	}
}

func initialEventsEnd(rv string) *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{ResourceVersion: rv,
		Annotations: map[string]string{metav1.InitialEventsAnnotationKey: "true"}}}
}

// TestSplice: whole Nodes up to the bookmark that ends the initial events,
// then the metadata watch opened at its resource version, on one channel.
func TestSplice(t *testing.T) {
	full, meta := watch.NewFakeWithChanSize(10, false), watch.NewFakeWithChanSize(10, false)
	var rvs []string
	w := splice(context.Background(), full, func(_ context.Context, rv string) (watch.Interface, error) {
		rvs = append(rvs, rv)
		return meta, nil
	})
	full.Add(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "a"}})
	// An ordinary bookmark is passed on and changes nothing.
	full.Action(watch.Bookmark, &v1.Node{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "5"}})
	full.Action(watch.Bookmark, initialEventsEnd("10"))
	for _, want := range []watch.EventType{watch.Added, watch.Bookmark, watch.Bookmark} {
		if ev, ok := recv(t, w); !ok || ev.Type != want {
			t.Fatalf("got %v %v, want %s", ev.Type, ok, want)
		}
	}
	meta.Modify(&metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: "a", ResourceVersion: "11"}})
	ev, ok := recv(t, w)
	if _, isMeta := ev.Object.(*metav1.PartialObjectMetadata); !ok || ev.Type != watch.Modified || !isMeta {
		t.Fatalf("after the splice: %v %T", ev.Type, ev.Object)
	}
	if len(rvs) != 1 || rvs[0] != "10" {
		t.Errorf("metadata watch opened at %q, want once at 10", rvs)
	}
	if !full.IsStopped() {
		t.Error("the whole-Node watch was not stopped at the splice")
	}
	w.Stop()
	if !meta.IsStopped() {
		t.Error("Stop did not stop the metadata watch")
	}
	if _, ok := <-w.ResultChan(); ok {
		t.Error("channel open after Stop")
	}
}

// TestSpliceOpenFails: when the metadata watch cannot be opened the
// channel closes, so the reflector watches again from the bookmark.
func TestSpliceOpenFails(t *testing.T) {
	full := watch.NewFakeWithChanSize(10, false)
	w := splice(context.Background(), full, func(context.Context, string) (watch.Interface, error) {
		return nil, errors.New("refused")
	})
	defer w.Stop()
	full.Action(watch.Bookmark, initialEventsEnd("10"))
	if ev, ok := recv(t, w); !ok || ev.Type != watch.Bookmark {
		t.Fatalf("got %v %v", ev.Type, ok)
	}
	if _, ok := recv(t, w); ok {
		t.Fatal("channel still open")
	}
}

// TestFeedMetadata: metadata of a node seen whole takes its podCIDRs; of
// a node not seen whole, or re-created with another UID, is completed by
// reading the node; a node that is no peer is not read.
func TestFeedMetadata(t *testing.T) {
	k, _ := ParseAnnotationPrefix(DefaultAnnotationPrefix)
	n1 := node("n1", []string{"10.244.1.0/24"}, peerAnn(k, "192.0.2.1", "null"))
	n1.UID = "uid-1"
	s, c := fakeSource(t, n1)
	s.keys = k
	f := newFeed(context.Background(), s, mustConf(t, confV4))
	take := func() []lease.Event {
		evs := f.pending
		f.pending = nil
		return evs
	}
	metaOf := func(n *v1.Node) *metav1.PartialObjectMetadata {
		return &metav1.PartialObjectMetadata{ObjectMeta: *n.ObjectMeta.DeepCopy()}
	}
	gets := func() int {
		g := 0
		for _, a := range c.Actions() {
			if a.GetVerb() == "get" {
				g++
			}
		}
		c.ClearActions()
		return g
	}

	f.set(mustSlim(t, k, n1))
	take()
	m := metaOf(n1)
	m.Annotations[k.PublicIP] = "192.0.2.9"
	f.set(m)
	if evs := take(); len(evs) != 1 || evs[0].Lease.Subnet.String() != "10.244.1.0/24" || evs[0].Lease.Attrs.PublicIP.String() != "192.0.2.9" {
		t.Fatalf("metadata update: %v", evs)
	}
	if g := gets(); g != 0 {
		t.Errorf("%d GETs for a node seen whole", g)
	}

	// Re-created: the new UID is read whole (the fake holds the new node).
	n1b := node("n1", []string{"10.244.7.0/24"}, peerAnn(k, "192.0.2.7", "null"))
	n1b.UID = "uid-2"
	if err := c.Tracker().Update(v1.SchemeGroupVersion.WithResource("nodes"), n1b, ""); err != nil {
		t.Fatal(err)
	}
	f.set(metaOf(n1b))
	if evs := take(); len(evs) != 2 || evs[0].Type != lease.Removed || evs[1].Lease.Subnet.String() != "10.244.7.0/24" {
		t.Fatalf("re-created: %v", evs)
	}
	if g := gets(); g != 1 {
		t.Errorf("%d GETs for a re-created node, want 1", g)
	}

	// No peer: not read, no lease.
	f.set(&metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: "other", UID: "uid-3"}})
	if evs := take(); len(evs) != 0 || gets() != 0 {
		t.Fatalf("not a peer: %v", evs)
	}
	// A peer the API server no longer has: nothing (its deletion follows).
	f.set(&metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: "gone", UID: "uid-4", Annotations: peerAnn(k, "192.0.2.4", "null")}})
	if evs := take(); len(evs) != 0 {
		t.Fatalf("gone: %v", evs)
	}
	f.del(metaOf(n1b))
	if evs := take(); len(evs) != 1 || evs[0].Type != lease.Removed {
		t.Fatalf("deleted: %v", evs)
	}
	if _, ok := f.known["n1"]; ok {
		t.Error("a deleted node's podCIDRs are still known")
	}
}

func mustSlim(t *testing.T, k Keys, n *v1.Node) *cached {
	t.Helper()
	o, err := k.transform(n)
	if err != nil {
		t.Fatal(err)
	}
	return o.(*cached)
}

// TestTransform: what the informer keeps on the metadata path, and that
// transforming twice changes nothing.
func TestTransform(t *testing.T) {
	k, _ := ParseAnnotationPrefix(DefaultAnnotationPrefix)
	n := node("n1", []string{"10.244.1.0/24"}, peerAnn(k, "192.0.2.1", "null"))
	n.UID, n.ResourceVersion = "uid-1", "42"
	n.Annotations["node.alpha.kubernetes.io/ttl"] = "0"
	n.Labels = map[string]string{"kubernetes.io/hostname": "n1"}
	n.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	n.Status.Images = []v1.ContainerImage{{Names: []string{"registry.k8s.io/pause:3.10"}, SizeBytes: 1}}
	c := mustSlim(t, k, n)
	if c.Name != "n1" || c.UID != "uid-1" || c.ResourceVersion != "42" || len(c.Annotations) != 4 ||
		c.Labels != nil || c.ManagedFields != nil || c.spec == nil || c.spec.uid != "uid-1" || c.spec.podCIDR != "10.244.1.0/24" {
		t.Fatalf("cached whole Node: %+v %+v", c.ObjectMeta, c.spec)
	}
	if again, _ := k.transform(c); again != any(c) {
		t.Error("transform of a cached object changed it")
	}
	m, _ := k.transform(&metav1.PartialObjectMetadata{ObjectMeta: n.ObjectMeta})
	if mc := m.(*cached); mc.spec != nil || len(mc.Annotations) != 4 || mc.ManagedFields != nil {
		t.Fatalf("cached metadata: %+v %+v", mc.ObjectMeta, mc.spec)
	}
	if o, _ := k.transform("tombstone"); o != "tombstone" {
		t.Errorf("transform of something else: %v", o)
	}
}
