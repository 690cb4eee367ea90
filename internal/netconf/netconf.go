// Package netconf parses and validates the network config that flanneld
// reads from <prefix>/config: upstream's keys, defaults and case-insensitive
// key matching, with every error naming the key and the bad value.
package netconf

import (
	"encoding/json"
	"net/netip"
)

// Config is a parsed, defaulted and validated network config.
type Config struct {
	EnableIPv4     bool
	EnableIPv6     bool
	EnableNFTables bool

	Network   netip.Prefix // valid when EnableIPv4
	SubnetLen int
	SubnetMin netip.Addr
	SubnetMax netip.Addr

	IPv6Network   netip.Prefix // valid when EnableIPv6
	IPv6SubnetLen int
	IPv6SubnetMin netip.Addr
	IPv6SubnetMax netip.Addr

	// BackendType is the lower-cased Backend.Type; "udp" when the config
	// has no Backend key at all (upstream's code, not its docs).
	BackendType string
	// Backend is the raw Backend object, for the backend to decode its own
	// options from.
	Backend json.RawMessage
}
