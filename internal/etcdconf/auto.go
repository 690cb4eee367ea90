package etcdconf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
)

// keyspace is what Store needs of each etcd store: etcdstore.Store and
// etcdv2store.Store (and leasetest.Store, in tests) have it all.
type keyspace interface {
	lease.Store
	PutConfig(ctx context.Context, cfg []byte) error
	Lookup(ctx context.Context, key string) (lease.Lease, error)
	Reserve(ctx context.Context, l lease.Lease) (lease.Lease, error)
	Prefix() string
	Close() error
}

// Store is the lease store of the etcd API that --etcd-api names. For
// auto it settles on v3 or v2 at the first config read that finds a
// config: older clusters and tutorials keep the config (written with
// `etcdctl set` or curl to /v2/keys) in the v2 keyspace, which v3
// clients cannot see. The keyspace holding the config wins, v3 when both
// do; until one does, both are asked each time, so a config written later
// through either API is found, and every other call fails (the daemon
// reads the config first; a tool calls Choose).
type Store struct {
	v3, v2 keyspace   // auto's candidates; nil when --etcd-api names one
	all    []keyspace // what Close closes
	log    *slog.Logger

	mu     sync.Mutex
	chosen keyspace // nil until a config is found
	name   string
}

var _ lease.Store = (*Store)(nil)

// newAuto returns an auto-selecting store over the two keyspaces.
func newAuto(v3, v2 keyspace, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{v3: v3, v2: v2, all: []keyspace{v3, v2}, log: log}
}

// newFixed returns a store on one keyspace, named api.
func newFixed(ks keyspace, api string) *Store {
	return &Store{chosen: ks, name: api, all: []keyspace{ks}, log: slog.New(slog.DiscardHandler)}
}

// API names the keyspace in use ("v3", "v2"), or "" before auto chose.
func (s *Store) API() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.name
}

// Prefix is the etcd key prefix in use, without a trailing slash.
func (s *Store) Prefix() string {
	if ks, err := s.store(); err == nil {
		return ks.Prefix()
	}
	return s.v3.Prefix()
}

// Close closes the stores' clients. Calls in progress fail.
func (s *Store) Close() error {
	var errs []error
	for _, ks := range s.all {
		errs = append(errs, ks.Close())
	}
	return errors.Join(errs...)
}

func (s *Store) store() (keyspace, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.chosen == nil {
		return nil, errors.New("etcdconf: no etcd API chosen yet: read the config first")
	}
	return s.chosen, nil
}

// Choose settles the keyspace now, for a tool that may not read the
// config: the one holding the config as Config would choose, else (no
// config in either) v3, the keyspace new clusters use. It returns the
// API chosen.
func (s *Store) Choose(ctx context.Context) (string, error) {
	if api := s.API(); api != "" {
		return api, nil
	}
	_, err := s.Config(ctx)
	if err != nil && !errors.Is(err, lease.ErrNoConfig) {
		return "", err
	}
	if err != nil {
		s.choose(s.v3, APIv3)
	}
	return s.API(), nil
}

// Config reads the config from v3, else from v2, and settles on the
// keyspace it came from.
func (s *Store) Config(ctx context.Context) ([]byte, error) {
	s.mu.Lock()
	chosen := s.chosen
	s.mu.Unlock()
	if chosen != nil {
		return chosen.Config(ctx)
	}
	cfg3, err3 := s.v3.Config(ctx)
	if err3 == nil {
		s.choose(s.v3, APIv3)
		return cfg3, nil
	}
	cfg2, err2 := s.v2.Config(ctx)
	if err2 == nil {
		s.choose(s.v2, APIv2)
		return cfg2, nil
	}
	if errors.Is(err3, lease.ErrNoConfig) && errors.Is(err2, lease.ErrNoConfig) {
		return nil, fmt.Errorf("neither the etcd v3 nor the v2 keyspace has it: %w", lease.ErrNoConfig)
	}
	if errors.Is(err3, lease.ErrNoConfig) {
		// v3 answered; v2 may simply be disabled (etcd ≥ 3.6, or no
		// --enable-v2): that is "not found", not an outage.
		return nil, fmt.Errorf("not in the etcd v3 keyspace, and the v2 API did not answer (%v): %w", err2, lease.ErrNoConfig)
	}
	return nil, errors.Join(err3, err2)
}

func (s *Store) choose(ks keyspace, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.chosen == nil {
		s.chosen, s.name = ks, name
		s.log.Info("using the etcd "+name+" API: the network config is in its keyspace", "api", name)
	}
}

// PutConfig writes the network config to the chosen keyspace.
func (s *Store) PutConfig(ctx context.Context, cfg []byte) error {
	ks, err := s.store()
	if err != nil {
		return err
	}
	return ks.PutConfig(ctx, cfg)
}

// Leases implements lease.Store on the chosen keyspace.
func (s *Store) Leases(ctx context.Context) ([]lease.Lease, int64, error) {
	ks, err := s.store()
	if err != nil {
		return nil, 0, err
	}
	return ks.Leases(ctx)
}

// Lookup reads one lease, by its key below <prefix>/subnets/, with its
// expiry.
func (s *Store) Lookup(ctx context.Context, key string) (lease.Lease, error) {
	ks, err := s.store()
	if err != nil {
		return lease.Lease{}, err
	}
	return ks.Lookup(ctx, key)
}

// Create implements lease.Store on the chosen keyspace.
func (s *Store) Create(ctx context.Context, l lease.Lease, ttl time.Duration) (lease.Lease, error) {
	ks, err := s.store()
	if err != nil {
		return lease.Lease{}, err
	}
	return ks.Create(ctx, l, ttl)
}

// Renew implements lease.Store on the chosen keyspace.
func (s *Store) Renew(ctx context.Context, l lease.Lease, ttl time.Duration) (lease.Lease, error) {
	ks, err := s.store()
	if err != nil {
		return lease.Lease{}, err
	}
	return ks.Renew(ctx, l, ttl)
}

// Reserve turns lease l into a reservation in place (see
// etcdstore.Store.Reserve); lease.ErrNotFound when the key no longer
// holds l.
func (s *Store) Reserve(ctx context.Context, l lease.Lease) (lease.Lease, error) {
	ks, err := s.store()
	if err != nil {
		return lease.Lease{}, err
	}
	return ks.Reserve(ctx, l)
}

// Revoke implements lease.Store on the chosen keyspace.
func (s *Store) Revoke(ctx context.Context, l lease.Lease) error {
	ks, err := s.store()
	if err != nil {
		return err
	}
	return ks.Revoke(ctx, l)
}

// Watch implements lease.Store on the chosen keyspace.
func (s *Store) Watch(ctx context.Context, rev int64, fn func([]lease.Event)) error {
	ks, err := s.store()
	if err != nil {
		return err
	}
	return ks.Watch(ctx, rev, fn)
}
