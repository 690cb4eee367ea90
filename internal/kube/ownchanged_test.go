package kube_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

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
	patch := []byte(`{"spec":{"podCIDR":"10.244.30.0/24","podCIDRs":["10.244.30.0/24"]}}`)
	if _, err := r.admin.CoreV1().Nodes().Patch(ctx, "late", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("OwnChanged not closed within 10 s of the podCIDR's assignment")
	}
	if l, err := s.Acquire(ctx, r.nc, attrs, lease.Prev{}); err != nil || l.Subnet.String() != "10.244.30.0/24" {
		t.Fatalf("Acquire after the podCIDR was assigned: %v, %v", l, err)
	}
}
