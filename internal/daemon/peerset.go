package daemon

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

// peerSet is the daemon's view of the other hosts: every lease in the
// feed, the verdict on each (a peer to forward to, or why not), and the
// peers the backend was last given. It is kept incrementally: an event
// re-judges the leases it touches, not all of them, so the work per event
// does not grow with the size of the cluster. The one rule that relates
// leases to each other, overlap, is kept cheap by an index of the leases
// whose length is not SubnetLen (only those can be ignored for
// overlapping, and hosts never lease them: they are rare).
//
// The verdicts always equal a full recomputation (checkPeer, the
// reference overlaps in overlapref_test.go and the backend's ValidatePeer
// over every lease); the property test holds it to that.
type peerSet struct {
	nc   *netconf.Config
	info backend.Info
	own  lease.Lease
	log  *slog.Logger

	// One map, one entry per key, holds all the set knows of a lease:
	// at 65,000 leases, the four maps by key it once had (the leases,
	// the peers handed out, the backend's verdicts, the reasons) cost
	// 7 MB more.
	entries map[string]*entry
	peerN   int                     // entries that are peers
	leaseN  int                     // entries that are present
	odd     map[string]netip.Prefix // leases but ours whose length is not SubnetLen
	dirty   map[string]struct{}     // keys whose verdict may have changed
}

// entry is what the peer set knows of one key. It stays while the key is
// in the feed, a peer or warned about; flush drops it after that.
type entry struct {
	held    heldLease  // the lease in the feed or, if gone, the last one
	present bool       // in the feed
	peer    bool       // a peer, as last handed out by flush
	vetted  bool       // vetReason is the backend's verdict on held
	handed  *heldLease // the value handed out, if held changed since (until flush)
	vetWhy  string     // the backend's objection to held, if vetted
	reason  string     // why the lease is not a peer, as last warned about
}

// handedOut is the value last handed out for a peer entry.
func (e *entry) handedOut() *heldLease {
	if e.handed != nil {
		return e.handed
	}
	return &e.held
}

// set makes l the entry's lease, keeping what flush and the verdict
// need of the value it replaces. typ is the backend's type: a lease of
// that type shares its string rather than holding a copy of its own.
func (e *entry) set(l lease.Lease, typ string) {
	var h heldLease
	hold(l, &h)
	if h.backendType == typ {
		h.backendType = typ
	}
	if e.peer && e.handed == nil {
		prev := e.held
		e.handed = &prev
	}
	if e.vetted && !sameAttrs(&e.held, &h) {
		e.vetted, e.vetWhy = false, ""
	}
	e.held, e.present = h, true
}

// heldLease is a lease as the peer set holds it: 112 bytes, where a
// lease.Lease is 208, most of which (the IPv6 subnet, address and data,
// the expiry) is empty in an IPv4 cluster; at 65,000 leases that is 6 MB.
// lease gives the lease back exactly.
type heldLease struct {
	subnet      netip.Prefix
	publicIP    netip.Addr
	backendType string
	backendData json.RawMessage
	id          int64
	rare        *rareAttrs // nil unless the lease has an IPv6 part or an expiry
}

type rareAttrs struct {
	subnet6       netip.Prefix
	publicIPv6    netip.Addr
	backendV6Data json.RawMessage
	expires       time.Time
}

func hold(l lease.Lease, into *heldLease) {
	*into = heldLease{subnet: l.Subnet, publicIP: l.Attrs.PublicIP, backendType: l.Attrs.BackendType,
		backendData: l.Attrs.BackendData, id: l.ID}
	if l.Subnet6 != (netip.Prefix{}) || l.Attrs.PublicIPv6 != (netip.Addr{}) || l.Attrs.BackendV6Data != nil || !l.Expires.IsZero() {
		into.rare = &rareAttrs{l.Subnet6, l.Attrs.PublicIPv6, l.Attrs.BackendV6Data, l.Expires}
	}
}

func (h *heldLease) lease() lease.Lease {
	l := lease.Lease{Subnet: h.subnet, ID: h.id, Attrs: lease.Attrs{PublicIP: h.publicIP,
		BackendType: h.backendType, BackendData: h.backendData}}
	if r := h.rare; r != nil {
		l.Subnet6, l.Attrs.PublicIPv6, l.Attrs.BackendV6Data, l.Expires = r.subnet6, r.publicIPv6, r.backendV6Data, r.expires
	}
	return l
}

func newPeerSet(nc *netconf.Config, info backend.Info, own lease.Lease, log *slog.Logger) *peerSet {
	return &peerSet{nc: nc, info: info, own: own, log: log,
		entries: map[string]*entry{}, odd: map[string]netip.Prefix{}, dirty: map[string]struct{}{}}
}

