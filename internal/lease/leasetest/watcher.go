package leasetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
)

// Watcher runs a store's Watch in the background and collects its
// events, for tests of any lease.Store.
type Watcher struct {
	events chan lease.Event
	done   chan error
	cancel context.CancelFunc
}

// StartWatch watches s from rev until Stop or the test's cleanup, which
// cancels the watch and waits for it. Up to 1000 events wait to be read
// without holding the watch up. An empty batch fails t.
func StartWatch(t testing.TB, s lease.Store, rev int64) *Watcher {
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watcher{events: make(chan lease.Event, 1000), done: make(chan error, 1), cancel: cancel}
	go func() {
		w.done <- s.Watch(ctx, rev, func(evs []lease.Event) {
			if len(evs) == 0 {
				t.Error("Watch delivered an empty batch")
			}
			for _, e := range evs {
				w.events <- e
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-w.done
	})
	return w
}

// Events delivers the events in the order the store reported them.
func (w *Watcher) Events() <-chan lease.Event { return w.events }

// Next waits for the next event; it fails t when none comes within the
// given time or the watch ends.
func (w *Watcher) Next(t testing.TB, within time.Duration) lease.Event {
	t.Helper()
	select {
	case e := <-w.events:
		return e
	case err := <-w.done:
		w.done <- err // for cleanup
		t.Fatalf("Watch returned early: %v", err)
	case <-time.After(within):
		t.Fatalf("no watch event within %v", within)
	}
	return lease.Event{}
}

// Stop cancels the watch and fails t unless Watch then returns
// context.Canceled within 5 s.
func (w *Watcher) Stop(t testing.TB) {
	t.Helper()
	w.cancel()
	select {
	case err := <-w.done:
		w.done <- err // for cleanup
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Watch returned %v after cancel, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Watch did not return after cancel")
	}
}
