package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/flannel-go/flannel/internal/flagenv"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/etcdstore"
	"github.com/flannel-go/flannel/internal/lease/etcdv2store"
	"github.com/flannel-go/flannel/internal/netconf"
)

// opsEnv is the process environment of an ops command, injected so tests
// need neither the real environment nor real stdio.
type opsEnv struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// opsCmd runs the commands that work against a cluster's etcd and the local
// flanneld (config, leases, status, doctor).
func opsCmd(ctx context.Context, name string, args []string, stdout, stderr io.Writer) error {
	return ops(ctx, name, args, opsEnv{getenv: os.Getenv, stdin: os.Stdin, stdout: stdout, stderr: stderr})
}

func ops(ctx context.Context, name string, args []string, e opsEnv) error {
	var err error
	switch name {
	case "config":
		err = configCmd(ctx, args, e)
	case "leases":
		err = leasesCmd(ctx, args, e)
	case "status":
		err = statusCmd(ctx, args, e)
	case "doctor":
		err = doctorCmd(ctx, args, e)
	default:
		err = fmt.Errorf("unknown command %q", name)
	}
	if errors.Is(err, flag.ErrHelp) {
		return nil // -h: the flag set printed the usage
	}
	return err
}

// cmdFlags is a command's flag set. Flags registered with envString and
// envInt fall back to FLANNELD_<NAME> as flanneld's do: flag > env >
// default, an empty variable counting as unset.
type cmdFlags struct {
	*flag.FlagSet
	env map[string]bool
}

