package leasetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
)

// Optional capabilities RunStoreTests uses when a store has them.
type (
	// ConfigWriter sets the network config.
	ConfigWriter interface {
		PutConfig(ctx context.Context, cfg []byte) error
	}
	// RawWriter writes any bytes under <prefix>/subnets/<key> with no
	// lease, as an operator with etcdctl could.
	RawWriter interface {
		PutRaw(ctx context.Context, key string, value []byte) error
	}
	// Compacter compacts the store's history up to rev.
	Compacter interface {
		Compact(ctx context.Context, rev int64) error
	}
	// Looker reads one lease with its expiry.
	Looker interface {
		Lookup(ctx context.Context, key string) (lease.Lease, error)
	}
	// Reserver turns a lease into a reservation in place.
	Reserver interface {
		Reserve(ctx context.Context, l lease.Lease) (lease.Lease, error)
	}
	// Advancer moves the store's clock, so expiry needs no real waiting.
	Advancer interface {
		Advance(d time.Duration)
	}
)

// ShortTTL is the TTL the expiry test uses when the store cannot Advance:
// etcd's minimum with its default election timeout.
const ShortTTL = 2 * time.Second

// RunStoreTests checks that stores made by newStore behave as lease.Store
// promises. Each subtest gets a fresh, empty store.
func RunStoreTests(t *testing.T, newStore func(t *testing.T) lease.Store) {
	t.Run("Config", func(t *testing.T) { testConfig(t, newStore(t)) })
	t.Run("CreateAndList", func(t *testing.T) { testCreateAndList(t, newStore(t)) })
	t.Run("CreateExists", func(t *testing.T) { testCreateExists(t, newStore(t)) })
	t.Run("CreateRace", func(t *testing.T) { testCreateRace(t, newStore(t)) })
	t.Run("Reservation", func(t *testing.T) { testReservation(t, newStore(t)) })
	t.Run("Reserve", func(t *testing.T) { testReserve(t, newStore(t)) })
	t.Run("RenewGuards", func(t *testing.T) { testRenewGuards(t, newStore(t)) })
	t.Run("RevokeGuards", func(t *testing.T) { testRevokeGuards(t, newStore(t)) })
	t.Run("Watch", func(t *testing.T) { testWatch(t, newStore(t)) })
	t.Run("WatchFromPast", func(t *testing.T) { testWatchFromPast(t, newStore(t)) })
	t.Run("Expiry", func(t *testing.T) { testExpiry(t, newStore(t)) })
	t.Run("Compaction", func(t *testing.T) { testCompaction(t, newStore(t)) })
	t.Run("BadEntries", func(t *testing.T) { testBadEntries(t, newStore(t)) })
}

// Ctx is a context for one request of a test: it ends after 20 s, or
// with the test.
func Ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func sample(i int, ip string) lease.Lease {
	return lease.Lease{
		Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24),
		Attrs: lease.Attrs{
			PublicIP:    netip.MustParseAddr(ip),
			BackendType: "vxlan",
			BackendData: json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":"02:00:00:00:00:%02x"}`, i)),
		},
	}
}

func find(ls []lease.Lease, key string) (lease.Lease, bool) {
	for _, l := range ls {
		if l.Key() == key {
			return l, true
		}
	}
	return lease.Lease{}, false
}

func list(t *testing.T, s lease.Store) ([]lease.Lease, int64) {
	t.Helper()
	ls, rev, err := s.Leases(Ctx(t))
	if err != nil {
		t.Fatalf("Leases: %v", err)
	}
	return ls, rev
}

func mustCreate(t *testing.T, s lease.Store, l lease.Lease, ttl time.Duration) lease.Lease {
	t.Helper()
	got, err := s.Create(Ctx(t), l, ttl)
	if err != nil {
		t.Fatalf("Create(%s): %v", l, err)
	}
	return got
}

func testConfig(t *testing.T, s lease.Store) {
	if _, err := s.Config(Ctx(t)); !errors.Is(err, lease.ErrNoConfig) {
		t.Fatalf("Config on empty store: err = %v, want ErrNoConfig", err)
	}
	w, ok := s.(ConfigWriter)
	if !ok {
		t.Skip("store cannot write config")
	}
	cfg := []byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	if err := w.PutConfig(Ctx(t), cfg); err != nil {
		t.Fatal(err)
	}
	got, err := s.Config(Ctx(t))
	if err != nil || string(got) != string(cfg) {
		t.Fatalf("Config = %q, %v; want %q", got, err, cfg)
	}
}

