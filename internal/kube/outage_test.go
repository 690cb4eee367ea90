package kube

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/flannel-go/flannel/internal/logbuf"
)

// refused is what client-go returns while nothing listens on the API
// server's port.
var refused = &url.Error{Op: "Get", URL: "https://192.0.2.1:6443/api/v1/nodes",
	Err: fmt.Errorf("dial tcp 192.0.2.1:6443: connect: %w", syscall.ECONNREFUSED)}

func TestUnreachable(t *testing.T) {
	gr := schema.GroupResource{Resource: "nodes"}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{refused, true},
		{fmt.Errorf("wrapped: %w", syscall.ECONNRESET), true},
		{apierrors.NewServiceUnavailable("starting"), true},
		{apierrors.NewTooManyRequests("busy", 1), true},
		{apierrors.NewInternalError(errors.New("boom")), false},
		{apierrors.NewTimeoutError("slow", 1), true}, // 504
		{apierrors.NewResourceExpired("too old resource version"), false},
		{apierrors.NewForbidden(gr, "", errors.New("RBAC")), false},
		{errors.New("unable to decode"), false},
	} {
		if got := unreachable(c.err); got != c.want {
			t.Errorf("unreachable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// A list and a watch made while the server is down wait for it, so the
// reflector never backs off; an outage is logged once as it starts and
// once as it ends, and an answer the server gives is passed on at once.
func TestOutlastingListWatch(t *testing.T) {
	logs := &logbuf.Buffer{}
	fails := 3
	lists, watches := 0, 0
	expired := false
	lw := outlasting(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			lists++
			if lists <= fails {
				return nil, refused
			}
			return &v1.NodeList{}, nil
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			watches++
			if expired {
				return nil, apierrors.NewResourceExpired("too old resource version")
			}
			if watches <= fails {
				return nil, apierrors.NewServiceUnavailable("starting")
			}
			return watch.NewFake(), nil
		},
	}, logs.Logger())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	if _, err := lw.ListWithContext(ctx, metav1.ListOptions{}); err != nil || lists != fails+1 {
		t.Fatalf("list: err %v after %d calls, want success after %d", err, lists, fails+1)
	}
	w, err := lw.WatchWithContext(ctx, metav1.ListOptions{})
	if err != nil || watches != fails+1 {
		t.Fatalf("watch: err %v after %d calls, want success after %d", err, watches, fails+1)
	}
	w.Stop()
	out := logs.String()
	if n := strings.Count(out, "does not answer"); n != 2 {
		t.Errorf("%d outage lines for two outages, want 2:\n%s", n, out)
	}
	if n := strings.Count(out, "answers again"); n != 2 {
		t.Errorf("%d recovery lines for two outages, want 2:\n%s", n, out)
	}

	expired, watches = true, 0
	if _, err := lw.WatchWithContext(ctx, metav1.ListOptions{}); !apierrors.IsResourceExpired(err) || watches != 1 {
		t.Errorf("watch from an expired version: err %v after %d calls, want the 410 at once", err, watches)
	}

	// While the server is down, ending ctx ends the wait.
	fails, lists = 1<<30, 0
	cctx, ccancel := context.WithCancel(ctx)
	time.AfterFunc(300*time.Millisecond, ccancel)
	if _, err := lw.ListWithContext(cctx, metav1.ListOptions{}); err == nil || lists < 2 {
		t.Errorf("list with the server down until ctx ended: err %v after %d calls", err, lists)
	}
}
