package lease_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/etcdtest"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/etcdstore"
	"github.com/flannel-go/flannel/internal/lease/leasetest"
	"github.com/flannel-go/flannel/internal/netconf"
)

// cfg24 has exactly 24 subnets: 10.5.1.0/24 … 10.5.24.0/24.
const cfg24 = `{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.24.0","Backend":{"Type":"vxlan"}}`

func parseCfg(t testing.TB, s string) *netconf.Config {
	t.Helper()
	c, err := netconf.Parse([]byte(s))
	if err != nil {
		t.Fatalf("config %s: %v", s, err)
	}
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// hostAttrs is what host i would publish.
func hostAttrs(i int) lease.Attrs {
	return lease.Attrs{
		PublicIP:    netip.AddrFrom4([4]byte{192, 168, 0, byte(i)}),
		BackendType: "vxlan",
		BackendData: json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":"02:00:00:00:01:%02x"}`, i)),
	}
}

// kinds runs f once against the in-memory fake and once against a real
// etcd. newClient gives a separate client (for etcd: connection) on the
// same store each time it is called.
func kinds(t *testing.T, f func(t *testing.T, newClient func() lease.Store)) {
	t.Run("fake", func(t *testing.T) {
		s := leasetest.New(nil)
		f(t, func() lease.Store { return s })
	})
	t.Run("etcd", func(t *testing.T) {
		eps := etcdtest.StartEtcd(t)
		f(t, func() lease.Store { return etcdClient(t, eps) })
	})
}

func etcdClient(t testing.TB, eps []string) *etcdstore.Store {
	t.Helper()
	s, err := etcdstore.New(etcdstore.Options{Endpoints: eps})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func acquire(t *testing.T, s lease.Store, cfg *netconf.Config, a lease.Attrs, prev lease.Prev) lease.Lease {
	t.Helper()
	l, err := lease.Acquire(testCtx(t), s, cfg, a, prev, time.Hour, nil)
	if err != nil {
		t.Fatalf("Acquire for %v: %v", a.PublicIP, err)
	}
	return l
}

func listing(t *testing.T, s lease.Store) map[string]lease.Lease {
	t.Helper()
	ls, _, err := s.Leases(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]lease.Lease{}
	for _, l := range ls {
		m[l.Key()] = l
	}
	return m
}

// 24 hosts, each with its own client, start at once on a network of 24
// subnets: every one gets a distinct subnet (lost races are retried, not
// fatal), and a 25th is told there is none left.
func TestAcquireRace(t *testing.T) {
	kinds(t, func(t *testing.T, newClient func() lease.Store) {
		cfg := parseCfg(t, cfg24)
		const n = 24
		clients := make([]lease.Store, n)
		for i := range clients {
			clients[i] = newClient()
		}
		got := make([]lease.Lease, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				got[i], errs[i] = lease.Acquire(testCtx(t), clients[i], cfg, hostAttrs(i+1), lease.Prev{}, time.Hour, nil)
			})
		}
		close(start)
		wg.Wait()
		seen := map[netip.Prefix]int{}
		for i := range n {
			if errs[i] != nil {
				t.Errorf("host %d: %v", i+1, errs[i])
				continue
			}
			if !lease.Fits(cfg, got[i].Subnet) {
				t.Errorf("host %d got %s outside the config", i+1, got[i].Subnet)
			}
			if j, dup := seen[got[i].Subnet]; dup {
				t.Errorf("hosts %d and %d both got %s", j+1, i+1, got[i].Subnet)
			}
			seen[got[i].Subnet] = i
		}
		if ls := listing(t, clients[0]); len(ls) != n {
			t.Errorf("%d leases stored, want %d", len(ls), n)
		}
		_, err := lease.Acquire(testCtx(t), newClient(), cfg, hostAttrs(n+1), lease.Prev{}, time.Hour, nil)
		if !errors.Is(err, lease.ErrNoFreeSubnet) {
			t.Fatalf("25th host: err = %v, want ErrNoFreeSubnet", err)
		}
	})
}

// A restarted host gets its lease back by public IP, with its new
// attributes and the same etcd lease.
func TestAcquireReusesByPublicIP(t *testing.T) {
	kinds(t, func(t *testing.T, newClient func() lease.Store) {
		s := newClient()
		cfg := parseCfg(t, cfg24)
		first := acquire(t, s, cfg, hostAttrs(1), lease.Prev{})
		acquire(t, s, cfg, hostAttrs(2), lease.Prev{})

		a := hostAttrs(1)
		a.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:09:99"}`)
		// A stale prev must not pull the host away from its lease.
		again := acquire(t, newClient(), cfg, a, lease.Prev{Subnet: netip.MustParsePrefix("10.5.20.0/24")})
		if again.Subnet != first.Subnet || again.ID != first.ID {
			t.Fatalf("reacquired %s (lease %x), want %s (lease %x)", again.Subnet, again.ID, first.Subnet, first.ID)
		}
		if l := listing(t, s)[first.Key()]; !l.Attrs.Equal(a) {
			t.Fatalf("stored attrs %+v, want the new %+v", l.Attrs, a)
		}
		if n := len(listing(t, s)); n != 2 {
			t.Fatalf("%d leases after reuse, want 2", n)
		}
	})
}