func testCreateAndList(t *testing.T, s lease.Store) {
	_, rev0 := list(t, s)
	want := sample(1, "192.168.1.1")
	dual := sample(2, "192.168.1.2")
	dual.Subnet6 = netip.MustParsePrefix("fc00:0:0:2::/64")
	dual.Attrs.PublicIPv6 = netip.MustParseAddr("2001:db8::2")

	before := time.Now()
	got := mustCreate(t, s, want, time.Hour)
	if got.ID == 0 || got.Reserved() {
		t.Errorf("created lease has ID %d, want a non-zero etcd lease", got.ID)
	}
	if lo, hi := before.Add(time.Hour-2*time.Second), time.Now().Add(time.Hour+2*time.Second); got.Expires.Before(lo) || got.Expires.After(hi) {
		t.Errorf("Expires = %v, want about an hour from now", got.Expires)
	}
	if got.Subnet != want.Subnet || !got.Attrs.Equal(want.Attrs) {
		t.Errorf("Create returned %+v, want %+v", got, want)
	}
	gotDual := mustCreate(t, s, dual, time.Hour)

	ls, rev := list(t, s)
	if rev <= rev0 {
		t.Errorf("revision %d after two creates, was %d", rev, rev0)
	}
	if len(ls) != 2 {
		t.Fatalf("Leases = %v, want 2", ls)
	}
	for _, w := range []lease.Lease{got, gotDual} {
		l, ok := find(ls, w.Key())
		switch {
		case !ok:
			t.Errorf("lease %s not listed", w.Key())
		case l.ID != w.ID || l.Subnet != w.Subnet || l.Subnet6 != w.Subnet6 || !l.Attrs.Equal(w.Attrs):
			t.Errorf("listed %+v, want %+v", l, w)
		}
	}
	if lk, ok := s.(Looker); ok {
		l, err := lk.Lookup(Ctx(t), got.Key())
		if err != nil {
			t.Fatal(err)
		}
		if l.ID != got.ID || l.Expires.Sub(got.Expires).Abs() > 2*time.Second {
			t.Errorf("Lookup = ID %x expires %v, want ID %x expires about %v", l.ID, l.Expires, got.ID, got.Expires)
		}
		if _, err := lk.Lookup(Ctx(t), "10.5.99.0-24"); !errors.Is(err, lease.ErrNotFound) {
			t.Errorf("Lookup of missing key: err = %v, want ErrNotFound", err)
		}
	}
}

func testCreateExists(t *testing.T, s lease.Store) {
	first := mustCreate(t, s, sample(1, "192.168.1.1"), time.Hour)
	_, err := s.Create(Ctx(t), sample(1, "192.168.1.99"), time.Hour)
	if !errors.Is(err, lease.ErrExists) {
		t.Fatalf("second Create of %s: err = %v, want ErrExists", first, err)
	}
	ls, _ := list(t, s)
	if l, ok := find(ls, first.Key()); !ok || l.ID != first.ID || l.Attrs.PublicIP != first.Attrs.PublicIP {
		t.Fatalf("after lost create the lease is %+v (listed: %v), want the first one", l, ok)
	}
}

func testCreateRace(t *testing.T, s lease.Store) {
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, errs[i] = s.Create(Ctx(t), sample(7, fmt.Sprintf("192.168.1.%d", i+1)), time.Hour)
		})
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, lease.ErrExists):
			t.Errorf("creator %d: %v", i, err)
		}
	}
	if won != 1 {
		t.Fatalf("%d creators won the same key, want exactly 1", won)
	}
}

