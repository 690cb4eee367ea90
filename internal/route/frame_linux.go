package route

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
)

// Frame is what backends that keep per-peer kernel entries in a Table
// (host-gw, vxlan) share around it: the Table once Init has succeeded,
// the peers of the last Sync (which Repair re-applies), the release of the
// netlink handle, the guard against use before Init or after Close, and a
// warning logged once per skipped peer and problem. P is the backend's
// peer type; desired, given by the backend, turns peers into entries.
//
// The zero Frame is not usable; NewFrame makes one.
type Frame[P any] struct {
	name    string
	log     *slog.Logger
	desired func([]P) State

	Table   *Table // nil until the backend's Init succeeds
	peers   []P
	release func()
	closed  bool
	// warned is the problem last logged per subnet; skipped collects
	// this Apply's, so a problem that goes away is warned about again
	// if it comes back.
	warned, skipped map[netip.Prefix]string
}

// NewFrame returns the frame of the backend name (which prefixes errors
// and log messages).
func NewFrame[P any](name string, log *slog.Logger, desired func([]P) State) *Frame[P] {
	return &Frame[P]{name: name, log: log, desired: desired, warned: map[netip.Prefix]string{}}
}

// OnClose sets what Close releases: the netlink handle the backend opened.
func (f *Frame[P]) OnClose(release func()) { f.release = release }

// Closed reports whether Close was called.
func (f *Frame[P]) Closed() bool { return f.closed }

// Close releases the netlink handle. Kernel entries stay, so a restart
// can adopt them.
func (f *Frame[P]) Close() error {
	if f.release != nil {
		f.release()
		f.release = nil
	}
	f.closed = true
	return nil
}

// Ready guards against use before Init and after Close: a closed netlink
// handle would silently fall back to the caller's namespace.
func (f *Frame[P]) Ready() error {
	switch {
	case f.closed:
		return fmt.Errorf("%s: backend is closed", f.name)
	case f.Table == nil:
		return fmt.Errorf("%s: Init has not succeeded", f.name)
	}
	return nil
}

// Peers returns the last Sync's peers.
func (f *Frame[P]) Peers() []P { return f.peers }

// Sync records peers and makes the Table match what desired makes of them.
func (f *Frame[P]) Sync(peers []P) error {
	if err := f.Ready(); err != nil {
		return err
	}
	f.peers = slices.Clone(peers)
	return f.Apply()
}

// Apply makes the Table match what desired makes of the last Sync's peers.
func (f *Frame[P]) Apply() error {
	if f.Table == nil {
		return errors.New(f.name + ": Init has not succeeded")
	}
	f.skipped = map[netip.Prefix]string{}
	c, err := f.Table.Set(f.desired(f.peers))
	f.warned, f.skipped = f.skipped, nil
	if !c.None() {
		f.log.Debug(f.name+": applied peers", "peers", len(f.peers), "added", c.Added, "removed", c.Removed, "failed", c.Failed)
	}
	if err != nil {
		return fmt.Errorf("%s: sync %d peers: %w", f.name, len(f.peers), err)
	}
	return nil
}

// Skip, called by desired, records that the peer with subnet sn gets no
// entries because of problem, and logs it unless the previous Apply
// logged the same; attrs are added to the log line.
func (f *Frame[P]) Skip(sn netip.Prefix, problem string, attrs ...any) {
	f.skipped[sn] = problem
	if f.warned[sn] != problem {
		f.log.Warn(f.name+": skipping peer", append([]any{"subnet", sn, "reason", problem}, attrs...)...)
	}
}
