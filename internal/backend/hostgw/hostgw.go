// Package hostgw is the host-gw backend: no device and no encapsulation,
// just one route per remote subnet via the remote host's address,
//
//	ip route replace 10.5.2.0/24 via 192.168.100.2 dev eth0
//
// which works only when all hosts share an L2 segment (the gateway must be
// a direct neighbour) and see each other's real addresses (no NAT).
//
// Owned, and so removed when no lease asks for them: routes in the main
// table on the external interface, with a gateway, whose destination lies
// inside the flannel network. Everything else (routes outside the network,
// on other devices, without a gateway) is left alone. Init loads the owned
// routes so the first Sync after a restart removes those of peers that
// left meanwhile; Repair re-reads them and restores deleted or altered ones.
//
// Only IPv4 routes are programmed for now; IPv6 leases are ignored.
package hostgw

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/flannel-go/flannel/internal/backend"
)

// Type is the backend's name in the config and in leases.
const Type = "host-gw"

// Info is what the host-gw backend states about itself: typed leases, no
// device, no encapsulation.
var Info = backend.Info{
	Type:        Type,
	TypedLeases: true,
	Device:      func(opts, ownData json.RawMessage, ipv4 bool) string { return "" },
}

// New checks that the backend can work on this host; it touches no kernel
// state. host-gw has no options; unknown keys are ignored, as upstream does.
func New(cfg backend.Config) (backend.Backend, error) {
	if len(cfg.Options) > 0 {
		var v map[string]json.RawMessage
		if err := json.Unmarshal(cfg.Options, &v); err != nil {
			return nil, fmt.Errorf("host-gw: backend options: %w", err)
		}
	}
	if cfg.Network == nil || !cfg.Network.Network.IsValid() || !cfg.Network.Network.Addr().Is4() {
		return nil, errors.New("host-gw: an IPv4 Network is required (IPv6-only networks are not supported yet)")
	}
	if cfg.Ext.ExtAddr != cfg.Ext.IfaceAddr {
		return nil, fmt.Errorf("host-gw: public IP %s differs from %s's address %s: host-gw needs hosts to reach each other directly and does not support NAT",
			cfg.Ext.ExtAddr, cfg.Ext.Name, cfg.Ext.IfaceAddr)
	}
	return newBackend(cfg)
}
