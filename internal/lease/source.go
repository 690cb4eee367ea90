package lease

import (
	"context"

	"github.com/flannel-go/flannel/internal/netconf"
)

// Update is one delivery of a Source's lease feed: either the complete set
// of leases (Reset, after the first listing, a compaction or a lost watch;
// the consumer replaces what it had) or a batch of changes.
type Update struct {
	Reset  bool
	Leases []Lease // with Reset: every lease, this host's own included
	Events []Event // without Reset: changes in the order they happened
}

// Source is where flanneld's leases come from: the etcd keyspaces (through
// a Store, see NewStoreSource) or, in Kubernetes mode, the Node objects.
// The daemon depends on this interface only; which Source runs is decided
// in cmd/flanneld. Implementations must be safe for concurrent use: Watch
// and Keep run on goroutines of their own while the daemon calls the rest.
type Source interface {
	// Config returns the raw network config JSON. When there is none it
	// returns an error wrapping ErrNoConfig whose text tells the user how
	// to create it (which key or file).
	Config(ctx context.Context) ([]byte, error)
	// Watch is the one list-and-watch of every lease, this host's own
	// included, that a flanneld holds. It calls fn with a Reset update
	// first and then with each batch of changes, until ctx ends (returning
	// ctx.Err()). Outages of the datastore are retried inside with backoff
	// and end in a new Reset. fn runs on Watch's goroutine and must not
	// block. Keep and Acquire learn about this host's lease from this same
	// feed, so a Source opens no second watch.
	Watch(ctx context.Context, fn func(Update)) error
	// Acquire returns this host's lease for the network nc, carrying attrs
	// and preferring prev. It returns an error wrapping ErrNoFreeSubnet
	// when the network is full; the caller waits for a lease to be removed
	// (an Event in the feed) and calls again.
	Acquire(ctx context.Context, nc *netconf.Config, attrs Attrs, prev Prev) (Lease, error)
	// Keep holds l until ctx ends (returning ctx.Err()) or the lease is
	// lost: deleted, expired or taken by another host (returning an error
	// wrapping ErrNotFound). onRenew, if not nil, is called with the lease
	// after each renewal.
	Keep(ctx context.Context, l Lease, onRenew func(Lease)) error
}