// reset replaces every lease with a listing.
//
// What stays of a listing of tens of thousands of leases (their keys and
// BackendData, the entries) is copied into a few large allocations: held
// as they come, each in a small allocation of its own among the listing's
// garbage, they keep most of the heap's pages of their size in use after
// that garbage is collected (13 MB at 65,000 leases).
func (ps *peerSet) reset(leases []lease.Lease) {
	keys := make([]string, len(leases))
	fresh, keyLen, dataLen := 0, 0, 0
	for i := range leases {
		keys[i] = leases[i].Key()
		keyLen += len(keys[i])
		dataLen += len(leases[i].Attrs.BackendData)
		if _, ok := ps.entries[keys[i]]; !ok {
			fresh++
		}
	}
	var keyArena strings.Builder
	keyArena.Grow(keyLen)
	for _, k := range keys {
		keyArena.WriteString(k)
	}
	all, start := keyArena.String(), 0
	for i := range keys {
		keys[i], start = all[start:start+len(keys[i])], start+len(keys[i])
	}
	data := make([]byte, 0, dataLen)
	// A map made at its size, rather than grown by doubling, and the new
	// entries in one allocation (small ones by the ten thousand leave the
	// heap fragmented among the listing's garbage).
	entries := make(map[string]*entry, len(leases)+len(ps.entries)-(len(leases)-fresh))
	ps.leaseN = 0
	for k, e := range ps.entries {
		e.present = false
		if e.peer || e.reason != "" {
			entries[k] = e
			ps.dirty[k] = struct{}{}
		}
	}
	slab := make([]entry, fresh)
	ps.odd = map[string]netip.Prefix{}
	for i, k := range keys {
		e, ok := entries[k] // a key listed twice: the later value wins
		if !ok {
			e, ok = ps.entries[k]
		}
		if !ok {
			e, slab = &slab[0], slab[1:]
		}
		if !e.present {
			ps.leaseN++
		}
		l := leases[i]
		if d := l.Attrs.BackendData; d != nil {
			data = append(data, d...)
			l.Attrs.BackendData = data[len(data)-len(d) : len(data) : len(data)]
		}
		e.set(l, ps.info.Type)
		entries[k] = e
		ps.dirty[k] = struct{}{}
		ps.index(k, leases[i])
	}
	ps.entries = entries
}

// apply folds one watch event in.
func (ps *peerSet) apply(ev lease.Event) {
	k := ev.Lease.Key()
	e, had := ps.entries[k]
	var old netip.Prefix
	if had && e.present {
		old = e.held.subnet
	}
	delete(ps.odd, k)
	if ev.Type == lease.Removed {
		if had && e.present {
			e.present = false
			ps.leaseN--
		}
	} else {
		if !had {
			e = new(entry)
			ps.entries[k] = e
		}
		if !e.present {
			ps.leaseN++
		}
		e.set(ev.Lease, ps.info.Type)
		ps.index(k, ev.Lease)
	}
	ps.dirty[k] = struct{}{}
	// An odd lease's verdict depends on the leases around it.
	for ok, sn := range ps.odd {
		if (old.IsValid() && sn.Overlaps(old)) ||
			(ev.Type == lease.Added && ev.Lease.Subnet.IsValid() && sn.Overlaps(ev.Lease.Subnet)) {
			ps.dirty[ok] = struct{}{}
		}
	}
}

// index records k in the odd index if it belongs there.
func (ps *peerSet) index(k string, l lease.Lease) {
	if k != ps.own.Key() && l.Subnet.IsValid() && l.Subnet.Bits() != ps.nc.SubnetLen {
		ps.odd[k] = l.Subnet.Masked()
	}
}

// setOwn makes l this host's lease: every verdict may change (overlap
// with ours, our public IP), so all leases are judged again.
func (ps *peerSet) setOwn(l lease.Lease) {
	ps.own = l
	ps.odd = map[string]netip.Prefix{}
	for k, e := range ps.entries {
		ps.dirty[k] = struct{}{}
		if e.present {
			ps.index(k, e.held.lease())
		}
	}
}

// peerChange is a change for the backend and, for the log, whether the
// subnet was a peer before and its public IP then.
type peerChange struct {
	backend.Change
	was    bool
	prevIP netip.Addr
}

