package route

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Our nexthop objects: protocol boot, as netlink gives our routes, and
// ids from a range of our own, far above the ids the kernel picks when
// asked to (it counts up from 1), so flanneld finds its own after a
// restart and leaves everyone else's alone. One object per (gateway,
// link, onlink), shared by every route through it; a restarted flanneld
// adopts the objects of its predecessor by that key.
const (
	nhProtocol        = unix.RTPROT_BOOT
	nhBase     uint32 = 0xf1a00000
	nhSpan     uint32 = 1 << 24
)

func ownNexthop(n Nexthop) bool {
	return n.Protocol == nhProtocol && n.ID-nhBase < nhSpan && !n.Other && n.Gw.Is4()
}

// nhKey is what an object is shared by: one object per peer with vxlan,
// so it is packed to 12 bytes. Our objects have IPv4 gateways only; any
// other gateway (an object not ours, seen by the watch) gets a key with
// v4 false, which no key of ours equals.
type nhKey struct {
	gw     [4]byte
	link   int32
	onLink bool
	v4     bool
}

func nhKeyFrom(gw netip.Addr, link int, onLink bool) nhKey {
	if !gw.Is4() {
		return nhKey{link: int32(link), onLink: onLink}
	}
	return nhKey{gw.As4(), int32(link), onLink, true}
}

// gateway is the key's gateway.
func (k nhKey) gateway() netip.Addr {
	if !k.v4 {
		return netip.Addr{}
	}
	return netip.AddrFrom4(k.gw)
}

func nhKeyOf(r Route) nhKey { return nhKeyFrom(r.Gw, r.LinkIndex, r.OnLink) }

// nexthop is the object k describes, as netlink takes it.
func (k nhKey) nexthop(id uint32) Nexthop {
	return Nexthop{ID: id, Gw: k.gateway(), LinkIndex: int(k.link), OnLink: k.onLink, Protocol: nhProtocol}
}

// viaNexthop reports whether r is a route a Table installs through a
// nexthop object when the kernel has them: IPv4 through a gateway. (The
// IPv6 FIB keeps the gateway in the route; it has no shared bucket.)
func viaNexthop(r Route) bool { return r.Dst.Addr().Is4() && r.Gw.Is4() }

// nexthops is a Table's record of its nexthop objects. An object's key
// and its count of routes share one map (at 65,000 objects, two maps
// cost 4 MB more).
type nexthops struct {
	byKey map[nhKey]uint32 // the object routes with this key use
	objs  map[uint32]nhObj // every object of ours the kernel has, spare duplicates too
	taken map[uint32]bool  // ids in our range that are someone else's
	next  uint32
	dirty bool // the kernel may differ: dump again before the next change
}

// nhObj is one of our objects: its key and how many applied routes use it.
type nhObj struct {
	key  nhKey
	refs int32
}

// keyOf returns the key of our object id, if the record has it.
func (nh *nexthops) keyOf(id uint32) (nhKey, bool) {
	o, ok := nh.objs[id]
	return o.key, ok
}

// refs is how many applied routes use the object id.
func (nh *nexthops) refs(id uint32) int32 { return nh.objs[id].refs }

// ref adds d to the routes using the object id and returns their number;
// an id the record does not have stays out of it.
func (nh *nexthops) ref(id uint32, d int32) int32 {
	o, ok := nh.objs[id]
	if !ok {
		return 0
	}
	o.refs += d
	nh.objs[id] = o
	return o.refs
}

// Option configures a Table.
type Option func(*Table)

// WithLog gives the Table a logger for the one line saying which kind of
// route it installs.
func WithLog(log *slog.Logger) Option {
	return func(t *Table) { t.log = log }
}

// WithClassicRoutes makes the Table install routes with their gateway
// inline, as it does when the kernel has no nexthop objects.
func WithClassicRoutes() Option { return func(t *Table) { t.nhl = nil } }