func testReservation(t *testing.T, s lease.Store) {
	r := mustCreate(t, s, sample(3, "192.168.1.3"), 0)
	if !r.Reserved() || !r.Expires.IsZero() {
		t.Fatalf("Create with ttl 0 gave ID %x expires %v, want a reservation", r.ID, r.Expires)
	}
	r.Attrs.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:33"}`)
	nr, err := s.Renew(Ctx(t), r, time.Hour)
	if err != nil {
		t.Fatalf("Renew reservation: %v", err)
	}
	if !nr.Reserved() || !nr.Expires.IsZero() {
		t.Fatalf("renewed reservation has ID %x expires %v, want it still reserved", nr.ID, nr.Expires)
	}
	ls, _ := list(t, s)
	if l, ok := find(ls, r.Key()); !ok || !l.Reserved() || !l.Attrs.Equal(r.Attrs) {
		t.Fatalf("listed %+v (found %v), want reservation with new attrs %+v", l, ok, r.Attrs)
	}
	if lk, ok := s.(Looker); ok {
		if l, err := lk.Lookup(Ctx(t), r.Key()); err != nil || !l.Reserved() || !l.Expires.IsZero() {
			t.Fatalf("Lookup = %+v, %v; want reservation without expiry", l, err)
		}
	}
	if _, err := s.Create(Ctx(t), sample(3, "192.168.1.4"), time.Hour); !errors.Is(err, lease.ErrExists) {
		t.Fatalf("Create over a reservation: err = %v, want ErrExists", err)
	}
	if err := s.Revoke(Ctx(t), r); err != nil {
		t.Fatalf("Revoke reservation: %v", err)
	}
	if ls, _ := list(t, s); len(ls) != 0 {
		t.Fatalf("after Revoke: %v", ls)
	}
}

func testReserve(t *testing.T, s lease.Store) {
	rs, ok := s.(Reserver)
	if !ok {
		t.Skip("the store cannot Reserve")
	}
	l := mustCreate(t, s, sample(5, "192.168.1.5"), time.Hour)
	_, rev := list(t, s)
	w := StartWatch(t, s, rev)
	r, err := rs.Reserve(Ctx(t), l)
	if err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	if !r.Reserved() || !r.Expires.IsZero() || !r.Attrs.Equal(l.Attrs) {
		t.Fatalf("Reserve = %+v, want a reservation with the lease's attrs", r)
	}
	// The key is rewritten, never deleted: a watcher sees it stay.
	expectEvent(t, w.Next(t, 5*time.Second), lease.Added, r)
	ls, _ := list(t, s)
	if got, ok := find(ls, l.Key()); !ok || !got.Reserved() || !got.Attrs.Equal(l.Attrs) {
		t.Fatalf("listed %+v (found %v), want the reservation", got, ok)
	}
	// The lease it was is gone: renewing or reserving it again fails.
	if _, err := s.Renew(Ctx(t), l, time.Hour); !errors.Is(err, lease.ErrNotFound) {
		t.Fatalf("Renew of the reserved lease: err = %v, want ErrNotFound", err)
	}
	if _, err := rs.Reserve(Ctx(t), l); !errors.Is(err, lease.ErrNotFound) {
		t.Fatalf("Reserve again: err = %v, want ErrNotFound", err)
	}
	if _, err := rs.Reserve(Ctx(t), sample(6, "192.168.1.6")); !errors.Is(err, lease.ErrNotFound) {
		t.Fatalf("Reserve of an absent key: err = %v, want ErrNotFound", err)
	}
	// Reserving a reservation rewrites it.
	if _, err := rs.Reserve(Ctx(t), r); err != nil {
		t.Fatalf("Reserve of a reservation: %v", err)
	}
	if ls, _ := list(t, s); len(ls) != 1 {
		t.Fatalf("after Reserve: %v", ls)
	}
}

func testRenewGuards(t *testing.T, s lease.Store) {
	l := mustCreate(t, s, sample(4, "192.168.1.4"), time.Hour)

	l.Attrs.PublicIP = netip.MustParseAddr("192.168.1.44")
	nl, err := s.Renew(Ctx(t), l, time.Hour)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if nl.ID != l.ID || nl.Expires.Before(time.Now().Add(time.Hour-2*time.Second)) {
		t.Errorf("Renew = ID %x expires %v, want ID %x about an hour out", nl.ID, nl.Expires, l.ID)
	}
	ls, _ := list(t, s)
	if got, _ := find(ls, l.Key()); got.Attrs.PublicIP != l.Attrs.PublicIP {
		t.Errorf("after Renew PublicIP = %v, want %v", got.Attrs.PublicIP, l.Attrs.PublicIP)
	}

	// A renewal carrying a different ID must not touch the key: that is
	// how a host that lost its lease is kept from overwriting the new
	// holder.
	other := mustCreate(t, s, sample(5, "192.168.1.5"), time.Hour)
	stale := l
	stale.ID = other.ID
	if _, err := s.Renew(Ctx(t), stale, time.Hour); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("Renew with another lease's ID: err = %v, want ErrNotFound", err)
	}
	asRes := l
	asRes.ID = 0
	if _, err := s.Renew(Ctx(t), asRes, time.Hour); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("Renew of a lease as a reservation: err = %v, want ErrNotFound", err)
	}
	missing := sample(6, "192.168.1.6")
	missing.ID = l.ID
	if _, err := s.Renew(Ctx(t), missing, time.Hour); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("Renew of a missing key: err = %v, want ErrNotFound", err)
	}
	ls, _ = list(t, s)
	if got, _ := find(ls, l.Key()); got.ID != l.ID || got.Attrs.PublicIP != l.Attrs.PublicIP {
		t.Errorf("failed renewals changed the lease to %+v", got)
	}
	if err := s.Revoke(Ctx(t), l); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Renew(Ctx(t), l, time.Hour); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("Renew after Revoke: err = %v, want ErrNotFound", err)
	}
}

