package etcdv2store_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/etcdtest"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/etcdv2store"
	"github.com/flannel-go/flannel/internal/lease/leasetest"
	"github.com/flannel-go/flannel/internal/logbuf"
	"github.com/flannel-go/flannel/internal/netconf"
)

func bufLog(b *logbuf.Buffer) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

func mkLease(sn, ip string) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: lease.Attrs{
		PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}`)}}
}

// etcdctl runs `ETCDCTL_API=2 etcdctl`, as the old tutorials do; ok is
// false when there is no etcdctl.
func etcdctl(t testing.TB, endpoint string, args ...string) (out string, ok bool) {
	t.Helper()
	bin, err := exec.LookPath("etcdctl")
	if err != nil {
		return "", false
	}
	cmd := exec.Command(bin, append([]string{"--endpoints", endpoint}, args...)...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=2")
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("etcdctl %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return string(b), true
}

// Config and leases live where upstream ≤ v0.17 kept them, in the bytes
// the v3 store writes: a tutorial's `etcdctl set …/config` works, and what
// we store reads back with `etcdctl get`.
func TestUpstreamLayout(t *testing.T) {
	e := startEtcd(t, etcdOpts{})
	raw := newRaw(e.URL)
	s := newStore(t, etcdv2store.Options{Endpoints: []string{e.URL}, Prefix: "/coreos.com/network/"})

	if ok, err := s.HasConfig(leasetest.Ctx(t)); ok || err != nil {
		t.Fatalf("HasConfig on empty etcd = %v, %v", ok, err)
	}
	if _, err := s.Config(leasetest.Ctx(t)); !errors.Is(err, lease.ErrNoConfig) {
		t.Fatalf("Config on empty etcd: %v, want ErrNoConfig", err)
	}
	cfg := `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`
	if _, ok := etcdctl(t, e.URL, "set", "/coreos.com/network/config", cfg); !ok {
		raw.must(t, http.MethodPut, "/v2/keys/coreos.com/network/config", url.Values{"value": {cfg}})
	}
	if got, err := s.Config(leasetest.Ctx(t)); err != nil || string(got) != cfg {
		t.Fatalf("Config = %q, %v; want %q", got, err, cfg)
	}
	if ok, err := s.HasConfig(leasetest.Ctx(t)); !ok || err != nil {
		t.Fatalf("HasConfig = %v, %v after etcdctl set", ok, err)
	}

	l, err := s.Create(leasetest.Ctx(t), lease.Lease{
		Subnet:  netip.MustParsePrefix("10.5.52.0/24"),
		Subnet6: netip.MustParsePrefix("fc00:0:0:1::/64"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.64.3"), BackendType: "vxlan",
			BackendData: []byte(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`)},
	}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key := "/coreos.com/network/subnets/10.5.52.0-24&fc00:0:0:1::-64"
	want := `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`
	n, ok := raw.get(t, key)
	if !ok {
		t.Fatalf("%s not in etcd", key)
	}
	if n.Value != want {
		t.Errorf("stored value\n%s\nwant\n%s", n.Value, want)
	}
	if n.TTL < 86400-5 || n.TTL > 86400 || n.Expiration == nil {
		t.Errorf("stored TTL %d s, want 86400", n.TTL)
	}
	if n.CreatedIndex != l.ID || !n.Expiration.Equal(l.Expires) {
		t.Errorf("Create returned ID %d expiring %v; etcd has createdIndex %d expiring %v", l.ID, l.Expires, n.CreatedIndex, n.Expiration)
	}
	if out, ok := etcdctl(t, e.URL, "get", key); ok && strings.TrimSpace(out) != want {
		t.Errorf("etcdctl get %s = %q, want %q", key, out, want)
	}
}

