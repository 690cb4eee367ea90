// Package leasetest provides an in-memory lease.Store for unit tests and
// RunStoreTests, the conformance suite every lease.Store must pass.
//
// The fake follows etcd's semantics where callers can see them: revisions
// start at 1 and grow by one per change, each lease's TTL is fixed when it
// is created, expiry deletes the lease's key in one revision, compaction
// makes older revisions unwatchable, and bad entries are skipped (or, for a
// bad value in a watch, reported as Removed) exactly as etcdstore does.
package leasetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
)

// ErrDown is returned by every request while the store is SetDown.
var ErrDown = errors.New("leasetest: store is down")

// Store is an in-memory lease.Store. The zero value is not usable; call
// New. Time is the wall clock plus whatever Advance added.
type Store struct {
	log *slog.Logger

	mu        sync.Mutex // guards everything below
	skew      time.Duration
	rev       int64
	compacted int64 // revisions below this can no longer be watched
	config    []byte
	kvs       map[string]entry // by key below subnets/
	grants    map[int64]*grant
	nextID    int64
	history   []change      // every change with rev >= compacted, in order
	changed   chan struct{} // closed and replaced on every change
	down      bool
}

type entry struct {
	value []byte
	id    int64
}

type grant struct {
	ttl     time.Duration
	expires time.Time
}

type change struct {
	rev   int64
	key   string
	value []byte // nil for a delete
	id    int64
}

var _ lease.Store = (*Store)(nil)

// New returns an empty store at revision 1; log (nil discards) receives
// the warnings about bad entries.
func New(log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{
		log:     log,
		rev:     1,
		kvs:     map[string]entry{},
		grants:  map[int64]*grant{},
		nextID:  0x7e570001,
		changed: make(chan struct{}),
	}
}

func (s *Store) now() time.Time { return time.Now().Add(s.skew) }

// Advance moves the store's clock forward, expiring leases whose time has
// come (and waking watchers to report them).
func (s *Store) Advance(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.skew += d
	s.expireLocked()
}

// SetDown makes every request fail with ErrDown and stalls watches (as a
// lost etcd would) until SetDown(false). Leases keep expiring meanwhile.
func (s *Store) SetDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
	s.notifyLocked()
}

// Rev is the current revision.
func (s *Store) Rev() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rev
}

func (s *Store) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// putLocked and deleteLocked record one change at a new revision.
func (s *Store) putLocked(key string, value []byte, id int64) {
	s.rev++
	s.kvs[key] = entry{value: value, id: id}
	s.history = append(s.history, change{rev: s.rev, key: key, value: value, id: id})
	s.notifyLocked()
}

// expireLocked ends every grant whose time has passed, deleting its keys
// in one revision as etcd does.
func (s *Store) expireLocked() {
	now := s.now()
	ids := make([]int64, 0)
	for id, g := range s.grants {
		if !now.Before(g.expires) {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		s.endGrantLocked(id)
	}
}

func (s *Store) endGrantLocked(id int64) {
	delete(s.grants, id)
	keys := make([]string, 0, 1)
	for k, e := range s.kvs {
		if e.id == id {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return
	}
	sort.Strings(keys)
	s.rev++
	for _, k := range keys {
		delete(s.kvs, k)
		s.history = append(s.history, change{rev: s.rev, key: k})
	}
	s.notifyLocked()
}

// begin locks the store for one request and applies pending expiry.
func (s *Store) begin() error {
	s.mu.Lock()
	if s.down {
		s.mu.Unlock()
		return ErrDown
	}
	s.expireLocked()
	return nil
}

// Config implements lease.Store.
func (s *Store) Config(ctx context.Context) ([]byte, error) {
	if err := s.begin(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if s.config == nil {
		return nil, fmt.Errorf("leasetest: config: %w", lease.ErrNoConfig)
	}
	return append([]byte(nil), s.config...), nil
}

// PutConfig sets the network config returned by Config.
func (s *Store) PutConfig(ctx context.Context, cfg []byte) error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	s.config = append([]byte{}, cfg...)
	return nil
}

// Leases implements lease.Store. Expires is left zero, as etcdstore does.
func (s *Store) Leases(ctx context.Context) ([]lease.Lease, int64, error) {
	if err := s.begin(); err != nil {
		return nil, 0, err
	}
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.kvs))
	for k := range s.kvs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]lease.Lease, 0, len(keys))
	for _, k := range keys {
		e := s.kvs[k]
		l, err := decode(k, e.value, e.id)
		if err != nil {
			s.log.Warn("skipping bad subnet entry", "key", k, "err", err)
			continue
		}
		out = append(out, l)
	}
	return out, s.rev, nil
}

