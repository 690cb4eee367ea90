// Package backoff has the retry delays and the context-aware sleep that the
// stores, lease renewal and the daemon share.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is an exponential delay: Min, then twice the previous delay up to
// Max, each passed through Jitter. A Backoff literal with Min and Max set
// is ready to use.
type Backoff struct {
	Min, Max time.Duration
	// Jitter randomises each delay so that many hosts retrying after the
	// same outage do not stay in step; nil leaves delays exact.
	Jitter func(time.Duration) time.Duration

	cur time.Duration
}

// Next returns the delay before the next attempt.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.Min
	} else {
		b.cur = min(2*b.cur, b.Max)
	}
	if b.Jitter == nil {
		return b.cur
	}
	return b.Jitter(b.cur)
}

// Reset makes the next delay Min again, after an attempt succeeded.
func (b *Backoff) Reset() { b.cur = 0 }

// Within10 returns a duration drawn uniformly from d ± 10 %.
func Within10(d time.Duration) time.Duration {
	return d - d/10 + time.Duration(rand.Int64N(int64(d)/5+1))
}

// UpperHalf returns a duration drawn uniformly from [d/2, d]: never longer
// than d, so a caller's stated maximum wait holds.
func UpperHalf(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// Sleep waits d or until ctx ends, whichever comes first, and returns
// ctx.Err() in the latter case. With d <= 0 it returns ctx.Err() at once.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