// Sixteen hosts acquiring at once on a network of exactly sixteen subnets
// each end up with a different one; a seventeenth finds none free.
func TestAcquireRace(t *testing.T) {
	e := startEtcd(t, etcdOpts{})
	cfg := &netconf.Config{
		EnableIPv4: true, Network: netip.MustParsePrefix("10.5.0.0/20"), SubnetLen: 24,
		SubnetMin: netip.MustParseAddr("10.5.0.0"), SubnetMax: netip.MustParseAddr("10.5.15.0"),
	}
	const n = 16
	prefix := "/test/race"
	got := make([]lease.Lease, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		s := newStore(t, etcdv2store.Options{Endpoints: []string{e.URL}, Prefix: prefix, Log: slog.New(slog.DiscardHandler)})
		wg.Go(func() {
			got[i], errs[i] = lease.Acquire(leasetest.Ctx(t), s, cfg, lease.Attrs{
				PublicIP: netip.AddrFrom4([4]byte{192, 168, 1, byte(i + 1)}), BackendType: "vxlan"}, lease.Prev{}, time.Hour, nil)
		})
	}
	wg.Wait()
	bySubnet := map[netip.Prefix]int{}
	for i, l := range got {
		if errs[i] != nil {
			t.Fatalf("host %d: %v", i, errs[i])
		}
		if j, dup := bySubnet[l.Subnet]; dup {
			t.Errorf("hosts %d and %d both got %s", j, i, l.Subnet)
		}
		bySubnet[l.Subnet] = i
		if l.ID == 0 || !cfg.Network.Contains(l.Subnet.Addr()) {
			t.Errorf("host %d got %+v", i, l)
		}
	}
	s := newStore(t, etcdv2store.Options{Endpoints: []string{e.URL}, Prefix: prefix})
	ls, _, err := s.Leases(leasetest.Ctx(t))
	if err != nil || len(ls) != n {
		t.Fatalf("Leases = %d leases, %v; want %d", len(ls), err, n)
	}
	for _, l := range ls {
		if i, ok := bySubnet[l.Subnet]; !ok || l.Attrs.PublicIP != got[i].Attrs.PublicIP || l.ID != got[i].ID {
			t.Errorf("listed %+v, not what a host acquired", l)
		}
	}
	_, err = lease.Acquire(leasetest.Ctx(t), s, cfg, lease.Attrs{PublicIP: netip.MustParseAddr("192.168.1.99")}, lease.Prev{}, time.Hour, nil)
	if !errors.Is(err, lease.ErrNoFreeSubnet) {
		t.Fatalf("17th host: %v, want ErrNoFreeSubnet", err)
	}
	// A host that restarts gets its own lease back, the same incarnation.
	again, err := lease.Acquire(leasetest.Ctx(t), s, cfg, got[5].Attrs, lease.Prev{}, time.Hour, nil)
	if err != nil || again.Subnet != got[5].Subnet || again.ID != got[5].ID {
		t.Fatalf("restarted host 5 got %+v, %v; want %s (ID %d)", again, err, got[5].Subnet, got[5].ID)
	}
}

