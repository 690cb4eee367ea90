package kube

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/flannel-go/flannel/internal/backoff"
)

// outageRetryMax caps the wait between two attempts to reach an API server
// that does not answer. client-go's reflector backs a failed list or watch
// off to between 30 and 60 s (not configurable through InformerOptions), so
// after an outage of a minute flanneld would learn of a node that joined
// only up to a minute after the server came back. With 5 s, a flanneld is
// back on the watch within 5 s of the server; the jitter spreads a whole
// cluster's reconnections over those 5 s.
const outageRetryMax = 5 * time.Second

// outlastingLW is the informer's ListerWatcher wrapped so that a list or a
// watch that cannot reach the API server (connection refused or reset, a
// timeout, 429/503/504) is retried here, with a short backoff, until the
// server answers or ctx ends. The reflector then never sees the outage and
// never backs off for it. Other errors (410 Gone, 403) go to the reflector
// as they are, which knows what to do with them. An outage is logged once
// when it starts and once when it ends.
type outlastingLW struct {
	lw  cache.ListerWatcherWithContext
	log *slog.Logger

	mu   sync.Mutex
	down time.Time // when the server stopped answering; zero while it answers
}

var _ cache.ListerWatcherWithContext = (*outlastingLW)(nil)

func outlasting(lw cache.ListerWatcher, log *slog.Logger) *outlastingLW {
	return &outlastingLW{lw: cache.ToListerWatcherWithContext(lw), log: log}
}

func (o *outlastingLW) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	return outlast(ctx, o, "list nodes", func(ctx context.Context) (runtime.Object, error) {
		return o.lw.ListWithContext(ctx, opts)
	})
}

func (o *outlastingLW) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return outlast(ctx, o, "watch nodes", func(ctx context.Context) (watch.Interface, error) {
		return o.lw.WatchWithContext(ctx, opts)
	})
}

// List and Watch complete cache.ListerWatcher; the reflector calls the
// context variants.
func (o *outlastingLW) List(opts metav1.ListOptions) (runtime.Object, error) {
	return o.ListWithContext(context.Background(), opts)
}

func (o *outlastingLW) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return o.WatchWithContext(context.Background(), opts)
}

// outlast calls call until it returns anything but an unreachable-server
// error, or ctx ends.
func outlast[T any](ctx context.Context, o *outlastingLW, what string, call func(context.Context) (T, error)) (T, error) {
	wait := backoff.Backoff{Min: 250 * time.Millisecond, Max: outageRetryMax, Jitter: backoff.UpperHalf}
	for {
		v, err := call(ctx)
		if err == nil || !unreachable(err) || ctx.Err() != nil {
			if err == nil {
				o.answered()
			}
			return v, err
		}
		o.failed(what, err)
		if serr := backoff.Sleep(ctx, wait.Next()); serr != nil {
			return v, err
		}
	}
}

func (o *outlastingLW) failed(what string, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.down.IsZero() {
		o.down = time.Now()
		o.log.Warn("the API server does not answer; retrying every few seconds, the datapath stays as it is", "call", what, "err", err)
	}
}

func (o *outlastingLW) answered() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.down.IsZero() {
		o.log.Info("the API server answers again; watching nodes", "down_for", time.Since(o.down).Round(time.Millisecond))
		o.down = time.Time{}
	}
}

// unreachable reports whether err means the API server did not answer, or
// answered that it cannot serve now, rather than refusing the request.
func unreachable(err error) bool {
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		switch st.Status().Code {
		case http.StatusTooManyRequests, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || utilnet.IsConnectionRefused(err) || utilnet.IsConnectionReset(err) ||
		utilnet.IsProbableEOF(err) || utilnet.IsHTTP2ConnectionLost(err)
}