// Without a lease of its own, a host gets its previous subnet back if it
// is free and fits, and another one otherwise.
func TestAcquirePrev(t *testing.T) {
	kinds(t, func(t *testing.T, newClient func() lease.Store) {
		s := newClient()
		cfg := parseCfg(t, cfg24)
		prev := netip.MustParsePrefix("10.5.7.0/24")
		if l := acquire(t, s, cfg, hostAttrs(1), lease.Prev{Subnet: prev}); l.Subnet != prev {
			t.Fatalf("got %s, want the free previous subnet %s", l.Subnet, prev)
		}
		if l := acquire(t, s, cfg, hostAttrs(2), lease.Prev{Subnet: prev}); l.Subnet == prev {
			t.Fatalf("host 2 was given %s, held by host 1", prev)
		}
		outside := netip.MustParsePrefix("10.5.30.0/24") // beyond SubnetMax
		if l := acquire(t, s, cfg, hostAttrs(3), lease.Prev{Subnet: outside}); l.Subnet == outside || !lease.Fits(cfg, l.Subnet) {
			t.Fatalf("got %s for a previous subnet outside the config", l.Subnet)
		}
	})
}

// After the config changes, a host's old lease that no longer fits is
// revoked and replaced by one that does.
func TestAcquireRevokesMisfit(t *testing.T) {
	kinds(t, func(t *testing.T, newClient func() lease.Store) {
		s := newClient()
		old := acquire(t, s, parseCfg(t, `{"Network":"10.5.0.0/16","SubnetMin":"10.5.30.0","SubnetMax":"10.5.30.0"}`), hostAttrs(1), lease.Prev{})
		cfg := parseCfg(t, cfg24)
		l := acquire(t, s, cfg, hostAttrs(1), lease.Prev{})
		if !lease.Fits(cfg, l.Subnet) {
			t.Fatalf("got %s, outside the new config", l.Subnet)
		}
		ls := listing(t, s)
		if _, ok := ls[old.Key()]; ok || len(ls) != 1 {
			t.Fatalf("after reacquiring: %v, want only %s", ls, l)
		}
	})
}

// A reservation is never handed to another host, is reused by its owner
// without gaining a TTL, and is not revoked when it stops fitting.
func TestAcquireReservation(t *testing.T) {
	eps := etcdtest.StartEtcd(t)
	s := etcdClient(t, eps)
	cli := s.Client()
	cfg := parseCfg(t, `{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0"}`)
	const key = "/coreos.com/network/subnets/10.5.1.0-24"
	if _, err := cli.Put(testCtx(t), key, `{"PublicIP":"192.168.0.1"}`); err != nil {
		t.Fatal(err)
	}
	if l := acquire(t, s, cfg, hostAttrs(2), lease.Prev{Subnet: netip.MustParsePrefix("10.5.1.0/24")}); l.Subnet != netip.MustParsePrefix("10.5.2.0/24") {
		t.Fatalf("host 2 got %s, want the only unreserved subnet", l.Subnet)
	}
	if _, err := lease.Acquire(testCtx(t), s, cfg, hostAttrs(3), lease.Prev{}, time.Hour, nil); !errors.Is(err, lease.ErrNoFreeSubnet) {
		t.Fatalf("host 3: err = %v, want ErrNoFreeSubnet (the reservation is not free)", err)
	}

	owner := acquire(t, s, cfg, hostAttrs(1), lease.Prev{})
	if owner.Key() != "10.5.1.0-24" || !owner.Reserved() {
		t.Fatalf("owner got %s (lease %x), want its reservation", owner, owner.ID)
	}
	if _, err := s.Renew(testCtx(t), owner, time.Hour); err != nil {
		t.Fatal(err)
	}
	r, err := cli.Get(testCtx(t), key)
	if err != nil || len(r.Kvs) != 1 {
		t.Fatal(r, err)
	}
	if r.Kvs[0].Lease != 0 {
		t.Fatalf("reservation was given etcd lease %x", r.Kvs[0].Lease)
	}
	var stored lease.Attrs
	if err := json.Unmarshal(r.Kvs[0].Value, &stored); err != nil || !stored.Equal(hostAttrs(1)) {
		t.Fatalf("reservation value %s, want the owner's attributes", r.Kvs[0].Value)
	}

	// The network shrinks so the reservation no longer fits: the owner
	// gets a new lease and the reservation stays.
	cfg2 := parseCfg(t, `{"Network":"10.5.0.0/16","SubnetMin":"10.5.3.0","SubnetMax":"10.5.3.0"}`)
	l := acquire(t, s, cfg2, hostAttrs(1), lease.Prev{})
	if l.Subnet != netip.MustParsePrefix("10.5.3.0/24") || l.Reserved() {
		t.Fatalf("got %s (lease %x), want a new lease on 10.5.3.0/24", l, l.ID)
	}
	if r, err := cli.Get(testCtx(t), key); err != nil || len(r.Kvs) != 1 || r.Kvs[0].Lease != 0 {
		t.Fatalf("reservation after misfit: %v, %v", r, err)
	}
}

