package fastpath

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel/internal/route"
)

// Direct delivery to local containers
//
// A decapsulated packet for a container on the bridge that holds our
// subnet (docker0, cni0: found from the route to the subnet, whatever its
// name) is handed straight to the container's veth peer with
// bpf_redirect_peer instead of entering flannel0, being routed to the
// bridge and forwarded by it. Besides two device traversals this avoids
// the software segmentation and checksumming of GSO super-packets that
// this kernel does when it forwards them through a bridge (see
// peerInsns).
//
// What is bypassed for those packets, and why that is acceptable: the
// host's netfilter hooks for the inbound direction (PREROUTING, FORWARD
// and POSTROUTING on the way from flannel0 to the bridge, conntrack
// included) and the bridge's own hooks. Flannel's rules there accept
// pod-to-pod traffic and masquerade only traffic leaving the flannel
// network (POSTROUTING, outbound); Docker's FORWARD rules accept traffic
// to docker0 that is established or from the bridge, and flannel's
// FLANNEL-FWD accepts the rest of the network's. The container's replies
// still take the kernel's path (bridge, routing, FORWARD, POSTROUTING,
// flannel0), so outbound policy and masquerading are unchanged. What a
// host loses is inbound filtering and NAT for pod-to-pod traffic in its
// own namespace: a FORWARD policy for traffic towards its containers,
// and the reverse translation of connections its conntrack translated
// (a container's connection to a Service address DNATed here to a remote
// pod: the replies need their source rewritten back), and a conntrack
// that sees only one direction of a connection may mark the container's
// packets invalid (harmless unless a rule drops invalid packets, as
// kube-proxy's KUBE-FORWARD and firewalld do: the SYN-ACK of a new
// inbound connection is then dropped). So Config.BridgeOnly is what the
// udp backend sets unless FLANNEL_UDP_DELIVER=direct asks for this.
//
// The endpoints map is a desired state derived from the kernel: the
// bridge's IPv4 neighbours in our subnet whose MAC its FDB places behind
// a veth (or netkit) port, the only ports with a peer to redirect to.
// A netlink subscription (links, neighbours, FDB, routes) triggers a
// rescan, so containers that come and go are added and removed; a
// container the host has not resolved yet is reached through flannel0
// until the kernel's own ARP puts it in the neighbour table.

// endpointWatch keeps the endpoints map in step with the kernel. It owns
// one goroutine, which Close ends and waits for.
type endpointWatch struct {
	log *slog.Logger
	m   *ebpf.Map
	nl  *netlink.Handle
	nsh netns.NsHandle // the namespace to (re)subscribe in

	mu     sync.Mutex
	own    netip.Prefix
	synced chan struct{} // closed and replaced after each scan, for tests
	last   int

	kick chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
}

// startEndpoints subscribes in the calling thread's namespace and starts
// keeping m up to date for own (invalid: empty).
func startEndpoints(m *ebpf.Map, own netip.Prefix, log *slog.Logger) (*endpointWatch, error) {
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	nsh, err := netns.Get()
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("current network namespace: %w", err)
	}
	w := &endpointWatch{
		log: log, m: m, nl: nl, nsh: nsh, own: own,
		synced: make(chan struct{}),
		kick:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	w.wg.Add(1)
	go w.run()
	return w, nil
}

// setOwn changes the subnet whose containers are delivered to.
func (w *endpointWatch) setOwn(own netip.Prefix) {
	w.mu.Lock()
	w.own = own
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// syncedChan is closed after the next scan.
func (w *endpointWatch) syncedChan() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.synced
}

// close stops the goroutine, waits for it and empties the map, so that
// programs that outlive this process (pinned) deliver through flannel0
// rather than to containers nobody watches any more.
func (w *endpointWatch) close() error {
	close(w.done)
	w.wg.Wait()
	w.nl.Close()
	w.nsh.Close()
	return setEndpoints(w.m, nil)
}

// subscription is one set of netlink subscriptions; any message on any
// of them means a rescan.
type subscription struct {
	stop   chan struct{}
	links  chan netlink.LinkUpdate
	neighs chan netlink.NeighUpdate
	routes chan netlink.RouteUpdate
	failed chan struct{}
}

