package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/leasetest"
	"github.com/flannel-go/flannel/internal/logbuf"
	"github.com/flannel-go/flannel/internal/masq"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

// fakeBackend records what the daemon asks of a backend.
type fakeBackend struct {
	mu      sync.Mutex
	inits   int
	own     []lease.Lease
	synced  [][]lease.Lease
	changed chan struct{}
}

func (b *fakeBackend) notify() {
	select {
	case b.changed <- struct{}{}:
	default:
	}
}

func (b *fakeBackend) Init(context.Context) (lease.Attrs, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.inits++
	return lease.Attrs{PublicIP: netip.MustParseAddr("192.168.0.1"), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}`)}, nil
}

func (b *fakeBackend) Configure(_ context.Context, own lease.Lease) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.own = append(b.own, own)
	return 1450, nil
}

func (b *fakeBackend) Sync(_ context.Context, peers []lease.Lease) error {
	b.mu.Lock()
	b.synced = append(b.synced, append([]lease.Lease(nil), peers...))
	b.mu.Unlock()
	b.notify()
	return nil
}

func (b *fakeBackend) Repair(context.Context) error { return nil }
func (b *fakeBackend) Close() error                 { return nil }

// lastPeers returns the subnets of the last Sync.
func (b *fakeBackend) lastPeers() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.synced) == 0 {
		return nil
	}
	var out []string
	for _, l := range b.synced[len(b.synced)-1] {
		out = append(out, l.Subnet.String())
	}
	return out
}

type fakeRules struct {
	mu      sync.Mutex
	applied []masq.Rules
}

func (r *fakeRules) Apply(_ context.Context, want masq.Rules) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied = append(r.applied, want)
	return false, nil
}
func (r *fakeRules) RemoveOther(context.Context) error { return nil }

func newFakeRules(bool) (Rules, error) { return &fakeRules{}, nil }

// fakeExt is the external interface of every daemon under test.
func fakeExt(bool) (iface.ExtIface, error) {
	a := netip.MustParseAddr("192.168.0.1")
	return iface.ExtIface{Name: "eth0", Index: 2, MTU: 1500, IfaceAddr: a, ExtAddr: a}, nil
}

type harness struct {
	store *leasetest.Store
	be    *fakeBackend
	rules *fakeRules
	d     *Daemon
	logs  *logbuf.Buffer
	env   string
	stop  func()
	done  chan error
	// leftovers counts the calls of each backend's RemoveLeftovers.
	leftovers map[string]*atomic.Int32
}

func newHarness(t *testing.T, config string) *harness {
	t.Helper()
	h := &harness{
		store:     leasetest.New(nil),
		be:        &fakeBackend{changed: make(chan struct{}, 1)},
		rules:     &fakeRules{},
		logs:      &logbuf.Buffer{},
		env:       filepath.Join(t.TempDir(), "run", "subnet.env"),
		done:      make(chan error, 1),
		leftovers: map[string]*atomic.Int32{"vxlan": new(atomic.Int32), "udp": new(atomic.Int32)},
	}
	removeLeftovers := func(typ string) func(*slog.Logger) error {
		return func(*slog.Logger) error { h.leftovers[typ].Add(1); return nil }
	}
	if config != "" {
		if err := h.store.PutConfig(context.Background(), []byte(config)); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.d = New(Config{
		SubnetFile: h.env, IPMasq: true, ForwardRules: true,
		ConfigRetryBase: 5 * time.Millisecond, RepairInterval: time.Hour, RulesResync: time.Hour,
	}, Deps{
		Source: lease.NewStoreSource(h.store, lease.StoreSourceOptions{Prefix: "/coreos.com/network", RenewMargin: time.Minute}),
		Backends: map[string]backend.Def{
			"vxlan": {Info: backend.Info{Type: "vxlan", TypedLeases: true, ValidatePeer: needsVtepMAC, RemoveLeftovers: removeLeftovers("vxlan")}, New: func(backend.Config) (backend.Backend, error) { return h.be, nil }},
			"udp":   {Info: backend.Info{Type: "udp", RemoveLeftovers: removeLeftovers("udp")}, New: func(backend.Config) (backend.Backend, error) { return nil, errors.New("not in this harness") }},
		},
		Ext:      fakeExt,
		NewRules: func(bool) (Rules, error) { return h.rules, nil },
		Log:      log,
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { h.done <- h.d.Run(ctx) }()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-h.done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Error("Run did not return within 5 s of cancel")
			}
		})
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", h.logs.String())
		}
	})
	return h
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func leaseCount(t *testing.T, s lease.Store) int {
	ls, _, err := s.Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(ls)
}

const goodConfig = `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`

func TestMissingConfigIsReportedOnceThenPickedUp(t *testing.T) {
	h := newHarness(t, "")
	defer h.stop()
	waitUntil(t, "the missing-config message", func() bool {
		return strings.Contains(h.logs.String(), "etcdctl put /coreos.com/network/config")
	})
	// Several retries happen (5 ms apart, backing off); the message must
	// not repeat, and nothing may be leased or written meanwhile.
	time.Sleep(100 * time.Millisecond)
	if n := strings.Count(h.logs.String(), "network config not found"); n != 1 {
		t.Errorf("missing-config message logged %d times, want once", n)
	}
	if _, err := os.Stat(h.env); !os.IsNotExist(err) {
		t.Errorf("subnet.env written before a config exists: %v", err)
	}
	if err := h.store.PutConfig(context.Background(), []byte(goodConfig)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "ready", h.d.Ready)
	env, err := subnetenv.Read(h.env)
	if err != nil {
		t.Fatal(err)
	}
	if env.Network != netip.MustParsePrefix("10.5.0.0/16") || env.MTU != 1450 || !env.IPMasq ||
		env.Subnet.Masked() != h.d.Lease().Subnet || env.Subnet.Addr() != h.d.Lease().Subnet.Addr().Next() {
		t.Errorf("subnet.env %+v does not match lease %s", env, h.d.Lease().Subnet)
	}
}

func TestBadConfigTakesNoLeaseAndWritesNothing(t *testing.T) {
	cases := []struct{ config, key string }{
		{`{"Network":"10.5.0.0/33"}`, "Network"},
		{`{"Network":"10.5.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}`, "SubnetLen"},
		{`{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0","Backend":{"Type":"vxlan"}}`, "SubnetMin"},
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"carrier-pigeon"}}`, "Backend.Type"},
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}`, "offset"},
	}
	for _, c := range cases {
		t.Run(c.key, func(t *testing.T) {
			h := newHarness(t, c.config)
			defer h.stop()
			waitUntil(t, "an error naming "+c.key, func() bool { return strings.Contains(h.logs.String(), c.key) })
			time.Sleep(50 * time.Millisecond)
			if n := strings.Count(h.logs.String(), "level=ERROR"); n != 1 {
				t.Errorf("%d error lines, want exactly one:\n%s", n, h.logs.String())
			}
			if n := leaseCount(t, h.store); n != 0 {
				t.Errorf("%d leases taken with a bad config", n)
			}
			if _, err := os.Stat(h.env); !os.IsNotExist(err) {
				t.Errorf("subnet.env written with a bad config")
			}
			if h.d.Ready() {
				t.Error("ready with a bad config")
			}
			// Fixing the config lets it start without a restart.
			if err := h.store.PutConfig(context.Background(), []byte(goodConfig)); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, "ready after the fix", h.d.Ready)
		})
	}
}