// Keep (through a StoreSource, as flanneld runs it) renews through this store with ttl 0: the lease must keep the
// TTL it was created with (etcd v2 does not remember it), outlive it, and
// Keep must report the loss when an operator deletes the key.
func TestKeepRenews(t *testing.T) {
	e := startEtcd(t, etcdOpts{})
	raw := newRaw(e.URL)
	s := newStore(t, etcdv2store.Options{Endpoints: []string{e.URL}})
	const ttl = 3 * time.Second
	l, err := s.Create(leasetest.Ctx(t), mkLease("10.5.1.0/24", "192.168.1.1"), ttl)
	if err != nil {
		t.Fatal(err)
	}
	renewed := make(chan lease.Lease, 100)
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := lease.NewStoreSource(s, lease.StoreSourceOptions{RenewMargin: 2 * time.Second, Log: testLog(t)})
	watched := make(chan struct{})
	defer func() { cancel(); <-watched }()
	go func() {
		defer close(watched)
		_ = src.Watch(ctx, func(lease.Update) {})
	}()
	go func() {
		done <- src.Keep(ctx, l, func(l lease.Lease) { renewed <- l })
	}()
	key := lease.KeyPath(s.Prefix(), l.Key())
	deadline := time.After(10 * time.Second)
	for time.Now().Before(l.Expires.Add(time.Second)) {
		select {
		case nl := <-renewed:
			if nl.ID != l.ID {
				t.Fatalf("renewal changed ID %d → %d", l.ID, nl.ID)
			}
			n, ok := raw.get(t, key)
			if !ok || n.TTL > 3 || n.TTL < 1 || n.CreatedIndex != l.ID {
				t.Fatalf("after renewal etcd has %+v (present %v), want TTL ≤ 3 s on createdIndex %d", n, ok, l.ID)
			}
		case err := <-done:
			t.Fatalf("Keep returned %v", err)
		case <-deadline:
			t.Fatal("no renewals carried the lease past its first TTL")
		}
	}
	if _, ok := raw.get(t, key); !ok {
		t.Fatal("lease gone after its first TTL despite Keep")
	}
	raw.must(t, http.MethodDelete, "/v2/keys"+key, nil)
	select {
	case err := <-done:
		if !errors.Is(err, lease.ErrNotFound) {
			t.Fatalf("Keep after delete: %v, want ErrNotFound", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Keep did not notice its key was deleted")
	}
}

// A host whose key was deleted, or deleted and taken by another host, can
// neither renew nor revoke it.
func TestOwnKeyDeleted(t *testing.T) {
	e := startEtcd(t, etcdOpts{})
	raw := newRaw(e.URL)
	s := newStore(t, etcdv2store.Options{Endpoints: []string{e.URL}})
	l, err := s.Create(leasetest.Ctx(t), mkLease("10.5.1.0/24", "192.168.1.1"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key := lease.KeyPath(s.Prefix(), l.Key())
	raw.must(t, http.MethodDelete, "/v2/keys"+key, nil)
	if _, err := s.Renew(leasetest.Ctx(t), l, time.Hour); !errors.Is(err, lease.ErrNotFound) {
		t.Fatalf("Renew of deleted key: %v, want ErrNotFound", err)
	}
	other, err := s.Create(leasetest.Ctx(t), mkLease("10.5.1.0/24", "192.168.1.2"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Renew(leasetest.Ctx(t), l, time.Hour); !errors.Is(err, lease.ErrNotFound) {
		t.Fatalf("Renew of a key re-created by another host: %v, want ErrNotFound", err)
	}
	if err := s.Revoke(leasetest.Ctx(t), l); !errors.Is(err, lease.ErrNotFound) {
		t.Fatalf("Revoke of a key re-created by another host: %v, want ErrNotFound", err)
	}
	n, ok := raw.get(t, key)
	if !ok || n.CreatedIndex != other.ID || !strings.Contains(n.Value, "192.168.1.2") {
		t.Fatalf("the new holder's key was touched: %+v (present %v)", n, ok)
	}
}

// An operator's reservation (`etcdctl set` without --ttl) is listed as one,
// renewing it never adds a TTL, and the host it names gets it from Acquire.
func TestOperatorReservation(t *testing.T) {
	e := startEtcd(t, etcdOpts{})
	raw := newRaw(e.URL)
	s := newStore(t, etcdv2store.Options{Endpoints: []string{e.URL}})
	key := lease.KeyPath(s.Prefix(), "10.5.7.0-24")
	raw.must(t, http.MethodPut, "/v2/keys"+key, url.Values{"value": {`{"PublicIP":"192.168.1.7"}`}})
	ls, _, err := s.Leases(leasetest.Ctx(t))
	if err != nil || len(ls) != 1 || !ls[0].Reserved() || !ls[0].Expires.IsZero() {
		t.Fatalf("Leases = %+v, %v; want one reservation", ls, err)
	}
	cfg := &netconf.Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24,
		SubnetMin: netip.MustParseAddr("10.5.1.0"), SubnetMax: netip.MustParseAddr("10.5.255.0")}
	want := lease.Attrs{PublicIP: netip.MustParseAddr("192.168.1.7"), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:07"}`)}
	l, err := lease.Acquire(leasetest.Ctx(t), s, cfg, want, lease.Prev{}, time.Hour, nil)
	if err != nil || l.Subnet != netip.MustParsePrefix("10.5.7.0/24") || !l.Reserved() {
		t.Fatalf("Acquire = %+v, %v; want the reservation 10.5.7.0/24", l, err)
	}
	n, ok := raw.get(t, key)
	if !ok || n.Expiration != nil || n.TTL != 0 {
		t.Fatalf("reservation got a TTL: %+v", n)
	}
	if !strings.Contains(n.Value, `"BackendType":"vxlan"`) {
		t.Fatalf("value not rewritten: %s", n.Value)
	}
}

// Every change is delivered once, in order: applying the events to the
// listing we started from gives the listing at the end.
func TestWatchManyEvents(t *testing.T) {
	e := startEtcd(t, etcdOpts{})
	s := newStore(t, etcdv2store.Options{Endpoints: []string{e.URL}})
	start, rev, err := s.Leases(leasetest.Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	w := leasetest.StartWatch(t, s, rev)
	defer w.Stop(t)

	ops := 0
	var mine []lease.Lease
	for i := range 60 {
		l, err := s.Create(leasetest.Ctx(t), mkLease(fmt.Sprintf("10.5.%d.0/24", i), "192.168.1.1"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		mine = append(mine, l)
		ops++
	}
	for i := range 5 {
		if _, err := s.Create(leasetest.Ctx(t), mkLease(fmt.Sprintf("10.6.%d.0/24", i), "192.168.2.1"), 0); err != nil {
			t.Fatal(err)
		}
		ops++
	}
	for i, l := range mine {
		l.Attrs.PublicIP = netip.AddrFrom4([4]byte{192, 168, 3, byte(i)})
		if mine[i], err = s.Renew(leasetest.Ctx(t), l, time.Hour); err != nil {
			t.Fatal(err)
		}
		ops++
	}
	for i := 0; i < len(mine); i += 3 {
		if err := s.Revoke(leasetest.Ctx(t), mine[i]); err != nil {
			t.Fatal(err)
		}
		ops++
	}
	sentinel, err := s.Create(leasetest.Ctx(t), mkLease("10.7.0.0/24", "192.168.9.9"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	state := map[string]lease.Lease{}
	for _, l := range start {
		state[l.Key()] = l
	}
	timeout := time.After(15 * time.Second)
	for i := 0; i <= ops; i++ {
		select {
		case ev := <-w.Events():
			if i == ops && ev.Lease.Key() != sentinel.Key() {
				t.Fatalf("event %d is %v %s, want the last write %s: duplicate or extra events", i, ev.Type, ev.Lease.Key(), sentinel.Key())
			}
			if ev.Type == lease.Added {
				state[ev.Lease.Key()] = ev.Lease
			} else {
				delete(state, ev.Lease.Key())
			}
		case <-timeout:
			t.Fatalf("only %d of %d events arrived", i, ops+1)
		}
	}
	final, _, err := s.Leases(leasetest.Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(final) != len(state) {
		t.Fatalf("events give %d leases, listing has %d", len(state), len(final))
	}
	for _, l := range final {
		w, ok := state[l.Key()]
		if !ok || w.ID != l.ID || !w.Attrs.Equal(l.Attrs) {
			t.Errorf("listed %+v; events give %+v (present %v)", l, w, ok)
		}
	}
}

// Removing the subnets directory, or a directory above it, removes every
// lease at once; the watch says so with ErrCompacted, so the caller
// re-lists.
func TestDirectoryRemoved(t *testing.T) {
	e := startEtcd(t, etcdOpts{})
	raw := newRaw(e.URL)
	for _, dir := range []string{"subnets", ""} {
		t.Run("rm -r prefix/"+dir, func(t *testing.T) {
			s := newStore(t, etcdv2store.Options{Endpoints: []string{e.URL}})
			for _, sn := range []string{"10.5.1.0/24", "10.5.2.0/24"} {
				if _, err := s.Create(leasetest.Ctx(t), mkLease(sn, "192.168.1.1"), time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			_, rev, err := s.Leases(leasetest.Ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- s.Watch(leasetest.Ctx(t), rev, func([]lease.Event) {}) }()
			raw.must(t, http.MethodDelete, "/v2/keys"+strings.TrimSuffix(s.Prefix()+"/"+dir, "/"), url.Values{"recursive": {"true"}})
			select {
			case err := <-done:
				if !errors.Is(err, lease.ErrCompacted) {
					t.Fatalf("Watch after rm -r: %v, want ErrCompacted", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Watch did not return after the directory was removed")
			}
			ls, _, err := s.Leases(leasetest.Ctx(t))
			if err != nil || len(ls) != 0 {
				t.Fatalf("re-list = %v, %v; want empty", ls, err)
			}
		})
	}
}

func TestBadEntriesWarnOncePerKey(t *testing.T) {
	e := startEtcd(t, etcdOpts{})
	raw := newRaw(e.URL)
	var buf logbuf.Buffer
	s := newStore(t, etcdv2store.Options{Endpoints: []string{e.URL}, Log: bufLog(&buf)})
	for k, v := range map[string]string{"10.5.11.0-24": "garbage", "bogus": `{"PublicIP":"1.2.3.4"}`,
		"10.5.12.0-24": `{"PublicIP":"1.2.3.4"}`, "adir/10.5.13.0-24": `{"PublicIP":"1.2.3.4"}`} {
		raw.must(t, http.MethodPut, "/v2/keys"+lease.KeyPath(s.Prefix(), k), url.Values{"value": {v}})
	}
	ls, _, err := s.Leases(leasetest.Ctx(t))
	if err != nil || len(ls) != 1 || ls[0].Key() != "10.5.12.0-24" {
		t.Fatalf("Leases = %v, %v", ls, err)
	}
	log := buf.String()
	for _, k := range []string{"10.5.11.0-24", "bogus", "adir", "adir/10.5.13.0-24"} {
		if n := strings.Count(log, "subnets/"+k+" "); n != 1 {
			t.Errorf("%d warnings name %s, want 1:\n%s", n, k, log)
		}
	}
}

// Requests against a dead etcd fail within the timeout, naming the
// endpoint; the watch and the requests work again once etcd is back, and
// the outage is logged once, not per retry.
func TestOutageAndReconnect(t *testing.T) {
	e := startEtcd(t, etcdOpts{})
	var buf logbuf.Buffer
	s := newStore(t, etcdv2store.Options{Endpoints: []string{e.URL}, Log: bufLog(&buf), Timeout: time.Second})
	_, rev, err := s.Leases(leasetest.Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	w := leasetest.StartWatch(t, s, rev)
	defer w.Stop(t)

	e.stop()
	start := time.Now()
	if _, _, err = s.Leases(context.Background()); err == nil {
		t.Fatal("Leases succeeded with etcd down")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("failing request took %v with a 1 s timeout", d)
	}
	if !strings.Contains(err.Error(), e.URL) {
		t.Errorf("error %q does not name the endpoint %s", err, e.URL)
	}
	time.Sleep(2 * time.Second) // the watch retries several times meanwhile

	e.restart()
	back := time.Now()
	var l lease.Lease
	for {
		l, err = s.Create(context.Background(), mkLease("10.5.1.0/24", "192.168.1.1"), time.Hour)
		if err == nil || time.Since(back) > 5*time.Second {
			break
		}
	}
	if err != nil {
		t.Fatalf("no successful request within 5 s of etcd's return: %v", err)
	}
	select {
	case ev := <-w.Events():
		if ev.Type != lease.Added || ev.Lease.Key() != l.Key() {
			t.Fatalf("watch after reconnect: %v %s", ev.Type, ev.Lease.Key())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not deliver after reconnect")
	}
	log := buf.String()
	for msg, want := range map[string]int{"etcd unreachable": 1, "etcd reachable again": 1,
		"etcd watch interrupted": 1, "etcd watch resumed": 1} {
		if n := strings.Count(log, msg); n != want {
			t.Errorf("%q logged %d times, want %d:\n%s", msg, n, want, log)
		}
	}
}

// With a dead endpoint listed first, everything goes to the live one and
// nothing is logged as an outage.
func TestFailover(t *testing.T) {
	e := startEtcd(t, etcdOpts{})
	dead := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	var buf logbuf.Buffer
	s := newStore(t, etcdv2store.Options{Endpoints: []string{dead, e.URL}, Log: bufLog(&buf)})
	_, rev, err := s.Leases(leasetest.Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Create(leasetest.Ctx(t), mkLease("10.5.1.0/24", "192.168.1.1"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s2 := newStore(t, etcdv2store.Options{Endpoints: []string{dead, e.URL}, Prefix: s.Prefix()})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got []lease.Event
	err = s2.Watch(ctx, rev, func(evs []lease.Event) { got = evs; cancel() })
	if !errors.Is(err, context.Canceled) || len(got) != 1 || got[0].Lease.Key() != l.Key() {
		t.Fatalf("Watch = %v, %v; want the created lease", got, err)
	}
	if strings.Contains(buf.String(), "unreachable") {
		t.Errorf("outage logged with one endpoint up:\n%s", buf.String())
	}
}

// Close ends a Watch in progress, and later calls fail.
func TestCloseEndsWatch(t *testing.T) {
	e := startEtcd(t, etcdOpts{})
	s, err := etcdv2store.New(etcdv2store.Options{Endpoints: []string{e.URL}, Prefix: "/test/close"})
	if err != nil {
		t.Fatal(err)
	}
	_, rev, err := s.Leases(leasetest.Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		close(started)
		done <- s.Watch(context.Background(), rev, func([]lease.Event) {})
	}()
	<-started
	s.Close()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "closed") {
			t.Fatalf("Watch after Close returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after Close")
	}
	if _, err := s.Config(leasetest.Ctx(t)); err == nil || errors.Is(err, lease.ErrNoConfig) {
		t.Fatalf("Config after Close: %v", err)
	}
}

func TestTLS(t *testing.T) {
	f := etcdtest.WriteTLS(t)
	cert, err := tls.LoadX509KeyPair(f.ClientCert, f.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	probe := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
	e := startEtcd(t, etcdOpts{CertFile: f.ServerCert, KeyFile: f.ServerKey, ClientCA: f.CA, Probe: probe})

	t.Run("client cert", func(t *testing.T) {
		s := newStore(t, etcdv2store.Options{Endpoints: []string{e.URL}, TLS: etcdtest.ClientTLS(t, f.ClientCert, f.ClientKey, f.CA)})
		_, rev, err := s.Leases(leasetest.Ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		l, err := s.Create(leasetest.Ctx(t), mkLease("10.5.1.0/24", "192.168.1.1"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var got []lease.Event
		if err := s.Watch(ctx, rev, func(evs []lease.Event) { got = evs; cancel() }); len(got) != 1 || got[0].Lease.ID != l.ID {
			t.Fatalf("Watch over TLS = %v, %v", got, err)
		}
	})
	for _, tc := range []struct {
		name string
		o    etcdv2store.Options
	}{
		{"wrong CA", etcdv2store.Options{TLS: etcdtest.ClientTLS(t, f.ClientCert, f.ClientKey, etcdtest.WriteTLS(t).CA)}},
		{"no client cert", etcdv2store.Options{TLS: etcdtest.ClientTLS(t, "", "", f.CA)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Endpoints = []string{e.URL}
			tc.o.Timeout = 2 * time.Second
			s := newStore(t, tc.o)
			start := time.Now()
			_, _, err := s.Leases(context.Background())
			if err == nil {
				t.Fatal("Leases succeeded")
			}
			t.Logf("error: %v (after %v)", err, time.Since(start))
			if !strings.Contains(err.Error(), e.URL) || !strings.Contains(err.Error(), "certificate") {
				t.Fatalf("error %q should name the endpoint and the certificate problem", err)
			}
			if d := time.Since(start); d > 4*time.Second {
				t.Fatalf("took %v with a 2 s timeout", d)
			}
		})
	}
}

// A user of etcd's v2 auth limited to the flannel prefix can do everything
// a host needs; a wrong password or none is refused.
func TestAuth(t *testing.T) {
	e := startEtcd(t, etcdOpts{})
	const prefix = "/coreos.com/network"
	admin := newRaw(e.URL)
	admin.must(t, http.MethodPut, "/v2/keys"+prefix+"/config", url.Values{"value": {`{"Network":"10.5.0.0/16"}`}})
	for _, step := range []struct{ path, body string }{
		{"/v2/auth/users/root", `{"user":"root","password":"rootpw"}`},
		{"/v2/auth/enable", ``},
		{"/v2/auth/roles/guest", `{"role":"guest","revoke":{"kv":{"read":["/*"],"write":["/*"]}}}`},
		{"/v2/auth/roles/flannel", `{"role":"flannel","permissions":{"kv":{"read":["` + prefix + `/*"],"write":["` + prefix + `/*"]}}}`},
		{"/v2/auth/users/flannel", `{"user":"flannel","password":"s3cret","roles":["flannel"]}`},
	} {
		req, _ := http.NewRequestWithContext(leasetest.Ctx(t), http.MethodPut, e.URL+step.path, strings.NewReader(step.body))
		req.Header.Set("Content-Type", "application/json")
		if step.path != "/v2/auth/users/root" && step.path != "/v2/auth/enable" {
			req.SetBasicAuth("root", "rootpw")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("auth setup %s: %s", step.path, resp.Status)
		}
	}

	s := newStore(t, etcdv2store.Options{Endpoints: []string{e.URL}, Prefix: prefix, Username: "flannel", Password: "s3cret"})
	if _, err := s.Config(leasetest.Ctx(t)); err != nil {
		t.Fatal(err)
	}
	_, rev, err := s.Leases(leasetest.Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Create(leasetest.Ctx(t), mkLease("10.5.1.0/24", "192.168.1.1"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if l, err = s.Renew(leasetest.Ctx(t), l, time.Hour); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got []lease.Event
	if err := s.Watch(ctx, rev, func(evs []lease.Event) { got = evs; cancel() }); len(got) != 1 || got[0].Lease.Key() != l.Key() {
		t.Fatalf("Watch as the restricted user = %v, %v", got, err)
	}
	if err := s.Revoke(leasetest.Ctx(t), l); err != nil {
		t.Fatal(err)
	}
	for _, o := range []etcdv2store.Options{{Username: "flannel", Password: "wrong"}, {}} {
		o.Endpoints, o.Prefix = []string{e.URL}, prefix
		bad := newStore(t, o)
		_, err := bad.Config(leasetest.Ctx(t))
		if err == nil || errors.Is(err, lease.ErrNoConfig) || !strings.Contains(err.Error(), "authentication") {
			t.Fatalf("Config as %q: %v, want an authentication error", o.Username, err)
		}
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    etcdv2store.Options
		want string
	}{
		{"no endpoints", etcdv2store.Options{}, "no etcd endpoints"},
		{"not a URL", etcdv2store.Options{Endpoints: []string{"127.0.0.1:2379"}}, "not an http:// or https:// URL"},
		{"unix socket", etcdv2store.Options{Endpoints: []string{"unix:///run/etcd.sock"}}, "not an http:// or https:// URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := etcdv2store.New(tc.o)
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

// tlsFiles is the TLS config etcdconf builds from the --etcd-*file flags.
