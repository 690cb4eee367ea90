package route

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
)

// Want is what one peer asks of the kernel, as a backend's want function
// describes it.
type Want struct {
	// State is the peer's entries. Entries of different peers must not
	// share a key unless Claims keep them apart.
	State
	// Claims are what the peer must hold alone (a VTEP MAC, a neighbour
	// address): of the peers claiming the same string, the one with the
	// lowest subnet holds it, and a peer gets its entries only if it holds
	// all its claims. The outcome depends on the set, never on the order
	// peers arrive in, so an Update ends where a Sync would.
	Claims []string
	// Problem, if not empty, is why the peer gets no entries; its Claims
	// are then ignored. It is logged once per peer and problem.
	Problem string
}

// Frame is what backends that keep per-peer kernel entries in a Table
// (host-gw, vxlan) share around it: the Table once Init has succeeded,
// the peers by subnet with what each wants (which Repair re-applies), the
// holders of claims, the release of the netlink handle, the guard against
// use before Init or after Close, and a warning logged once per skipped
// peer and problem. P is the backend's peer type; subnet keys a peer
// (peers without a valid one are ignored) and want, given by the backend,
// turns one peer into entries.
//
// Sync costs O(N) in the peers; Update costs O(changes) (plus the other
// claimants of the claims the changed peers touch).
//
// The zero Frame is not usable; NewFrame makes one.
type Frame[P any] struct {
	name   string
	log    *slog.Logger
	subnet func(P) netip.Prefix
	want   func(P) Want

	Table *Table // nil until the backend's Init succeeds
	// LogAttrs, if set, describes a peer in its warnings. It is called
	// only to warn, so per-peer descriptions cost nothing otherwise.
	LogAttrs func(P) []any

	peers subnetMap[*peer[P]]
	// A claim is nearly always uncontested: its one claimant is held by
	// pointer (24 bytes a claim in the map, against 40 and a slice of its
	// own when every claim had a list); a claim with two claimants or
	// more moves to rivals, and back when one is left.
	claims  map[string]*peer[P]       // claim → its one claimant
	rivals  map[string][]netip.Prefix // claim → its claimants, when several
	release func()
	closed  bool
	stale   bool // the last Sync, Update or Apply failed in part
}

type peer[P any] struct {
	p      P
	w      packedWant // what want made of p
	held   bool       // its entries are in the desired state
	warned string     // the problem last logged; "" once it went away
}

// NewFrame returns the frame of the backend name (which prefixes errors
// and log messages).
func NewFrame[P any](name string, log *slog.Logger, subnet func(P) netip.Prefix, want func(P) Want) *Frame[P] {
	return &Frame[P]{name: name, log: log, subnet: subnet, want: want,
		peers: newSubnetMap[*peer[P]](0), claims: map[string]*peer[P]{}, rivals: map[string][]netip.Prefix{}}
}

// OnClose sets what Close releases: the netlink handle the backend opened.
func (f *Frame[P]) OnClose(release func()) { f.release = release }

// Closed reports whether Close was called.
func (f *Frame[P]) Closed() bool { return f.closed }

// Close releases the netlink handle. Kernel entries stay, so a restart
// can adopt them.
func (f *Frame[P]) Close() error {
	if f.release != nil {
		f.release()
		f.release = nil
	}
	f.closed = true
	return nil
}

// Ready guards against use before Init and after Close: a closed netlink
// handle would silently fall back to the caller's namespace.
func (f *Frame[P]) Ready() error {
	switch {
	case f.closed:
		return fmt.Errorf("%s: backend is closed", f.name)
	case f.Table == nil:
		return fmt.Errorf("%s: Init has not succeeded", f.name)
	}
	return nil
}

// Peers returns the current peers, sorted by subnet. It costs O(N log N).
func (f *Frame[P]) Peers() []P {
	sns := make([]netip.Prefix, 0, f.peers.len())
	for sn := range f.peers.all() {
		sns = append(sns, sn)
	}
	slices.SortFunc(sns, netip.Prefix.Compare)
	out := make([]P, len(sns))
	for i, sn := range sns {
		pr, _ := f.peers.get(sn)
		out[i] = pr.p
	}
	return out
}

// Peer returns the peer with subnet sn, if there is one.
func (f *Frame[P]) Peer(sn netip.Prefix) (P, bool) {
	if pr, ok := f.peers.get(sn); ok {
		return pr.p, true
	}
	var zero P
	return zero, false
}

