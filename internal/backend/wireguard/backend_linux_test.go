package wireguard

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/logbuf"
)

// fakeWG is a device that records every configuration it is sent.
type fakeWG struct {
	peers map[wgtypes.Key]wgtypes.Peer
	calls [][]wgtypes.PeerConfig
	fail  error
}

func (f *fakeWG) Device(name string) (*wgtypes.Device, error) {
	d := &wgtypes.Device{Name: name}
	for _, p := range f.peers {
		d.Peers = append(d.Peers, p)
	}
	return d, nil
}

func (f *fakeWG) ConfigureDevice(name string, cfg wgtypes.Config) error {
	if f.fail != nil {
		return f.fail
	}
	f.calls = append(f.calls, cfg.Peers)
	for _, pc := range cfg.Peers {
		if pc.Remove {
			delete(f.peers, pc.PublicKey)
			continue
		}
		p, ok := f.peers[pc.PublicKey]
		if !ok && pc.UpdateOnly {
			continue
		}
		p.PublicKey = pc.PublicKey
		if pc.Endpoint != nil {
			p.Endpoint = pc.Endpoint
		}
		if pc.PresharedKey != nil {
			p.PresharedKey = *pc.PresharedKey
		}
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.ReplaceAllowedIPs {
			p.AllowedIPs = pc.AllowedIPs
		}
		f.peers[pc.PublicKey] = p
	}
	return nil
}

func (f *fakeWG) Close() error { return nil }

func (f *fakeWG) take() [][]wgtypes.PeerConfig {
	c := f.calls
	f.calls = nil
	return c
}

// testBackend is a Backend past Init with one IPv4 device on fake.
func testBackend(t *testing.T, fake *fakeWG) (*Backend, *logbuf.Buffer) {
	lb := &logbuf.Buffer{Echo: func(l string) { t.Log(l) }}
	cfg := Config{ListenPort: 51820, ListenPortV6: 51821, Mode: ModeSeparate}
	b := &Backend{cfg: cfg, v4: true, log: lb.Logger(), key: mustKey(t), warned: map[string]string{}}
	b.nets = []netip.Prefix{netip.MustParsePrefix("10.5.0.0/16")}
	b.wg = fake
	b.devs = []*wgDev{{devPlan: plans(cfg, true, false, false)[0], uapi: DeviceV4, applied: map[wgtypes.Key]peerSpec{}}}
	return b, lb
}

// syncPeers is Sync without the netlink handle that Ready asks for.
func syncPeers(t *testing.T, b *Backend, peers ...lease.Lease) {
	t.Helper()
	b.peers = peers
	if err := b.apply(); err != nil {
		t.Fatal(err)
	}
}

// Peers are a desired state: new ones are added and get a handshake at
// once, unchanged ones are never sent again, a changed key replaces the
// old peer (added before the old one is removed), and peers the device
// holds that nobody leases are removed once the device is re-read.
func TestSyncDesiredState(t *testing.T) {
	fake := &fakeWG{peers: map[wgtypes.Key]wgtypes.Peer{}}
	b, lb := testBackend(t, fake)
	a, bk, c := mustKey(t).PublicKey(), mustKey(t).PublicKey(), mustKey(t).PublicKey()
	pa := testPeer{key: a, sn: "10.5.1.0/24", ip: "192.168.1.1", port: 51820}
	pb := testPeer{key: bk, sn: "10.5.2.0/24", ip: "192.168.1.2", port: 51820}

	syncPeers(t, b, pa.lease(), pb.lease())
	calls := fake.take()
	if len(calls) != 3 || len(calls[0]) != 2 {
		t.Fatalf("first Sync: %d calls (%v); want the 2 peers, then keepalive on and off to start their handshakes", len(calls), calls)
	}
	for _, kick := range calls[1:] {
		for _, pc := range kick {
			if !pc.UpdateOnly || pc.PersistentKeepaliveInterval == nil {
				t.Errorf("handshake kick %+v: want an update of the keepalive only", pc)
			}
		}
	}
	if ka := fake.peers[a].PersistentKeepaliveInterval; ka != 0 {
		t.Errorf("keepalive left at %s after the kick, want the configured 0", ka)
	}

	syncPeers(t, b, pa.lease(), pb.lease())
	if calls := fake.take(); len(calls) != 0 {
		t.Errorf("unchanged peers were sent again: %v", calls)
	}

	// b's host rebooted with key c; a moved.
	pa.ip = "192.168.1.11"
	pc := pb
	pc.key = c
	syncPeers(t, b, pa.lease(), pc.lease())
	calls = fake.take()
	if len(calls) != 3 || len(calls[0]) != 3 {
		t.Fatalf("change: %v", calls)
	}
	if last := calls[0][2]; !last.Remove || last.PublicKey != bk {
		t.Errorf("last change %+v, want the old key's removal after the adds", last)
	}
	if _, ok := fake.peers[bk]; ok || len(fake.peers) != 2 {
		t.Errorf("device peers after the key change: %v", fake.peers)
	}
	if !strings.Contains(strings.Join(lb.Take(), "\n"), "removed peer") {
		t.Error("the removal was not logged")
	}

	// A peer added behind our back (or left by a previous run) goes once
	// the device is re-read, as Repair does.
	stale := mustKey(t).PublicKey()
	fake.peers[stale] = wgtypes.Peer{PublicKey: stale}
	b.devs[0].applied = fromDevice(mustDevice(t, fake).Peers)
	syncPeers(t, b, pa.lease(), pc.lease())
	calls = fake.take()
	if len(calls) != 1 || len(calls[0]) != 1 || !calls[0][0].Remove || calls[0][0].PublicKey != stale {
		t.Errorf("stale peer: %v; want its removal only", calls)
	}

	// A failed configuration makes the next Sync read the device.
	fake.fail = errors.New("boom")
	pa.ip = "192.168.1.21"
	b.peers = []lease.Lease{pa.lease(), pc.lease()}
	if err := b.apply(); err == nil || b.devs[0].applied != nil {
		t.Fatalf("apply with a failing device: %v, applied %v", err, b.devs[0].applied)
	}
	fake.fail = nil
	syncPeers(t, b, pa.lease(), pc.lease())
	if calls := fake.take(); len(calls) != 1 || len(calls[0]) != 1 || calls[0][0].PublicKey != a {
		t.Errorf("after the failure: %v; want a's change only", calls)
	}
}

// A lease that cannot be used is skipped with one warning naming it,
// not one per Sync.
func TestSyncWarnsOnce(t *testing.T) {
	fake := &fakeWG{peers: map[wgtypes.Key]wgtypes.Peer{}}
	b, lb := testBackend(t, fake)
	bad := testPeer{key: mustKey(t).PublicKey(), sn: "10.5.9.0/24", ip: "192.168.1.9"}.lease()
	bad.Attrs.BackendData = []byte(`{"PublicKey":"nope"}`)
	for range 3 {
		syncPeers(t, b, bad)
	}
	n := strings.Count(strings.Join(lb.Take(), "\n"), "10.5.9.0-24")
	if n != 1 {
		t.Errorf("%d warnings naming the lease over 3 Syncs, want 1", n)
	}
}

func mustDevice(t *testing.T, f *fakeWG) *wgtypes.Device {
	d, err := f.Device(DeviceV4)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
