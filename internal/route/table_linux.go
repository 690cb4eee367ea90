package route

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Netlink is the part of *netlink.Handle a Table changes the kernel with.
type Netlink interface {
	RouteReplace(*netlink.Route) error
	RouteDel(*netlink.Route) error
	NeighSet(*netlink.Neigh) error
	NeighDel(*netlink.Neigh) error
}

// Table holds what has been applied to the kernel. Not safe for concurrent
// use; a backend's methods are never called concurrently.
type Table struct {
	nl Netlink
	// The record, packed (record.go).
	routes map[routeKey]routeVal
	neighs map[neighKey]MAC
	fdb    map[fdbKey]struct{}

	log *slog.Logger
	// nhl is nl's nexthop part: nil if it has none, the kernel has none
	// (the probe failed) or WithClassicRoutes; then routes are classic.
	nhl      NexthopNetlink
	nh       *nexthops // nil until the probe
	nhFailed int       // deletions of objects that failed since the last report
	nhErrs   errList
	nhWarned bool // a probe failed for a reason that may pass
}

// NewTable returns an empty table that changes the kernel through nl.
// If nl is also a NexthopNetlink (a *Handle is), the table installs IPv4
// routes through a gateway as routes to nexthop objects, unless the
// kernel has none, which the first change finds out.
func NewTable(nl Netlink, opts ...Option) *Table {
	t := &Table{nl: nl, log: slog.New(slog.DiscardHandler)}
	t.nhl, _ = nl.(NexthopNetlink)
	for _, o := range opts {
		o(t)
	}
	t.Load(State{})
	return t
}

// Load replaces the record of applied entries with have, typically what a
// kernel dump shows of the entries the caller owns. The next Set then
// deletes the ones not wanted and re-adds wanted ones that are missing.
func (t *Table) Load(have State) {
	// A repair loads about as many entries as the maps hold: refilling
	// them keeps their memory instead of making garbage of it (at 65,000
	// peers, tens of MB each pass).
	t.routes = refill(t.routes, len(have.Routes))
	t.neighs = refill(t.neighs, len(have.Neighs))
	t.fdb = refill(t.fdb, len(have.FDB))
	for _, r := range have.Routes {
		k, v := packRoute(r)
		t.routes[k] = v
	}
	for _, n := range have.Neighs {
		t.neighs[n.key()] = n.MAC
	}
	for _, f := range have.FDB {
		t.fdb[f.key()] = struct{}{}
	}
	if t.nh != nil {
		t.nh.dirty = true // the routes may use other objects now
	}
}

// refill returns m emptied, or a new map if m is nil or more than twice
// too large (iterating a map costs its capacity).
func refill[K comparable, V any](m map[K]V, n int) map[K]V {
	if m == nil || len(m) > 2*n+64 {
		return make(map[K]V, n)
	}
	clear(m)
	return m
}

// Applied returns the entries the table believes are in the kernel, sorted.
func (t *Table) Applied() State {
	var s State
	for k, v := range t.routes {
		s.Routes = append(s.Routes, unpackRoute(k, v))
	}
	for k, m := range t.neighs {
		s.Neighs = append(s.Neighs, unpackNeigh(k, m))
	}
	for k := range t.fdb {
		s.FDB = append(s.FDB, unpackFDB(k, struct{}{}))
	}
	slices.SortFunc(s.Routes, func(a, b Route) int {
		return cmp.Or(a.Dst.Addr().Compare(b.Dst.Addr()), cmp.Compare(a.Dst.Bits(), b.Dst.Bits()), cmp.Compare(a.Metric, b.Metric))
	})
	slices.SortFunc(s.Neighs, func(a, b Neigh) int {
		return cmp.Or(cmp.Compare(a.LinkIndex, b.LinkIndex), a.IP.Compare(b.IP))
	})
	slices.SortFunc(s.FDB, func(a, b FDB) int {
		return cmp.Or(cmp.Compare(a.LinkIndex, b.LinkIndex), slices.Compare(a.MAC[:], b.MAC[:]), a.Dst.Compare(b.Dst))
	})
	return s
}

// Set makes the owned entries equal to want. It first adds or replaces, in
// the order a packet needs them (neighbour, FDB, then the route that makes
// them reachable), and only then deletes, routes first. A failed change is
// reported and left for the next Set to retry; the others still happen.
func (t *Table) Set(want State) (Changes, error) {
	var c Changes
	var errs errList
	w := t.put(want, &c, &errs)
	remove(t.routes, w.routes, routeCodec, t.routeDel, &c, &errs)
	remove(t.neighs, w.neighs, neighCodec, t.neighDel, &c, &errs)
	remove(t.fdb, w.fdb, fdbCodec, t.fdbDel, &c, &errs)
	t.nhSweep()
	t.nhReport(&c, &errs)
	return c, errs.err(c)
}