// Len is the number of peers.
func (f *Frame[P]) Len() int { return f.peers.len() }

// Stale reports whether a change failed since the last complete Apply:
// Apply must run again even if the kernel lost nothing.
func (f *Frame[P]) Stale() bool { return f.stale }

// Desired returns what the peers want of the kernel: the entries of every
// peer that has no problem and holds its claims.
func (f *Frame[P]) Desired() State {
	var s State
	for _, pr := range f.peers.all() {
		if pr.held {
			pr.w.appendTo(&s)
		}
	}
	return s
}

// Sync replaces the peers (a later duplicate of a subnet wins) and makes
// the Table match what they want.
func (f *Frame[P]) Sync(peers []P) error {
	if err := f.Ready(); err != nil {
		return err
	}
	old := f.peers
	f.peers = newSubnetMap[*peer[P]](len(peers))
	// One allocation for all: tens of thousands of small ones leave the
	// heap's spans fragmented among the sync's garbage. A peer an Update
	// removes keeps its slot until the next Sync.
	slab := make([]peer[P], len(peers))
	for i, p := range peers {
		sn := f.subnet(p)
		if !sn.IsValid() {
			continue
		}
		pr := &slab[i]
		pr.p = p
		if o, ok := old.get(sn); ok {
			pr.warned = o.warned
		}
		f.peers.set(sn, pr)
	}
	return f.Apply()
}

// Apply asks want again about every peer (what it depends on may have
// changed: the underlay, the device) and makes the Table match.
func (f *Frame[P]) Apply() error {
	if f.Table == nil {
		return errors.New(f.name + ": Init has not succeeded")
	}
	f.claims = make(map[string]*peer[P], len(f.claims))
	f.rivals = map[string][]netip.Prefix{}
	// The wants are packed into one string and each is a substring of
	// it, for the reason Sync allocates the peers in one slab.
	var all strings.Builder
	all.Grow(100 * f.peers.len())
	type packing struct {
		sn  netip.Prefix
		pr  *peer[P]
		end int
	}
	var buf []byte
	order := make([]packing, 0, f.peers.len())
	for sn, pr := range f.peers.all() {
		buf = appendWant(buf[:0], f.want(pr.p))
		all.Write(buf)
		order = append(order, packing{sn, pr, all.Len()})
	}
	packed, start := all.String(), 0
	for _, o := range order {
		o.pr.w = packedWant(packed[start:o.end])
		start = o.end
		f.claim(o.sn, o.pr)
	}
	for sn, pr := range f.peers.all() {
		f.evaluate(sn, pr)
	}
	c, err := f.Table.Set(f.Desired())
	f.stale = err != nil
	if !c.None() {
		f.log.Debug(f.name+": applied peers", "peers", f.peers.len(), "added", c.Added, "removed", c.Removed, "failed", c.Failed)
	}
	if err != nil {
		return fmt.Errorf("%s: sync %d peers: %w", f.name, f.peers.len(), err)
	}
	return nil
}