func testRevokeGuards(t *testing.T, s lease.Store) {
	a := mustCreate(t, s, sample(1, "192.168.1.1"), time.Hour)
	b := mustCreate(t, s, sample(2, "192.168.1.2"), time.Hour)
	wrong := a
	wrong.ID = b.ID + 1000
	if err := s.Revoke(Ctx(t), wrong); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("Revoke with wrong ID: err = %v, want ErrNotFound", err)
	}
	ls, _ := list(t, s)
	if _, ok := find(ls, a.Key()); !ok {
		t.Fatalf("Revoke with wrong ID deleted %s", a)
	}
	if err := s.Revoke(Ctx(t), a); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if err := s.Revoke(Ctx(t), a); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("second Revoke: err = %v, want ErrNotFound", err)
	}
	ls, _ = list(t, s)
	if len(ls) != 1 || ls[0].Key() != b.Key() {
		t.Fatalf("after Revoke: %v, want only %s", ls, b)
	}
}

func expectEvent(t *testing.T, got lease.Event, typ lease.EventType, want lease.Lease) {
	t.Helper()
	if got.Type != typ || got.Lease.Key() != want.Key() {
		t.Fatalf("event %v %s, want %v %s", got.Type, got.Lease.Key(), typ, want.Key())
	}
	if typ == lease.Added && (got.Lease.ID != want.ID || !got.Lease.Attrs.Equal(want.Attrs)) {
		t.Fatalf("added %+v, want %+v", got.Lease, want)
	}
	if typ == lease.Removed && (got.Lease.ID != 0 || got.Lease.Attrs.PublicIP.IsValid()) {
		t.Fatalf("removed event carries more than the subnets: %+v", got.Lease)
	}
}

func testWatch(t *testing.T, s lease.Store) {
	_, rev := list(t, s)
	w := StartWatch(t, s, rev)

	a := mustCreate(t, s, sample(1, "192.168.1.1"), time.Hour)
	expectEvent(t, w.Next(t, 5*time.Second), lease.Added, a)
	a.Attrs.PublicIP = netip.MustParseAddr("192.168.1.11")
	a, err := s.Renew(Ctx(t), a, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expectEvent(t, w.Next(t, 5*time.Second), lease.Added, a)
	if err := s.Revoke(Ctx(t), a); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, w.Next(t, 5*time.Second), lease.Removed, a)

	w.Stop(t)
}

// Changes made between listing and watching are not lost.
func testWatchFromPast(t *testing.T, s lease.Store) {
	_, rev := list(t, s)
	a := mustCreate(t, s, sample(1, "192.168.1.1"), time.Hour)
	b := mustCreate(t, s, sample(2, "192.168.1.2"), time.Hour)
	w := StartWatch(t, s, rev)
	expectEvent(t, w.Next(t, 5*time.Second), lease.Added, a)
	expectEvent(t, w.Next(t, 5*time.Second), lease.Added, b)

	// Watching from the current revision reports nothing old.
	_, rev = list(t, s)
	w2 := StartWatch(t, s, rev)
	c := mustCreate(t, s, sample(3, "192.168.1.3"), time.Hour)
	expectEvent(t, w2.Next(t, 5*time.Second), lease.Added, c)
}

