package etcdv2store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
)

// casAttempts bounds how often Renew and Revoke re-read a key that
// changed between their read and their write.
const casAttempts = 3

// Config returns the raw value of <prefix>/config, or lease.ErrNoConfig.
func (s *Store) Config(ctx context.Context) ([]byte, error) {
	key := lease.ConfigKey(s.prefix)
	r, err := s.c.do(ctx, request{method: http.MethodGet, key: key})
	if isCode(err, codeKeyNotFound) {
		return nil, fmt.Errorf("etcdv2store: %s: %w", key, lease.ErrNoConfig)
	}
	if err != nil {
		return nil, fail("get "+key, err)
	}
	if r.Node.Dir {
		return nil, fmt.Errorf("etcdv2store: %s is a directory, not the config", key)
	}
	return []byte(r.Node.Value), nil
}

// HasConfig reports whether <prefix>/config exists in the v2 keyspace;
// it helps pick the API of a cluster that may hold either.
func (s *Store) HasConfig(ctx context.Context) (bool, error) {
	_, err := s.Config(ctx)
	if errors.Is(err, lease.ErrNoConfig) {
		return false, nil
	}
	return err == nil, err
}

// PutConfig writes <prefix>/config as given; the caller validates it.
func (s *Store) PutConfig(ctx context.Context, cfg []byte) error {
	key := lease.ConfigKey(s.prefix)
	_, err := s.c.do(ctx, request{method: http.MethodPut, key: key, form: url.Values{"value": {string(cfg)}}})
	if err != nil {
		return fail("put "+key, err)
	}
	return nil
}

// Leases lists every lease and reservation with one recursive GET; the
// revision is etcd's index at the time, from which Watch continues. ID
// and Expires are set.
func (s *Store) Leases(ctx context.Context) ([]lease.Lease, int64, error) {
	r, err := s.c.do(ctx, request{method: http.MethodGet, key: s.subnets,
		query: url.Values{"recursive": {"true"}, "sorted": {"true"}}})
	if isCode(err, codeKeyNotFound) {
		// No lease was ever created; the error carries the index.
		var ae *apiError
		errors.As(err, &ae)
		return nil, ae.Index, nil
	}
	if err != nil {
		return nil, 0, fail("list "+s.subnets, err)
	}
	if !r.Node.Dir {
		return nil, 0, fmt.Errorf("etcdv2store: %s is a key, not a directory of subnets", s.subnets)
	}
	var out []lease.Lease
	var walk func(ns []*node)
	walk = func(ns []*node) {
		for _, n := range ns {
			if n.Dir {
				s.bad.Warn(s.log, "skipping bad subnet entry", n.Key, nil, "a directory")
				walk(n.Nodes)
				continue
			}
			l, err := s.decodeNode(n)
			if err != nil {
				s.bad.Warn(s.log, "skipping bad subnet entry", n.Key, []byte(n.Value), err)
				continue
			}
			out = append(out, l)
		}
	}
	walk(r.Node.Nodes)
	return out, r.index, nil
}

// Lookup reads one lease by key (as Lease.Key) including its expiry;
// lease.ErrNotFound if it is absent.
func (s *Store) Lookup(ctx context.Context, key string) (lease.Lease, error) {
	full := lease.KeyPath(s.prefix, key)
	n, err := s.get(ctx, "get", full)
	if err != nil {
		return lease.Lease{}, err
	}
	l, err := s.decodeNode(n)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("etcdv2store: %s: %w", full, err)
	}
	return l, nil
}

// get reads one key for what (the operation, for errors);
// lease.ErrNotFound if it is absent or a directory.
func (s *Store) get(ctx context.Context, what, key string) (*node, error) {
	r, err := s.c.do(ctx, request{method: http.MethodGet, key: key})
	if isCode(err, codeKeyNotFound) {
		return nil, fmt.Errorf("etcdv2store: %s %s: %w", what, key, lease.ErrNotFound)
	}
	if err != nil {
		return nil, fail(what+" "+key, err)
	}
	if r.Node.Dir {
		return nil, fmt.Errorf("etcdv2store: %s %s: a directory: %w", what, key, lease.ErrNotFound)
	}
	return r.Node, nil
}

