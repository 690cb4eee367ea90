// Package etcdopt is the one definition of the connection options both
// etcd lease stores take (etcdstore for the v3 API, etcdv2store for v2)
// and of their defaults, so the daemon can switch stores with a flag and
// the two cannot drift apart. It is a leaf: etcdconf, which builds the
// options from the --etcd-* flags, imports both stores, so they cannot
// import etcdconf.
package etcdopt

import (
	"crypto/tls"
	"log/slog"
	"time"
)

// DefaultPrefix is upstream's etcd prefix.
const DefaultPrefix = "/coreos.com/network"

// DefaultTimeout bounds each etcd request (for v2, each attempt on one
// endpoint).
const DefaultTimeout = 10 * time.Second

// Options configures a store's New.
type Options struct {
	Endpoints []string // required, e.g. https://10.0.0.1:2379
	Prefix    string   // optional; default DefaultPrefix

	// TLS secures https:// endpoints (etcdconf builds it from the
	// --etcd-*file flags); optional: nil means TLS 1.2+ trusting the
	// system's roots. Unused for plain http endpoints.
	TLS *tls.Config
	// Username and Password for etcd's auth (HTTP basic auth on v2);
	// optional. With them, the v3 store's New authenticates and so needs
	// etcd to be reachable.
	Username, Password string

	Log     *slog.Logger  // optional; default discards
	Timeout time.Duration // optional per-request timeout; default DefaultTimeout
	// OnConnState is told when etcd becomes unreachable (false) and when
	// it is reachable again (true); optional, for metrics. Used by the v3
	// store only: the v2 client keeps no connection to watch.
	OnConnState func(up bool)
}

// WithDefaults returns o with the defaults in place of unset optional
// fields. Each store still normalises the prefix its own way.
func (o Options) WithDefaults() Options {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	return o
}
