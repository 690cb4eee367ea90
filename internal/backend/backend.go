// Package backend defines what flanneld asks of a datapath: create or adopt
// its device, describe itself in the lease, and make the kernel (or its own
// forwarder) match the set of peer leases it is given.
package backend

import (
	"context"
	"encoding/json"
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
}

// Factory builds a backend; it validates options but touches no kernel state.
type Factory func(Config) (Backend, error)

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
	// against what it applied, not against a kernel dump.
	Sync(ctx context.Context, peers []lease.Lease) error
	// Repair re-reads kernel state and restores what was removed behind the
	// backend's back (a deleted device, a deleted route), then re-applies
	// the last Sync. It never touches entries the backend does not own.
	Repair(ctx context.Context) error
	// Close stops any goroutines the backend runs and waits for them. It
	// leaves kernel state in place so a restart can adopt it.
	Close() error
}