// Create stores l if its key is absent, with a TTL of ttl rounded up to
// whole seconds. With ttl <= 0 it creates a reservation (no TTL).
func (s *Store) Create(ctx context.Context, l lease.Lease, ttl time.Duration) (lease.Lease, error) {
	key := lease.KeyPath(s.prefix, l.Key())
	val, err := json.Marshal(l.Attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("etcdv2store: encode %s: %w", key, err)
	}
	form := url.Values{"value": {string(val)}, "prevExist": {"false"}}
	if ttl > 0 {
		form.Set("ttl", ttlSeconds(ttl))
	}
	r, err := s.c.do(ctx, request{method: http.MethodPut, key: key, form: form})
	if isCode(err, codeNodeExist, codeNotFile) {
		return lease.Lease{}, fmt.Errorf("etcdv2store: create %s: %w", key, lease.ErrExists)
	}
	if err != nil {
		return lease.Lease{}, fail("create "+key, err)
	}
	l.ID, l.Expires = id(r.Node), expires(r.Node)
	if l.ID != 0 {
		s.rememberTTL(l.ID, ttl)
	}
	return l, nil
}

// Renew rewrites l's value and, for a lease, resets its TTL to ttl. With
// ttl <= 0 it uses the TTL this Store last gave the lease (in Create or
// Renew), or lease.DefaultTTL for a lease it has not seen. It succeeds
// only while the key is the incarnation l.ID names; lease.ErrNotFound
// otherwise. A reservation (ID 0) is rewritten without a TTL and stays a
// reservation.
func (s *Store) Renew(ctx context.Context, l lease.Lease, ttl time.Duration) (lease.Lease, error) {
	key := lease.KeyPath(s.prefix, l.Key())
	val, err := json.Marshal(l.Attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("etcdv2store: encode %s: %w", key, err)
	}
	if ttl <= 0 {
		ttl = s.ttlFor(l.ID)
	}
	for range casAttempts {
		cur, err := s.owned(ctx, "renew", key, l.ID)
		if errors.Is(err, lease.ErrNotFound) {
			s.rememberTTL(l.ID, 0)
		}
		if err != nil {
			return lease.Lease{}, err
		}
		form := url.Values{"value": {string(val)}, "prevIndex": {strconv.FormatInt(cur.ModifiedIndex, 10)}}
		if l.ID != 0 {
			form.Set("ttl", ttlSeconds(ttl))
		}
		r, err := s.c.do(ctx, request{method: http.MethodPut, key: key, form: form})
		switch {
		case isCode(err, codeCompareFailed):
			continue // changed since we read it: check ownership again
		case isCode(err, codeKeyNotFound):
			s.rememberTTL(l.ID, 0)
			return lease.Lease{}, fmt.Errorf("etcdv2store: renew %s: %w", key, lease.ErrNotFound)
		case err != nil:
			return lease.Lease{}, fail("renew "+key, err)
		}
		l.Expires = expires(r.Node)
		if l.ID != 0 {
			s.rememberTTL(l.ID, ttl)
		}
		return l, nil
	}
	return lease.Lease{}, fmt.Errorf("etcdv2store: renew %s: key changed by someone else %d times in a row", key, casAttempts)
}

// Revoke deletes l's key if it is still the incarnation l.ID names;
// lease.ErrNotFound otherwise.
func (s *Store) Revoke(ctx context.Context, l lease.Lease) error {
	key := lease.KeyPath(s.prefix, l.Key())
	for range casAttempts {
		cur, err := s.owned(ctx, "revoke", key, l.ID)
		if err != nil {
			return err
		}
		_, err = s.c.do(ctx, request{method: http.MethodDelete, key: key,
			query: url.Values{"prevIndex": {strconv.FormatInt(cur.ModifiedIndex, 10)}}})
		switch {
		case isCode(err, codeCompareFailed):
			continue
		case isCode(err, codeKeyNotFound):
			return fmt.Errorf("etcdv2store: revoke %s: %w", key, lease.ErrNotFound)
		case err != nil:
			return fail("revoke "+key, err)
		}
		s.rememberTTL(l.ID, 0)
		return nil
	}
	return fmt.Errorf("etcdv2store: revoke %s: key changed by someone else %d times in a row", key, casAttempts)
}

