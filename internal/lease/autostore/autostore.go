// Package autostore picks between etcd's v3 and v2 keyspaces for
// --etcd-api=auto: older clusters and tutorials keep the config (written
// with `etcdctl set` or curl to /v2/keys) in the v2 keyspace, which v3
// clients cannot see. The store whose keyspace holds the config wins, v3
// when both do; until one does, both are asked each time, so a config
// written later through either API is found.
package autostore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
)

// Store is a lease.Store that settles on v3 or v2 at the first config read
// that finds a config.
type Store struct {
	v3, v2 lease.Store
	log    *slog.Logger

	mu     sync.Mutex
	chosen lease.Store // nil until a config is found
	name   string
}

var _ lease.Store = (*Store)(nil)

// New returns an auto-selecting store over the two keyspaces.
func New(v3, v2 lease.Store, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{v3: v3, v2: v2, log: log}
}

// API names the chosen keyspace ("v3", "v2"), or "" before one is chosen.
func (s *Store) API() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.name
}

func (s *Store) store() (lease.Store, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.chosen == nil {
		return nil, errors.New("autostore: no etcd API chosen yet: read the config first")
	}
	return s.chosen, nil
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
		s.choose(s.v3, "v3", "")
		return cfg3, nil
	}
	cfg2, err2 := s.v2.Config(ctx)
	if err2 == nil {
		s.choose(s.v2, "v2", "")
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

func (s *Store) choose(st lease.Store, name, _ string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.chosen == nil {
		s.chosen, s.name = st, name
		s.log.Info("using the etcd "+name+" API: the network config is in its keyspace", "api", name)
	}
}

// Leases implements lease.Store on the chosen keyspace.
func (s *Store) Leases(ctx context.Context) ([]lease.Lease, int64, error) {
	st, err := s.store()
	if err != nil {
		return nil, 0, err
	}
	return st.Leases(ctx)
}

// Create implements lease.Store on the chosen keyspace.
func (s *Store) Create(ctx context.Context, l lease.Lease, ttl time.Duration) (lease.Lease, error) {
	st, err := s.store()
	if err != nil {
		return lease.Lease{}, err
	}
	return st.Create(ctx, l, ttl)
}

// Renew implements lease.Store on the chosen keyspace.
func (s *Store) Renew(ctx context.Context, l lease.Lease, ttl time.Duration) (lease.Lease, error) {
	st, err := s.store()
	if err != nil {
		return lease.Lease{}, err
	}
	return st.Renew(ctx, l, ttl)
}

// Revoke implements lease.Store on the chosen keyspace.
func (s *Store) Revoke(ctx context.Context, l lease.Lease) error {
	st, err := s.store()
	if err != nil {
		return err
	}
	return st.Revoke(ctx, l)
}

// Watch implements lease.Store on the chosen keyspace.
func (s *Store) Watch(ctx context.Context, rev int64, fn func([]lease.Event)) error {
	st, err := s.store()
	if err != nil {
		return err
	}
	return st.Watch(ctx, rev, fn)
}
