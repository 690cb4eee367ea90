package etcdstore_test

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/etcdembed"
	"github.com/flannel-go/flannel/internal/etcdtest"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/etcdstore"
	"github.com/flannel-go/flannel/internal/lease/leasetest"
	"github.com/flannel-go/flannel/internal/logbuf"
)

// testStore adds the suite's optional capabilities through the raw client.
type testStore struct{ *etcdstore.Store }

func (s testStore) Compact(ctx context.Context, rev int64) error {
	_, err := s.Client().Compact(ctx, rev, clientv3.WithCompactPhysical())
	return err
}

func (s testStore) PutRaw(ctx context.Context, key string, value []byte) error {
	_, err := s.Client().Put(ctx, lease.KeyPath(s.Prefix(), key), string(value))
	return err
}

func newStore(t testing.TB, o etcdstore.Options) *etcdstore.Store {
	t.Helper()
	return etcdtest.NewStore(t, etcdstore.New, o)
}

func TestConforms(t *testing.T) {
	eps := etcdtest.StartEtcd(t)
	leasetest.RunStoreTests(t, func(t *testing.T) lease.Store {
		return testStore{newStore(t, etcdstore.Options{Endpoints: eps})}
	})
}

func bufLog(b *logbuf.Buffer) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// The layout is upstream's: <prefix>/config and <prefix>/subnets/<key>
// holding upstream's JSON, attached to an etcd lease.
func TestUpstreamLayout(t *testing.T) {
	eps := etcdtest.StartEtcd(t)
	s := newStore(t, etcdstore.Options{Endpoints: eps, Prefix: "/coreos.com/network/"})
	cli := s.Client()
	if _, err := cli.Put(leasetest.Ctx(t), "/coreos.com/network/config", `{"Network":"10.5.0.0/16"}`); err != nil {
		t.Fatal(err)
	}
	if cfg, err := s.Config(leasetest.Ctx(t)); err != nil || string(cfg) != `{"Network":"10.5.0.0/16"}` {
		t.Fatalf("Config = %q, %v", cfg, err)
	}
	l, err := s.Create(leasetest.Ctx(t), lease.Lease{
		Subnet:  netip.MustParsePrefix("10.5.52.0/24"),
		Subnet6: netip.MustParsePrefix("fc00:0:0:1::/64"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.64.3"), BackendType: "vxlan",
			BackendData: []byte(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`)},
	}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r, err := cli.Get(leasetest.Ctx(t), "/coreos.com/network/subnets/10.5.52.0-24&fc00:0:0:1::-64")
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("raw get: %v, %v", r, err)
	}
	want := `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`
	if got := string(r.Kvs[0].Value); got != want {
		t.Errorf("stored value\n%s\nwant\n%s", got, want)
	}
	if r.Kvs[0].Lease != l.ID || l.ID == 0 {
		t.Errorf("key attached to etcd lease %x, Create returned %x", r.Kvs[0].Lease, l.ID)
	}
	ttl, err := cli.TimeToLive(leasetest.Ctx(t), clientv3.LeaseID(l.ID))
	if err != nil || ttl.GrantedTTL != 3600 {
		t.Errorf("granted TTL = %v, %v; want 3600 s", ttl, err)
	}
}

// A reservation written by an operator (a plain put) is listed as one, and
// renewing it rewrites the value without ever attaching a TTL.
func TestReservationKeepsNoTTL(t *testing.T) {
	eps := etcdtest.StartEtcd(t)
	s := newStore(t, etcdstore.Options{Endpoints: eps})
	key := lease.KeyPath(s.Prefix(), "10.5.7.0-24")
	if _, err := s.Client().Put(leasetest.Ctx(t), key, `{"PublicIP":"192.168.1.7"}`); err != nil {
		t.Fatal(err)
	}
	ls, _, err := s.Leases(leasetest.Ctx(t))
	if err != nil || len(ls) != 1 || !ls[0].Reserved() {
		t.Fatalf("Leases = %+v, %v; want one reservation", ls, err)
	}
	r := ls[0]
	r.Attrs.BackendType = "vxlan"
	if _, err := s.Renew(leasetest.Ctx(t), r, time.Hour); err != nil {
		t.Fatal(err)
	}
	g, err := s.Client().Get(leasetest.Ctx(t), key)
	if err != nil || len(g.Kvs) != 1 {
		t.Fatal(g, err)
	}
	if g.Kvs[0].Lease != 0 {
		t.Fatalf("renewed reservation got etcd lease %x", g.Kvs[0].Lease)
	}
	if !strings.Contains(string(g.Kvs[0].Value), `"BackendType":"vxlan"`) {
		t.Fatalf("value not rewritten: %s", g.Kvs[0].Value)
	}
}

// Renewal resets the etcd lease to its full TTL.
func TestRenewExtendsTTL(t *testing.T) {
	eps := etcdtest.StartEtcd(t)
	s := newStore(t, etcdstore.Options{Endpoints: eps})
	l, err := s.Create(leasetest.Ctx(t), lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.1.1")}}, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	deadline := l.Expires
	// Renew twice, each time before expiry, carrying the lease past its
	// original end.
	for range 2 {
		time.Sleep(time.Until(l.Expires) - 1500*time.Millisecond)
		if l, err = s.Renew(leasetest.Ctx(t), l, 0); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Until(deadline.Add(500 * time.Millisecond)))
	got, err := s.Lookup(leasetest.Ctx(t), l.Key())
	if err != nil {
		t.Fatalf("lease gone after its original TTL despite renewals: %v", err)
	}
	if rem := time.Until(got.Expires); rem < time.Second {
		t.Fatalf("remaining TTL %v after renewal", rem)
	}
}

func TestBadEntriesWarnOncePerKey(t *testing.T) {
	eps := etcdtest.StartEtcd(t)
	var buf logbuf.Buffer
	s := newStore(t, etcdstore.Options{Endpoints: eps, Log: bufLog(&buf)})
	for k, v := range map[string]string{"10.5.11.0-24": "garbage", "bogus": `{"PublicIP":"1.2.3.4"}`, "10.5.12.0-24": `{"PublicIP":"1.2.3.4"}`} {
		if _, err := s.Client().Put(leasetest.Ctx(t), lease.KeyPath(s.Prefix(), k), v); err != nil {
			t.Fatal(err)
		}
	}
	ls, _, err := s.Leases(leasetest.Ctx(t))
	if err != nil || len(ls) != 1 || ls[0].Key() != "10.5.12.0-24" {
		t.Fatalf("Leases = %v, %v", ls, err)
	}
	log := buf.String()
	for _, k := range []string{"10.5.11.0-24", "bogus"} {
		if n := strings.Count(log, "subnets/"+k+" "); n != 1 {
			t.Errorf("%d warnings name %s, want 1:\n%s", n, k, log)
		}
	}
}

// Requests against a dead etcd fail within the timeout, naming the
// endpoint; the client reconnects by itself soon after etcd returns, and
// the connection loss is logged once, not per retry.
func TestOutageAndReconnect(t *testing.T) {
	dir := t.TempDir()
	srv := etcdtest.Start(t, etcdembed.Options{Dir: dir})
	eps := srv.Endpoints()
	var buf logbuf.Buffer
	s := newStore(t, etcdstore.Options{Endpoints: eps, Log: bufLog(&buf), Timeout: time.Second})
	_, rev, err := s.Leases(leasetest.Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	w := leasetest.StartWatch(t, s, rev)
	defer w.Stop(t)

	srv.Close()
	start := time.Now()
	_, _, err = s.Leases(context.Background())
	if err == nil {
		t.Fatal("Leases succeeded with etcd down")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("failing request took %v with a 1 s timeout", d)
	}
	if !strings.Contains(err.Error(), eps[0]) {
		t.Errorf("error %q does not name the endpoint %s", err, eps[0])
	}
	time.Sleep(2 * time.Second) // several reconnection attempts

	etcdtest.Start(t, etcdembed.Options{Dir: dir, ClientURLs: eps})
	back := time.Now()
	var l lease.Lease
	for {
		l, err = s.Create(context.Background(), lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"),
			Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.1.1")}}, time.Hour)
		if err == nil || time.Since(back) > 5*time.Second {
			break
		}
	}
	if err != nil {
		t.Fatalf("no successful request within 5 s of etcd's return: %v", err)
	}
	t.Logf("first request succeeded %v after etcd returned", time.Since(back))
	select {
	case e := <-w.Events():
		if e.Type != lease.Added || e.Lease.Key() != l.Key() {
			t.Fatalf("watch after reconnect: %v %s", e.Type, e.Lease.Key())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch did not deliver after reconnect")
	}
	log := buf.String()
	if n := strings.Count(log, "etcd unreachable"); n != 1 {
		t.Errorf("outage logged %d times, want once:\n%s", n, log)
	}
	if n := strings.Count(log, "etcd reachable again"); n != 1 {
		t.Errorf("recovery logged %d times, want once:\n%s", n, log)
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    etcdstore.Options
		want string
	}{
		{"no endpoints", etcdstore.Options{}, "no etcd endpoints"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := etcdstore.New(tc.o)
			if err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestTLS(t *testing.T) {
	f := etcdtest.WriteTLS(t)
	srv := etcdtest.Start(t, etcdembed.Options{TLS: &etcdembed.TLS{CertFile: f.ServerCert, KeyFile: f.ServerKey, ClientCAFile: f.CA}})
	eps := srv.Endpoints()

	t.Run("client cert", func(t *testing.T) {
		s := newStore(t, etcdstore.Options{Endpoints: eps, TLS: etcdtest.ClientTLS(t, f.ClientCert, f.ClientKey, f.CA)})
		l, err := s.Create(leasetest.Ctx(t), lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"),
			Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.1.1")}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if ls, _, err := s.Leases(leasetest.Ctx(t)); err != nil || len(ls) != 1 || ls[0].ID != l.ID {
			t.Fatalf("Leases = %v, %v", ls, err)
		}
	})
	t.Run("wrong CA", func(t *testing.T) {
		other := etcdtest.WriteTLS(t)
		s := newStore(t, etcdstore.Options{Endpoints: eps, TLS: etcdtest.ClientTLS(t, f.ClientCert, f.ClientKey, other.CA), Timeout: 2 * time.Second})
		start := time.Now()
		_, _, err := s.Leases(context.Background())
		if err == nil {
			t.Fatal("Leases succeeded with a CA that did not sign the server certificate")
		}
		t.Logf("error: %v (after %v)", err, time.Since(start))
		if !strings.Contains(err.Error(), eps[0]) || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("error %q should name the endpoint and the certificate problem", err)
		}
		if d := time.Since(start); d > 4*time.Second {
			t.Fatalf("took %v with a 2 s timeout", d)
		}
	})
	t.Run("no client cert", func(t *testing.T) {
		s := newStore(t, etcdstore.Options{Endpoints: eps, TLS: etcdtest.ClientTLS(t, "", "", f.CA), Timeout: 2 * time.Second})
		_, _, err := s.Leases(context.Background())
		if err == nil {
			t.Fatal("Leases succeeded without the client certificate the server requires")
		}
		t.Logf("error: %v", err)
		if !strings.Contains(err.Error(), eps[0]) || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("error %q should name the endpoint and the certificate problem", err)
		}
	})
}

// A user limited to the flannel prefix can do everything a host needs.
func TestAuth(t *testing.T) {
	eps := etcdtest.StartEtcd(t)
	const prefix = "/coreos.com/network"
	admin, err := clientv3.New(clientv3.Config{Endpoints: eps})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx := leasetest.Ctx(t)
	steps := []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "flannel"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "flannel", prefix+"/", clientv3.GetPrefixRangeEnd(prefix+"/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, "flannel", "s3cret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "flannel", "flannel"); return err },
		func() error { _, err := admin.Put(ctx, prefix+"/config", `{"Network":"10.5.0.0/16"}`); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("auth setup step %d: %v", i, err)
		}
	}

	s := newStore(t, etcdstore.Options{Endpoints: eps, Prefix: prefix, Username: "flannel", Password: "s3cret"})
	if _, err := s.Config(leasetest.Ctx(t)); err != nil {
		t.Fatal(err)
	}
	_, rev, err := s.Leases(leasetest.Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Create(leasetest.Ctx(t), lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.1.1")}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if l, err = s.Renew(leasetest.Ctx(t), l, time.Hour); err != nil {
		t.Fatal(err)
	}
	got := make(chan lease.Event, 1)
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	werr := make(chan error, 1)
	go func() {
		werr <- s.Watch(wctx, rev, func(evs []lease.Event) {
			select {
			case got <- evs[0]:
			default:
			}
			cancel()
		})
	}()
	<-werr
	select {
	case e := <-got:
		if e.Lease.Key() != l.Key() {
			t.Fatalf("watch saw %s", e.Lease.Key())
		}
	default:
		t.Fatal("no watch event as the restricted user")
	}
	if err := s.Revoke(leasetest.Ctx(t), l); err != nil {
		t.Fatal(err)
	}

	if s, err := etcdstore.New(etcdstore.Options{Endpoints: eps, Username: "flannel", Password: "wrong"}); err == nil {
		s.Close()
		t.Fatal("New with a wrong password succeeded")
	} else if !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("wrong password: %v", err)
	}
	anon := newStore(t, etcdstore.Options{Endpoints: eps, Prefix: prefix})
	if _, err := anon.Config(leasetest.Ctx(t)); err == nil {
		t.Fatal("Config without credentials succeeded with auth enabled")
	}
}

// tlsFiles is the TLS config etcdconf builds from the --etcd-*file flags.