// Reserve turns l into a reservation: while l's key is still the
// incarnation l.ID names, it is rewritten with l.Attrs and no TTL (a v2
// write without ttl clears it) by compare-and-swap, so the key never
// disappears and keeps its createdIndex. lease.ErrNotFound when the key
// is gone or re-created.
func (s *Store) Reserve(ctx context.Context, l lease.Lease) (lease.Lease, error) {
	key := lease.KeyPath(s.prefix, l.Key())
	val, err := json.Marshal(l.Attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("etcdv2store: encode %s: %w", key, err)
	}
	for range casAttempts {
		cur, err := s.owned(ctx, "reserve", key, l.ID)
		if err != nil {
			return lease.Lease{}, err
		}
		form := url.Values{"value": {string(val)}, "prevIndex": {strconv.FormatInt(cur.ModifiedIndex, 10)}}
		_, err = s.c.do(ctx, request{method: http.MethodPut, key: key, form: form})
		switch {
		case isCode(err, codeCompareFailed):
			continue
		case isCode(err, codeKeyNotFound):
			return lease.Lease{}, fmt.Errorf("etcdv2store: reserve %s: %w", key, lease.ErrNotFound)
		case err != nil:
			return lease.Lease{}, fail("reserve "+key, err)
		}
		s.rememberTTL(l.ID, 0)
		l.ID, l.Expires = 0, time.Time{}
		return l, nil
	}
	return lease.Lease{}, fmt.Errorf("etcdv2store: reserve %s: key changed by someone else %d times in a row", key, casAttempts)
}

// owned reads key and checks that it is the incarnation id names: for a
// lease, a key with a TTL created at index id; for a reservation (id 0),
// a key without a TTL.
func (s *Store) owned(ctx context.Context, what, key string, want int64) (*node, error) {
	n, err := s.get(ctx, what, key)
	if err != nil {
		return nil, err
	}
	if got := id(n); got != want {
		if want == 0 {
			return nil, fmt.Errorf("etcdv2store: %s %s: no longer a reservation (it has a TTL): %w", what, key, lease.ErrNotFound)
		}
		if got == 0 {
			return nil, fmt.Errorf("etcdv2store: %s %s: now a reservation (no TTL): %w", what, key, lease.ErrNotFound)
		}
		return nil, fmt.Errorf("etcdv2store: %s %s: re-created since (index %d, ours %d): %w", what, key, got, want, lease.ErrNotFound)
	}
	return n, nil
}

// id is the Lease.ID of a node: its createdIndex if it has a TTL, 0 for a
// reservation.
func id(n *node) int64 {
	if n.Expiration == nil {
		return 0
	}
	return n.CreatedIndex
}

func expires(n *node) time.Time {
	if n.Expiration == nil {
		return time.Time{}
	}
	return *n.Expiration
}

// ttlSeconds rounds up: a lease never lives shorter than asked.
func ttlSeconds(ttl time.Duration) string {
	return strconv.FormatInt(int64((ttl+time.Second-1)/time.Second), 10)
}

// decodeNode turns a node below <prefix>/subnets/ into a lease, as
// lease.Decode does, with ID and Expires from the node's TTL.
func (s *Store) decodeNode(n *node) (lease.Lease, error) {
	key, ok := strings.CutPrefix(n.Key, s.subnets+"/")
	if !ok {
		return lease.Lease{}, fmt.Errorf("key %q is not below %s/", n.Key, s.subnets)
	}
	l, err := lease.Decode(key, []byte(n.Value))
	if err != nil {
		return l, err
	}
	l.ID, l.Expires = id(n), expires(n)
	return l, nil
}
