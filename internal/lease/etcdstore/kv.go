package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/lease"
)

// Config returns the raw value of <prefix>/config, or lease.ErrNoConfig.
func (s *Store) Config(ctx context.Context) ([]byte, error) {
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	key := lease.ConfigKey(s.prefix)
	r, err := s.cli.Get(ctx, key)
	if err != nil {
		return nil, s.fail("get "+key, err)
	}
	if len(r.Kvs) == 0 {
		return nil, fmt.Errorf("etcdstore: %s: %w", key, lease.ErrNoConfig)
	}
	return r.Kvs[0].Value, nil
}

// PutConfig writes <prefix>/config as given; the caller validates it.
func (s *Store) PutConfig(ctx context.Context, cfg []byte) error {
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	key := lease.ConfigKey(s.prefix)
	if _, err := s.cli.Put(ctx, key, string(cfg)); err != nil {
		return s.fail("put "+key, err)
	}
	return nil
}

// Leases lists every lease and reservation in one range request. ID is
// set, Expires is not (see Lookup).
func (s *Store) Leases(ctx context.Context) ([]lease.Lease, int64, error) {
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	r, err := s.cli.Get(ctx, s.subnets, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, s.fail("list "+s.subnets, err)
	}
	out := make([]lease.Lease, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		key := strings.TrimPrefix(string(kv.Key), s.subnets)
		l, err := decodeKV(key, kv.Value, kv.Lease)
		if err != nil {
			s.bad.Warn(s.log, "skipping bad subnet entry", string(kv.Key), kv.Value, err)
			continue
		}
		out = append(out, l)
	}
	return out, r.Header.Revision, nil
}

// Lookup reads one lease by key (as Lease.Key) including its expiry, for
// our own lease and for tools; lease.ErrNotFound if it is absent or its etcd
// lease has ended.
func (s *Store) Lookup(ctx context.Context, key string) (lease.Lease, error) {
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	full := s.subnets + key
	r, err := s.cli.Get(ctx, full)
	if err != nil {
		return lease.Lease{}, s.fail("get "+full, err)
	}
	if len(r.Kvs) == 0 {
		return lease.Lease{}, fmt.Errorf("etcdstore: %s: %w", full, lease.ErrNotFound)
	}
	kv := r.Kvs[0]
	l, err := decodeKV(key, kv.Value, kv.Lease)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("etcdstore: %s: %w", full, err)
	}
	if l.ID == 0 {
		return l, nil
	}
	ttl, err := s.cli.TimeToLive(ctx, clientv3.LeaseID(l.ID))
	if err != nil {
		return lease.Lease{}, s.fail(fmt.Sprintf("time to live of %s (lease %x)", full, l.ID), err)
	}
	if ttl.TTL < 0 {
		return lease.Lease{}, fmt.Errorf("etcdstore: %s: lease %x ended: %w", full, l.ID, lease.ErrNotFound)
	}
	l.Expires = time.Now().Add(time.Duration(ttl.TTL) * time.Second)
	return l, nil
}

// Create stores l if its key is absent, attached to a new etcd lease of
// ttl (rounded up to whole seconds; etcd may grant more). With ttl <= 0 it
// creates a reservation (no etcd lease).
func (s *Store) Create(ctx context.Context, l lease.Lease, ttl time.Duration) (lease.Lease, error) {
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	key := s.subnets + l.Key()
	val, err := json.Marshal(l.Attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("etcdstore: encode %s: %w", key, err)
	}
	l.ID, l.Expires = 0, time.Time{}
	var opts []clientv3.OpOption
	if ttl > 0 {
		secs := int64((ttl + time.Second - 1) / time.Second)
		g, err := s.cli.Grant(ctx, secs)
		if err != nil {
			return lease.Lease{}, s.fail("grant lease for "+key, err)
		}
		l.ID = int64(g.ID)
		l.Expires = time.Now().Add(time.Duration(g.TTL) * time.Second)
		opts = append(opts, clientv3.WithLease(g.ID))
	}
	r, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val), opts...)).
		Commit()
	if err == nil && r.Succeeded {
		return l, nil
	}
	if l.ID != 0 {
		s.revokeID(l.ID)
	}
	if err != nil {
		return lease.Lease{}, s.fail("create "+key, err)
	}
	return lease.Lease{}, fmt.Errorf("etcdstore: create %s: %w", key, lease.ErrExists)
}

// revokeID ends an etcd lease that was granted but not used. It runs on
// its own short deadline since the caller's context may be what failed.
func (s *Store) revokeID(id int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := s.cli.Revoke(ctx, clientv3.LeaseID(id)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		// It expires after its TTL anyway.
		s.log.Debug("revoke unused etcd lease", "lease", fmt.Sprintf("%x", id), "err", err)
	}
}

