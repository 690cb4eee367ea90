package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flannel-go/flannel/internal/etcdembed"
	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/ns"
	"github.com/flannel-go/flannel/internal/version"
)

func versionString() string { return "flannelctl " + version.Version }

func labCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("lab: missing subcommand (up, status, exec, down, demo, bench)")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "up", "demo":
		return labUp(ctx, sub == "demo", args, stdout, stderr)
	case "status":
		fs, id := labFlags("status", stderr)
		if err := fs.Parse(args); err != nil {
			return err
		}
		l, err := lab.Load(*id)
		if err != nil {
			return fmt.Errorf("%w (is the lab up? `flannelctl lab up`)", err)
		}
		printHosts(stdout, l)
		return printPings(ctx, stdout, l)
	case "exec":
		return labExec(ctx, args, stderr)
	case "down":
		fs, id := labFlags("down", stderr)
		if err := fs.Parse(args); err != nil {
			return err
		}
		if err := lab.Down(*id); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "lab %s is down\n", *id)
		return nil
	case "etcd-server":
		return labEtcdServer(ctx, args, stderr)
	case "bench":
		return labBench(ctx, args, stdout, stderr)
	case "scale":
		return labScale(ctx, args, stdout, stderr)
	default:
		return fmt.Errorf("lab: unknown subcommand %q", sub)
	}
}

func labFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("lab "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	id := fs.String("id", "flab", "lab name: prefix of its namespaces")
	return fs, id
}

func labUp(ctx context.Context, demo bool, args []string, stdout, stderr io.Writer) error {
	fs, id := labFlags("up", stderr)
	hosts := fs.Int("hosts", 3, "number of hosts")
	backendType := fs.String("backend", "vxlan", "backend type: vxlan, host-gw, udp, wireguard, alloc")
	config := fs.String("config", "", `network config JSON (default {"Network":"10.5.0.0/16","Backend":{"Type":<backend>}})`)
	flanneld := fs.String("flanneld", "", "flanneld binary (default: next to flannelctl, else $PATH)")
	etcdEndpoints := fs.String("etcd-endpoints", "", "use this etcd (reachable from the lab hosts) instead of starting one")
	etcdKind := fs.String("etcd", "embedded", "etcd to start: embedded (in flannelctl) or system (the etcd binary on $PATH)")
	verbose := fs.Bool("v", false, "log progress")
	if err := fs.Parse(args); err != nil {
		return err
	}
	bin, err := findFlanneld(*flanneld)
	if err != nil {
		return err
	}
	cfg := *config
	if cfg == "" {
		cfg = fmt.Sprintf(`{"Network":"10.5.0.0/16","Backend":{"Type":%q}}`, *backendType)
	}
	o := lab.Options{ID: *id, Hosts: *hosts, Config: cfg, Flanneld: bin}
	if *verbose {
		o.Log = slog.New(slog.NewTextHandler(stderr, nil))
	}
	if *etcdEndpoints != "" {
		o.EtcdEndpoints = strings.Split(*etcdEndpoints, ",")
	} else {
		o.EtcdCmd, err = etcdCommand(*etcdKind)
		if err != nil {
			return err
		}
	}
	start := time.Now()
	fmt.Fprintf(stdout, "building lab %s: %d hosts, config %s\n", *id, *hosts, cfg)
	l, err := lab.Up(ctx, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "lab up in %s (etcd %s)\n\n", time.Since(start).Round(time.Millisecond), strings.Join(l.EtcdEndpoints, ","))
	printHosts(stdout, l)
	perr := printPings(ctx, stdout, l)
	if demo {
		derr := l.Down()
		fmt.Fprintf(stdout, "\nlab %s is down\n", *id)
		return errors.Join(perr, derr)
	}
	fmt.Fprintf(stdout, "\ntry: flannelctl lab exec c1 -- ping %s\n     flannelctl lab exec h1 -- ip route\nthen: flannelctl lab down\n",
		l.Hosts[len(l.Hosts)-1].Container)
	return perr
}

