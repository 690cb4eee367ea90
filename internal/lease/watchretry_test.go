package lease_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
)

func TestWatchRetryLogsOnceAndStopsOnCompaction(t *testing.T) {
	var buf bytes.Buffer
	w := lease.WatchRetry{Log: slog.New(slog.NewTextHandler(&buf, nil)), Prefix: "/p/subnets/", Unit: "revision"}
	last := int64(7)
	calls := 0
	err := w.Run(context.Background(), &last, func(healthy func()) error {
		calls++
		switch calls {
		case 1, 2: // etcd down twice in a row
			return errors.New("unavailable")
		case 3: // back: one delivery
			healthy()
			last++
			return nil
		}
		return fmt.Errorf("too old: %w", lease.ErrCompacted)
	})
	if !errors.Is(err, lease.ErrCompacted) || calls != 4 {
		t.Fatalf("got %v after %d calls, want ErrCompacted after 4", err, calls)
	}
	log := buf.String()
	for msg, want := range map[string]int{"etcd watch interrupted": 1, "etcd watch resumed": 1, "from_revision=8": 1, "revision=7": 1} {
		if n := strings.Count(log, msg); n != want {
			t.Errorf("%q logged %d times, want %d:\n%s", msg, n, want, log)
		}
	}
}

func TestWatchRetryFinalAndContext(t *testing.T) {
	closed := errors.New("closed")
	w := lease.WatchRetry{Log: slog.New(slog.DiscardHandler), Unit: "index", Final: func(err error) bool { return errors.Is(err, closed) }}
	var last int64
	if err := w.Run(context.Background(), &last, func(func()) error { return closed }); err != closed {
		t.Errorf("final error: got %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	err := w.Run(ctx, &last, func(func()) error {
		cancel()
		return errors.New("broken by the cancel")
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("ended context: got %v", err)
	}
}
