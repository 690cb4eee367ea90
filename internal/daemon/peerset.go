package daemon

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

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
	// (at 65,000 leases a copy is 15 MB).
	leases map[string]*lease.Lease // by key, every lease in the feed (ours too)
	odd    map[string]netip.Prefix // leases but ours whose length is not SubnetLen
	valid  map[string]*lease.Lease // the peers, as last handed out by flush
	reason map[string]string       // why a lease is not a peer, as last warned about
	vetted map[string]vetted       // the backend's verdict per key and value
	dirty  map[string]struct{}     // keys whose verdict may have changed
}

// vetted is the backend's verdict on one lease value.
type vetted struct {
	lease  *lease.Lease
	reason string
}

func newPeerSet(nc *netconf.Config, info backend.Info, own lease.Lease, log *slog.Logger) *peerSet {
	return &peerSet{
		nc: nc, info: info, own: own, log: log,
		leases: map[string]*lease.Lease{}, odd: map[string]netip.Prefix{}, valid: map[string]*lease.Lease{},
		reason: map[string]string{}, vetted: map[string]vetted{}, dirty: map[string]struct{}{},
	}
}

// reset replaces every lease with a listing, which it keeps pointers
// into: the caller must not change it.
func (ps *peerSet) reset(leases []lease.Lease) {
	ps.leases = make(map[string]*lease.Lease, len(leases))
	ps.odd = map[string]netip.Prefix{}
	for k := range ps.valid {
		ps.dirty[k] = struct{}{}
	}
	for k := range ps.reason {
		ps.dirty[k] = struct{}{}
	}
	for i := range leases {
		l := &leases[i]
		k := l.Key()
		ps.leases[k] = l
		ps.dirty[k] = struct{}{}
		ps.index(k, *l)
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
		l := ev.Lease
		ps.leases[k] = &l
		ps.index(k, l)
	}
	ps.dirty[k] = struct{}{}
	// An odd lease's verdict depends on the leases around it.
	for ok, sn := range ps.odd {
		if (had && old.Subnet.IsValid() && sn.Overlaps(old.Subnet)) ||
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
		ls = append(ls, *x)
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
		case now && (!was || (prev != l && !sameLease(*prev, *l))):
			ps.valid[k] = l
			changes = append(changes, changeOf(backend.Change{Lease: *l}, prev))
		case now:
			ps.valid[k] = l // the same value: the newest copy, so the old can go
		case !now && was:
			delete(ps.valid, k)
			changes = append(changes, changeOf(backend.Change{Lease: lease.Lease{Subnet: prev.Subnet, Subnet6: prev.Subnet6}, Removed: true}, prev))
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

func changeOf(c backend.Change, prev *lease.Lease) peerChange {
	if prev == nil {
		return peerChange{Change: c}
	}
	return peerChange{Change: c, was: true, prevIP: prev.Attrs.PublicIP}
}

// judge says why lease l (key k, not ours) must not be a peer, or "".
func (ps *peerSet) judge(k string, l *lease.Lease) string {
	if r := checkPeer(ps.nc, ps.own, ps.info, *l); r != "" {
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
		if k2 == k || k2 == ownKey || !l2.Subnet.IsValid() || l2.Subnet.Bits() == sn.Bits() {
			continue
		}
		if l2.Subnet.Masked().Overlaps(sn) && (found == "" || strings.Compare(k2, found) < 0) {
			found = k2
		}
	}
	return found
}

// vet returns the backend's objection to peer l (Info.ValidatePeer: vxlan
// decodes its BackendData), asking again only when l's value changed.
func (ps *peerSet) vet(k string, l *lease.Lease) string {
	if ps.info.ValidatePeer == nil {
		return ""
	}
	if v, ok := ps.vetted[k]; ok && (v.lease == l || sameAttrs(v.lease.Attrs, l.Attrs)) {
		ps.vetted[k] = vetted{lease: l, reason: v.reason}
		return v.reason
	}
	reason := ""
	if err := ps.info.ValidatePeer(*l); err != nil {
		reason = err.Error()
	}
	ps.vetted[k] = vetted{lease: l, reason: reason}
	return reason
}

// peers returns the peers sorted by subnet, for a full Sync.
func (ps *peerSet) peers() []lease.Lease {
	out := make([]lease.Lease, 0, len(ps.valid))
	for _, l := range ps.valid {
		out = append(out, *l)
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
func sameLease(a, b lease.Lease) bool {
	return a.Subnet == b.Subnet && a.Subnet6 == b.Subnet6 && sameAttrs(a.Attrs, b.Attrs)
}

// sameAttrs compares byte for byte, which is cheaper than Attrs.Equal and
// errs only towards asking the backend again.
func sameAttrs(a, b lease.Attrs) bool {
	return a.PublicIP == b.PublicIP && a.PublicIPv6 == b.PublicIPv6 && a.BackendType == b.BackendType &&
		bytes.Equal(a.BackendData, b.BackendData) && bytes.Equal(a.BackendV6Data, b.BackendV6Data)
}