// etcdCommand returns how the lab starts etcd in its namespace.
func etcdCommand(kind string) (func(listen, dataDir string) []string, error) {
	switch kind {
	case "embedded":
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		return func(listen, dataDir string) []string {
			return []string{self, "lab", "etcd-server", "--listen", listen, "--data-dir", dataDir}
		}, nil
	case "system":
		bin, err := exec.LookPath("etcd")
		if err != nil {
			return nil, errors.New("--etcd=system: no etcd binary on $PATH (Debian: apt-get install etcd-server)")
		}
		return func(listen, dataDir string) []string {
			return []string{bin, "--name", "lab", "--data-dir", dataDir,
				"--listen-client-urls", listen, "--advertise-client-urls", listen,
				"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
				"--initial-cluster", "lab=http://127.0.0.1:2380", "--enable-v2"}
		}, nil
	}
	return nil, fmt.Errorf("--etcd=%q: must be embedded or system", kind)
}

func findFlanneld(given string) (string, error) {
	if given != "" {
		return filepath.Abs(given)
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "flanneld")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("flanneld")
	if err != nil {
		return "", errors.New("no flanneld binary next to flannelctl or on $PATH; build it (make build) or pass --flanneld")
	}
	return filepath.Abs(p)
}

func printHosts(w io.Writer, l *lab.Lab) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tPUBLIC IP\tSUBNET\tMTU\tCONTAINER\tFLANNELD")
	for _, h := range l.Hosts {
		state := "stopped"
		if h.FlanneldPID != 0 && lab.Alive(h.FlanneldPID) {
			state = fmt.Sprintf("running (pid %d)", h.FlanneldPID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", h.Name, h.Addr, h.Subnet, h.MTU, h.Container, state)
	}
	tw.Flush()
}

// printPings prints which container reaches which, and fails if any pair
// does not.
func printPings(ctx context.Context, w io.Writer, l *lab.Lab) error {
	n := len(l.Hosts)
	got := l.PingMatrix(ctx, 3, 200*time.Millisecond)
	fmt.Fprintf(w, "\nping (received of 3), container → container:\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "FROM \\ TO")
	for _, h := range l.Hosts {
		fmt.Fprintf(tw, "\tc%s", strings.TrimPrefix(h.Name, "h"))
	}
	fmt.Fprintln(tw)
	failed := 0
	for i, h := range l.Hosts {
		fmt.Fprintf(tw, "c%s", strings.TrimPrefix(h.Name, "h"))
		for j := range n {
			switch {
			case i == j:
				fmt.Fprint(tw, "\t-")
			case got[i][j] == 3:
				fmt.Fprint(tw, "\tok")
			default:
				failed++
				fmt.Fprintf(tw, "\tFAIL %d/3", got[i][j])
			}
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	if failed > 0 {
		return fmt.Errorf("%d of %d container pairs cannot reach each other; flanneld logs are in %s/h*/flanneld.log", failed, n*(n-1), l.Dir)
	}
	fmt.Fprintf(w, "all %d pairs reach each other\n", n*(n-1))
	return nil
}

func labExec(ctx context.Context, args []string, stderr io.Writer) error {
	fs, id := labFlags("exec", stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) < 2 {
		return errors.New("lab exec: usage: flannelctl lab exec HOST -- CMD [ARGS...]")
	}
	target, cmdArgs := rest[0], rest[1:]
	if cmdArgs[0] == "--" {
		cmdArgs = cmdArgs[1:]
	}
	if len(cmdArgs) == 0 {
		return errors.New("lab exec: no command given")
	}
	l, err := lab.Load(*id)
	if err != nil {
		return err
	}
	nsName, err := l.Namespace(target)
	if err != nil {
		return err
	}
	n, err := ns.Open(nsName)
	if err != nil {
		return err
	}
	cmd := n.Command(ctx, cmdArgs[0], cmdArgs[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	return cmd.Run()
}

// labEtcdServer runs an embedded etcd until signalled: the lab starts it
// inside its etcd namespace, so a fresh machine needs no etcd package.
func labEtcdServer(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("lab etcd-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "http://127.0.0.1:2379", "client URL")
	dir := fs.String("data-dir", "", "data directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--data-dir is required")
	}
	srv, err := etcdembed.Start(ctx, etcdembed.Options{Dir: *dir, Name: "lab", ClientURLs: []string{*listen}})
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Fprintf(stderr, "etcd serving on %s\n", strings.Join(srv.Endpoints(), ","))
	<-ctx.Done()
	return nil
}