// racyStore lets another host take the subnet just before our first
// Create.
type racyStore struct {
	lease.Store
	once sync.Once
}

func (r *racyStore) Create(ctx context.Context, l lease.Lease, ttl time.Duration) (lease.Lease, error) {
	r.once.Do(func() {
		thief := l
		thief.Attrs = hostAttrs(99)
		if _, err := r.Store.Create(ctx, thief, ttl); err != nil {
			panic(err)
		}
	})
	return r.Store.Create(ctx, l, ttl)
}

// Losing the race for a subnet is not fatal: Acquire lists again and takes
// another.
func TestAcquireRetriesLostRace(t *testing.T) {
	s := &racyStore{Store: leasetest.New(nil)}
	cfg := parseCfg(t, `{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0"}`)
	l := acquire(t, s, cfg, hostAttrs(1), lease.Prev{Subnet: netip.MustParsePrefix("10.5.1.0/24")})
	if l.Subnet != netip.MustParsePrefix("10.5.2.0/24") {
		t.Fatalf("got %s, want the subnet left after losing 10.5.1.0/24", l.Subnet)
	}
	if ls := listing(t, s); ls["10.5.1.0-24"].Attrs.PublicIP != hostAttrs(99).PublicIP {
		t.Fatalf("the winner's lease was disturbed: %+v", ls)
	}
}

func TestAcquireDualStack(t *testing.T) {
	kinds(t, func(t *testing.T, newClient func() lease.Store) {
		s := newClient()
		cfg := parseCfg(t, `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0","IPv6SubnetMin":"fc00:0:0:1::","IPv6SubnetMax":"fc00:0:0:2::"}`)
		a := hostAttrs(1)
		a.PublicIPv6 = netip.MustParseAddr("2001:db8::1")
		prev := lease.Prev{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Subnet6: netip.MustParsePrefix("fc00:0:0:2::/64")}
		l := acquire(t, s, cfg, a, prev)
		if l.Subnet != prev.Subnet || l.Subnet6 != prev.Subnet6 {
			t.Fatalf("got %s, want previous %v", l, prev)
		}
		b := hostAttrs(2)
		b.PublicIPv6 = netip.MustParseAddr("2001:db8::2")
		l2 := acquire(t, s, cfg, b, prev)
		if l2.Subnet == l.Subnet || l2.Subnet6 == l.Subnet6 || !lease.Fits6(cfg, l2.Subnet6) {
			t.Fatalf("second host got %s next to %s", l2, l)
		}
		if got := listing(t, s)[l2.Key()]; got.Subnet6 != l2.Subnet6 {
			t.Fatalf("stored key lacks the IPv6 part: %+v", got)
		}
		// A v4-only lease of this host no longer fits once IPv6 is on.
		c := hostAttrs(3)
		cfg4 := parseCfg(t, `{"Network":"10.5.0.0/16","SubnetMin":"10.5.3.0","SubnetMax":"10.5.3.0"}`)
		old := acquire(t, s, cfg4, c, lease.Prev{})
		cfg3 := parseCfg(t, `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","SubnetMin":"10.5.3.0","SubnetMax":"10.5.3.0","IPv6SubnetMin":"fc00:0:0:3::","IPv6SubnetMax":"fc00:0:0:3::"}`)
		c.PublicIPv6 = netip.MustParseAddr("2001:db8::3")
		l3 := acquire(t, s, cfg3, c, lease.Prev{Subnet: old.Subnet})
		if l3.Subnet != old.Subnet || l3.Subnet6 != netip.MustParsePrefix("fc00:0:0:3::/64") {
			t.Fatalf("upgraded host got %s, want %s with an IPv6 part", l3, old.Subnet)
		}
	})
}

func TestAcquireIPv6OnlyUnsupported(t *testing.T) {
	cfg := parseCfg(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}`)
	_, err := lease.Acquire(testCtx(t), leasetest.New(nil), cfg, lease.Attrs{PublicIPv6: netip.MustParseAddr("2001:db8::1")}, lease.Prev{}, time.Hour, nil)
	if err == nil {
		t.Fatal("Acquire succeeded for an IPv6-only network")
	}
}

func ExampleAcquire() {
	store := leasetest.New(nil)
	cfg, _ := netconf.Parse([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`))
	me := lease.Attrs{PublicIP: netip.MustParseAddr("192.168.0.1"), BackendType: "vxlan"}
	// The subnet this host had before, from its old subnet.env.
	prev := lease.Prev{Subnet: netip.MustParsePrefix("10.5.7.0/24")}

	l, err := lease.Acquire(context.Background(), store, cfg, me, prev, lease.DefaultTTL, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(l.Subnet, l.Reserved())
	// Output: 10.5.7.0/24 false
}