// flush judges the leases touched since the last flush, logs each new
// reason to ignore one, and returns how the peers changed, by subnet.
func (ps *peerSet) flush() []peerChange {
	var changes []peerChange
	ownKey := ps.own.Key()
	for k := range ps.dirty {
		e, ok := ps.entries[k]
		if !ok {
			continue
		}
		present := e.present && k != ownKey
		reason := ""
		if present {
			reason = ps.judge(k, e)
		}
		if present && reason != "" {
			if e.reason != reason {
				ps.log.Warn("ignoring lease", "key", k, "reason", reason)
				e.reason = reason
			}
		} else {
			e.reason = ""
		}
		switch now := present && reason == ""; {
		case now && (!e.peer || (e.handed != nil && !sameLease(e.handed, &e.held))):
			var prev *heldLease
			if e.peer {
				prev = e.handedOut()
			} else {
				ps.peerN++
			}
			e.peer = true
			changes = append(changes, changeOf(backend.Change{Lease: e.held.lease()}, prev))
		case !now && e.peer:
			prev := e.handedOut()
			e.peer = false
			ps.peerN--
			changes = append(changes, changeOf(backend.Change{Lease: lease.Lease{Subnet: prev.subnet, Subnet6: prev.rare6().subnet6}, Removed: true}, prev))
		}
		e.handed = nil // handed out now, or the same value
		if !e.present && !e.peer {
			delete(ps.entries, k)
		}
	}
	if len(ps.dirty) > 256 {
		// clear keeps the buckets and costs their number on every later
		// flush: after a re-list of 65k leases, a fresh map is O(1).
		ps.dirty = map[string]struct{}{}
	} else {
		clear(ps.dirty)
	}
	slices.SortFunc(changes, func(a, b peerChange) int { return a.Lease.Subnet.Addr().Compare(b.Lease.Subnet.Addr()) })
	return changes
}

func changeOf(c backend.Change, prev *heldLease) peerChange {
	if prev == nil {
		return peerChange{Change: c}
	}
	return peerChange{Change: c, was: true, prevIP: prev.publicIP}
}

// judge says why the lease of e (key k, not ours) must not be a peer, or "".
func (ps *peerSet) judge(k string, e *entry) string {
	if r := checkPeer(ps.nc, ps.own, ps.info, e.held.lease()); r != "" {
		return r
	}
	// Hosts lease only SubnetLen subnets, never one overlapping a lease:
	// a lease of another length that overlaps one is garbage or written
	// by hand, and routing it would divert part of the other host's
	// traffic (a /25 inside a peer's /24 wins by longest match).
	if sn, ok := ps.odd[k]; ok {
		if other := ps.overlapping(k, sn); other != "" {
			return fmt.Sprintf("subnet %s overlaps the lease %s", sn, other)
		}
	}
	return ps.vet(e)
}

// overlapping returns the smallest key of a lease (not ours, not k) of
// another length overlapping sn, or "". It scans every lease, which only
// odd leases, rare by construction, ever pay for.
func (ps *peerSet) overlapping(k string, sn netip.Prefix) string {
	ownKey, found := ps.own.Key(), ""
	for k2, e2 := range ps.entries {
		l2 := &e2.held
		if !e2.present || k2 == k || k2 == ownKey || !l2.subnet.IsValid() || l2.subnet.Bits() == sn.Bits() {
			continue
		}
		if l2.subnet.Masked().Overlaps(sn) && (found == "" || strings.Compare(k2, found) < 0) {
			found = k2
		}
	}
	return found
}

// vet returns the backend's objection to e's lease (Info.ValidatePeer:
// vxlan decodes its BackendData), asking again only when its value changed.
func (ps *peerSet) vet(e *entry) string {
	if ps.info.ValidatePeer == nil {
		return ""
	}
	if !e.vetted {
		e.vetWhy = ""
		if err := ps.info.ValidatePeer(e.held.lease()); err != nil {
			e.vetWhy = err.Error()
		}
		e.vetted = true
	}
	return e.vetWhy
}

// peers returns the peers sorted by subnet, for a full Sync.
func (ps *peerSet) peers() []lease.Lease {
	out := make([]lease.Lease, 0, ps.peerN)
	for _, e := range ps.entries {
		if e.peer {
			out = append(out, e.handedOut().lease())
		}
	}
	slices.SortFunc(out, func(a, b lease.Lease) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	return out
}

// peer returns the lease last handed out as peer k.
func (ps *peerSet) peer(k string) (*heldLease, bool) {
	if e, ok := ps.entries[k]; ok && e.peer {
		return e.handedOut(), true
	}
	return nil, false
}

// ignored is how many leases (not ours) are not peers.
func (ps *peerSet) ignored() int {
	n := ps.leaseN - ps.peerN
	if e, ok := ps.entries[ps.own.Key()]; ok && e.present {
		n--
	}
	return n
}

// sameLease reports whether a backend would program a and b alike.
func sameLease(a, b *heldLease) bool {
	return a.subnet == b.subnet && a.rare6().subnet6 == b.rare6().subnet6 && sameAttrs(a, b)
}

// sameAttrs compares the attributes byte for byte, which is cheaper than
// Attrs.Equal and errs only towards asking the backend again.
func sameAttrs(a, b *heldLease) bool {
	ra, rb := a.rare6(), b.rare6()
	return a.publicIP == b.publicIP && ra.publicIPv6 == rb.publicIPv6 && a.backendType == b.backendType &&
		bytes.Equal(a.backendData, b.backendData) && bytes.Equal(ra.backendV6Data, rb.backendV6Data)
}

// rare6 is h's rare attributes, zero if it has none.
func (h *heldLease) rare6() rareAttrs {
	if h.rare == nil {
		return rareAttrs{}
	}
	return *h.rare
}
