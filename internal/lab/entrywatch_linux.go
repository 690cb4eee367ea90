package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel/internal/lab/proc"
	"github.com/flannel-go/flannel/internal/route"
)

// Entries is a set of kernel entries a backend is expected to make.
type Entries struct {
	Routes []RouteEntry
	Neighs []NeighEntry
	FDB    []FDBEntry
}

// RouteEntry is a main-table route to Dst via Gw (on any link).
type RouteEntry struct {
	Dst netip.Prefix
	Gw  netip.Addr
}

// NeighEntry is a permanent IPv4 neighbour: IP is at MAC.
type NeighEntry struct {
	IP  netip.Addr
	MAC route.MAC
}

// FDBEntry is a permanent bridge FDB entry: MAC is behind the VTEP Dst.
type FDBEntry struct {
	MAC route.MAC
	Dst netip.Addr
}

// Counts is how many of the expected entries of each kind exist.
type Counts struct{ Routes, Neighs, FDB int }

// EntryWatch follows the kernel's route and neighbour notifications in one
// namespace and records when each entry appeared, so the time a daemon
// needs to program thousands of entries, or one new one, is measured to
// the notification rather than to a polling interval, and without dumping
// large tables while the daemon under test competes for the CPU.
type EntryWatch struct {
	done chan struct{}
	wg   sync.WaitGroup
	wake chan struct{} // a change happened; capacity 1, so changes coalesce

	mu     sync.Mutex
	routes map[netip.Prefix]seen[netip.Addr] // main-table routes by destination: gateway
	neighs map[netip.Addr]seen[route.MAC]    // permanent IPv4 neighbours: MAC
	fdb    map[FDBEntry]time.Time            // permanent FDB entries
	want   *expected
	err    error // the notification stream broke: counts are unreliable
}

type seen[V comparable] struct {
	v  V
	at time.Time
}

// expected is what Expect registered and how much of it exists; counting
// on every change keeps a wait over thousands of entries O(1) per event.
type expected struct {
	routes map[netip.Prefix]netip.Addr
	neighs map[netip.Addr]route.MAC
	fdb    map[FDBEntry]bool
	have   Counts
	last   time.Time // when the latest expected entry appeared
}

func (e *expected) total() Counts {
	return Counts{len(e.routes), len(e.neighs), len(e.fdb)}
}

// notifyBuffer is the receive buffer of each notification socket. Notices
// arrive faster than they are read while a daemon adds thousands of
// entries; an overflow (ENOBUFS) would lose some, so it is large (set
// past rmem_max with SO_RCVBUFFORCE, as root).
const notifyBuffer = 64 << 20

// WatchEntries starts following namespace nsName. Entries that exist
// already are reported first (with the time they were read). Close stops it.
func WatchEntries(nsName string) (*EntryWatch, error) {
	h, err := netns.GetFromName(nsName)
	if err != nil {
		return nil, fmt.Errorf("lab: watch entries in %s: %w", nsName, err)
	}
	defer h.Close()
	w := &EntryWatch{
		done:   make(chan struct{}),
		wake:   make(chan struct{}, 1),
		routes: map[netip.Prefix]seen[netip.Addr]{},
		neighs: map[netip.Addr]seen[route.MAC]{},
		fdb:    map[FDBEntry]time.Time{},
	}
	rch := make(chan netlink.RouteUpdate, 4096)
	nch := make(chan netlink.NeighUpdate, 4096)
	fail := func(err error) {
		select {
		case <-w.done: // closing the socket on Close fails the read
		default:
			w.setErr(err)
		}
	}
	err = netlink.RouteSubscribeWithOptions(rch, w.done, netlink.RouteSubscribeOptions{
		Namespace: &h, ErrorCallback: fail, ListExisting: true,
		ReceiveBufferSize: notifyBuffer, ReceiveBufferForceSize: true,
	})
	if err != nil {
		close(w.done)
		return nil, fmt.Errorf("lab: subscribe to routes in %s: %w", nsName, err)
	}
	err = netlink.NeighSubscribeWithOptions(nch, w.done, netlink.NeighSubscribeOptions{
		Namespace: &h, ErrorCallback: fail, ListExisting: true,
		ReceiveBufferSize: notifyBuffer, ReceiveBufferForceSize: true,
	})
	if err != nil {
		close(w.done)
		for range rch {
		}
		return nil, fmt.Errorf("lab: subscribe to neighbours in %s: %w", nsName, err)
	}
	w.wg.Go(func() { w.run(rch, nch) })
	return w, nil
}

