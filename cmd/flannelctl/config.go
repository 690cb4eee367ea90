package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"strings"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

const configUsage = `usage: flannelctl config get                      print the network config in etcd
       flannelctl config set JSON|@FILE|-       validate, then write it (- reads stdin)
       flannelctl config validate [JSON|@FILE|-] check a config (default: the one in etcd)`

func configCmd(ctx context.Context, args []string, e opsEnv) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usagef("config: missing subcommand\n%s", configUsage)
	}
	sub := args[0]
	switch sub {
	case "get", "set", "validate":
	default:
		return usagef("config: unknown subcommand %q\n%s", sub, configUsage)
	}
	f := newFlags("config "+sub, e)
	c, output := f.register()
	pos, err := f.parse(args[1:], e.getenv)
	if err != nil {
		return err
	}
	if err := c.resolve(e.getenv, *output); err != nil {
		return err
	}
	if c.kube.on && sub == "set" {
		return fmt.Errorf("config set: in Kubernetes mode the network config is the net-conf.json key of the kube-flannel-cfg ConfigMap (kubectl -n kube-flannel edit configmap kube-flannel-cfg); flanneld reads it at start")
	}
	if c.kube.on && sub == "get" {
		if len(pos) != 0 {
			return usagef("config get: unexpected argument %q", pos[0])
		}
		return configGetKube(ctx, c, e)
	}
	switch sub {
	case "get":
		if len(pos) != 0 {
			return usagef("config get: unexpected argument %q", pos[0])
		}
		s, err := c.open(ctx, e)
		if err != nil {
			return err
		}
		defer s.Close()
		raw, err := s.Config(ctx)
		if errors.Is(err, lease.ErrNoConfig) {
			return fmt.Errorf("config get: no network config at %s; write one with `flannelctl config set`", lease.ConfigKey(s.Prefix()))
		}
		if err != nil {
			return fmt.Errorf("config get: %w", err)
		}
		if !bytes.HasSuffix(raw, []byte("\n")) {
			raw = append(raw, '\n')
		}
		_, err = e.stdout.Write(raw)
		return err
	case "set":
		if len(pos) != 1 {
			return usagef("config set: want one argument: the config as JSON, @FILE or - (stdin)\n%s", configUsage)
		}
		raw, err := readArg(pos[0], e.stdin)
		if err != nil {
			return fmt.Errorf("config set: %w", err)
		}
		cfg, err := netconf.Parse(raw)
		if err != nil {
			return fmt.Errorf("config set: refused, nothing written: %w", err)
		}
		s, err := c.open(ctx, e)
		if err != nil {
			return err
		}
		defer s.Close()
		if err := s.PutConfig(ctx, raw); err != nil {
			return fmt.Errorf("config set: %w", err)
		}
		fmt.Fprintf(e.stdout, "wrote %s: %s\n", lease.ConfigKey(s.Prefix()), summary(cfg))
		warnMisfits(ctx, s, cfg, e.stderr)
		return nil
	case "validate":
		var raw []byte
		from := "config"
		switch len(pos) {
		case 0:
			s, err := c.open(ctx, e)
			if err != nil {
				return err
			}
			defer s.Close()
			if raw, err = s.Config(ctx); err != nil {
				return fmt.Errorf("config validate: %w", err)
			}
			from = lease.ConfigKey(s.Prefix())
		case 1:
			if raw, err = readArg(pos[0], e.stdin); err != nil {
				return fmt.Errorf("config validate: %w", err)
			}
		default:
			return usagef("config validate: want at most one argument\n%s", configUsage)
		}
		cfg, err := netconf.Parse(raw)
		if err != nil {
			return fmt.Errorf("config validate: %w", err)
		}
		fmt.Fprintf(e.stdout, "%s is valid: %s\n", from, summary(cfg))
		return nil
	}
	return usagef("config: unknown subcommand %q\n%s", sub, configUsage)
}

// readArg reads a config argument: "-" is stdin, "@path" a file, anything
// else the JSON itself.
func readArg(arg string, stdin io.Reader) ([]byte, error) {
	var r io.Reader
	switch {
	case arg == "-":
		r = stdin
	case strings.HasPrefix(arg, "@"):
		f, err := os.Open(arg[1:])
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	default:
		return []byte(arg), nil
	}
	b, err := io.ReadAll(io.LimitReader(r, netconf.MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", arg, err)
	}
	return b, nil
}

// summary describes a parsed config in one line, defaults filled in, so
// the user sees what flanneld will make of it.
func summary(cfg *netconf.Config) string {
	var parts []string
	if cfg.EnableIPv4 {
		parts = append(parts, fmt.Sprintf("Network %s, /%d subnets %s to %s (%s)", cfg.Network, cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax,
			count(cfg.SubnetMin.AsSlice(), cfg.SubnetMax.AsSlice(), 32-cfg.SubnetLen)))
	}
	if cfg.EnableIPv6 {
		parts = append(parts, fmt.Sprintf("IPv6Network %s, /%d subnets %s to %s (%s)", cfg.IPv6Network, cfg.IPv6SubnetLen, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax,
			count(cfg.IPv6SubnetMin.AsSlice(), cfg.IPv6SubnetMax.AsSlice(), 128-cfg.IPv6SubnetLen)))
	}
	parts = append(parts, "backend "+cfg.BackendType)
	return strings.Join(parts, ", ")
}

// count is the number of subnets of 2^shift addresses from lo to hi.
func count(lo, hi []byte, shift int) string {
	n := new(big.Int).Sub(new(big.Int).SetBytes(hi), new(big.Int).SetBytes(lo))
	n.Rsh(n, uint(shift))
	n.Add(n, big.NewInt(1))
	if n.IsInt64() && n.Int64() == 1 {
		return "1 subnet"
	}
	return n.String() + " subnets"
}

// warnMisfits tells the user which existing leases the new config leaves
// out: their hosts move to new subnets when flanneld restarts.
func warnMisfits(ctx context.Context, s store, cfg *netconf.Config, w io.Writer) {
	leases, _, err := s.Leases(ctx)
	if err != nil {
		return
	}
	var out []string
	for _, l := range leases {
		if !lease.Fits(cfg, l.Subnet) {
			out = append(out, l.Subnet.String())
		}
	}
	if len(out) > 0 {
		fmt.Fprintf(w, "flannelctl: note: %d existing leases do not fit the new config (%s); their hosts get new subnets when flanneld restarts, and their containers must be restarted\n",
			len(out), strings.Join(out, ", "))
	}
}
