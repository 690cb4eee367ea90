package lease_test

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/etcdtest"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/leasetest"
)

// keeper runs Keep in the background.
type keeper struct {
	renewed chan lease.Lease
	done    chan error
	cancel  context.CancelFunc
}

func startKeep(t *testing.T, s lease.Store, l lease.Lease, margin time.Duration) *keeper {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	k := &keeper{renewed: make(chan lease.Lease, 100), done: make(chan error, 1), cancel: cancel}
	// Keep learns of changes to its key from the source's one watch, as
	// in flanneld.
	src := lease.NewStoreSource(s, lease.StoreSourceOptions{RenewMargin: margin})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		_ = src.Watch(ctx, func(lease.Update) {})
	}()
	go func() {
		k.done <- src.Keep(ctx, l, func(nl lease.Lease) { k.renewed <- nl })
	}()
	t.Cleanup(func() {
		cancel()
		<-watched
		select {
		case <-k.done:
		case <-time.After(10 * time.Second):
			t.Error("Keep did not return after cancel")
		}
	})
	return k
}

// result waits for Keep to return.
func (k *keeper) result(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case err := <-k.done:
		k.done <- err
		return err
	case <-time.After(within):
		t.Fatalf("Keep still running after %v", within)
	}
	return nil
}

func (k *keeper) running(t *testing.T) {
	t.Helper()
	select {
	case err := <-k.done:
		t.Fatalf("Keep returned: %v", err)
	default:
	}
}

func newLease(i int) lease.Lease {
	return lease.Lease{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24), Attrs: hostAttrs(i)}
}