func peerLease(sn, pub string) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: lease.Attrs{
		PublicIP: netip.MustParseAddr(pub), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"0a:00:00:00:00:09"}`)}}
}

// TestOtherBackendsLeftoversRemoved: before the backend starts, every
// other backend removes what it keeps across restarts (a change of
// Backend.Type); the running one's is left alone.
func TestOtherBackendsLeftoversRemoved(t *testing.T) {
	h := newHarness(t, goodConfig)
	defer h.stop()
	waitUntil(t, "subnet.env", func() bool { _, err := os.Stat(h.env); return err == nil })
	if n := h.leftovers["udp"].Load(); n != 1 {
		t.Errorf("udp's RemoveLeftovers called %d times, want once", n)
	}
	if n := h.leftovers["vxlan"].Load(); n != 0 {
		t.Errorf("the running backend's RemoveLeftovers called %d times", n)
	}
}

func TestPeersComeAndGo(t *testing.T) {
	h := newHarness(t, goodConfig)
	defer h.stop()
	waitUntil(t, "ready", h.d.Ready)
	ctx := context.Background()
	p, err := h.store.Create(ctx, peerLease("10.5.200.0/24", "192.168.0.2"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the peer in Sync", func() bool { return strings.Join(h.be.lastPeers(), ",") == "10.5.200.0/24" })
	// A bad lease is ignored with a warning naming its key; the good one stays.
	bad := peerLease("10.5.201.0/24", "10.5.9.9")
	if _, err := h.store.Create(ctx, bad, time.Hour); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a warning naming the bad key", func() bool { return strings.Contains(h.logs.String(), "10.5.201.0-24") })
	if got := strings.Join(h.be.lastPeers(), ","); got != "10.5.200.0/24" {
		t.Errorf("peers after a bad lease = %s, want only 10.5.200.0/24", got)
	}
	if err := h.store.Revoke(ctx, p); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the peer removed", func() bool { return len(h.be.lastPeers()) == 0 })
	if !strings.Contains(h.logs.String(), "peer removed") {
		t.Error("no 'peer removed' log line")
	}
}

func TestOwnLeaseDeletedIsReacquired(t *testing.T) {
	h := newHarness(t, goodConfig)
	defer h.stop()
	waitUntil(t, "ready", h.d.Ready)
	ctx := context.Background()
	own := h.d.Lease()
	if err := h.store.Revoke(ctx, own); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the lease back in the store", func() bool {
		ls, _, _ := h.store.Leases(ctx)
		return len(ls) == 1 && ls[0].Subnet == own.Subnet && ls[0].Attrs.PublicIP == own.Attrs.PublicIP
	})
	h.stop()
	if h.d.Lease().Subnet != own.Subnet {
		t.Errorf("re-acquired %s, want the same subnet %s", h.d.Lease().Subnet, own.Subnet)
	}
}

func TestNoFreeSubnetWaitsInsteadOfExiting(t *testing.T) {
	// A /28 network with /30 subnets has 3 usable subnets (the first is skipped).
	h := newHarness(t, "")
	ctx := context.Background()
	cfg := `{"Network":"10.5.0.0/28","SubnetLen":30,"Backend":{"Type":"vxlan"}}`
	var taken []lease.Lease
	for i, sn := range []string{"10.5.0.4/30", "10.5.0.8/30", "10.5.0.12/30"} {
		l, err := h.store.Create(ctx, peerLease(sn, "192.168.0."+string(rune('5'+i))), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		taken = append(taken, l)
	}
	if err := h.store.PutConfig(ctx, []byte(cfg)); err != nil {
		t.Fatal(err)
	}
	defer h.stop()
	waitUntil(t, "a clear no-free-subnet error", func() bool { return strings.Contains(h.logs.String(), "no free subnet") })
	select {
	case err := <-h.done:
		t.Fatalf("Run returned with no free subnet: %v", err)
	default:
	}
	if err := h.store.Revoke(ctx, taken[1]); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "ready once a subnet frees up", h.d.Ready)
	if got := h.d.Lease().Subnet.String(); got != "10.5.0.8/30" {
		t.Errorf("got %s, want the freed 10.5.0.8/30", got)
	}
}

// needsVtepMAC stands in for vxlan's BackendData check.
func needsVtepMAC(l lease.Lease) error {
	if !strings.Contains(string(l.Attrs.BackendData), "VtepMAC") {
		return errors.New("BackendData has no VtepMAC")
	}
	return nil
}

// A lease the backend cannot use (Info.ValidatePeer) is ignored with one
// warning naming it and the backend's reason; once fixed, it is a peer.
func TestBackendRejectedPeerIsIgnoredUntilFixed(t *testing.T) {
	h := newHarness(t, goodConfig)
	defer h.stop()
	waitUntil(t, "ready", h.d.Ready)
	ctx := context.Background()
	bad := peerLease("10.5.202.0/24", "192.168.0.3")
	bad.Attrs.BackendData = json.RawMessage(`{"VNI":1}`)
	l, err := h.store.Create(ctx, bad, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a warning naming the lease and the reason", func() bool {
		return strings.Contains(h.logs.String(), "10.5.202.0-24") && strings.Contains(h.logs.String(), "no VtepMAC")
	})
	if got := h.be.lastPeers(); len(got) != 0 {
		t.Errorf("peers with only a rejected lease = %v, want none", got)
	}
	l.Attrs = peerLease("10.5.202.0/24", "192.168.0.3").Attrs
	if _, err := h.store.Renew(ctx, l, time.Hour); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the fixed lease in Sync", func() bool { return strings.Join(h.be.lastPeers(), ",") == "10.5.202.0/24" })
}
