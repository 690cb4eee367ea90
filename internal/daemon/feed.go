package daemon

import (
	"sync"

	"github.com/flannel-go/flannel/internal/lease"
)

// feed hands the lease source's updates to the run loop without ever
// blocking the source's goroutine: updates queue up while the loop is busy
// (acquiring, syncing a large peer set) and the loop takes them all at
// once, so a burst becomes one Sync. A Reset makes what queued before it
// moot and drops it.
type feed struct {
	kick chan struct{} // has a token when pending is not empty

	mu      sync.Mutex // guards the fields below
	pending []lease.Update
	removed chan struct{} // closed (and replaced) when a lease may have gone
}

func newFeed() *feed {
	return &feed{kick: make(chan struct{}, 1), removed: make(chan struct{})}
}

// push queues u. It is the Source.Watch callback.
func (f *feed) push(u lease.Update) {
	f.mu.Lock()
	if u.Reset {
		clear(f.pending)
		f.pending = append(f.pending[:0], u)
	} else {
		f.pending = append(f.pending, u)
	}
	gone := u.Reset // a relisting may lack leases that were there
	for _, e := range u.Events {
		gone = gone || e.Type == lease.Removed
	}
	if gone {
		close(f.removed)
		f.removed = make(chan struct{})
	}
	f.mu.Unlock()
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// take returns and clears what is queued.
func (f *feed) take() []lease.Update {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.pending
	f.pending = nil
	return out
}

// removal returns a channel closed at the next removal of a lease.
func (f *feed) removal() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.removed
}