// nhSync learns the kernel's nexthop objects if it has not or may be out
// of date (after a Load or a failure); the first time it is the probe.
func (t *Table) nhSync() {
	if t.nhl == nil || (t.nh != nil && !t.nh.dirty) {
		return
	}
	list, err := Dump(t.nhl.NexthopList)
	switch {
	case err != nil && t.nh == nil && noNexthops(err):
		t.nhl = nil
		t.log.Info("route: the kernel has no nexthop objects (Linux 5.3+); installing classic routes", "error", err)
		return
	case err != nil && t.nh == nil:
		// Any other failure may pass: classic routes until a probe
		// succeeds (they are replaced by the kind in use when they change).
		if !t.nhWarned {
			t.log.Warn("route: cannot list nexthop objects; installing classic routes until it works", "error", err)
			t.nhWarned = true
		}
		return
	case err != nil:
		return // keep the last record; still dirty, so the next change retries
	}
	nh := &nexthops{byKey: map[nhKey]uint32{}, objs: map[uint32]nhObj{}, taken: map[uint32]bool{}, next: nhBase}
	if t.nh == nil {
		t.log.Info("route: installing IPv4 routes through nexthop objects")
	} else {
		nh.next = t.nh.next
	}
	for _, n := range list {
		if n.ID-nhBase >= nhSpan {
			continue
		}
		if !ownNexthop(n) {
			nh.taken[n.ID] = true
			continue
		}
		k := nhKeyFrom(n.Gw, n.LinkIndex, n.OnLink)
		nh.objs[n.ID] = nhObj{key: k}
		if id, ok := nh.byKey[k]; !ok || n.ID < id {
			nh.byKey[k] = n.ID
		}
	}
	// The routes a dump showed with this key use this object, or one
	// like it: either way they keep working when spares are deleted
	// only if unused, which is what the refs decide.
	for k, v := range t.routes {
		if id, ok := nh.lookup(unpackRoute(k, v)); ok {
			nh.ref(id, 1)
		}
	}
	t.nh = nh
}

func (nh *nexthops) lookup(r Route) (uint32, bool) {
	if !viaNexthop(r) {
		return 0, false
	}
	id, ok := nh.byKey[nhKeyOf(r)]
	return id, ok
}

// nhOf returns the object the applied route r uses, if it uses one.
func (t *Table) nhOf(r Route) (uint32, bool) {
	if t.nh == nil {
		return 0, false
	}
	return t.nh.lookup(r)
}

// alloc returns an id of our range that no object has.
func (nh *nexthops) alloc() uint32 {
	for range nhSpan {
		id := nh.next
		nh.next++
		if nh.next-nhBase >= nhSpan {
			nh.next = nhBase
		}
		if _, ours := nh.objs[id]; !ours && !nh.taken[id] {
			return id
		}
	}
	return 0
}

// nhCreate makes the object for k. Equivalent to:
// `ip nexthop add id ID via GW dev LINK [onlink] proto boot`.
func (t *Table) nhCreate(k nhKey) (uint32, error) {
	for range 8 {
		id := t.nh.alloc()
		if id == 0 {
			return 0, errors.New("no free nexthop id")
		}
		err := t.nhl.NexthopAdd(k.nexthop(id))
		if errors.Is(err, unix.EEXIST) { // someone took it since the dump
			t.nh.taken[id] = true
			continue
		}
		if err != nil {
			return 0, err
		}
		t.nh.made(k, id)
		return id, nil
	}
	return 0, errors.New("nexthop ids keep being taken")
}

// made records the object id created for k.
func (nh *nexthops) made(k nhKey, id uint32) {
	nh.byKey[k] = id
	nh.objs[id] = nhObj{key: k}
}

// routeReplaceNH installs r through the object for its gateway, creating
// the object first if there is none, and releases the object the route
// used before.
func (t *Table) routeReplaceNH(r Route) error {
	k := nhKeyOf(r)
	id, ok := t.nh.byKey[k]
	if !ok {
		var err error
		if id, err = t.nhCreate(k); err != nil {
			return fmt.Errorf("add nexthop for route %s: %w", r, err)
		}
	}
	if err := t.nhl.RouteReplaceNH(r, id); err != nil {
		return t.routeNHFailed(r, id, err)
	}
	t.routeNHReplaced(r, id)
	return nil
}

// routeNHReplaced notes that r now uses the object id, and releases the
// one the route it replaced used.
func (t *Table) routeNHReplaced(r Route, id uint32) {
	t.nh.ref(id, 1)
	k := r.key()
	if old, ok := t.routes[k]; ok {
		t.nhUnref(unpackRoute(k, old))
	}
}

// routeNHFailed handles a refused `ip route replace r nhid id`.
func (t *Table) routeNHFailed(r Route, id uint32, err error) error {
	// The object may be gone (deleted by hand): learn again.
	t.nh.dirty = true
	if t.nh.refs(id) == 0 {
		t.nhDelete(id)
	}
	return fmt.Errorf("replace route %s nhid %d: %w", r, id, err)
}

