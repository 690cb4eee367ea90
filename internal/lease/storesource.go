package lease

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/flannel-go/flannel/internal/backoff"
	"github.com/flannel-go/flannel/internal/netconf"
)

// StoreSourceOptions configure NewStoreSource.
type StoreSourceOptions struct {
	// TTL of new leases; DefaultTTL when zero. optional
	TTL time.Duration
	// RenewMargin is how long before expiry Keep renews. optional
	RenewMargin time.Duration
	// Prefix is the store's key prefix, for the message that tells a user
	// how to create a missing config. optional
	Prefix string
	// OnError, if not nil, is called for each failed listing or watch of
	// the leases (the daemon counts them). optional
	OnError func(error)
	Log     *slog.Logger // optional
}

// StoreSource is the Source over a key-value Store (etcd v3 or v2). Its
// Watch is the one list-and-watch of <prefix>/subnets/ a flanneld holds:
// it reports changes of this host's key to Keep, so Keep neither lists
// nor watches. It keeps no copy of the leases (the daemon's peer set is
// the one: at 65,000 leases a copy is tens of MB); an Acquire lists, and
// the first Watch after it starts from that listing.
type StoreSource struct {
	store Store
	opts  StoreSourceOptions
	log   *slog.Logger

	mu       sync.Mutex    // guards the fields below
	watching int           // running Watch calls
	ownKey   string        // the key Keep holds; "" when none
	ownCh    chan ownState // Keep's inbox: the latest state of ownKey
	// primed is the listing Acquire made while no Watch ran, which the
	// next Watch starts from instead of listing again (at tens of
	// thousands of leases a listing is a second of both etcd's CPU and
	// ours); its watch from the listing's revision replays what changed
	// since, or re-lists after a compaction.
	primed *listing
}

// listing is a store listing and its revision.
type listing struct {
	leases []Lease
	rev    int64
}

var _ Source = (*StoreSource)(nil)

// NewStoreSource returns a Source over s.
func NewStoreSource(s Store, o StoreSourceOptions) *StoreSource {
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &StoreSource{store: s, opts: o, log: o.Log}
}

// Store returns the store the source reads.
func (src *StoreSource) Store() Store { return src.store }

// noConfigError is ErrNoConfig with what to do about it.
type noConfigError struct{ hint string }

func (e *noConfigError) Error() string {
	if e.hint == "" {
		return "network config not found in etcd"
	}
	return "network config not found in etcd; create it, for example: " + e.hint
}

func (e *noConfigError) Unwrap() error { return ErrNoConfig }

// Config returns the network config; a missing one is an error wrapping
// ErrNoConfig that says how to create it.
func (src *StoreSource) Config(ctx context.Context) ([]byte, error) {
	raw, err := src.store.Config(ctx)
	if errors.Is(err, ErrNoConfig) {
		hint := ""
		if src.opts.Prefix != "" {
			hint = "etcdctl put " + src.opts.Prefix + "/config " + `'{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'`
		}
		return nil, &noConfigError{hint: hint}
	}
	return raw, err
}

// Watch lists the leases, then watches them until ctx ends; it lists again
// after a compaction or a lost watch, and backs off while the store is
// unreachable, saying so once per outage.
func (src *StoreSource) Watch(ctx context.Context, fn func(Update)) error {
	src.mu.Lock()
	src.watching++
	src.mu.Unlock()
	defer func() {
		src.mu.Lock()
		src.watching--
		src.mu.Unlock()
	}()

	wait := backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second, Jitter: backoff.UpperHalf}
	failing := false
	for ctx.Err() == nil {
		leases, rev, primed, err := src.list(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			src.failed(err)
			if !failing {
				src.log.Warn("list leases failed; retrying", "err", err)
				failing = true
			}
			if backoff.Sleep(ctx, wait.Next()) != nil {
				break
			}
			continue
		}
		if failing {
			src.log.Info("lease listing recovered")
			failing = false
		}
		wait.Reset()
		if !primed {
			// A primed listing predates the lease Keep holds (Acquire
			// listed, then created or renewed it): what it shows of our
			// key is stale, and the watch replays what came after.
			src.reset(leases)
		}
		fn(Update{Reset: true, Leases: leases})
		err = src.store.Watch(ctx, rev, func(evs []Event) {
			src.apply(evs)
			fn(Update{Events: evs})
		})
		if errors.Is(err, ErrCompacted) {
			src.log.Warn("lease watch fell behind etcd compaction; re-listing")
			continue
		}
		if ctx.Err() == nil && err != nil {
			src.failed(err)
			src.log.Warn("lease watch ended; re-listing", "err", err)
			if backoff.Sleep(ctx, backoff.UpperHalf(time.Second)) != nil {
				break
			}
		}
	}
	return ctx.Err()
}