// Renew refreshes l's etcd lease to the TTL it was granted with (etcd
// cannot change a lease's TTL, so ttl is not used) and rewrites its value,
// both only while the key still carries l.ID; lease.ErrNotFound otherwise.
// A reservation (ID 0) only has its value rewritten and stays a
// reservation.
func (s *Store) Renew(ctx context.Context, l lease.Lease, _ time.Duration) (lease.Lease, error) {
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	key := s.subnets + l.Key()
	val, err := json.Marshal(l.Attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("etcdstore: encode %s: %w", key, err)
	}
	var opts []clientv3.OpOption
	l.Expires = time.Time{}
	if l.ID != 0 {
		ka, err := s.cli.KeepAliveOnce(ctx, clientv3.LeaseID(l.ID))
		if errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && ka.TTL <= 0) {
			return lease.Lease{}, fmt.Errorf("etcdstore: renew %s: lease %x ended: %w", key, l.ID, lease.ErrNotFound)
		}
		if err != nil {
			return lease.Lease{}, s.fail(fmt.Sprintf("renew %s (lease %x)", key, l.ID), err)
		}
		l.Expires = time.Now().Add(time.Duration(ka.TTL) * time.Second)
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(l.ID)))
	}
	// LeaseValue compares equal to 0 for a missing key, hence the
	// CreateRevision guard.
	r, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0),
			clientv3.Compare(clientv3.LeaseValue(key), "=", clientv3.LeaseID(l.ID))).
		Then(clientv3.OpPut(key, string(val), opts...)).
		Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		// Expired between the keep-alive and the put.
		return lease.Lease{}, fmt.Errorf("etcdstore: renew %s: lease %x ended: %w", key, l.ID, lease.ErrNotFound)
	}
	if err != nil {
		return lease.Lease{}, s.fail("renew "+key, err)
	}
	if !r.Succeeded {
		return lease.Lease{}, fmt.Errorf("etcdstore: renew %s: key gone or held by another lease: %w", key, lease.ErrNotFound)
	}
	return l, nil
}

// Revoke deletes l's key if it still carries l.ID, then ends the etcd
// lease. lease.ErrNotFound if the key was not there as l's.
func (s *Store) Revoke(ctx context.Context, l lease.Lease) error {
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	key := s.subnets + l.Key()
	r, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0),
			clientv3.Compare(clientv3.LeaseValue(key), "=", clientv3.LeaseID(l.ID))).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return s.fail("revoke "+key, err)
	}
	if l.ID != 0 {
		if _, err := s.cli.Revoke(ctx, clientv3.LeaseID(l.ID)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return s.fail(fmt.Sprintf("revoke etcd lease %x of %s", l.ID, key), err)
		}
	}
	if !r.Succeeded {
		return fmt.Errorf("etcdstore: revoke %s: %w", key, lease.ErrNotFound)
	}
	return nil
}

// Reserve turns l into a reservation: while l's key still carries l.ID
// (or, for ID 0, no etcd lease), it is rewritten with l.Attrs and no etcd
// lease, in one transaction, so the key never disappears and the host
// holding it keeps it. lease.ErrNotFound when the key is gone or held by
// another lease. The etcd lease l.ID is then ended.
func (s *Store) Reserve(ctx context.Context, l lease.Lease) (lease.Lease, error) {
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	key := s.subnets + l.Key()
	val, err := json.Marshal(l.Attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("etcdstore: encode %s: %w", key, err)
	}
	// A put without a lease detaches the key from the one it had.
	r, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0),
			clientv3.Compare(clientv3.LeaseValue(key), "=", clientv3.LeaseID(l.ID))).
		Then(clientv3.OpPut(key, string(val))).
		Commit()
	if err != nil {
		return lease.Lease{}, s.fail("reserve "+key, err)
	}
	if !r.Succeeded {
		return lease.Lease{}, fmt.Errorf("etcdstore: reserve %s: key gone or held by another lease: %w", key, lease.ErrNotFound)
	}
	if l.ID != 0 {
		// Nothing is attached to it any more; it would expire anyway.
		s.revokeID(l.ID)
	}
	l.ID, l.Expires = 0, time.Time{}
	return l, nil
}

// decodeKV is lease.Decode with the key's etcd lease as the ID.
func decodeKV(key string, value []byte, id int64) (lease.Lease, error) {
	l, err := lease.Decode(key, value)
	if err == nil {
		l.ID = id
	}
	return l, err
}
