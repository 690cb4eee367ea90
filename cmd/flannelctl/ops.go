package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flannel-go/flannel/internal/etcdconf"
	"github.com/flannel-go/flannel/internal/flagenv"
	"github.com/flannel-go/flannel/internal/lease"
)

// opsEnv is the process environment of a command, injected so tests need
// neither the real environment nor real stdio.
type opsEnv struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// global are the flags given before the command; the command parses
	// them with its own.
	global []string
}

// ops runs the commands that work against a cluster's etcd and the local
// flanneld (config, leases, status, doctor).
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
		err = usagef("unknown command %q", name)
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
	env    map[string]bool
	global []string
}

func newFlags(name string, e opsEnv) *cmdFlags {
	fs := flag.NewFlagSet("flannelctl "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	return &cmdFlags{FlagSet: fs, env: map[string]bool{}, global: e.global}
}

func (f *cmdFlags) envString(p *string, name, def, usage string) {
	f.StringVar(p, name, def, usage+" (env "+flagenv.Name(etcdconf.EnvPrefix, name)+")")
	f.env[name] = true
}

func (f *cmdFlags) envInt(p *int, name string, def int, usage string) {
	f.IntVar(p, name, def, usage+" (env "+flagenv.Name(etcdconf.EnvPrefix, name)+")")
	f.env[name] = true
}

// parse parses the global flags and then args, allowing flags after
// positional arguments (`leases show 10.5.34.0/24 --etcd-endpoints=…`),
// then applies the environment. It returns the positional arguments. A
// flag it cannot parse is a usageError.
func (f *cmdFlags) parse(args []string, getenv func(string) string) ([]string, error) {
	args = append(slices.Clone(f.global), args...)
	var pos []string
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err}
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
	if err := flagenv.Set(f.FlagSet, etcdconf.EnvPrefix, getenv, func(name string) bool { return f.env[name] }); err != nil {
		return nil, usageError{err}
	}
	return pos, nil
}

// registerGlobal declares the flags every etcd command takes, which may
// also come before the command; the returned conn reads them.
func registerGlobal(fs *flag.FlagSet) (*conn, *string) {
	c := &conn{flags: etcdconf.Register(fs), fs: fs}
	fs.DurationVar(&c.timeout, "timeout", 5*time.Second, "timeout of each etcd or Kubernetes API request")
	c.kube.register(fs)
	return c, fs.String("o", "table", "output format: table or json")
}

// conn is the etcd connection, or in Kubernetes mode the API server's, as
// the flags say.
type conn struct {
	fs      *flag.FlagSet
	flags   *etcdconf.Flags
	timeout time.Duration
	opts    etcdconf.Options // set by resolve
	kube    kubeFlags
}

// register declares the global flags on a command's flag set.
func (f *cmdFlags) register() (*conn, *string) { return registerGlobal(f.FlagSet) }

// resolve reads the etcd options once the flags are parsed: a flag not
// given falls back to its FLANNELD_* variable.
func (c *conn) resolve(getenv func(string) string, output string) error {
	if err := c.kube.resolve(c.fs, getenv); err != nil {
		return err
	}
	o, err := c.flags.Options(getenv)
	if err != nil {
		return usageError{err}
	}
	if c.timeout <= 0 {
		return usagef("--timeout=%s: must be positive", c.timeout)
	}
	if output != "table" && output != "json" {
		return usagef("-o %q: must be table or json", output)
	}
	o.Timeout = c.timeout
	c.opts = o
	return nil
}

// store is what the ops commands need of a lease store; etcdconf.Store
// is it, whichever API it speaks.
type store interface {
	lease.AdminStore
	Config(ctx context.Context) ([]byte, error)
	PutConfig(ctx context.Context, cfg []byte) error
	Prefix() string
	Close() error
}

var _ store = (*etcdconf.Store)(nil)

// open connects to etcd with the chosen API. auto settles on the keyspace
// holding the config, v3 when neither does: a cluster still set up the
// pre-v0.18 way is used through v2, with a note saying so.
func (c *conn) open(ctx context.Context, e opsEnv) (store, error) {
	s, err := etcdconf.Open(c.opts, slog.New(&warnHandler{w: e.stderr}), etcdconf.Hooks{})
	if err != nil {
		return nil, err
	}
	if c.opts.API != etcdconf.APIv3 && c.opts.API != etcdconf.APIv2 {
		api, err := s.Choose(ctx)
		if err != nil {
			s.Close()
			return nil, err
		}
		if api == etcdconf.APIv2 {
			fmt.Fprintf(e.stderr, "flannelctl: using the etcd v2 API: %s is only in the v2 keyspace (--etcd-api=v3 to use v3)\n", lease.ConfigKey(s.Prefix()))
		}
	}
	return s, nil
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
	attr := func(a slog.Attr) bool {
		if a.Key != "component" { // which store: the user chose none
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		}
		return true
	}
	for _, a := range h.attrs {
		attr(a)
	}
	r.Attrs(attr)
	b.WriteByte('\n')
	_, err := io.WriteString(h.w, b.String())
	return err
}

func (h *warnHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &warnHandler{w: h.w, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *warnHandler) WithGroup(string) slog.Handler { return h }

// fields prints "name: value" lines with the values in one column,
// leaving out empty values: the human form of the show commands.
type fields struct{ tw *tabwriter.Writer }

func newFields(w io.Writer) fields { return fields{tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)} }

func (f fields) row(name, value string) {
	if value != "" {
		fmt.Fprintf(f.tw, "%s:\t%s\n", name, value)
	}
}

func (f fields) flush() error { return f.tw.Flush() }

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