// Lookup returns one lease with its expiry, like etcdstore.Lookup.
func (s *Store) Lookup(ctx context.Context, key string) (lease.Lease, error) {
	if err := s.begin(); err != nil {
		return lease.Lease{}, err
	}
	defer s.mu.Unlock()
	e, ok := s.kvs[key]
	if !ok {
		return lease.Lease{}, fmt.Errorf("leasetest: %s: %w", key, lease.ErrNotFound)
	}
	l, err := decode(key, e.value, e.id)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("leasetest: %s: %w", key, err)
	}
	if g := s.grants[e.id]; g != nil {
		l.Expires = g.expires
	}
	return l, nil
}

// Create implements lease.Store; ttl <= 0 creates a reservation.
func (s *Store) Create(ctx context.Context, l lease.Lease, ttl time.Duration) (lease.Lease, error) {
	val, err := json.Marshal(l.Attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("leasetest: encode %s: %w", l.Key(), err)
	}
	if err := s.begin(); err != nil {
		return lease.Lease{}, err
	}
	defer s.mu.Unlock()
	key := l.Key()
	if _, ok := s.kvs[key]; ok {
		return lease.Lease{}, fmt.Errorf("leasetest: create %s: %w", key, lease.ErrExists)
	}
	l.ID, l.Expires = 0, time.Time{}
	if ttl > 0 {
		l.ID = s.nextID
		s.nextID++
		l.Expires = s.now().Add(ttl)
		s.grants[l.ID] = &grant{ttl: ttl, expires: l.Expires}
	}
	s.putLocked(key, val, l.ID)
	return l, nil
}

// Renew implements lease.Store. Like etcd, it renews to the TTL the lease
// was created with; ttl is not used.
func (s *Store) Renew(ctx context.Context, l lease.Lease, _ time.Duration) (lease.Lease, error) {
	val, err := json.Marshal(l.Attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("leasetest: encode %s: %w", l.Key(), err)
	}
	if err := s.begin(); err != nil {
		return lease.Lease{}, err
	}
	defer s.mu.Unlock()
	key := l.Key()
	e, ok := s.kvs[key]
	if !ok || e.id != l.ID {
		return lease.Lease{}, fmt.Errorf("leasetest: renew %s: key gone or held by another lease: %w", key, lease.ErrNotFound)
	}
	l.Expires = time.Time{}
	if l.ID != 0 {
		g := s.grants[l.ID]
		g.expires = s.now().Add(g.ttl)
		l.Expires = g.expires
	}
	s.putLocked(key, val, l.ID)
	return l, nil
}

// Revoke implements lease.Store.
func (s *Store) Revoke(ctx context.Context, l lease.Lease) error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	key := l.Key()
	e, ok := s.kvs[key]
	if !ok || e.id != l.ID {
		if l.ID != 0 {
			s.endGrantLocked(l.ID)
		}
		return fmt.Errorf("leasetest: revoke %s: %w", key, lease.ErrNotFound)
	}
	if l.ID != 0 {
		s.endGrantLocked(l.ID)
		return nil
	}
	s.rev++
	delete(s.kvs, key)
	s.history = append(s.history, change{rev: s.rev, key: key})
	s.notifyLocked()
	return nil
}

// Reserve implements the stores' Reserve: l's key, while it still holds
// l, is rewritten with l.Attrs and no lease, and l's grant ends.
func (s *Store) Reserve(ctx context.Context, l lease.Lease) (lease.Lease, error) {
	val, err := json.Marshal(l.Attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("leasetest: encode %s: %w", l.Key(), err)
	}
	if err := s.begin(); err != nil {
		return lease.Lease{}, err
	}
	defer s.mu.Unlock()
	key := l.Key()
	if e, ok := s.kvs[key]; !ok || e.id != l.ID {
		return lease.Lease{}, fmt.Errorf("leasetest: reserve %s: key gone or held by another lease: %w", key, lease.ErrNotFound)
	}
	s.putLocked(key, val, 0)
	if l.ID != 0 {
		s.endGrantLocked(l.ID) // the key is no longer attached to it
	}
	l.ID, l.Expires = 0, time.Time{}
	return l, nil
}

