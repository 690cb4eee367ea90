package daemon

import (
	"context"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/logbuf"
	"github.com/flannel-go/flannel/internal/netconf"
)

// countingSource is a lease source that hands out one fixed lease and
// counts the watches it is asked for. Its Watch, like the real ones, runs
// until ctx ends.
type countingSource struct {
	config  string
	watches atomic.Int32
}

func (s *countingSource) Config(context.Context) ([]byte, error) { return []byte(s.config), nil }

func (s *countingSource) Watch(ctx context.Context, fn func(lease.Update)) error {
	s.watches.Add(1)
	fn(lease.Update{Reset: true})
	<-ctx.Done()
	return ctx.Err()
}

func (s *countingSource) Acquire(_ context.Context, _ *netconf.Config, attrs lease.Attrs, _ lease.Prev) (lease.Lease, error) {
	return lease.Lease{Subnet: netip.MustParsePrefix("10.5.7.0/24"), Attrs: attrs}, nil
}

func (s *countingSource) Keep(ctx context.Context, _ lease.Lease, _ func(lease.Lease)) error {
	<-ctx.Done()
	return ctx.Err()
}

// peersOnlySource is a countingSource whose Watch serves only the peers,
// as the Kubernetes source's does.
type peersOnlySource struct{ countingSource }

func (*peersOnlySource) WatchOnlyForPeers() bool { return true }

// The daemon watches the leases unless the backend forwards to no peer
// and the source's watch serves nothing but the peers: alloc in
// Kubernetes mode runs no informer, alloc on etcd still watches (Acquire
// waits on it for a freed subnet), and every other backend watches.
func TestWatchOnlyWhenSomethingNeedsIt(t *testing.T) {
	cases := []struct {
		name        string
		backend     string
		peersOnly   bool
		wantWatches int32
	}{
		{"alloc, kubernetes", "alloc", true, 0},
		{"alloc, etcd", "alloc", false, 1},
		{"vxlan, kubernetes", "vxlan", true, 1},
		{"vxlan, etcd", "vxlan", false, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			config := `{"Network":"10.5.0.0/16","Backend":{"Type":"` + c.backend + `"}}`
			var src lease.Source
			var count *atomic.Int32
			if c.peersOnly {
				s := &peersOnlySource{countingSource{config: config}}
				src, count = s, &s.watches
			} else {
				s := &countingSource{config: config}
				src, count = s, &s.watches
			}
			be := &fakeBackend{changed: make(chan struct{}, 1)}
			newBE := func(backend.Config) (backend.Backend, error) { return be, nil }
			logs := &logbuf.Buffer{}
			d := New(Config{SubnetFile: filepath.Join(t.TempDir(), "subnet.env")}, Deps{
				Source: src,
				Backends: map[string]backend.Def{
					"alloc": {Info: backend.Info{Type: "alloc", NoPeers: true}, New: newBE},
					"vxlan": {Info: backend.Info{Type: "vxlan", TypedLeases: true}, New: newBE},
				},
				Ext:      fakeExt,
				NewRules: newFakeRules,
				Log:      logs.Logger(),
			})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- d.Run(ctx) }()
			waitUntil(t, "ready", d.Ready)
			if c.wantWatches > 0 {
				waitUntil(t, "the watch", func() bool { return count.Load() > 0 })
			}
			cancel()
			// Run joins every goroutine it started: a watch it started
			// has been counted by now.
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got := count.Load(); got != c.wantWatches {
				t.Errorf("%d watches, want %d; log:\n%s", got, c.wantWatches, logs.String())
			}
		})
	}
}
