package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/lease"
)

// Watch reports changes below <prefix>/subnets/ after rev, one call of fn
// per etcd watch response. It returns ctx.Err() when ctx ends and an error
// wrapping lease.ErrCompacted when etcd no longer has the revisions needed.
// Any other failure (etcd down, leader lost, stream closed) re-creates the
// watch from the last revision seen, with a jittered backoff from 100 ms to
// 5 s, logging once when it breaks and once when it works again.
//
// A PUT whose value does not decode is reported as Removed for its subnet,
// so a peer whose entry turned to garbage loses its route rather than
// keeping a stale one. Keys that do not parse are skipped with a warning.
func (s *Store) Watch(ctx context.Context, rev int64, fn func([]lease.Event)) error {
	last := rev
	w := lease.WatchRetry{Log: s.log, Prefix: s.subnets, Unit: "revision"}
	return w.Run(ctx, &last, func(healthy func()) error {
		return s.watchOnce(ctx, &last, fn, healthy)
	})
}

// watchOnce runs one etcd watch from *last+1 until it fails, advancing
// *last past every revision delivered. healthy is called on every response.
func (s *Store) watchOnce(ctx context.Context, last *int64, fn func([]lease.Event), healthy func()) error {
	// Without RequireLeader a watch on a member cut off from its cluster
	// would wait silently forever.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.cli.Watch(wctx, s.subnets, clientv3.WithPrefix(), clientv3.WithRev(*last+1), clientv3.WithProgressNotify())
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return fmt.Errorf("etcdstore: watch %s from revision %d (compacted up to %d): %w",
				s.subnets, *last+1, resp.CompactRevision, lease.ErrCompacted)
		}
		if err := resp.Err(); err != nil {
			return err
		}
		healthy()
		if resp.IsProgressNotify() {
			*last = max(*last, resp.Header.Revision)
			continue
		}
		evs := make([]lease.Event, 0, len(resp.Events))
		for _, e := range resp.Events {
			*last = max(*last, e.Kv.ModRevision)
			ev, err := toEvent(s.subnets, e)
			if err != nil {
				s.bad.Warn(s.log, "skipping bad subnet entry", string(e.Kv.Key), e.Kv.Value, err)
				continue
			}
			var bad *lease.BadValueError
			if errors.As(ev.err, &bad) {
				s.bad.Warn(s.log, "subnet entry has a bad value; treating it as removed", string(e.Kv.Key), e.Kv.Value, bad.Err)
			}
			evs = append(evs, ev.Event)
		}
		if len(evs) > 0 {
			fn(evs)
		}
	}
	return errors.New("watch channel closed")
}

// decoded is an event plus the value error that turned a PUT into Removed.
type decoded struct {
	lease.Event
	err error
}

// toEvent maps one etcd event below subnets to a lease event. It fails only
// when the key does not parse.
func toEvent(subnets string, e *clientv3.Event) (decoded, error) {
	key, ok := strings.CutPrefix(string(e.Kv.Key), subnets)
	if !ok {
		return decoded{}, fmt.Errorf("key %q is not below %s", e.Kv.Key, subnets)
	}
	l, err := decodeKV(key, e.Kv.Value, e.Kv.Lease)
	var bad *lease.BadValueError
	switch {
	case err != nil && !errors.As(err, &bad):
		return decoded{}, err
	case e.Type == mvccpb.DELETE:
		return decoded{Event: lease.Event{Type: lease.Removed, Lease: lease.Lease{Subnet: l.Subnet, Subnet6: l.Subnet6}}}, nil
	case err != nil:
		return decoded{Event: lease.Event{Type: lease.Removed, Lease: lease.Lease{Subnet: l.Subnet, Subnet6: l.Subnet6}}, err: err}, nil
	}
	return decoded{Event: lease.Event{Type: lease.Added, Lease: l}}, nil
}