// PutRaw writes value under subnets/key with no lease, bypassing every
// check, as an operator's `etcdctl put` would.
func (s *Store) PutRaw(ctx context.Context, key string, value []byte) error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	s.putLocked(key, append([]byte{}, value...), 0)
	return nil
}

// Compact discards the history before rev: watches from older revisions
// fail with lease.ErrCompacted.
func (s *Store) Compact(ctx context.Context, rev int64) error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if rev > s.rev {
		return fmt.Errorf("leasetest: compact to %d: beyond current revision %d", rev, s.rev)
	}
	if rev <= s.compacted {
		return fmt.Errorf("leasetest: compact to %d: already compacted to %d", rev, s.compacted)
	}
	s.compacted = rev
	i := sort.Search(len(s.history), func(i int) bool { return s.history[i].rev >= rev })
	s.history = append([]change(nil), s.history[i:]...)
	s.notifyLocked()
	return nil
}

// Watch implements lease.Store. All changes pending for the watcher are
// delivered in one batch.
func (s *Store) Watch(ctx context.Context, rev int64, fn func([]lease.Event)) error {
	last := rev
	for {
		s.mu.Lock()
		s.expireLocked()
		// As etcd: a watch starting at revision r is compacted if r is
		// below the compaction revision.
		if last+1 < s.compacted {
			c := s.compacted
			s.mu.Unlock()
			return fmt.Errorf("leasetest: watch from revision %d (compacted up to %d): %w", last+1, c, lease.ErrCompacted)
		}
		var batch []lease.Event
		if !s.down {
			i := sort.Search(len(s.history), func(i int) bool { return s.history[i].rev > last })
			for _, c := range s.history[i:] {
				last = c.rev
				if ev, ok := s.eventLocked(c); ok {
					batch = append(batch, ev)
				}
			}
		}
		wake := s.changed
		next, expires := s.nextExpiryLocked()
		wait := next.Sub(s.now())
		s.mu.Unlock()

		if len(batch) > 0 {
			fn(batch)
			continue
		}
		if err := sleep(ctx, wake, expires, wait); err != nil {
			return err
		}
	}
}

// sleep waits until wake is closed, ctx ends, or (if timed) wait passes.
func sleep(ctx context.Context, wake <-chan struct{}, timed bool, wait time.Duration) error {
	var expiry <-chan time.Time
	if timed {
		t := time.NewTimer(wait)
		defer t.Stop()
		expiry = t.C
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-wake:
	case <-expiry:
	}
	return nil
}

func (s *Store) nextExpiryLocked() (time.Time, bool) {
	var next time.Time
	for _, g := range s.grants {
		if next.IsZero() || g.expires.Before(next) {
			next = g.expires
		}
	}
	return next, !next.IsZero()
}

func (s *Store) eventLocked(c change) (lease.Event, bool) {
	l, err := decode(c.key, c.value, c.id)
	var bad *lease.BadValueError
	switch {
	case err != nil && !errors.As(err, &bad):
		s.log.Warn("skipping bad subnet entry", "key", c.key, "err", err)
		return lease.Event{}, false
	case c.value == nil:
		return lease.Event{Type: lease.Removed, Lease: lease.Lease{Subnet: l.Subnet, Subnet6: l.Subnet6}}, true
	case err != nil:
		s.log.Warn("subnet entry has a bad value; treating it as removed", "key", c.key, "err", bad.Err)
		return lease.Event{Type: lease.Removed, Lease: lease.Lease{Subnet: l.Subnet, Subnet6: l.Subnet6}}, true
	}
	return lease.Event{Type: lease.Added, Lease: l}, true
}

// decode is lease.Decode, the rules of the real stores, with id as the ID.
func decode(key string, value []byte, id int64) (lease.Lease, error) {
	l, err := lease.Decode(key, value)
	if err == nil {
		l.ID = id
	}
	return l, err
}