// Update changes part of the owned entries, in time proportional to the
// change: it adds or replaces put's entries (neighbours, FDB, routes), then
// deletes the applied entries with the keys of del's that put does not
// have (routes, neighbours, FDB). Entries named in neither are left alone,
// so put and del are typically the new and the old entries of the peers
// that changed; a changed peer keeps its path while it changes. As with
// Set, a failed change is reported and left for the next Set.
func (t *Table) Update(put, del State) (Changes, error) {
	var c Changes
	var errs errList
	w := t.put(put, &c, &errs)
	drop(t.routes, w.routes, del.Routes, routeCodec, t.routeDel, &c, &errs)
	drop(t.neighs, w.neighs, del.Neighs, neighCodec, t.neighDel, &c, &errs)
	drop(t.fdb, w.fdb, del.FDB, fdbCodec, t.fdbDel, &c, &errs)
	t.nhReport(&c, &errs)
	return c, errs.err(c)
}

// keyedState is a State packed as the Table records what it applied.
type keyedState struct {
	routes map[routeKey]routeVal
	neighs map[neighKey]MAC
	fdb    map[fdbKey]struct{}
}

// put adds or replaces want's entries in the order a packet needs them
// (neighbour, FDB, then the route that makes them reachable), the first
// half of both Set and Update, and returns want keyed.
func (t *Table) put(want State, c *Changes, errs *errList) keyedState {
	t.nhSync()
	w := keyedState{
		routes: routeCodec.keyed(want.Routes),
		neighs: neighCodec.keyed(want.Neighs),
		fdb:    fdbCodec.keyed(want.FDB),
	}
	b, ok := t.nl.(batcher)
	if !ok {
		add(t.neighs, w.neighs, neighCodec, t.neighSet, c, errs)
		add(t.fdb, w.fdb, fdbCodec, t.fdbSet, c, errs)
		add(t.routes, w.routes, routeCodec, t.routeReplace, c, errs)
		return w
	}
	addBatched(b, t.neighs, w.neighs, neighCodec, neighSetReq, neighSetErr, c, errs)
	addBatched(b, t.fdb, w.fdb, fdbCodec, fdbSetReq, fdbSetErr, c, errs)
	// Routes through objects in batches; the rest (IPv6, device routes)
	// one at a time.
	classic := map[routeKey]routeVal{}
	viaNH := make([]Route, 0, len(w.routes))
	for k, v := range w.routes {
		switch old, ok := t.routes[k]; {
		case ok && old == v:
		case t.nh != nil && viaNexthop(unpackRoute(k, v)):
			viaNH = append(viaNH, unpackRoute(k, v))
		default:
			classic[k] = v
		}
	}
	t.routesReplaceNH(b, viaNH, c, errs)
	add(t.routes, classic, routeCodec, t.routeReplace, c, errs)
	return w
}

// addBatched is add with the changes sent in batches; req makes an
// entry's request and fail its error.
func addBatched[E any, K, V comparable](b batcher, applied, want map[K]V, cd codec[E, K, V],
	req func(E) request, fail func(E, error) error, c *Changes, errs *errList) {
	es := make([]E, 0, len(want))
	reqs := make([]request, 0, len(want))
	for k, v := range want {
		if old, ok := applied[k]; ok && old == v {
			continue
		}
		e := cd.unpack(k, v)
		es = append(es, e)
		reqs = append(reqs, req(e))
	}
	if len(reqs) == 0 {
		return
	}
	for i, err := range b.batch(reqs) {
		if err != nil {
			c.Failed++
			errs.add(fail(es[i], err))
			continue
		}
		k, v := cd.pack(es[i])
		applied[k] = v
		c.Added++
	}
}

// drop deletes the applied entries with the keys of del that keep does
// not have. It deletes what was applied, which is what the kernel matches.
func drop[E any, K, V comparable](applied, keep map[K]V, del []E, cd codec[E, K, V], do func(E) error, c *Changes, errs *errList) {
	for _, d := range del {
		k, _ := cd.pack(d)
		if _, ok := keep[k]; ok {
			continue
		}
		v, ok := applied[k]
		if !ok {
			continue
		}
		if err := do(cd.unpack(k, v)); err != nil && !isGone(err) {
			c.Failed++
			errs.add(err)
			continue
		}
		delete(applied, k)
		c.Removed++
	}
}

func add[E any, K, V comparable](applied, want map[K]V, cd codec[E, K, V], do func(E) error, c *Changes, errs *errList) {
	for k, v := range want {
		if old, ok := applied[k]; ok && old == v {
			continue
		}
		if err := do(cd.unpack(k, v)); err != nil {
			c.Failed++
			errs.add(err)
			continue
		}
		applied[k] = v
		c.Added++
	}
}

