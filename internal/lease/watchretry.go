package lease

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/flannel-go/flannel/internal/backoff"
)

// WatchRetry is the retry frame both etcd stores put around their Watch,
// so that the v3 watch stream and the v2 long poll recover from an outage
// the same way.
type WatchRetry struct {
	Log    *slog.Logger // required
	Prefix string       // the key watched, for the log
	// Unit is what the store calls a position in its history, for the
	// log: "revision" (v3) or "index" (v2).
	Unit string
	// Final reports errors, besides those wrapping ErrCompacted, after
	// which re-watching is pointless (the store was closed); optional.
	Final func(error) bool
}

// Run calls once until ctx ends (returning ctx.Err()) or once fails for
// good: an error wrapping ErrCompacted, or one that Final reports, is
// returned as it is. once watches from *last+1, advances *last past what
// it delivered, and calls healthy whenever etcd answered. A nil return
// calls once again at once; any other error calls it again after a
// jittered backoff from 100 ms to 5 s, logging once when the watch breaks
// and once when it works again, however many attempts lie between.
func (w WatchRetry) Run(ctx context.Context, last *int64, once func(healthy func()) error) error {
	delay := backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second, Jitter: backoff.Within10}
	broken := false
	healthy := func() {
		delay.Reset()
		if broken {
			broken = false
			w.Log.Info("etcd watch resumed", "prefix", w.Prefix, w.Unit, *last)
		}
	}
	for {
		err := once(healthy)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil {
			continue
		}
		if errors.Is(err, ErrCompacted) || (w.Final != nil && w.Final(err)) {
			return err
		}
		if !broken {
			broken = true
			w.Log.Warn("etcd watch interrupted; re-creating it", "prefix", w.Prefix, "from_"+w.Unit, *last+1, "err", err)
		}
		if err := backoff.Sleep(ctx, delay.Next()); err != nil {
			return err
		}
	}
}
