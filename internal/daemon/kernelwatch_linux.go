package daemon

import (
	"context"
	"errors"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// WatchKernelDeletes calls changed whenever a link, route, neighbour or FDB
// entry is deleted in this network namespace, until ctx ends. The daemon
// then repairs at once instead of at its next periodic check, so a device
// or route removed by hand (or by another tool) costs a moment of traffic,
// not seconds. Its own deletions trigger a repair too, which finds nothing
// to do. It returns an error if the kernel's notifications stop (for
// example a socket overrun); the caller restarts it.
func WatchKernelDeletes(ctx context.Context, changed func()) error {
	done := make(chan struct{})
	defer close(done)
	links := make(chan netlink.LinkUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 256)
	neighs := make(chan netlink.NeighUpdate, 256)
	failed := make(chan error, 3)
	onErr := func(err error) {
		select {
		case failed <- err:
		default:
		}
	}
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return err
	}
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return err
	}
	if err := netlink.NeighSubscribeWithOptions(neighs, done, netlink.NeighSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return err
	}
	closed := errors.New("kernel notifications stopped")
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-failed:
			return err
		case u, ok := <-links:
			if !ok {
				return closed
			}
			if u.Header.Type == unix.RTM_DELLINK {
				changed()
			}
		case u, ok := <-routes:
			if !ok {
				return closed
			}
			if u.Type == unix.RTM_DELROUTE {
				changed()
			}
		case u, ok := <-neighs:
			if !ok {
				return closed
			}
			if u.Type == unix.RTM_DELNEIGH {
				changed()
			}
		}
	}
}
