package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

// psFixture is a network, a backend's Info and our own lease for
// peer-set tests.
func psFixture(t testing.TB) (*netconf.Config, backend.Info, lease.Lease) {
	nc, err := netconf.Parse([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	info := backend.Info{Type: "vxlan", TypedLeases: true, ValidatePeer: func(l lease.Lease) error {
		if !strings.Contains(string(l.Attrs.BackendData), "VtepMAC") {
			return errors.New("BackendData has no VtepMAC")
		}
		return nil
	}}
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), ID: 7,
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.0.1"), BackendType: "vxlan"}}
	return nc, info, own
}

// fullVerdicts is the reference: every lease but ours judged from
// scratch, as the daemon did before it kept the set incrementally.
func fullVerdicts(nc *netconf.Config, info backend.Info, own lease.Lease, all map[string]lease.Lease) map[string]string {
	peers := map[string]lease.Lease{}
	for k, l := range all {
		if k != own.Key() {
			peers[k] = l
		}
	}
	ov := overlaps(nc.SubnetLen, peers)
	out := map[string]string{}
	for k, l := range peers {
		r := checkPeer(nc, own, info, l)
		if r == "" {
			r = ov[k]
		}
		if r == "" {
			if err := info.ValidatePeer(l); err != nil {
				r = err.Error()
			}
		}
		out[k] = r
	}
	return out
}

// randomLease draws from a small space so that collisions, overlaps,
// own-address and bad-data cases come up often.
func randomLease(r *rand.Rand) lease.Lease {
	bits := []int{24, 24, 24, 24, 23, 25, 22}[r.IntN(7)]
	a := netip.AddrFrom4([4]byte{10, 5, byte(r.IntN(8)), byte(r.IntN(2) * 128)})
	if r.IntN(20) == 0 {
		a = netip.AddrFrom4([4]byte{10, 6, 0, 0}) // outside Network
	}
	sn := netip.PrefixFrom(a, bits).Masked()
	pub := netip.AddrFrom4([4]byte{192, 168, 0, byte(1 + r.IntN(6))}) // .1 is ours
	if r.IntN(20) == 0 {
		pub = netip.MustParseAddr("10.5.9.9") // inside the overlay
	}
	typ := "vxlan"
	if r.IntN(10) == 0 {
		typ = "host-gw"
	}
	data := json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":"0e:00:00:00:00:%02x"}`, r.IntN(4)))
	if r.IntN(8) == 0 {
		data = json.RawMessage(`{"VNI":1}`)
	}
	return lease.Lease{Subnet: sn, Attrs: lease.Attrs{PublicIP: pub, BackendType: typ, BackendData: data}}
}

// After any sequence of events, re-lists and changes of our own lease,
// the incremental set holds exactly the peers a full recomputation finds,
// and the changes it handed out, applied in order, give that same set.
func TestPeerSetEqualsFullRecomputation(t *testing.T) {
	nc, info, own := psFixture(t)
	for seed := uint64(1); seed <= 200; seed++ {
		r := rand.New(rand.NewPCG(seed, 42))
		ps := newPeerSet(nc, info, own, slog.New(slog.DiscardHandler))
		model := map[string]lease.Lease{}       // what the store holds
		backendView := map[string]lease.Lease{} // the changes, applied
		for step := 0; step < 60; step++ {
			switch n := r.IntN(100); {
			case n < 55:
				l := randomLease(r)
				model[l.Key()] = l
				ps.apply(lease.Event{Type: lease.Added, Lease: l})
			case n < 85 && len(model) > 0:
				keys := slices.Sorted(maps.Keys(model))
				l := model[keys[r.IntN(len(keys))]]
				delete(model, l.Key())
				ps.apply(lease.Event{Type: lease.Removed, Lease: lease.Lease{Subnet: l.Subnet, Subnet6: l.Subnet6}})
			case n < 93:
				ls := slices.Collect(maps.Values(model))
				ps.reset(ls)
			default:
				o := own
				o.Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(r.IntN(8)), 0}), 24)
				ps.setOwn(o)
			}
			if r.IntN(3) > 0 { // several events may make up one flush
				continue
			}
			for _, c := range ps.flush() {
				if c.Removed {
					delete(backendView, c.Lease.Key())
				} else {
					backendView[c.Lease.Key()] = c.Lease
				}
			}
			want, ignored := map[string]lease.Lease{}, 0
			for k, reason := range fullVerdicts(nc, info, ps.own, model) {
				if reason == "" {
					want[k] = model[k]
				} else {
					ignored++
				}
				// (The reference may name another of the overlapping leases.)
				if e := ps.entries[k]; e == nil || (e.reason == "") != (reason == "") {
					t.Fatalf("seed %d step %d: lease %s: entry %+v, want a reason as %q", seed, step, k, e, reason)
				}
			}
			if ps.ignored() != ignored {
				t.Fatalf("seed %d step %d: %d leases ignored, want %d", seed, step, ps.ignored(), ignored)
			}
			var got []string
			for k, e := range ps.entries {
				if e.peer {
					got = append(got, k)
				}
			}
			if slices.Sort(got); len(got) != ps.peerN || !slices.Equal(got, slices.Sorted(maps.Keys(want))) {
				t.Fatalf("seed %d step %d: peers %v, full recomputation %v", seed, step, got, slices.Sorted(maps.Keys(want)))
			}
			for k, l := range want {
				if p, _ := ps.peer(k); !sameLease(p, heldOf(l)) || !sameLease(heldOf(backendView[k]), heldOf(l)) {
					t.Fatalf("seed %d step %d: peer %s is %+v (backend has %+v), want %+v", seed, step, k, *p, backendView[k], l)
				}
			}
			if len(backendView) != len(want) {
				t.Fatalf("seed %d step %d: the changes give %d peers, want %d", seed, step, len(backendView), len(want))
			}
		}
	}
}