func testExpiry(t *testing.T, s lease.Store) {
	_, rev := list(t, s)
	w := StartWatch(t, s, rev)
	short := mustCreate(t, s, sample(1, "192.168.1.1"), ShortTTL)
	long := mustCreate(t, s, sample(2, "192.168.1.2"), time.Hour)
	res := mustCreate(t, s, sample(3, "192.168.1.3"), 0)
	for range 3 {
		w.Next(t, 5*time.Second)
	}

	if a, ok := s.(Advancer); ok {
		a.Advance(ShortTTL + time.Second)
	}
	e := w.Next(t, ShortTTL+5*time.Second)
	expectEvent(t, e, lease.Removed, short)

	ls, _ := list(t, s)
	if _, ok := find(ls, short.Key()); ok {
		t.Errorf("expired lease %s still listed", short)
	}
	for _, l := range []lease.Lease{long, res} {
		if _, ok := find(ls, l.Key()); !ok {
			t.Errorf("lease %s vanished with the expired one", l)
		}
	}
	if _, err := s.Renew(Ctx(t), short, time.Hour); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("Renew of expired lease: err = %v, want ErrNotFound", err)
	}
	// The subnet is free again.
	mustCreate(t, s, sample(1, "192.168.1.99"), time.Hour)
}

func testCompaction(t *testing.T, s lease.Store) {
	c, ok := s.(Compacter)
	if !ok {
		t.Skip("store cannot compact")
	}
	_, rev0 := list(t, s)
	a := mustCreate(t, s, sample(1, "192.168.1.1"), time.Hour)
	b := mustCreate(t, s, sample(2, "192.168.1.2"), time.Hour)
	if err := s.Revoke(Ctx(t), a); err != nil {
		t.Fatal(err)
	}
	_, rev := list(t, s)
	if err := c.Compact(Ctx(t), rev); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Watch(Ctx(t), rev0, func([]lease.Event) {}) }()
	select {
	case err := <-done:
		if !errors.Is(err, lease.ErrCompacted) {
			t.Fatalf("Watch from compacted revision: %v, want ErrCompacted", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch from a compacted revision did not return")
	}

	// Re-listing recovers the state; watching from there works.
	ls, rev := list(t, s)
	if len(ls) != 1 || ls[0].Key() != b.Key() {
		t.Fatalf("re-list after compaction: %v, want only %s", ls, b)
	}
	w := StartWatch(t, s, rev)
	d := mustCreate(t, s, sample(4, "192.168.1.4"), time.Hour)
	expectEvent(t, w.Next(t, 5*time.Second), lease.Added, d)
}

func testBadEntries(t *testing.T, s lease.Store) {
	rw, ok := s.(RawWriter)
	if !ok {
		t.Skip("store cannot write raw entries")
	}
	good := mustCreate(t, s, sample(1, "192.168.1.1"), time.Hour)
	soured := mustCreate(t, s, sample(2, "192.168.1.2"), 0)
	_, rev := list(t, s)
	w := StartWatch(t, s, rev)

	bad := map[string]string{
		"not-a-subnet":                `{"PublicIP":"192.168.1.9"}`,
		"10.5.9.7-24":                 `{"PublicIP":"192.168.1.9"}`, // host bits
		"10.5.10.0-24":                `{"PublicIP":"fe80::1"}`,     // wrong family
		"10.5.11.0-24":                `garbage`,
		"10.5.12.0-24":                `{}`, // no public IP
		"10.5.13.0-24&fc00::-":        `{"PublicIP":"192.168.1.9"}`,
		"10.5.14.0-24&fc00:0000::-64": `{"PublicIP":"192.168.1.9"}`, // not canonical
	}
	for k, v := range bad {
		if err := rw.PutRaw(Ctx(t), k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	ls, _ := list(t, s)
	if len(ls) != 2 {
		t.Fatalf("Leases with bad entries = %v, want only %s and %s", ls, good, soured)
	}
	// Bad keys produce no event; bad values for good keys are removals.
	removed := map[string]bool{}
	for range 3 {
		e := w.Next(t, 5*time.Second)
		if e.Type != lease.Removed {
			t.Fatalf("bad entry delivered as %v %+v", e.Type, e.Lease)
		}
		removed[e.Lease.Key()] = true
	}
	for _, k := range []string{"10.5.10.0-24", "10.5.11.0-24", "10.5.12.0-24"} {
		if !removed[k] {
			t.Errorf("bad value for %s not reported as removed (got %v)", k, removed)
		}
	}
	// A good entry whose value turns to garbage is reported as removed.
	if err := rw.PutRaw(Ctx(t), soured.Key(), []byte(`{"PublicIP":`)); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, w.Next(t, 5*time.Second), lease.Removed, soured)
	d := mustCreate(t, s, sample(4, "192.168.1.4"), time.Hour)
	expectEvent(t, w.Next(t, 5*time.Second), lease.Added, d)
}
