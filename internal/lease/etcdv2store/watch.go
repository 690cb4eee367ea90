package etcdv2store

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/flannel-go/flannel/internal/lease"
)

// Watch reports changes below <prefix>/subnets/ after index rev, one call
// of fn per event: etcd's v2 long poll returns one event per request. It
// returns ctx.Err() when ctx ends, and an error wrapping
// lease.ErrCompacted when etcd no longer holds the events after rev (it
// keeps the last 1000 of the whole keyspace) or when the subnets
// directory itself was removed. Any other failure (etcd down, an error
// status) re-polls from the last index seen, with a jittered backoff from
// 100 ms to 5 s, logging once when the watch breaks and once when it works
// again.
//
// set, create, update and compareAndSwap are Added; delete, expire and
// compareAndDelete are Removed. A write whose value does not decode is
// reported as Removed for its subnet, so a peer whose entry turned to
// garbage loses its route rather than keeping a stale one. Keys that do
// not parse are skipped with a warning.
func (s *Store) Watch(ctx context.Context, rev int64, fn func([]lease.Event)) error {
	last := rev
	w := lease.WatchRetry{Log: s.log, Prefix: s.subnets, Unit: "index",
		Final: func(err error) bool { return errors.Is(err, errClosed) }}
	return w.Run(ctx, &last, func(healthy func()) error {
		return s.pollOnce(ctx, &last, fn, healthy)
	})
}

// pollOnce long-polls for the event after *last and reports it, advancing
// *last to its index. healthy is called when etcd answers.
func (s *Store) pollOnce(ctx context.Context, last *int64, fn func([]lease.Event), healthy func()) error {
	r, err := s.c.do(ctx, request{
		method: http.MethodGet,
		key:    s.subnets,
		query: url.Values{"wait": {"true"}, "recursive": {"true"},
			"waitIndex": {strconv.FormatInt(*last+1, 10)}},
		wait:      true,
		onHeaders: healthy,
	})
	if isCode(err, codeEventIndexCleared, codeWatcherCleared) {
		return fmt.Errorf("etcdv2store: watch %s from index %d: %v: %w", s.subnets, *last+1, err, lease.ErrCompacted)
	}
	if err != nil {
		return err
	}
	idx := r.Node.ModifiedIndex
	if idx <= *last {
		// Polling again from the same index would loop.
		return fmt.Errorf("etcd answered waitIndex %d with an event at index %d", *last+1, idx)
	}
	*last = idx
	ev, ok, err := s.toEvent(r.response)
	if err != nil {
		return fmt.Errorf("etcdv2store: watch %s at index %d: %w", s.subnets, idx, err)
	}
	if ok {
		fn([]lease.Event{ev})
	}
	return nil
}

// toEvent maps one watch response to a lease event; ok is false when
// there is nothing to report. It fails, wrapping lease.ErrCompacted, when
// the subnets directory or one of its parents was removed: the event names
// only the directory, so the caller has to re-list.
func (s *Store) toEvent(r response) (ev lease.Event, ok bool, err error) {
	n := r.Node
	var removed bool
	switch r.Action {
	case "set", "create", "update", "compareAndSwap":
	case "delete", "expire", "compareAndDelete":
		removed = true
	default:
		return lease.Event{}, false, nil
	}
	if n.Key == s.subnets || strings.HasPrefix(s.subnets, strings.TrimRight(n.Key, "/")+"/") {
		if removed {
			return lease.Event{}, false, fmt.Errorf("directory %s removed (%s): %w", n.Key, r.Action, lease.ErrCompacted)
		}
		return lease.Event{}, false, nil // e.g. mkdir of the subnets directory
	}
	if n.Dir {
		s.bad.Warn(s.log, "skipping bad subnet entry", n.Key, nil, "a directory")
		return lease.Event{}, false, nil
	}
	l, err := s.decodeNode(n)
	var bad *lease.BadValueError
	switch {
	case err != nil && !errors.As(err, &bad):
		s.bad.Warn(s.log, "skipping bad subnet entry", n.Key, []byte(n.Value), err)
		return lease.Event{}, false, nil
	case removed:
		// A removed node carries no value.
	case err != nil:
		s.bad.Warn(s.log, "subnet entry has a bad value; treating it as removed", n.Key, []byte(n.Value), bad.Err)
		removed = true
	}
	if removed {
		return lease.Event{Type: lease.Removed, Lease: lease.Lease{Subnet: l.Subnet, Subnet6: l.Subnet6}}, true, nil
	}
	return lease.Event{Type: lease.Added, Lease: l}, true, nil
}
