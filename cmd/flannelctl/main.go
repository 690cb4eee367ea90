// Command flannelctl is the operator's tool for flannel: a local multi-host
// lab (`flannelctl lab up`), and, against a cluster's etcd, the network
// config, the leases and the local daemon's health.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: flannelctl <command> [flags]

commands:
  lab up [--hosts N] [--backend B] [--config JSON]   build a local multi-host overlay and ping across it
  lab status                                          hosts, subnets, containers and a ping matrix
  lab exec HOST -- CMD...                             run CMD in a lab host (h1), container (c1) or etcd
  lab down                                            stop the lab and remove everything it made
  lab demo [--hosts N] [--backend B]                  up, show, down
  lab bench                                           throughput of each backend against the underlay
  lab scale [--peers 5000]                            one flanneld against thousands of peer leases
  config get|set|validate [JSON|@FILE|-]              the network config in etcd
  leases list|show|reserve|release [SUBNET] [IP]      the subnet leases and reservations in etcd
  status                                              this host's flanneld: lease, backend, peers, health
  doctor [-q]                                         checks of this host, each with what to do
  version                                             print the version

config, leases, status and doctor take flanneld's --etcd-* flags and FLANNELD_* variables; -h lists them
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "lab":
		err = labCmd(ctx, args[1:], stdout, stderr)
	case "config", "leases", "status", "doctor":
		err = opsCmd(ctx, args[0], args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, versionString())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "flannelctl: unknown command %q\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "flannelctl: %v\n", err)
		return 1
	}
	return 0
}
