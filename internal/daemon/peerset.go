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

	// The leases are held by pointer and never changed in place, so
	// valid and vetted remember a value by its pointer, not by a copy
	// (at 65,000 leases a copy is 7 MB).
	leases map[string]*heldLease   // by key, every lease in the feed (ours too)
	odd    map[string]netip.Prefix // leases but ours whose length is not SubnetLen
	valid  map[string]*heldLease   // the peers, as last handed out by flush
	reason map[string]string       // why a lease is not a peer, as last warned about
	vetted map[string]vetted       // the backend's verdict per key and value
	dirty  map[string]struct{}     // keys whose verdict may have changed
}

// vetted is the backend's verdict on one lease value.
type vetted struct {
	lease  *heldLease
	reason string
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
	return &peerSet{
		nc: nc, info: info, own: own, log: log,
		leases: map[string]*heldLease{}, odd: map[string]netip.Prefix{}, valid: map[string]*heldLease{},
		reason: map[string]string{}, vetted: map[string]vetted{}, dirty: map[string]struct{}{},
	}
}

// reset replaces every lease with a listing. The BackendData are kept,
// not copied: the caller must not change them.
func (ps *peerSet) reset(leases []lease.Lease) {
	ps.leases = make(map[string]*heldLease, len(leases))
	held := make([]heldLease, len(leases))
	ps.odd = map[string]netip.Prefix{}
	for k := range ps.valid {
		ps.dirty[k] = struct{}{}
	}
	for k := range ps.reason {
		ps.dirty[k] = struct{}{}
	}
	for i := range leases {
		l := &held[i]
		hold(leases[i], l)
		k := leases[i].Key()
		ps.leases[k] = l
		ps.dirty[k] = struct{}{}
		ps.index(k, leases[i])
	}
}

// apply folds one watch event in.
func (ps *peerSet) apply(ev lease.Event) {
	k := ev.Lease.Key()
	old, had := ps.leases[k]
	delete(ps.odd, k)
	if ev.Type == lease.Removed {
		delete(ps.leases, k)
	} else {
		l := new(heldLease)
		hold(ev.Lease, l)
		ps.leases[k] = l
		ps.index(k, ev.Lease)
	}
	ps.dirty[k] = struct{}{}
	// An odd lease's verdict depends on the leases around it.
	for ok, sn := range ps.odd {
		if (had && old.subnet.IsValid() && sn.Overlaps(old.subnet)) ||
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
	ls := make([]lease.Lease, 0, len(ps.leases))
	for _, x := range ps.leases {
		ls = append(ls, x.lease())
	}
	ps.reset(ls)
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
		l, present := ps.leases[k]
		reason := ""
		if present && k != ownKey {
			reason = ps.judge(k, l)
		}
		if present && k != ownKey && reason != "" {
			if ps.reason[k] != reason {
				ps.log.Warn("ignoring lease", "key", k, "reason", reason)
				ps.reason[k] = reason
			}
		} else {
			delete(ps.reason, k)
		}
		if v, ok := ps.vetted[k]; ok && (!present || v.lease != l) {
			delete(ps.vetted, k) // a verdict on a value no longer held
		}
		prev, was := ps.valid[k]
		switch now := present && k != ownKey && reason == ""; {
		case now && (!was || (prev != l && !sameLease(prev, l))):
			ps.valid[k] = l
			changes = append(changes, changeOf(backend.Change{Lease: l.lease()}, prev))
		case now:
			ps.valid[k] = l // the same value: the newest copy, so the old can go
		case !now && was:
			delete(ps.valid, k)
			gone := prev.lease()
			changes = append(changes, changeOf(backend.Change{Lease: lease.Lease{Subnet: gone.Subnet, Subnet6: gone.Subnet6}, Removed: true}, prev))
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

// judge says why lease l (key k, not ours) must not be a peer, or "".
func (ps *peerSet) judge(k string, l *heldLease) string {
	if r := checkPeer(ps.nc, ps.own, ps.info, l.lease()); r != "" {
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
	return ps.vet(k, l)
}

// overlapping returns the smallest key of a lease (not ours, not k) of
// another length overlapping sn, or "". It scans every lease, which only
// odd leases, rare by construction, ever pay for.
func (ps *peerSet) overlapping(k string, sn netip.Prefix) string {
	ownKey, found := ps.own.Key(), ""
	for k2, l2 := range ps.leases {
		if k2 == k || k2 == ownKey || !l2.subnet.IsValid() || l2.subnet.Bits() == sn.Bits() {
			continue
		}
		if l2.subnet.Masked().Overlaps(sn) && (found == "" || strings.Compare(k2, found) < 0) {
			found = k2
		}
	}
	return found
}

// vet returns the backend's objection to peer l (Info.ValidatePeer: vxlan
// decodes its BackendData), asking again only when l's value changed.
func (ps *peerSet) vet(k string, l *heldLease) string {
	if ps.info.ValidatePeer == nil {
		return ""
	}
	if v, ok := ps.vetted[k]; ok && (v.lease == l || sameAttrs(v.lease, l)) {
		ps.vetted[k] = vetted{lease: l, reason: v.reason}
		return v.reason
	}
	reason := ""
	if err := ps.info.ValidatePeer(l.lease()); err != nil {
		reason = err.Error()
	}
	ps.vetted[k] = vetted{lease: l, reason: reason}
	return reason
}

// peers returns the peers sorted by subnet, for a full Sync.
func (ps *peerSet) peers() []lease.Lease {
	out := make([]lease.Lease, 0, len(ps.valid))
	for _, l := range ps.valid {
		out = append(out, l.lease())
	}
	slices.SortFunc(out, func(a, b lease.Lease) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	return out
}

// ignored is how many leases (not ours) are not peers.
func (ps *peerSet) ignored() int {
	n := len(ps.leases) - len(ps.valid)
	if _, ok := ps.leases[ps.own.Key()]; ok {
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
