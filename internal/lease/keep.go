package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/flannel-go/flannel/internal/backoff"
)

// looker is implemented by stores that can read one lease (with its
// expiry) by key: etcdstore.Store.Lookup and its v2 counterpart. keep uses
// it once at the start, so a lease that vanished between Acquire and keep
// is noticed at once and its expiry is known without renewing.
type looker interface {
	Lookup(ctx context.Context, key string) (Lease, error)
}

// keep holds on to l until ctx ends (returning ctx.Err()) or the lease is
// lost (returning an error wrapping ErrNotFound), in the manner of etcd's
// concurrency.Session:
//
//   - it renews margin before l.Expires (looking the expiry up, or renewing
//     at once, when l.Expires is zero), then again before each new expiry;
//     a renewal that fails for any reason but ErrNotFound is retried with
//     backoff up to one minute, for as long as it takes, since etcd keeps
//     a lease alive across its own outages;
//   - it acts on seen, the states of l's key that the source's one watch
//     reports, so a revoked or deleted lease is noticed at once rather than
//     at the next renewal. A value that turned to garbage while the key
//     stayed ours is repaired by renewing at once. If an operator turns
//     the lease into a reservation for this host, keep carries on with the
//     reservation.
//
// A reservation (l.ID == 0) needs no renewal; keep then only watches it.
// onRenew, if not nil, is called with the lease after each successful
// renewal.
func keep(ctx context.Context, s Store, l Lease, margin time.Duration, log *slog.Logger, onRenew func(Lease), seen <-chan ownState) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// first is the key's state as read once now; later states come from
	// the watch through seen.
	var first *ownState
	if lk, ok := s.(looker); ok {
		got, err := lk.Lookup(ctx, l.Key())
		var bad *BadValueError
		switch {
		case err == nil:
			first = &ownState{present: true, lease: got}
			if got.ID == l.ID && !got.Expires.IsZero() {
				l.Expires = got.Expires
			}
		case errors.Is(err, ErrNotFound), errors.As(err, &bad):
			first = &ownState{}
		}
	}

	// due is when to renew next; zero for a reservation, which needs no
	// renewal.
	var due time.Time
	if !l.Reserved() {
		due = time.Now()
		if !l.Expires.IsZero() {
			due = due.Add(renewIn(l.Expires, margin))
		}
	}
	retry := backoff.Backoff{Min: time.Second, Max: time.Minute, Jitter: backoff.Within10}
	for {
		var st ownState
		var reported bool
		if first != nil {
			st, reported, first = *first, true, nil
		} else {
			var err error
			if st, reported, err = wait(ctx, due, seen); err != nil {
				return err
			}
		}
		if reported {
			switch {
			case st.present && st.lease.ID == l.ID:
				continue // our own write, or one that left the lease ours
			case st.present && st.lease.ID == 0 && sameHost(st.lease.Attrs, l.Attrs):
				log.Info("lease turned into a reservation; keeping it", "subnet", l.Subnet)
				l.ID, l.Expires = 0, time.Time{}
				// Renew below writes our attributes into it.
			case st.present:
				return fmt.Errorf("lease: keep %s: key now held by etcd lease %x: %w", l, st.lease.ID, ErrNotFound)
			}
			// Gone or unreadable: renewing tells which (and repairs the
			// latter).
		}
		nl, err := s.Renew(ctx, l, 0)
		switch {
		case err == nil:
			l, due = nl, time.Time{}
			if !l.Reserved() {
				due = time.Now().Add(renewIn(l.Expires, margin))
			}
			retry.Reset()
			if onRenew != nil {
				onRenew(nl)
			}
		case errors.Is(err, ErrNotFound):
			return fmt.Errorf("lease: keep %s: %w", l, err)
		case ctx.Err() != nil:
			return ctx.Err()
		default:
			due = time.Now().Add(retry.Next())
			log.Warn("lease renewal failed; retrying", "subnet", l.Subnet, "expires", l.Expires, "err", err)
		}
	}
}

// wait returns at due (never, if zero) or with a report from seen.
func wait(ctx context.Context, due time.Time, seen <-chan ownState) (st ownState, reported bool, err error) {
	var timer <-chan time.Time
	if !due.IsZero() {
		t := time.NewTimer(time.Until(due))
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-ctx.Done():
		return ownState{}, false, ctx.Err()
	case st := <-seen:
		return st, true, nil
	case <-timer:
		return ownState{}, false, nil
	}
}

// renewIn is how long to wait before renewing a lease ending at exp. A
// margin as long as the TTL would renew in a tight loop; the wait is
// therefore at least a third of the time left, capped at a minute so a
// large margin still renews about when asked.
func renewIn(exp time.Time, margin time.Duration) time.Duration {
	left := time.Until(exp)
	return max(left-margin, min(left/3, time.Minute), 0)
}

// ownState is what the store shows under our key.
type ownState struct {
	present bool
	lease   Lease
}
