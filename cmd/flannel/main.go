// Command flannel is the flannel CNI plugin: container runtimes run it from
// /opt/cni/bin with the CNI_* environment and the network configuration on
// stdin. The logic is in internal/cni.
package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/flannel-go/flannel/internal/cni"
)

func main() {
	// The runtime reads stdout as the result; warnings go to stderr,
	// which runtimes log.
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p := cni.New(log, os.Stdout, nil)
	skel.PluginMainFuncs(p.Funcs(context.Background()), cni.Versions, cni.About())
}
