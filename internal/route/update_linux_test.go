package route

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// tpeer is a peer of the property test: few subnets (some overlapping,
// sharing a network address), few MACs (so duplicates are common), and
// sometimes a problem.
type tpeer struct {
	sn  netip.Prefix
	mac byte
	dst byte
	bad bool
}

func tpeerWant(p tpeer) Want {
	if p.bad {
		return Want{Problem: "bad BackendData"}
	}
	mac := MAC{2, 0, 0, 0, 0, p.mac}
	dst := netip.AddrFrom4([4]byte{192, 168, 0, p.dst})
	return Want{
		State: State{
			Neighs: []Neigh{{IP: p.sn.Addr(), MAC: mac, LinkIndex: 7}},
			FDB:    []FDB{{MAC: mac, Dst: dst, LinkIndex: 7}},
			Routes: []Route{{Dst: p.sn, Gw: p.sn.Addr(), LinkIndex: 7, OnLink: true}},
		},
		Claims: []string{"VtepMAC " + mac.String(), "address " + p.sn.Addr().String()},
	}
}

func randPeer(r *rand.Rand, sn netip.Prefix) tpeer {
	return tpeer{sn: sn, mac: byte(r.IntN(6)), dst: byte(r.IntN(4)), bad: r.IntN(8) == 0}
}

// TestUpdateEqualsSync: after any sequence of Updates (adds, changes,
// removals, in random batches), the kernel and the Table's record equal
// what one Sync of the final set makes from nothing, and what a frame that
// Syncs the whole set at every step has.
func TestUpdateEqualsSync(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	var pool []netip.Prefix
	for i := range 12 {
		pool = append(pool, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24))
	}
	// Overlapping: same network address as 10.5.0.0/24 and 10.5.1.0/24,
	// and one containing 10.5.2.0/24 and 10.5.3.0/24.
	pool = append(pool, netip.MustParsePrefix("10.5.0.0/25"), netip.MustParsePrefix("10.5.1.0/23"), netip.MustParsePrefix("10.5.2.0/23"))
	sub := func(p tpeer) netip.Prefix { return p.sn }

	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 1))
		kInc, kFull := newFakeKernel(), newFakeKernel()
		inc := NewFrame("inc", log, sub, tpeerWant)
		inc.Table = NewTable(kInc)
		full := NewFrame("full", log, sub, tpeerWant)
		full.Table = NewTable(kFull)

		set := map[netip.Prefix]tpeer{}
		list := func() []tpeer {
			var l []tpeer
			for _, p := range set {
				l = append(l, p)
			}
			return l
		}
		for _, sn := range pool {
			if r.IntN(2) == 0 {
				set[sn] = randPeer(r, sn)
			}
		}
		if err := inc.Sync(list()); err != nil {
			t.Fatal(err)
		}
		for step := range 30 {
			var put []tpeer
			var removed []netip.Prefix
			for _, i := range r.Perm(len(pool))[:1+r.IntN(4)] {
				sn := pool[i]
				if _, ok := set[sn]; ok && r.IntN(3) == 0 {
					delete(set, sn)
					removed = append(removed, sn)
					continue
				}
				p := randPeer(r, sn)
				set[sn] = p
				put = append(put, p)
			}
			if err := inc.Update(put, removed); err != nil {
				t.Fatal(err)
			}
			if err := full.Sync(list()); err != nil {
				t.Fatal(err)
			}
			kNew := newFakeKernel()
			fresh := NewFrame("fresh", log, sub, tpeerWant)
			fresh.Table = NewTable(kNew)
			if err := fresh.Sync(list()); err != nil {
				t.Fatal(err)
			}
			want := kNew.render()
			ctx := fmt.Sprintf("seed %d step %d: put %v removed %v", seed, step, put, removed)
			if got := kInc.render(); got != want {
				t.Fatalf("%s: kernel after Updates\n%s\nwant (one Sync)\n%s", ctx, got, want)
			}
			if got := kFull.render(); got != want {
				t.Fatalf("%s: kernel after Syncs\n%s\nwant (one Sync)\n%s", ctx, got, want)
			}
			if got, want := renderWant(inc.Table.Applied()), renderWant(fresh.Table.Applied()); got != want {
				t.Fatalf("%s: record after Updates\n%s\nwant\n%s", ctx, got, want)
			}
			if got, want := renderWant(inc.Desired()), want; got != want {
				t.Fatalf("%s: Desired after Updates\n%s\nwant\n%s", ctx, got, want)
			}
		}
	}
}

// TestUpdateWarnsOnce: a skipped peer is warned about once per problem
// across Updates, and again when a problem comes back.
func TestUpdateWarnsOnce(t *testing.T) {
	var warns []string
	log := slog.New(handlerFunc(func(r slog.Record) { warns = append(warns, r.Message) }))
	f := NewFrame("test", log, func(p tpeer) netip.Prefix { return p.sn }, tpeerWant)
	f.Table = NewTable(newFakeKernel())
	a := tpeer{sn: netip.MustParsePrefix("10.5.1.0/24"), mac: 1}
	b := tpeer{sn: netip.MustParsePrefix("10.5.2.0/24"), mac: 1}
	c := tpeer{sn: netip.MustParsePrefix("10.5.3.0/24"), mac: 3}
	for i, st := range []struct {
		put     []tpeer
		removed []netip.Prefix
		warns   int
	}{
		{[]tpeer{a, b}, nil, 1},                  // b duplicates a's MAC
		{[]tpeer{c}, nil, 0},                     // b still skipped: no new warning
		{nil, []netip.Prefix{a.sn}, 0},           // b takes the MAC
		{[]tpeer{a}, nil, 1},                     // a takes it back: b warned again
		{[]tpeer{{sn: c.sn, bad: true}}, nil, 1}, // c goes bad
		{[]tpeer{{sn: c.sn, bad: true}}, nil, 0},
	} {
		warns = nil
		if err := f.Update(st.put, st.removed); err != nil {
			t.Fatal(err)
		}
		if len(warns) != st.warns {
			t.Errorf("step %d: %d warnings, want %d", i, len(warns), st.warns)
		}
	}
}

type handlerFunc func(slog.Record)

func (h handlerFunc) Enabled(_ context.Context, l slog.Level) bool  { return l >= slog.LevelWarn }
func (h handlerFunc) Handle(_ context.Context, r slog.Record) error { h(r); return nil }
func (h handlerFunc) WithAttrs([]slog.Attr) slog.Handler            { return h }
func (h handlerFunc) WithGroup(string) slog.Handler                 { return h }
