package daemon

import (
	"context"
	"time"

	"github.com/flannel-go/flannel/internal/backoff"
)

// watchKernel runs Deps.WatchKernel until ctx ends, restarting it when the
// kernel's notifications stop.
func (d *Daemon) watchKernel(ctx context.Context, changed chan<- struct{}) {
	kick := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	for ctx.Err() == nil {
		if err := d.deps.WatchKernel(ctx, kick); err != nil {
			d.log.Debug("kernel change notifications; restarting", "err", err)
			kick() // something may have been missed
		}
		if backoff.Sleep(ctx, time.Second) != nil {
			return
		}
	}
}