// list takes the primed listing, if any (primed is then true), or lists.
func (src *StoreSource) list(ctx context.Context) (leases []Lease, rev int64, primed bool, err error) {
	src.mu.Lock()
	p := src.primed
	src.primed = nil
	src.mu.Unlock()
	if p != nil {
		return p.leases, p.rev, true, nil
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	leases, rev, err = src.store.Leases(lctx)
	return leases, rev, false, err
}

func (src *StoreSource) failed(err error) {
	if src.opts.OnError != nil {
		src.opts.OnError(err)
	}
}

// reset tells Keep the state of its key in a listing.
func (src *StoreSource) reset(leases []Lease) {
	src.mu.Lock()
	defer src.mu.Unlock()
	if src.ownCh == nil {
		return
	}
	for _, l := range leases {
		if l.Key() == src.ownKey {
			tell(src.ownCh, ownState{present: true, lease: l})
			return
		}
	}
	tell(src.ownCh, ownState{})
}

// apply tells Keep the events of its key.
func (src *StoreSource) apply(evs []Event) {
	src.mu.Lock()
	defer src.mu.Unlock()
	if src.ownCh == nil {
		return
	}
	for _, e := range evs {
		if e.Lease.Key() == src.ownKey {
			tell(src.ownCh, ownState{present: e.Type == Added, lease: e.Lease})
		}
	}
}

// tell puts st in ch, replacing a state not yet taken: keep only ever
// needs the latest, and the watch must never block on it.
func tell(ch chan ownState, st ownState) {
	select {
	case ch <- st:
	default:
		select {
		case <-ch:
		default:
		}
		ch <- st // the one producer holds src.mu, so there is room now
	}
}

// listAndPrime is Acquire's lister: a listing, which the next Watch
// starts from if none runs now.
func (src *StoreSource) listAndPrime(ctx context.Context) ([]Lease, error) {
	ls, rev, err := src.store.Leases(ctx)
	if err == nil {
		src.mu.Lock()
		if src.watching == 0 {
			src.primed = &listing{ls, rev}
		}
		src.mu.Unlock()
	}
	return ls, err
}

// Acquire leases a subnet of nc for this host (see the package function
// Acquire for the order of preference).
func (src *StoreSource) Acquire(ctx context.Context, nc *netconf.Config, attrs Attrs, prev Prev) (Lease, error) {
	return acquire(ctx, src.store, src.listAndPrime, nc, attrs, prev, src.opts.TTL, src.log)
}

// Keep renews l until ctx ends or it is lost. It learns of changes to l's
// key from Watch; without a Watch running it still renews on time and
// notices a loss at the next renewal.
func (src *StoreSource) Keep(ctx context.Context, l Lease, onRenew func(Lease)) error {
	ch := make(chan ownState, 1)
	src.mu.Lock()
	src.ownKey, src.ownCh = l.Key(), ch
	src.mu.Unlock()
	defer func() {
		src.mu.Lock()
		if src.ownCh == ch {
			src.ownKey, src.ownCh = "", nil
		}
		src.mu.Unlock()
	}()
	return keep(ctx, src.store, l, src.opts.RenewMargin, src.log, onRenew, ch)
}
