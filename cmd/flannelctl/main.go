// Command flannelctl is the operator's tool for flannel: a local multi-host
// lab (`flannelctl lab up`), and, against a cluster's etcd or Kubernetes
// API server, the network config, the leases and the local daemon's health.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
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

config, leases, status and doctor take flanneld's --etcd-* flags and FLANNELD_* variables, before or after
the command (flannelctl --etcd-endpoints=URL leases list), as well as --timeout and -o json; -h lists them.
Kubernetes mode (flanneld --kube-subnet-mgr): --kubeconfig FILE as kubectl's (or $KUBECONFIG without
--etcd-* flags, or --kube-subnet-mgr with ~/.kube/config or the in-cluster config); leases are the nodes'
podCIDRs and annotations (--kube-annotation-prefix); status and doctor read this host's node
(--node-name, default $NODE_NAME).
Exit status: 0 done, 1 failed (or problems found), 2 bad command line.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], opsEnv{getenv: os.Getenv, stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr})
	stop()
	os.Exit(code)
}

// Exit codes, as etcdctl's and kubectl's: 0 done, 1 the command failed
// (or, for status and doctor, found a problem), 2 the command line was
// wrong.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// usageError is a command line that cannot be run.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func run(ctx context.Context, args []string, e opsEnv) int {
	global, rest, err := splitGlobal(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(e.stdout, usage)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "flannelctl: %v\n%s", err, usage)
		return exitUsage
	}
	if len(rest) == 0 {
		fmt.Fprint(e.stderr, usage)
		return exitUsage
	}
	e.global = global
	switch rest[0] {
	case "lab":
		if len(global) > 0 {
			err = usagef("lab takes none of the etcd flags (%s)", strings.Join(global, " "))
		} else {
			err = labCmd(ctx, rest[1:], e.stdout, e.stderr)
		}
	case "config", "leases", "status", "doctor":
		err = ops(ctx, rest[0], rest[1:], e)
	case "version":
		fmt.Fprintln(e.stdout, versionString())
		return exitOK
	case "help":
		fmt.Fprint(e.stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(e.stderr, "flannelctl: unknown command %q\n%s", rest[0], usage)
		return exitUsage
	}
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(e.stderr, "flannelctl: %v\n", err)
	if errors.As(err, new(usageError)) {
		return exitUsage
	}
	return exitFail
}

// splitGlobal separates the flags given before the command (global: the
// etcd connection, --timeout, -o, as `flannelctl --etcd-endpoints=… leases
// list`) from the command and what follows it. The command parses the
// global flags as if given after it, so both orders mean the same.
func splitGlobal(args []string) (global, rest []string, err error) {
	fs := flag.NewFlagSet("flannelctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	registerGlobal(fs)
	version := fs.Bool("version", false, "print the version")
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	if *version { // a command spelled as a flag
		return nil, []string{"version"}, nil
	}
	rest = fs.Args()
	global = args[:len(args)-len(rest)]
	if n := len(global); n > 0 && global[n-1] == "--" {
		global = global[:n-1]
	}
	return global, rest, nil
}