func remove[E any, K, V comparable](applied, want map[K]V, cd codec[E, K, V], do func(E) error, c *Changes, errs *errList) {
	for k, v := range applied {
		if _, ok := want[k]; ok {
			continue
		}
		if err := do(cd.unpack(k, v)); err != nil && !isGone(err) {
			c.Failed++
			errs.add(err)
			continue
		}
		delete(applied, k)
		c.Removed++
	}
}

// isGone: deleting what is already gone is success; a hand-deleted entry
// must not make every later Set fail.
func isGone(err error) bool {
	return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT)
}

// errList keeps the first few errors: with thousands of peers failing for
// one reason, the message must stay readable.
type errList struct {
	first []error
}

const maxErrs = 3

func (l *errList) add(err error) {
	if len(l.first) < maxErrs {
		l.first = append(l.first, err)
	}
}

func (l *errList) err(c Changes) error {
	if c.Failed == 0 {
		return nil
	}
	err := errors.Join(l.first...)
	if c.Failed > len(l.first) {
		err = fmt.Errorf("%w\n(and %d more)", err, c.Failed-len(l.first))
	}
	return fmt.Errorf("route: %d of %d changes failed: %w", c.Failed, c.Failed+c.Added+c.Removed, err)
}

func (t *Table) routeReplace(r Route) error {
	if t.nh != nil && viaNexthop(r) {
		return t.routeReplaceNH(r)
	}
	if err := t.nl.RouteReplace(netlinkRoute(r)); err != nil {
		return fmt.Errorf("replace route %s: %w", r, err)
	}
	k := r.key()
	if old, ok := t.routes[k]; ok {
		t.nhUnref(unpackRoute(k, old)) // it may have used an object
	}
	return nil
}

func (t *Table) routeDel(r Route) error {
	var err error
	if id, ok := t.nhOf(r); ok {
		err = t.routeDelNH(r, id)
	} else {
		err = t.nl.RouteDel(netlinkRoute(r))
	}
	if err != nil && !isGone(err) {
		return fmt.Errorf("delete route %s: %w", r, err)
	}
	t.nhUnref(r)
	if err != nil {
		return fmt.Errorf("delete route %s: %w", r, err)
	}
	return nil
}

func (t *Table) neighSet(n Neigh) error {
	if err := t.nl.NeighSet(netlinkNeigh(n)); err != nil {
		return neighSetErr(n, err)
	}
	return nil
}

func neighSetErr(n Neigh, err error) error { return fmt.Errorf("set neighbour %s: %w", n, err) }

func (t *Table) neighDel(n Neigh) error {
	if err := t.nl.NeighDel(netlinkNeigh(n)); err != nil {
		return fmt.Errorf("delete neighbour %s: %w", n, err)
	}
	return nil
}

func (t *Table) fdbSet(f FDB) error {
	if err := t.nl.NeighSet(netlinkFDB(f)); err != nil {
		return fdbSetErr(f, err)
	}
	return nil
}

func fdbSetErr(f FDB, err error) error { return fmt.Errorf("set fdb %s: %w", f, err) }

func (t *Table) fdbDel(f FDB) error {
	if err := t.nl.NeighDel(netlinkFDB(f)); err != nil {
		return fmt.Errorf("delete fdb %s: %w", f, err)
	}
	return nil
}

// netlinkRoute converts r for netlink. Equivalent to the arguments of
// `ip route replace DST [via GW] dev LINK [metric M] [onlink]`.
func netlinkRoute(r Route) *netlink.Route {
	nr := &netlink.Route{
		LinkIndex: r.LinkIndex,
		Dst:       IPNet(r.Dst),
		Priority:  r.Metric,
	}
	if r.Gw.IsValid() {
		nr.Gw = r.Gw.AsSlice()
	}
	if r.OnLink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

// netlinkNeigh: `ip neigh replace IP lladdr MAC dev LINK nud permanent`.
func netlinkNeigh(n Neigh) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    n.LinkIndex,
		Family:       familyOf(n.IP),
		State:        netlink.NUD_PERMANENT,
		Type:         unix.RTN_UNICAST,
		IP:           n.IP.AsSlice(),
		HardwareAddr: n.MAC.HardwareAddr(),
	}
}

// netlinkFDB: `bridge fdb replace MAC dev LINK dst DST self permanent`.
func netlinkFDB(f FDB) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    f.LinkIndex,
		Family:       unix.AF_BRIDGE,
		State:        netlink.NUD_PERMANENT,
		Flags:        netlink.NTF_SELF,
		IP:           f.Dst.AsSlice(),
		HardwareAddr: f.MAC.HardwareAddr(),
	}
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// IPNet converts p for netlink.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
