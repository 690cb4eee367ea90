// Package alloc is the backend that only holds a lease: no device, no
// routes. It is for setups where something else (a cloud route table, a
// routing daemon) carries the subnets and flanneld only hands them out.
package alloc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
)

// Type is the backend's name in the config. Its leases carry no
// BackendType, as upstream's do not.
const Type = "alloc"

// Info is what the alloc backend states about itself: untyped leases, no
// device, no encapsulation, no use for the peers' leases.
var Info = backend.Info{
	Type:    Type,
	Device:  func(opts, ownData json.RawMessage, ipv4 bool) string { return "" },
	NoPeers: true,
}

// Backend allocates and does nothing else.
type Backend struct {
	ext iface.ExtIface
}

var (
	_ backend.Backend = (*Backend)(nil)
	_ backend.Updater = (*Backend)(nil)
)

// New returns the backend; alloc has no options (unknown keys are ignored).
func New(cfg backend.Config) (backend.Backend, error) {
	if len(cfg.Options) > 0 {
		var v map[string]json.RawMessage
		if err := json.Unmarshal(cfg.Options, &v); err != nil {
			return nil, fmt.Errorf("alloc: backend options: %w", err)
		}
	}
	return &Backend{ext: cfg.Ext}, nil
}

// Init returns the public IP and no backend type.
func (b *Backend) Init(ctx context.Context) (lease.Attrs, error) {
	if !b.ext.ExtAddr.IsValid() {
		return lease.Attrs{}, errors.New("alloc: the external interface has no public IPv4 address")
	}
	return lease.Attrs{PublicIP: b.ext.ExtAddr}, nil
}

// Configure returns the external interface's MTU.
func (b *Backend) Configure(ctx context.Context, own lease.Lease) (int, error) {
	return b.ext.MTU, nil
}

// Sync does nothing: there is no datapath.
func (b *Backend) Sync(ctx context.Context, peers []lease.Lease) error { return nil }

// Update does nothing: there is no datapath.
func (b *Backend) Update(ctx context.Context, changes []backend.Change) error { return nil }

// Repair does nothing: there is no datapath.
func (b *Backend) Repair(ctx context.Context) error { return nil }

// Close does nothing.
func (b *Backend) Close() error { return nil }