// updaterBackend counts what the daemon hands it.
type updaterBackend struct {
	fakeBackend
	updates, syncs, changes int
}

func (b *updaterBackend) Sync(_ context.Context, peers []lease.Lease) error {
	b.syncs++
	return nil
}

func (b *updaterBackend) Update(_ context.Context, cs []backend.Change) error {
	b.updates++
	b.changes += len(cs)
	return nil
}

// benchDaemon is a daemon past start-up with n peers already synced.
func benchDaemon(b *testing.B, n int) (*Daemon, *updaterBackend) {
	nc, info, own := psFixture(b)
	nc.Network = netip.MustParsePrefix("10.0.0.0/8")
	be := &updaterBackend{}
	d := New(Config{}, Deps{Log: slog.New(slog.DiscardHandler)})
	own.Subnet = netip.MustParsePrefix("10.255.255.0/24") // above every benchLease
	d.net, d.be, d.beInfo, d.own = nc, be, info, own
	d.peers = newPeerSet(nc, info, own, d.log)
	ls := make([]lease.Lease, 0, n)
	for i := range n {
		ls = append(ls, benchLease(i))
	}
	d.handle(context.Background(), []lease.Update{{Reset: true, Leases: ls}})
	if d.peers.peerN != n || be.syncs != 1 {
		b.Fatalf("set-up: %d peers after %d syncs, want %d after 1", d.peers.peerN, be.syncs, n)
	}
	return d, be
}

// benchLease is the i-th of distinct valid peers in 10.0.0.0/8.
func benchLease(i int) lease.Lease {
	i++ // not 10.0.0.0/24
	sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
	return lease.Lease{Subnet: sn, Attrs: lease.Attrs{
		PublicIP:    netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)}),
		BackendType: "vxlan",
		BackendData: json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":"0e:00:00:%02x:%02x:%02x"}`, byte(i>>16), byte(i>>8), byte(i))),
	}}
}

// The daemon's event path (a new lease, then its removal) costs the same
// at 1,000, 10,000 and 65,000 peers: compare ns/op across the sizes.
func BenchmarkEventPath(b *testing.B) {
	for _, n := range []int{1000, 10000, 65000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			d, be := benchDaemon(b, n)
			extra := benchLease(n + 10)
			add := []lease.Update{{Events: []lease.Event{{Type: lease.Added, Lease: extra}}}}
			del := []lease.Update{{Events: []lease.Event{{Type: lease.Removed, Lease: lease.Lease{Subnet: extra.Subnet}}}}}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				d.handle(context.Background(), add)
				d.handle(context.Background(), del)
			}
			b.StopTimer()
			if be.syncs != 1 || be.changes != 2*b.N {
				b.Fatalf("%d syncs and %d changes, want 1 sync and %d changes", be.syncs, be.changes, 2*b.N)
			}
		})
	}
}

func heldOf(l lease.Lease) *heldLease {
	h := new(heldLease)
	hold(l, h)
	return h
}

// TestHeldLease: the peer set gives back exactly the lease it was given,
// IPv6 part and expiry included.
func TestHeldLease(t *testing.T) {
	v4 := benchLease(7)
	v4.ID = 42
	v6 := v4
	v6.Subnet6 = netip.MustParsePrefix("fd00:7::/64")
	v6.Attrs.PublicIPv6 = netip.MustParseAddr("fd00::7")
	v6.Attrs.BackendV6Data = json.RawMessage(`{"VNI":1}`)
	v6.Expires = time.Unix(1800000000, 0)
	for _, l := range []lease.Lease{{}, v4, v6} {
		if got := heldOf(l).lease(); !reflect.DeepEqual(got, l) {
			t.Errorf("held and given back: %+v, want %+v", got, l)
		}
	}
	if heldOf(v4).rare != nil {
		t.Errorf("an IPv4 lease without expiry holds rare attributes")
	}
}