// Close stops following and waits for the reader.
func (w *EntryWatch) Close() {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
	w.wg.Wait()
}

func (w *EntryWatch) setErr(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = fmt.Errorf("lab: kernel notifications lost: %w", err)
	}
	w.mu.Unlock()
	w.signal()
}

func (w *EntryWatch) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// run applies notifications until both streams end (on Close, or when a
// socket fails, which the library reports through fail).
func (w *EntryWatch) run(rch <-chan netlink.RouteUpdate, nch <-chan netlink.NeighUpdate) {
	for rch != nil || nch != nil {
		select {
		case u, ok := <-rch:
			if !ok {
				rch = nil
				continue
			}
			w.route(u, time.Now())
		case u, ok := <-nch:
			if !ok {
				nch = nil
				continue
			}
			w.neigh(u, time.Now())
		}
		w.signal()
	}
	select {
	case <-w.done:
	default:
		w.setErr(errors.New("notification stream ended"))
	}
}

func (w *EntryWatch) route(u netlink.RouteUpdate, at time.Time) {
	r := u.Route
	if r.Table != unix.RT_TABLE_MAIN || r.Dst == nil || r.Family != netlink.FAMILY_V4 {
		return
	}
	dst, ok := netip.AddrFromSlice(r.Dst.IP)
	if !ok {
		return
	}
	ones, _ := r.Dst.Mask.Size()
	p := netip.PrefixFrom(dst.Unmap(), ones)
	var gw netip.Addr
	if g, ok := netip.AddrFromSlice(r.Gw); ok {
		gw = g.Unmap()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	old, had := w.routes[p]
	if u.Type == unix.RTM_DELROUTE {
		// A delete names the route; only forget the one we know.
		if had && old.v == gw {
			delete(w.routes, p)
			w.countRoute(p, old.v, false, at)
		}
		return
	}
	if had && old.v == gw {
		return // replaced by the same route: not new
	}
	if had {
		w.countRoute(p, old.v, false, at)
	}
	w.routes[p] = seen[netip.Addr]{gw, at}
	w.countRoute(p, gw, true, at)
}

func (w *EntryWatch) neigh(u netlink.NeighUpdate, at time.Time) {
	n := u.Neigh
	mac, okm := route.MACFrom(n.HardwareAddr)
	ip, oki := netip.AddrFromSlice(n.IP)
	if !okm || !oki {
		return
	}
	ip = ip.Unmap()
	gone := u.Type == unix.RTM_DELNEIGH || n.State&netlink.NUD_PERMANENT == 0
	w.mu.Lock()
	defer w.mu.Unlock()
	switch n.Family {
	case unix.AF_BRIDGE:
		if n.Flags&netlink.NTF_SELF == 0 {
			return
		}
		k := FDBEntry{MAC: mac, Dst: ip}
		_, had := w.fdb[k]
		switch {
		case gone && had:
			delete(w.fdb, k)
			w.countFDB(k, -1, at)
		case !gone && !had:
			w.fdb[k] = at
			w.countFDB(k, 1, at)
		}
	case netlink.FAMILY_V4:
		old, had := w.neighs[ip]
		if had {
			delete(w.neighs, ip)
			w.countNeigh(ip, old.v, -1, at)
		}
		if !gone {
			if had && old.v == mac {
				at = old.at // refreshed, not new
			}
			w.neighs[ip] = seen[route.MAC]{mac, at}
			w.countNeigh(ip, mac, 1, at)
		}
	}
}

func (w *EntryWatch) countRoute(p netip.Prefix, gw netip.Addr, add bool, at time.Time) {
	if w.want == nil {
		return
	}
	if g, ok := w.want.routes[p]; ok && g == gw {
		if add {
			w.want.have.Routes++
			w.want.last = at
		} else {
			w.want.have.Routes--
		}
	}
}

func (w *EntryWatch) countNeigh(ip netip.Addr, mac route.MAC, d int, at time.Time) {
	if w.want == nil {
		return
	}
	if m, ok := w.want.neighs[ip]; ok && m == mac {
		w.want.have.Neighs += d
		if d > 0 {
			w.want.last = at
		}
	}
}

func (w *EntryWatch) countFDB(k FDBEntry, d int, at time.Time) {
	if w.want == nil || !w.want.fdb[k] {
		return
	}
	w.want.have.FDB += d
	if d > 0 {
		w.want.last = at
	}
}

// Expect registers the entries WaitExpected waits for.
func (w *EntryWatch) Expect(e Entries) {
	x := &expected{
		routes: make(map[netip.Prefix]netip.Addr, len(e.Routes)),
		neighs: make(map[netip.Addr]route.MAC, len(e.Neighs)),
		fdb:    make(map[FDBEntry]bool, len(e.FDB)),
	}
	for _, r := range e.Routes {
		x.routes[r.Dst] = r.Gw
	}
	for _, n := range e.Neighs {
		x.neighs[n.IP] = n.MAC
	}
	for _, f := range e.FDB {
		x.fdb[f] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for p, gw := range x.routes {
		if s, ok := w.routes[p]; ok && s.v == gw {
			x.have.Routes++
			x.last = later(x.last, s.at)
		}
	}
	for ip, mac := range x.neighs {
		if s, ok := w.neighs[ip]; ok && s.v == mac {
			x.have.Neighs++
			x.last = later(x.last, s.at)
		}
	}
	for k := range x.fdb {
		if at, ok := w.fdb[k]; ok {
			x.have.FDB++
			x.last = later(x.last, at)
		}
	}
	w.want = x
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Progress returns how many expected entries exist, of how many.
func (w *EntryWatch) Progress() (have, want Counts) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.want == nil {
		return Counts{}, Counts{}
	}
	return w.want.have, w.want.total()
}

// WaitExpected waits until every entry given to Expect exists and returns
// when the last of them appeared. It gives up when ctx ends, after
// timeout, or when pid (if not 0) exits.
func (w *EntryWatch) WaitExpected(ctx context.Context, timeout time.Duration, pid int) (time.Time, error) {
	return w.wait(ctx, timeout, pid, func() (time.Time, bool) {
		if w.want == nil {
			return time.Time{}, false
		}
		return w.want.last, w.want.have == w.want.total()
	})
}

// WaitRoute waits until the route to dst via gw exists and returns when it
// appeared, as WaitExpected.
func (w *EntryWatch) WaitRoute(ctx context.Context, dst netip.Prefix, gw netip.Addr, timeout time.Duration, pid int) (time.Time, error) {
	return w.wait(ctx, timeout, pid, func() (time.Time, bool) {
		s, ok := w.routes[dst]
		return s.at, ok && s.v == gw
	})
}

func (w *EntryWatch) wait(ctx context.Context, timeout time.Duration, pid int, cond func() (time.Time, bool)) (time.Time, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	// Notifications say when entries change, not when the daemon dies.
	live := time.NewTicker(100 * time.Millisecond)
	defer live.Stop()
	for {
		w.mu.Lock()
		at, ok := cond()
		err := w.err
		w.mu.Unlock()
		switch {
		case ok:
			return at, nil
		case err != nil:
			return time.Time{}, err
		}
		select {
		case <-w.wake:
		case <-live.C:
			if pid != 0 && !proc.Alive(pid) {
				return time.Time{}, fmt.Errorf("lab: pid %d exited", pid)
			}
		case <-deadline.C:
			return time.Time{}, fmt.Errorf("lab: not there after %s", timeout)
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

// CountEntries counts, with kernel dumps in namespace nsName, the routes
// whose link is dev (or whose gateway lies in gwIn, for backends that
// route through the underlay), and the permanent neighbour and FDB
// entries of dev. It cross-checks what EntryWatch reported.
func CountEntries(nsName, dev string, gwIn netip.Prefix) (Counts, error) {
	h, err := netns.GetFromName(nsName)
	if err != nil {
		return Counts{}, err
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return Counts{}, err
	}
	defer nl.Close()
	idx := -1
	if dev != "" {
		l, err := nl.LinkByName(dev)
		if err != nil {
			return Counts{}, fmt.Errorf("lab: %s in %s: %w", dev, nsName, err)
		}
		idx = l.Attrs().Index
	}
	rs, err := route.ListRoutes(nl, netlink.FAMILY_V4, func(r route.Route) bool {
		return r.LinkIndex == idx || (gwIn.IsValid() && gwIn.Contains(r.Gw))
	})
	if err != nil {
		return Counts{}, err
	}
	c := Counts{Routes: len(rs)}
	if idx < 0 {
		return c, nil
	}
	neighs, err := route.ListNeighs(nl, netlink.FAMILY_V4, idx)
	if err != nil {
		return Counts{}, err
	}
	fdb, err := route.ListFDB(nl, idx)
	if err != nil {
		return Counts{}, err
	}
	c.Neighs, c.FDB = len(neighs), len(fdb)
	return c, nil
}
