//go:build !linux

package daemon

import (
	"context"
	"errors"

	"github.com/flannel-go/flannel/internal/lease"
)

var errNotLinux = errors.New("not supported on this platform")

func ensureBlackhole(lease.Lease) error { return errNotLinux }

// WatchKernelDeletes is Linux-only.
func WatchKernelDeletes(ctx context.Context, _ func()) error {
	<-ctx.Done()
	return nil
}