// Update applies a change of the peer set: put are added or replace the
// peer with the same subnet, removed are the subnets of peers that left.
// A subnet appears at most once. The Table ends as a Sync of the whole
// new set would leave it, but only the changed peers' entries, and those
// of peers whose claims they take or release, are touched.
func (f *Frame[P]) Update(put []P, removed []netip.Prefix) error {
	if err := f.Ready(); err != nil {
		return err
	}
	type next struct {
		sn netip.Prefix
		p  P
		w  packedWant
	}
	puts := make([]next, 0, len(put))
	for _, p := range put {
		if sn := f.subnet(p); sn.IsValid() {
			puts = append(puts, next{sn, p, packWant(f.want(p))})
		}
	}

	// Who may change: the changed peers and every claimant of a claim
	// they held or take. Their old entries are noted before anything moves.
	type before struct {
		held bool
		w    packedWant
	}
	affected := map[netip.Prefix]before{}
	note := func(sn netip.Prefix) {
		if _, ok := affected[sn]; ok {
			return
		}
		var b before
		if pr, ok := f.peers.get(sn); ok {
			b = before{pr.held, pr.w}
		}
		affected[sn] = b
	}
	touch := func(w packedWant) {
		for c := range w.claims() {
			f.claimants(c, note)
		}
	}
	for _, sn := range removed {
		note(sn)
		if pr, ok := f.peers.get(sn); ok {
			touch(pr.w)
		}
	}
	for _, n := range puts {
		note(n.sn)
		if pr, ok := f.peers.get(n.sn); ok {
			touch(pr.w)
		}
		touch(n.w)
	}

	for _, sn := range removed {
		if pr, ok := f.peers.get(sn); ok {
			f.unclaim(sn, pr.w)
			f.peers.del(sn)
		}
	}
	for _, n := range puts {
		pr, ok := f.peers.get(n.sn)
		if ok {
			f.unclaim(n.sn, pr.w)
		} else {
			pr = &peer[P]{}
			f.peers.set(n.sn, pr)
		}
		pr.p, pr.w = n.p, n.w
		f.claim(n.sn, pr)
	}

	var add, del State
	for sn, b := range affected {
		if b.held {
			b.w.appendTo(&del)
		}
		pr, ok := f.peers.get(sn)
		if !ok {
			continue
		}
		if f.evaluate(sn, pr) {
			pr.w.appendTo(&add)
		}
	}
	c, err := f.Table.Update(add, del)
	f.stale = f.stale || err != nil
	if !c.None() {
		f.log.Debug(f.name+": updated peers", "changed", len(puts)+len(removed), "peers", f.peers.len(), "added", c.Added, "removed", c.Removed, "failed", c.Failed)
	}
	if err != nil {
		return fmt.Errorf("%s: update %d of %d peers: %w", f.name, len(puts)+len(removed), f.peers.len(), err)
	}
	return nil
}

// claim records pr (subnet sn) as a claimant of its Want's claims. A
// claim new to the map is keyed by the substring of the Want, which keeps
// its memory while the claim lasts (at most one packed Want per claim
// beyond the claimants' own, and none after the next Apply, which keys
// every claim anew).
func (f *Frame[P]) claim(sn netip.Prefix, pr *peer[P]) {
	if pr.w.problem() != "" {
		return
	}
	for c := range pr.w.claims() {
		if l, ok := f.rivals[c]; ok {
			f.rivals[c] = append(l, sn)
		} else if o, ok := f.claims[c]; ok {
			f.rivals[c] = []netip.Prefix{f.subnet(o.p), sn}
			delete(f.claims, c)
		} else {
			f.claims[c] = pr
		}
	}
}

// unclaim removes sn as a claimant of w's claims. Every claimant left is
// still among the peers.
func (f *Frame[P]) unclaim(sn netip.Prefix, w packedWant) {
	if w.problem() != "" {
		return
	}
	for c := range w.claims() {
		l, ok := f.rivals[c]
		if !ok {
			if o, ok := f.claims[c]; ok && f.subnet(o.p) == sn {
				delete(f.claims, c)
			}
			continue
		}
		switch l = slices.DeleteFunc(l, func(o netip.Prefix) bool { return o == sn }); len(l) {
		case 0:
			delete(f.rivals, c)
		case 1:
			delete(f.rivals, c)
			f.claims[c], _ = f.peers.get(l[0])
		default:
			f.rivals[c] = l
		}
	}
}

// claimants calls note with each claimant of c.
func (f *Frame[P]) claimants(c string, note func(netip.Prefix)) {
	if l, ok := f.rivals[c]; ok {
		for _, sn := range l {
			note(sn)
		}
	} else if o, ok := f.claims[c]; ok {
		note(f.subnet(o.p))
	}
}

// holder is the claimant of c with the lowest subnet.
func (f *Frame[P]) holder(c string) netip.Prefix {
	var h netip.Prefix
	f.claimants(c, func(sn netip.Prefix) {
		if !h.IsValid() || sn.Compare(h) < 0 {
			h = sn
		}
	})
	return h
}

// evaluate decides whether pr gets its entries, logs a new problem, and
// returns pr.held.
func (f *Frame[P]) evaluate(sn netip.Prefix, pr *peer[P]) bool {
	problem := pr.w.problem()
	if problem == "" {
		for c := range pr.w.claims() {
			if h := f.holder(c); h != sn {
				problem = fmt.Sprintf("%s is also used by %s", c, h)
				break
			}
		}
	}
	pr.held = problem == ""
	if problem != "" && problem != pr.warned {
		attrs := []any{"subnet", sn, "reason", problem}
		if f.LogAttrs != nil {
			attrs = append(attrs, f.LogAttrs(pr.p)...)
		}
		f.log.Warn(f.name+": skipping peer", attrs...)
	}
	pr.warned = problem
	return pr.held
}