func (w *endpointWatch) subscribe() (*subscription, error) {
	s := &subscription{
		stop:   make(chan struct{}),
		links:  make(chan netlink.LinkUpdate, 64),
		neighs: make(chan netlink.NeighUpdate, 256),
		routes: make(chan netlink.RouteUpdate, 64),
		failed: make(chan struct{}, 1),
	}
	onErr := func(error) {
		select {
		case s.failed <- struct{}{}:
		default:
		}
	}
	ns := w.nsh
	err := netlink.LinkSubscribeWithOptions(s.links, s.stop, netlink.LinkSubscribeOptions{Namespace: &ns, ErrorCallback: onErr})
	if err != nil {
		s.links = nil
	} else if err = netlink.NeighSubscribeWithOptions(s.neighs, s.stop, netlink.NeighSubscribeOptions{Namespace: &ns, ErrorCallback: onErr}); err != nil {
		s.neighs = nil
	} else if err = netlink.RouteSubscribeWithOptions(s.routes, s.stop, netlink.RouteSubscribeOptions{Namespace: &ns, ErrorCallback: onErr}); err != nil {
		s.routes = nil
	}
	if err != nil {
		s.end()
		return nil, fmt.Errorf("subscribe to link, neighbour and route changes: %w", err)
	}
	return s, nil
}

// end closes the subscriptions and waits until netlink's goroutines have
// closed the channels of those that were made (a nil one never was).
func (s *subscription) end() {
	close(s.stop)
	for s.links != nil || s.neighs != nil || s.routes != nil {
		select {
		case _, ok := <-s.links:
			if !ok {
				s.links = nil
			}
		case _, ok := <-s.neighs:
			if !ok {
				s.neighs = nil
			}
		case _, ok := <-s.routes:
			if !ok {
				s.routes = nil
			}
		}
	}
}

// run subscribes, scans, and rescans after every notification (those
// queued meanwhile are taken together). A failed subscription (a full
// socket buffer loses notifications) is renewed and followed by a scan.
func (w *endpointWatch) run() {
	defer w.wg.Done()
	for {
		s, err := w.subscribe()
		if err != nil {
			// Without notifications the map would go stale: keep it empty.
			w.log.Warn("direct delivery to containers off", "err", err)
			_ = setEndpoints(w.m, nil)
			<-w.done
			return
		}
		w.scan()
		if !w.wait(s) {
			s.end()
			return
		}
		s.end()
	}
}

// wait rescans on notifications until the watch is closed (false) or the
// subscription must be renewed (true).
func (w *endpointWatch) wait(s *subscription) bool {
	for {
		select {
		case <-w.done:
			return false
		case <-s.failed:
			return true
		case <-w.kick:
		case _, ok := <-s.links:
			if !ok {
				return true
			}
		case _, ok := <-s.neighs:
			if !ok {
				return true
			}
		case _, ok := <-s.routes:
			if !ok {
				return true
			}
		}
		if !drain(s) {
			return true
		}
		w.scan()
	}
}

// drain takes the notifications already queued; false if a channel
// closed.
func drain(s *subscription) bool {
	for {
		select {
		case _, ok := <-s.links:
			if !ok {
				return false
			}
		case _, ok := <-s.neighs:
			if !ok {
				return false
			}
		case _, ok := <-s.routes:
			if !ok {
				return false
			}
		default:
			return true
		}
	}
}

// scan reads the kernel's state and brings the map to it.
func (w *endpointWatch) scan() {
	w.mu.Lock()
	own := w.own
	w.mu.Unlock()
	want, err := w.read(own)
	if err == nil {
		err = setEndpoints(w.m, want)
	}
	w.mu.Lock()
	if err != nil {
		w.log.Warn("updating the containers delivered to directly", "err", err)
	} else if len(want) != w.last {
		w.log.Debug("containers delivered to directly", "count", len(want), "subnet", own)
		w.last = len(want)
	}
	close(w.synced)
	w.synced = make(chan struct{})
	w.mu.Unlock()
}

