// Package backend defines what flanneld asks of a datapath: create or adopt
// its device, describe itself in the lease, and make the kernel (or its own
// forwarder) match the set of peer leases it is given.
package backend

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

// Config is what a Factory gets to build a backend.
type Config struct {
	Options json.RawMessage // the config's Backend object, Type included
	Network *netconf.Config
	Ext     iface.ExtIface
	Log     *slog.Logger
	// Prev is what this host published before, when the lease source
	// keeps it across a reboot (Kubernetes: the node's annotations), so a
	// backend that creates its device anew can keep what peers already
	// know (vxlan's VTEP MAC). Zero when unknown. optional
	Prev lease.Attrs
}

// Factory builds a backend; it validates options but touches no kernel state.
type Factory func(Config) (Backend, error)

// Def is one backend as flanneld's main offers it to the daemon: its facts
// and its constructor, listed explicitly by config type, e.g.
//
//	map[string]backend.Def{vxlan.Type: {Info: vxlan.Info, New: vxlan.New}, …}
type Def struct {
	Info Info
	New  Factory
}

// Info is what a backend package states about itself, so that the daemon,
// flannelctl and the doctor need not know backends by name. Each backend
// package exports one as its Info variable.
type Info struct {
	// Type is the backend's name in the config's Backend.Type.
	Type string
	// TypedLeases says whether the backend's leases carry BackendType
	// (and only then BackendData). udp and alloc leases carry neither, as
	// upstream writes them, so a peer's type can be checked only when
	// this is true: a typed backend must ignore leases of another type.
	TypedLeases bool
	// Overhead is what the encapsulation adds to each packet on the
	// underlay, in bytes: the container MTU is the underlay MTU minus it.
	Overhead int
	// Device names the overlay device for the config's Backend object
	// opts and, when not empty, ownData, the BackendData of this host's
	// own lease, which says what the running flanneld set up and so wins
	// over opts; ipv4 says whether the network has IPv4 (an IPv6-only
	// network may run another device). It returns "" for backends
	// without a device. It must accept malformed input (it is used to
	// diagnose broken setups).
	Device func(opts, ownData json.RawMessage, ipv4 bool) string
	// ValidatePeer, optional, says why a peer lease (already of this
	// type, when TypedLeases) cannot be used by the backend, e.g.
	// BackendData that does not decode. It may decode JSON, so a caller
	// with thousands of peers calls it when a lease changes, not on
	// every Sync. Sync still skips what it cannot use, so the kernel is
	// never programmed from a bad lease.
	ValidatePeer func(lease.Lease) error
	// NoPeers says the backend forwards to no peer (alloc): Sync and
	// Update ignore the leases they are given. The daemon then need not
	// follow the peers' leases at all, where its lease source allows:
	// in Kubernetes mode it runs no informer on the nodes.
	NoPeers bool
	// RemoveLeftovers, optional, undoes what the backend keeps on purpose
	// after its process ends (udp's pinned eBPF datapath and the device
	// it forwards through), for a start that runs another backend: what
	// was meant to survive a restart must not go on forwarding beside a
	// backend that knows nothing of it. It acts on the current network
	// namespace and does nothing when there is nothing to remove.
	RemoveLeftovers func(log *slog.Logger) error
}

// CheckPeer applies the backend's own rules to a peer lease: the type
// check of typed backends, then ValidatePeer. It is what a caller asks of
// a backend on top of the generic checks (subnet inside the network, not
// ours, a PublicIP that is not ours).
func (i Info) CheckPeer(l lease.Lease) error {
	if i.TypedLeases && l.Attrs.BackendType != i.Type {
		return fmt.Errorf("backend %q, this host runs %q", l.Attrs.BackendType, i.Type)
	}
	if i.ValidatePeer != nil {
		return i.ValidatePeer(l)
	}
	return nil
}

// Backend is one datapath. The daemon calls Init once, then Configure once
// with the acquired lease, then Sync after every change to the set of peers
// and Repair periodically. Methods are not called concurrently.
type Backend interface {
	// Init creates the backend's device or adopts an existing compatible
	// one (so a restart does not interrupt traffic), and returns the
	// attributes peers need: BackendType, BackendData and public IPs.
	Init(ctx context.Context) (lease.Attrs, error)
	// Configure gives the device our own lease and returns the MTU that
	// containers must use (FLANNEL_MTU).
	Configure(ctx context.Context, own lease.Lease) (mtu int, err error)
	// Sync makes the datapath forward to exactly these peers: entries for
	// peers not in the list are removed, missing ones added, changed ones
	// replaced. It is idempotent and cheap when nothing changed: it diffs
	// against what it applied, not against a kernel dump. The caller has
	// checked the peers (inside the network, not ours, Info.CheckPeer);
	// a backend still skips, with a warning, a lease it cannot program.
	Sync(ctx context.Context, peers []lease.Lease) error
	// Repair re-reads kernel state and restores what was removed behind the
	// backend's back (a deleted device, a deleted route), then re-applies
	// the last Sync. It never touches entries the backend does not own.
	Repair(ctx context.Context) error
	// Close stops any goroutines the backend runs and waits for them. It
	// leaves kernel state in place so a restart can adopt it.
	Close() error
}

// Change is one peer's part in an Update: its new lease, or (Removed) the
// end of it, when only Lease.Subnet and Lease.Subnet6 are set.
type Change struct {
	Lease   lease.Lease
	Removed bool
}

// Updater is implemented by backends that can apply a change of the peer
// set without being handed the whole set, so that one new lease in a
// cluster of tens of thousands costs the same as in a cluster of three.
// After a Sync, the daemon hands such a backend only the differences:
// Update with the peers that were added, changed or removed since the last
// Sync or Update, each subnet at most once. The result must equal a Sync
// of the whole new set. Sync stays for start-up, re-lists and repairs.
type Updater interface {
	Update(ctx context.Context, changes []Change) error
}