// routesReplaceNH is routeReplaceNH for many routes, in two batches: the
// objects missing, then the routes.
func (t *Table) routesReplaceNH(b batcher, routes []Route, c *Changes, errs *errList) {
	if len(routes) == 0 {
		return
	}
	keys := make([]nhKey, 0, len(routes))
	nhIDs := make([]uint32, 0, len(routes))
	reqs := make([]request, 0, len(routes))
	pending := map[nhKey]bool{}
	for _, r := range routes {
		k := nhKeyOf(r)
		if _, ok := t.nh.byKey[k]; ok || pending[k] {
			continue
		}
		id := t.nh.alloc()
		if id == 0 {
			break // nhCreate below reports it
		}
		pending[k] = true
		t.nh.taken[id] = true // not handed out twice; replaced by keyOf below
		keys = append(keys, k)
		nhIDs = append(nhIDs, id)
		reqs = append(reqs, nexthopAddReq(k.nexthop(id)))
	}
	failed := map[nhKey]error{}
	for i, err := range b.batch(reqs) {
		k, id := keys[i], nhIDs[i]
		switch {
		case err == nil:
			delete(t.nh.taken, id)
			t.nh.made(k, id)
		case errors.Is(err, unix.EEXIST): // someone took it since the dump
		default:
			delete(t.nh.taken, id)
			failed[k] = err
		}
	}
	reqs, ids, sent := reqs[:0], make([]uint32, 0, len(routes)), make([]Route, 0, len(routes))
	for _, r := range routes {
		k := nhKeyOf(r)
		if err, ok := failed[k]; ok {
			c.Failed++
			errs.add(fmt.Errorf("add nexthop for route %s: %w", r, err))
			continue
		}
		id, ok := t.nh.byKey[k]
		if !ok { // taken by someone else, or no id was free: one at a time
			var err error
			if id, err = t.nhCreate(k); err != nil {
				failed[k] = err
				c.Failed++
				errs.add(fmt.Errorf("add nexthop for route %s: %w", r, err))
				continue
			}
		}
		sent = append(sent, r)
		ids = append(ids, id)
		reqs = append(reqs, routeReplaceNHReq(r, id))
	}
	// Successes first: an object a failed route leaves unused is deleted
	// only if no route of the batch took it.
	results := b.batch(reqs)
	for i, err := range results {
		if err != nil {
			continue
		}
		t.routeNHReplaced(sent[i], ids[i])
		k, v := packRoute(sent[i])
		t.routes[k] = v
		c.Added++
	}
	for i, err := range results {
		if err != nil {
			c.Failed++
			errs.add(t.routeNHFailed(sent[i], ids[i], err))
		}
	}
}

// nhUnref notes that the applied route r is gone or changed and deletes
// its object once no route uses it.
func (t *Table) nhUnref(r Route) {
	if t.nh == nil {
		return
	}
	id, ok := t.nh.lookup(r)
	if !ok {
		return
	}
	if t.nh.ref(id, -1) <= 0 {
		t.nhDelete(id)
	}
}

// nhDelete deletes one of our objects. A failure is kept for Set or
// Update to report; the object stays in the record, and Set's sweep
// retries.
func (t *Table) nhDelete(id uint32) {
	if err := t.nhl.NexthopDel(id); err != nil && !isGone(err) {
		t.nhFailed++
		t.nhErrs.add(fmt.Errorf("delete nexthop %d: %w", id, err))
		return
	}
	if k, ok := t.nh.keyOf(id); ok && t.nh.byKey[k] == id {
		delete(t.nh.byKey, k)
	}
	delete(t.nh.objs, id)
}

// nhSweep deletes our objects no applied route uses: spares, those of
// peers that left while no one was looking.
func (t *Table) nhSweep() {
	if t.nh == nil {
		return
	}
	for id, o := range t.nh.objs {
		if o.refs <= 0 {
			t.nhDelete(id)
		}
	}
}

// nhReport moves the failed deletions of objects into c and errs.
func (t *Table) nhReport(c *Changes, errs *errList) {
	c.Failed += t.nhFailed
	for _, err := range t.nhErrs.first {
		errs.add(err)
	}
	t.nhFailed, t.nhErrs = 0, errList{}
}

// routeDelNH deletes the applied route r, which the record says uses an
// object: by the object's id, so that a route someone else put at our key
// is not taken for ours (the kernel matches no gateway or link against a
// route through an object). A classic route at the key (one a flanneld
// before this one installed) is deleted as such.
func (t *Table) routeDelNH(r Route, id uint32) error {
	err := t.nhl.RouteDelNH(r, id)
	if isGone(err) {
		err = t.nl.RouteDel(netlinkRoute(r))
	}
	return err
}