func newFlags(name string, e opsEnv) *cmdFlags {
	fs := flag.NewFlagSet("flannelctl "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	return &cmdFlags{FlagSet: fs, env: map[string]bool{}}
}

func (f *cmdFlags) envString(p *string, name, def, usage string) {
	f.StringVar(p, name, def, usage+" (env "+flagenv.Name("FLANNELD_", name)+")")
	f.env[name] = true
}

func (f *cmdFlags) envInt(p *int, name string, def int, usage string) {
	f.IntVar(p, name, def, usage+" (env "+flagenv.Name("FLANNELD_", name)+")")
	f.env[name] = true
}

// parse parses args, allowing flags after positional arguments
// (`leases show 10.5.34.0/24 --etcd-endpoints=…`), then applies the
// environment. It returns the positional arguments.
func (f *cmdFlags) parse(args []string, getenv func(string) string) ([]string, error) {
	var pos []string
	for {
		if err := f.Parse(args); err != nil {
			return nil, err
		}
		args = f.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	return pos, flagenv.Set(f.FlagSet, "FLANNELD_", getenv, func(name string) bool { return f.env[name] })
}

// conn holds the etcd connection flags, with flanneld's names, defaults
// and variables.
type conn struct {
	endpoints, prefix         string
	keyfile, certfile, cafile string
	username, password        string
	api                       string
	timeout                   time.Duration
}

func (c *conn) register(f *cmdFlags) {
	f.envString(&c.endpoints, "etcd-endpoints", "http://127.0.0.1:4001,http://127.0.0.1:2379", "a comma-delimited list of etcd endpoints")
	f.envString(&c.prefix, "etcd-prefix", etcdstore.DefaultPrefix, "etcd prefix")
	f.envString(&c.keyfile, "etcd-keyfile", "", "SSL key file used to secure etcd communication")
	f.envString(&c.certfile, "etcd-certfile", "", "SSL certification file used to secure etcd communication")
	f.envString(&c.cafile, "etcd-cafile", "", "SSL Certificate Authority file used to secure etcd communication")
	f.envString(&c.username, "etcd-username", "", "username for BasicAuth to etcd")
	f.envString(&c.password, "etcd-password", "", "password for BasicAuth to etcd")
	f.envString(&c.api, "etcd-api", "auto", "etcd API: v3, v2, or auto (v3, unless only the v2 keyspace holds a config)")
	f.DurationVar(&c.timeout, "timeout", 5*time.Second, "timeout of each etcd request")
}

func (c *conn) validate() error {
	if c.prefix == "" || !strings.HasPrefix(c.prefix, "/") {
		return fmt.Errorf("--etcd-prefix=%q: must start with /", c.prefix)
	}
	if (c.certfile == "") != (c.keyfile == "") {
		return errors.New("--etcd-certfile and --etcd-keyfile must be given together")
	}
	switch c.api {
	case "auto", "v3", "v2":
	default:
		return fmt.Errorf("--etcd-api=%q: must be auto, v3 or v2", c.api)
	}
	if c.timeout <= 0 {
		return fmt.Errorf("--timeout=%s: must be positive", c.timeout)
	}
	return nil
}

// outputFlag registers -o.
func outputFlag(f *cmdFlags) *string {
	return f.String("o", "table", "output format: table or json")
}

func checkOutput(o string) error {
	if o != "table" && o != "json" {
		return fmt.Errorf("-o %q: must be table or json", o)
	}
	return nil
}

func (c *conn) endpointList() []string {
	var out []string
	for _, e := range strings.Split(c.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// store is what the ops commands need of a lease store; etcdstore (v3)
// and etcdv2store implement it.
type store interface {
	Config(ctx context.Context) ([]byte, error)
	PutConfig(ctx context.Context, cfg []byte) error
	Leases(ctx context.Context) ([]lease.Lease, int64, error)
	Lookup(ctx context.Context, key string) (lease.Lease, error)
	Create(ctx context.Context, l lease.Lease, ttl time.Duration) (lease.Lease, error)
	Revoke(ctx context.Context, l lease.Lease) error
	Prefix() string
	Close() error
}

var (
	_ store = (*etcdstore.Store)(nil)
	_ store = (*etcdv2store.Store)(nil)
)

// open connects to etcd with the chosen API. auto uses v3 unless the v3
// keyspace has no config and the v2 keyspace has one: a cluster still set
// up the pre-v0.18 way.
func (c *conn) open(ctx context.Context, e opsEnv) (store, error) {
	eps := c.endpointList()
	if len(eps) == 0 {
		return nil, errors.New("--etcd-endpoints is empty")
	}
	log := slog.New(&warnHandler{w: e.stderr})
	v2 := func() (*etcdv2store.Store, error) {
		return etcdv2store.New(etcdv2store.Options{Endpoints: eps, Prefix: c.prefix, CertFile: c.certfile, KeyFile: c.keyfile,
			CAFile: c.cafile, Username: c.username, Password: c.password, Log: log, Timeout: c.timeout})
	}
	if c.api == "v2" {
		return v2()
	}
	s3, err := etcdstore.New(etcdstore.Options{Endpoints: eps, Prefix: c.prefix, CertFile: c.certfile, KeyFile: c.keyfile,
		CAFile: c.cafile, Username: c.username, Password: c.password, Log: log, Timeout: c.timeout})
	if err != nil || c.api == "v3" {
		return s3, err
	}
	if _, err := s3.Config(ctx); !errors.Is(err, lease.ErrNoConfig) {
		if err != nil {
			// Unreachable, most likely: say so once rather than after
			// every request timing out again.
			s3.Close()
			return nil, err
		}
		return s3, nil
	}
	s2, err := v2()
	if err != nil {
		return s3, nil
	}
	if has, _ := s2.HasConfig(ctx); has {
		fmt.Fprintf(e.stderr, "flannelctl: using the etcd v2 API: %s/config is only in the v2 keyspace (--etcd-api=v3 to use v3)\n", s2.Prefix())
		s3.Close()
		return s2, nil
	}
	s2.Close()
	return s3, nil
}

// warnHandler prints the stores' warnings (bad entries under subnets/,
// named by key) as one line each. The stores also report plain-http
// endpoints on every start and each change of connection state: right for
// a daemon's log, noise for a command run by hand, whose error already
// says when etcd could not be reached.
type warnHandler struct {
	w     io.Writer
	attrs []slog.Attr
}

func (h *warnHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *warnHandler) Handle(_ context.Context, r slog.Record) error {
	for _, noise := range []string{"etcd endpoints are plain http", "etcd unreachable", "etcd reachable"} {
		if strings.HasPrefix(r.Message, noise) {
			return nil
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "flannelctl: warning: %s", r.Message)
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	b.WriteByte('\n')
	_, err := io.WriteString(h.w, b.String())
	return err
}

func (h *warnHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &warnHandler{w: h.w, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *warnHandler) WithGroup(string) slog.Handler { return h }

// readConfig reads and parses the network config in etcd.
func readConfig(ctx context.Context, s store) ([]byte, *netconf.Config, error) {
	raw, err := s.Config(ctx)
	if errors.Is(err, lease.ErrNoConfig) {
		return nil, nil, fmt.Errorf("no network config at %s/config; write one with `flannelctl config set`: %w", s.Prefix(), lease.ErrNoConfig)
	}
	if err != nil {
		return nil, nil, err
	}
	cfg, err := netconf.Parse(raw)
	if err != nil {
		return raw, nil, fmt.Errorf("the network config at %s/config is invalid: %w", s.Prefix(), err)
	}
	return raw, cfg, nil
}

// parseSubnet accepts a subnet as CIDR (10.5.34.0/24) or as its etcd key
// (10.5.34.0-24, or 10.5.34.0-24&fc00:0:0:1::-64 for dual stack).
func parseSubnet(s string) (sn, sn6 netip.Prefix, err error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return sn, sn6, fmt.Errorf("subnet %q: %w", s, err)
		}
		if !p.Addr().Is4() {
			return sn, sn6, fmt.Errorf("subnet %q: not IPv4 (for a dual-stack lease give its key, 10.5.34.0-24&fc00:0:0:1::-64)", s)
		}
		if p.Masked() != p {
			return sn, sn6, fmt.Errorf("subnet %q has host bits set; did you mean %s?", s, p.Masked())
		}
		return p, sn6, nil
	}
	return lease.ParseKey(s)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// fmtLeft formats a lease's remaining time as the EXPIRES column shows
// it: 23h59m, 4m05s, 9s.
func fmtLeft(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d <= 0:
		return "expired"
	case d >= time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	case d >= time.Minute:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%ds", int(d.Seconds()))
}