// Against etcd with a 2 s TTL, Keep renews ahead of expiry and the lease
// outlives its TTL several times over; cancelling stops it.
func TestKeepRenews(t *testing.T) {
	s := etcdClient(t, etcdtest.StartEtcd(t))
	l, err := s.Create(testCtx(t), newLease(1), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	k := startKeep(t, s, l, time.Second)
	deadline := time.Now().Add(5 * time.Second)
	renewals := 0
	for time.Now().Before(deadline) {
		select {
		case nl := <-k.renewed:
			renewals++
			if nl.ID != l.ID {
				t.Fatalf("renewal changed the lease ID %x → %x", l.ID, nl.ID)
			}
		case err := <-k.done:
			t.Fatalf("Keep returned: %v", err)
		case <-time.After(time.Until(deadline)):
		}
	}
	if renewals < 3 {
		t.Errorf("%d renewals in 5 s of a 2 s lease", renewals)
	}
	if _, err := s.Lookup(testCtx(t), l.Key()); err != nil {
		t.Fatalf("lease gone after 5 s despite Keep: %v", err)
	}
	k.cancel()
	if err := k.result(t, 5*time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("Keep after cancel: %v, want context.Canceled", err)
	}
}

// A lease revoked behind Keep's back is noticed at once, not at the next
// renewal an hour away.
func TestKeepNoticesRevoke(t *testing.T) {
	kinds(t, func(t *testing.T, newClient func() lease.Store) {
		s := newClient()
		l, err := s.Create(testCtx(t), newLease(1), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		k := startKeep(t, s, l, time.Minute)
		if err := newClient().Revoke(testCtx(t), l); err != nil {
			t.Fatal(err)
		}
		if err := k.result(t, 5*time.Second); !errors.Is(err, lease.ErrNotFound) {
			t.Fatalf("Keep after revoke: %v, want ErrNotFound", err)
		}
	})
}

// A lease that is already gone when Keep starts is reported at once.
func TestKeepMissingLease(t *testing.T) {
	kinds(t, func(t *testing.T, newClient func() lease.Store) {
		s := newClient()
		l, err := s.Create(testCtx(t), newLease(1), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Revoke(testCtx(t), l); err != nil {
			t.Fatal(err)
		}
		k := startKeep(t, s, l, time.Minute)
		if err := k.result(t, 5*time.Second); !errors.Is(err, lease.ErrNotFound) {
			t.Fatalf("Keep of a revoked lease: %v, want ErrNotFound", err)
		}
	})
}

// When an operator turns the lease into a reservation for this host, Keep
// keeps it (writing the host's attributes into it) and never attaches a
// TTL; deleting the reservation then ends Keep.
func TestKeepAdoptsReservation(t *testing.T) {
	s := etcdClient(t, etcdtest.StartEtcd(t))
	l, err := s.Create(testCtx(t), newLease(1), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	k := startKeep(t, s, l, time.Minute)
	key := "/coreos.com/network/subnets/" + l.Key()
	if _, err := s.Client().Put(testCtx(t), key, `{"PublicIP":"192.168.0.1"}`); err != nil {
		t.Fatal(err)
	}
	select {
	case nl := <-k.renewed:
		if !nl.Reserved() {
			t.Fatalf("after the operator's put Keep holds lease %x, want the reservation", nl.ID)
		}
	case err := <-k.done:
		t.Fatalf("Keep returned: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("Keep did not react to the reservation")
	}
	r, err := s.Client().Get(testCtx(t), key)
	if err != nil || len(r.Kvs) != 1 || r.Kvs[0].Lease != 0 {
		t.Fatalf("reservation now %v, %v; want no etcd lease", r, err)
	}
	if got := listing(t, s)[l.Key()]; !got.Attrs.Equal(l.Attrs) {
		t.Fatalf("reservation holds %+v, want the host's %+v", got.Attrs, l.Attrs)
	}
	k.running(t)
	if _, err := s.Client().Delete(testCtx(t), key); err != nil {
		t.Fatal(err)
	}
	if err := k.result(t, 5*time.Second); !errors.Is(err, lease.ErrNotFound) {
		t.Fatalf("Keep after the reservation was deleted: %v, want ErrNotFound", err)
	}
}

// A lease that expired while the store was unreachable, its subnet since
// taken by another host, ends Keep once the store is back.
func TestKeepTakenOver(t *testing.T) {
	s := leasetest.New(nil)
	l, err := s.Create(testCtx(t), newLease(1), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	k := startKeep(t, s, l, 10*time.Second)
	s.SetDown(true) // our renewals fail …
	s.Advance(2 * time.Minute)
	s.SetDown(false)
	// … and by the time we could renew, the subnet is someone else's.
	other := newLease(1)
	other.Attrs = hostAttrs(2)
	if _, err := s.Create(testCtx(t), other, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := k.result(t, 5*time.Second); !errors.Is(err, lease.ErrNotFound) {
		t.Fatalf("Keep after takeover: %v, want ErrNotFound", err)
	}
}

// failingStore fails renewals while down is set.
type failingStore struct {
	lease.Store
	mu    sync.Mutex
	down  bool
	tries int
}

func (f *failingStore) set(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

func (f *failingStore) Renew(ctx context.Context, l lease.Lease, ttl time.Duration) (lease.Lease, error) {
	f.mu.Lock()
	down := f.down
	f.tries++
	f.mu.Unlock()
	if down {
		return lease.Lease{}, errors.New("connection refused")
	}
	return f.Store.Renew(ctx, l, ttl)
}

// Failed renewals are retried with backoff (not in a tight loop) and
// Keep does not give up while the lease may still be alive.
func TestKeepRetriesFailedRenewal(t *testing.T) {
	fs := &failingStore{Store: leasetest.New(nil), down: true}
	l, err := fs.Create(testCtx(t), newLease(1), 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Pretend the lease is nearly over so the first renewal is due in
	// 0.2 s; the store's lease lives on for 20 s.
	l.Expires = time.Now().Add(500 * time.Millisecond)
	k := startKeep(t, fs, l, 300*time.Millisecond)
	time.Sleep(2500 * time.Millisecond)
	k.running(t)
	fs.mu.Lock()
	tries := fs.tries
	fs.mu.Unlock()
	// Due at 0.2 s, then retries about 1 s and 2 s later.
	if tries < 2 || tries > 3 {
		t.Fatalf("%d renewal attempts in 2.5 s, want 2 or 3 (backoff from 1 s)", tries)
	}
	fs.set(false)
	select {
	case nl := <-k.renewed:
		if nl.ID != l.ID || time.Until(nl.Expires) < 15*time.Second {
			t.Fatalf("renewed to %+v", nl)
		}
	case err := <-k.done:
		t.Fatalf("Keep gave up: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no renewal after the store recovered")
	}
}
