package backoff_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/backoff"
)

func TestNextDoublesUpToMaxAndResets(t *testing.T) {
	b := backoff.Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := b.Next(); got != w*time.Millisecond {
			t.Fatalf("delay %d = %v, want %v", i, got, w*time.Millisecond)
		}
	}
	b.Reset()
	if got := b.Next(); got != 100*time.Millisecond {
		t.Fatalf("after Reset: %v, want 100ms", got)
	}
}

func TestMinAboveMax(t *testing.T) {
	// The first delay is Min as given; later ones respect Max.
	b := backoff.Backoff{Min: 8 * time.Second, Max: 5 * time.Second}
	if got := b.Next(); got != 8*time.Second {
		t.Fatalf("first = %v, want 8s", got)
	}
	if got := b.Next(); got != 5*time.Second {
		t.Fatalf("second = %v, want 5s", got)
	}
}

func TestJitterBounds(t *testing.T) {
	for _, tc := range []struct {
		name   string
		jitter func(time.Duration) time.Duration
		lo, hi time.Duration // for a delay of 1 s
	}{
		{"Within10", backoff.Within10, 900 * time.Millisecond, 1100 * time.Millisecond},
		{"UpperHalf", backoff.UpperHalf, 500 * time.Millisecond, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[time.Duration]bool{}
			for range 1000 {
				d := tc.jitter(time.Second)
				if d < tc.lo || d > tc.hi {
					t.Fatalf("%v outside [%v, %v]", d, tc.lo, tc.hi)
				}
				seen[d] = true
			}
			if len(seen) < 100 {
				t.Fatalf("only %d distinct delays in 1000 draws: not random", len(seen))
			}
			if d := tc.jitter(0); d != 0 {
				t.Fatalf("jitter of 0 = %v", d)
			}
			b := backoff.Backoff{Min: time.Second, Max: time.Minute, Jitter: tc.jitter}
			b.Next()
			if d := b.Next(); d < 2*tc.lo || d > 2*tc.hi {
				t.Fatalf("second jittered delay %v outside [%v, %v]", d, 2*tc.lo, 2*tc.hi)
			}
		})
	}
}

func TestSleep(t *testing.T) {
	if err := backoff.Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatalf("Sleep = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go cancel()
	start := time.Now()
	if err := backoff.Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep after cancel = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Sleep took %v after cancel", d)
	}
	if err := backoff.Sleep(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep(0) on an ended context = %v", err)
	}
	if err := backoff.Sleep(context.Background(), -time.Second); err != nil {
		t.Fatalf("Sleep(-1s) = %v", err)
	}
}
