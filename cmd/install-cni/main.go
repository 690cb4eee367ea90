// Command install-cni copies the flannel CNI plugin and its conflist into
// the host's CNI directories: the init step of a DaemonSet whose image
// (FROM scratch) has no shell or cp. The logic is cni.Install.
package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/flannel-go/flannel/internal/cni"
	"github.com/flannel-go/flannel/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("install-cni", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o cni.InstallOptions
	fs.StringVar(&o.Plugin, "plugin", "/flannel", "the CNI plugin binary to install (empty: skip)")
	fs.StringVar(&o.BinDir, "cni-bin-dir", "/opt/cni/bin", "directory the runtime runs CNI plugins from")
	fs.StringVar(&o.PluginName, "plugin-name", "flannel", "file name of the plugin in -cni-bin-dir")
	fs.StringVar(&o.Conflist, "conflist", "/etc/kube-flannel/cni-conf.json", "the CNI network configuration list to install (empty: skip)")
	fs.StringVar(&o.ConfDir, "cni-conf-dir", "/etc/cni/net.d", "directory the runtime reads network configurations from")
	fs.StringVar(&o.ConflistName, "conflist-name", "10-flannel.conflist", "file name of the conflist in -cni-conf-dir")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: install-cni [flags]\n\nInstalls the flannel CNI plugin and its conflist atomically.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "install-cni: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stderr, version.Version)
		return 0
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if err := cni.Install(log, o); err != nil {
		fmt.Fprintf(stderr, "install-cni: %v\n", err)
		return 1
	}
	return 0
}
