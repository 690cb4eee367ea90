package kube_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/kube"
	"github.com/flannel-go/flannel/internal/kubetest"
	"github.com/flannel-go/flannel/internal/lease"
)

// While Watch runs, OwnChanged is closed when our node gets its podCIDR,
// so that an Acquire that failed for want of one is retried at once.
func TestOwnChangedWhenPodCIDRAssigned(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	kubetest.CreateNode(t, r.admin, "late")
	s := r.source(t, "late", nil)
	attrs := vxlanAttrs("192.0.2.30", "0a:58:0a:f4:1e:00")
	if _, err := s.Acquire(ctx, r.nc, attrs, lease.Prev{}); !errors.Is(err, kube.ErrPodCIDR) || !strings.Contains(err.Error(), `node "late": spec.podCIDR`) {
		t.Fatalf("Acquire without a podCIDR: %v, want ErrPodCIDR naming the node and the field", err)
	}
	ch := feed(t, s)
	if u := next(t, ch); !u.Reset {
		t.Fatalf("first update = %+v", u)
	}

	changed := s.OwnChanged()
	r.assignPodCIDR(t, "late", "10.244.30.0/24")
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("OwnChanged not closed within 10 s of the podCIDR's assignment")
	}
	if l, err := s.Acquire(ctx, r.nc, attrs, lease.Prev{}); err != nil || l.Subnet.String() != "10.244.30.0/24" {
		t.Fatalf("Acquire after the podCIDR was assigned: %v, %v", l, err)
	}
}

// Without Watch (the alloc backend runs none), WatchOwn returns at the
// podCIDR's assignment, also when it came between the failed Acquire and
// the call, and otherwise waits.
func TestWatchOwnWithoutInformer(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	kubetest.CreateNode(t, r.admin, "alone")
	s := r.source(t, "alone", nil)
	attrs := vxlanAttrs("192.0.2.31", "0a:58:0a:f4:1f:00")
	if _, err := s.Acquire(ctx, r.nc, attrs, lease.Prev{}); !errors.Is(err, kube.ErrPodCIDR) {
		t.Fatalf("Acquire without a podCIDR: %v, want ErrPodCIDR", err)
	}

	// Nothing changes: it waits.
	wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	err := s.WatchOwn(wctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WatchOwn with no change: %v, want it to wait until its context ends", err)
	}

	// Assigned while it waits.
	done := make(chan error, 1)
	go func() { done <- s.WatchOwn(ctx) }()
	r.assignPodCIDR(t, "alone", "10.244.31.0/24")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WatchOwn: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WatchOwn did not return within 10 s of the podCIDR's assignment")
	}

	// Assigned between the failed Acquire and the call: it returns at once.
	kubetest.CreateNode(t, r.admin, "alone2")
	s2 := r.source(t, "alone2", nil)
	if _, err := s2.Acquire(ctx, r.nc, attrs, lease.Prev{}); !errors.Is(err, kube.ErrPodCIDR) {
		t.Fatalf("Acquire without a podCIDR: %v, want ErrPodCIDR", err)
	}
	r.assignPodCIDR(t, "alone2", "10.244.32.0/24")
	wctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s2.WatchOwn(wctx); err != nil {
		t.Fatalf("WatchOwn after a change it had not seen: %v, want nil at once", err)
	}
}