// read gathers the bridges holding own, their ports, neighbours and FDB.
// Equivalent to:
//
//	ip -4 route show table main            # a route to (part of) own via a bridge
//	ip -d link show                        # its veth ports
//	ip -4 neigh show dev BRIDGE            # container IP → MAC
//	bridge fdb show br BRIDGE              # MAC → port
func (w *endpointWatch) read(own netip.Prefix) (map[netip.Addr]Endpoint, error) {
	if !own.IsValid() {
		return nil, nil
	}
	routes, err := route.Dump(func() ([]netlink.Route, error) { return w.nl.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	links, err := route.Dump(w.nl.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	byIndex := make(map[int]netlink.Link, len(links))
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	var bridges []bridgeInfo
	seen := make(map[int]bool)
	for _, r := range routes {
		if r.Dst == nil || seen[r.LinkIndex] {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		a, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok || ones < own.Bits() || !own.Contains(a.Unmap()) {
			continue
		}
		l := byIndex[r.LinkIndex]
		if l == nil || l.Type() != "bridge" || len(l.Attrs().HardwareAddr) != 6 {
			continue
		}
		seen[r.LinkIndex] = true
		bridges = append(bridges, bridgeInfo{Index: r.LinkIndex, MAC: [6]byte(l.Attrs().HardwareAddr)})
	}
	if len(bridges) == 0 {
		return nil, nil
	}
	var ports []portInfo
	for _, l := range links {
		if m := l.Attrs().MasterIndex; m > 0 {
			ports = append(ports, portInfo{Index: l.Attrs().Index, Master: m, Kind: l.Type()})
		}
	}
	var neighs []neighInfo
	for _, b := range bridges {
		ns, err := route.Dump(func() ([]netlink.Neigh, error) { return w.nl.NeighList(b.Index, netlink.FAMILY_V4) })
		if err != nil {
			return nil, fmt.Errorf("list neighbours of bridge %d: %w", b.Index, err)
		}
		for _, n := range ns {
			ip, ok := netip.AddrFromSlice(n.IP)
			if !ok || len(n.HardwareAddr) != 6 {
				continue
			}
			neighs = append(neighs, neighInfo{
				IP: ip.Unmap(), MAC: [6]byte(n.HardwareAddr), Link: n.LinkIndex,
				Valid: n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) == 0 && n.State != netlink.NUD_NONE,
			})
		}
	}
	all, err := route.Dump(func() ([]netlink.Neigh, error) { return w.nl.NeighList(0, unix.AF_BRIDGE) })
	if err != nil {
		return nil, fmt.Errorf("list bridge fdb: %w", err)
	}
	var fdb []fdbInfo
	for _, n := range all {
		// Permanent entries are a port's own (local) address.
		if len(n.HardwareAddr) != 6 || n.State&netlink.NUD_PERMANENT != 0 || n.Flags&netlink.NTF_SELF != 0 {
			continue
		}
		fdb = append(fdb, fdbInfo{MAC: [6]byte(n.HardwareAddr), Port: n.LinkIndex})
	}
	return desiredEndpoints(own, bridges, ports, neighs, fdb), nil
}

// setEndpoints makes m hold exactly want: wanted entries are written
// before stale ones are deleted.
func setEndpoints(m *ebpf.Map, want map[netip.Addr]Endpoint) error {
	var errs []error
	for ip, e := range want {
		if err := m.Put(ip.As4(), marshalEndpoint(e)); err != nil {
			errs = append(errs, fmt.Errorf("put endpoint %s: %w", ip, err))
		}
	}
	var stale [][4]byte
	var k [4]byte
	var v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[netip.AddrFrom4(k)]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		errs = append(errs, fmt.Errorf("list endpoints: %w", err))
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete endpoint %s: %w", netip.AddrFrom4(k), err))
		}
	}
	return errors.Join(errs...)
}

// Endpoints returns what the endpoints map holds: the local containers
// delivered to directly.
func (d *Datapath) Endpoints() (map[netip.Addr]Endpoint, error) {
	got := make(map[netip.Addr]Endpoint)
	var k [4]byte
	var v []byte
	it := d.coll.Maps[mapEndpoints].Iterate()
	for it.Next(&k, &v) {
		if e, ok := parseEndpoint(v); ok {
			got[netip.AddrFrom4(k)] = e
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("fastpath: list endpoints: %w", err)
	}
	return got, nil
}
