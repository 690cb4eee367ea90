package daemon

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/logbuf"
	"github.com/flannel-go/flannel/internal/netconf"
)

// lateSource has no lease for this host until assign is called, as a
// Kubernetes node has none until its podCIDR is assigned, and says so
// through OwnChanged.
type lateSource struct {
	countingSource
	mu       sync.Mutex
	assigned bool
	changed  chan struct{}
}

func (s *lateSource) OwnChanged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *lateSource) assign() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.assigned = true
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *lateSource) Acquire(ctx context.Context, nc *netconf.Config, attrs lease.Attrs, prev lease.Prev) (lease.Lease, error) {
	s.mu.Lock()
	ok := s.assigned
	s.mu.Unlock()
	if !ok {
		return lease.Lease{}, errors.New(`node "n1": spec.podCIDR is not assigned yet`)
	}
	return s.countingSource.Acquire(ctx, nc, attrs, prev)
}

// An Acquire that failed is retried as soon as the source says this host's
// lease changed, not at the next retry (at least half a second later).
func TestAcquireRetriesWhenOwnLeaseChanges(t *testing.T) {
	src := &lateSource{countingSource: countingSource{config: goodConfig}, changed: make(chan struct{})}
	be := &fakeBackend{changed: make(chan struct{}, 1)}
	logs := &logbuf.Buffer{}
	d := New(Config{SubnetFile: filepath.Join(t.TempDir(), "subnet.env")}, Deps{
		Source: src,
		Backends: map[string]backend.Def{"vxlan": {Info: backend.Info{Type: "vxlan", TypedLeases: true},
			New: func(backend.Config) (backend.Backend, error) { return be, nil }}},
		Ext:      fakeExt,
		NewRules: newFakeRules,
		Log:      logs.Logger(),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitUntil(t, "the error naming the node and the field", func() bool {
		return strings.Contains(logs.String(), `spec.podCIDR is not assigned yet`)
	})
	src.assign()
	start := time.Now()
	waitUntil(t, "ready", d.Ready)
	if took := time.Since(start); took > 300*time.Millisecond {
		t.Errorf("ready %s after the lease became available, want at once", took)
	}
	if got := d.Lease().Subnet.String(); got != "10.5.7.0/24" {
		t.Errorf("lease %s, want 10.5.7.0/24", got)
	}
}
