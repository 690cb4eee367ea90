package lease_test

import (
	"context"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/leasetest"
)

// countingStore counts listings.
type countingStore struct {
	*leasetest.Store
	lists atomic.Int32
}

func (s *countingStore) Leases(ctx context.Context) ([]lease.Lease, int64, error) {
	s.lists.Add(1)
	return s.Store.Leases(ctx)
}

// watchUntil runs src.Watch, folding its updates into a set, until the set
// holds exactly the keys of want.
func watchUntil(t *testing.T, src *lease.StoreSource, want ...lease.Lease) {
	t.Helper()
	ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
	defer cancel()
	cur := map[string]bool{}
	done := false
	_ = src.Watch(ctx, func(u lease.Update) {
		if done {
			return
		}
		if u.Reset {
			clear(cur)
			for _, l := range u.Leases {
				cur[l.Key()] = true
			}
		}
		for _, e := range u.Events {
			cur[e.Lease.Key()] = e.Type == lease.Added
			if e.Type == lease.Removed {
				delete(cur, e.Lease.Key())
			}
		}
		if len(cur) == len(want) {
			for _, l := range want {
				if !cur[l.Key()] {
					return
				}
			}
			done = true
			cancel()
		}
	})
	if !done {
		t.Fatalf("the watch never held exactly %v; last %v", want, cur)
	}
}

// otherThan is a subnet of cfg24 that is none of taken (Acquire picks at
// random).
func otherThan(taken ...netip.Prefix) netip.Prefix {
	for i := 1; ; i++ {
		sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24)
		if !slices.Contains(taken, sn) {
			return sn
		}
	}
}

// TestWatchStartsFromAcquiresListing: the Watch after an Acquire starts
// from the listing Acquire made (one listing in all) and still sees what
// changed in between: its own new lease and another host's.
func TestWatchStartsFromAcquiresListing(t *testing.T) {
	ctx := testCtx(t)
	s := &countingStore{Store: leasetest.New(nil)}
	cfg := parseCfg(t, cfg24)
	peer, err := s.Create(ctx, lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: hostAttrs(1)}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	src := lease.NewStoreSource(s, lease.StoreSourceOptions{})
	own, err := src.Acquire(ctx, cfg, hostAttrs(2), lease.Prev{})
	if err != nil {
		t.Fatal(err)
	}
	late, err := s.Create(ctx, lease.Lease{Subnet: otherThan(own.Subnet, peer.Subnet), Attrs: hostAttrs(3)}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	watchUntil(t, src, peer, own, late)
	if n := s.lists.Load(); n != 1 {
		t.Errorf("%d listings, want 1 (the Watch reuses Acquire's)", n)
	}
}

// TestWatchPrimedCompacted: history compacted past Acquire's listing
// makes the Watch list again, and it ends current.
func TestWatchPrimedCompacted(t *testing.T) {
	ctx := testCtx(t)
	s := &countingStore{Store: leasetest.New(nil)}
	cfg := parseCfg(t, cfg24)
	src := lease.NewStoreSource(s, lease.StoreSourceOptions{})
	own, err := src.Acquire(ctx, cfg, hostAttrs(2), lease.Prev{})
	if err != nil {
		t.Fatal(err)
	}
	late, err := s.Create(ctx, lease.Lease{Subnet: otherThan(own.Subnet), Attrs: hostAttrs(3)}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(ctx, s.Rev()); err != nil {
		t.Fatal(err)
	}
	watchUntil(t, src, own, late)
	if n := s.lists.Load(); n != 2 {
		t.Errorf("%d listings, want 2 (Acquire's, then one after the compaction)", n)
	}
}
