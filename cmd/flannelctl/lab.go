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
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flannel-go/flannel/internal/etcdembed"
	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/lab/kubeapi"
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
		if l.Kube != nil {
			fmt.Fprintf(stdout, "kube-apiserver %s (admin kubeconfig %s)\n\n", l.Kube.URL, l.Kube.AdminKubeconfig)
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
	kube := fs.Bool("kube", false, "Kubernetes mode: a real kube-apiserver on the lab's etcd, a Node per host with a podCIDR, flanneld --kube-subnet-mgr, pods through CNI")
	manifest := fs.String("manifest", "", "with --kube: the manifest to apply, whose cni-conf.json the pods get (default: dist/kube-flannel.yml of this checkout)")
	cniPlugin := fs.String("cni-plugin", "", "with --kube: the flannel CNI plugin (default: flannel next to flannelctl, else /opt/cni/bin/flannel)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var ko *lab.KubeOptions
	if *kube {
		var err error
		if ko, err = kubeOptions(*manifest, *cniPlugin); err != nil {
			return err
		}
	}
	bin, err := findFlanneld(*flanneld)
	if err != nil {
		return err
	}
	cfg := *config
	if cfg == "" {
		network := "10.5.0.0/16"
		if *kube {
			network = "10.244.0.0/16" // the manifest's, and kubeadm's usual --pod-network-cidr
		}
		cfg = fmt.Sprintf(`{"Network":%q,"Backend":{"Type":%q}}`, network, *backendType)
	}
	o := lab.Options{ID: *id, Hosts: *hosts, Config: cfg, Flanneld: bin, Kube: ko}
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
	fmt.Fprintf(stdout, "lab up in %s (etcd %s", time.Since(start).Round(time.Millisecond), strings.Join(l.EtcdEndpoints, ","))
	if l.Kube != nil {
		fmt.Fprintf(stdout, ", kube-apiserver %s", l.Kube.URL)
	}
	fmt.Fprint(stdout, ")\n\n")
	printHosts(stdout, l)
	perr := printPings(ctx, stdout, l)
	if demo {
		derr := l.Down()
		fmt.Fprintf(stdout, "\nlab %s is down\n", *id)
		return errors.Join(perr, derr)
	}
	fmt.Fprintf(stdout, "\ntry: flannelctl lab exec c1 -- ping %s\n     flannelctl lab exec h1 -- ip route\n",
		l.Hosts[len(l.Hosts)-1].Container)
	if l.Kube != nil {
		fmt.Fprintf(stdout, "     flannelctl lab exec h1 -- kubectl --kubeconfig %s get nodes -o wide\n", l.Kube.AdminKubeconfig)
	}
	fmt.Fprint(stdout, "then: flannelctl lab down\n")
	return perr
}

// kubeOptions finds what --kube needs, failing at once with what to do
// when something is missing.
func kubeOptions(manifest, cniPlugin string) (*lab.KubeOptions, error) {
	apiserver, err := kubeapi.Binary()
	if err != nil {
		return nil, fmt.Errorf("lab up --kube: %w", err)
	}
	if manifest, err = findManifest(manifest); err != nil {
		return nil, err
	}
	plugin, err := findCNIPlugin(cniPlugin)
	if err != nil {
		return nil, err
	}
	// The flannel plugin first, so the one given wins over an installed one.
	path := []string{filepath.Dir(plugin), "/usr/lib/cni", "/opt/cni/bin"}
	for _, p := range []string{"bridge", "host-local", "portmap"} {
		if !slices.ContainsFunc(path, func(dir string) bool { return isFile(filepath.Join(dir, p)) }) {
			return nil, fmt.Errorf("lab up --kube: no CNI plugin %q in %s (Debian: apt-get install containernetworking-plugins)", p, strings.Join(path[1:], " or "))
		}
	}
	return &lab.KubeOptions{APIServer: apiserver, Manifest: manifest, Detach: true, CNIPath: path}, nil
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// findManifest returns the manifest given, else dist/kube-flannel.yml
// beside the bin/ directory flannelctl was built into, else the one in
// the checkout around the working directory.
func findManifest(given string) (string, error) {
	if given != "" {
		return filepath.Abs(given)
	}
	var candidates []string
	if self, err := os.Executable(); err == nil {
		candidates = append(candidates, filepath.Join(filepath.Dir(self), "..", "dist", "kube-flannel.yml"))
	}
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			candidates = append(candidates, filepath.Join(dir, "dist", "kube-flannel.yml"))
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	for _, c := range candidates {
		if isFile(c) {
			return filepath.Abs(c)
		}
	}
	return "", errors.New("lab up --kube: no dist/kube-flannel.yml beside flannelctl's bin/ or above the working directory; pass --manifest")
}

// findCNIPlugin returns the flannel CNI plugin: the one given, else bin/flannel
// beside flannelctl (make build), else an installed one.
func findCNIPlugin(given string) (string, error) {
	if given != "" {
		p, err := filepath.Abs(given)
		if err != nil {
			return "", err
		}
		// libcni finds a plugin by its type, the file's name.
		if filepath.Base(p) != "flannel" || !isFile(p) {
			return "", fmt.Errorf("--cni-plugin %s: must be a file named flannel (build it: make build)", given)
		}
		return p, nil
	}
	var candidates []string
	if self, err := os.Executable(); err == nil {
		candidates = append(candidates, filepath.Join(filepath.Dir(self), "flannel"))
	}
	candidates = append(candidates, "/opt/cni/bin/flannel")
	for _, c := range candidates {
		if isFile(c) {
			return c, nil
		}
	}
	return "", errors.New("lab up --kube: no flannel CNI plugin next to flannelctl or in /opt/cni/bin; build it (make build) or pass --cni-plugin")
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

// containerWord is what a host's container is: a pod when CNI made it.
func containerWord(l *lab.Lab) string {
	if l.Kube != nil && len(l.Kube.CNIPath) > 0 {
		return "pod"
	}
	return "container"
}

func printHosts(w io.Writer, l *lab.Lab) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "HOST\tPUBLIC IP\tSUBNET\tMTU\t%s\tFLANNELD\n", strings.ToUpper(containerWord(l)))
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
	fmt.Fprintf(w, "\nping (received of 3), %[1]s → %[1]s:\n", containerWord(l))
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
		return fmt.Errorf("%d of %d %s pairs cannot reach each other; flanneld logs are in %s/h*/flanneld.log", failed, n*(n-1), containerWord(l), l.Dir)
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
