package etcdconf_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/etcdconf"
	"github.com/flannel-go/flannel/internal/etcdtest"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/logbuf"
)

func bufLog(b *logbuf.Buffer) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// The checks every API shares happen once, before any store is made.
func TestOpenErrors(t *testing.T) {
	f := etcdtest.WriteTLS(t)
	https := []string{"https://127.0.0.1:1"}
	for _, api := range []string{"v3", "v2", "auto"} {
		for _, tc := range []struct {
			name string
			o    etcdconf.Options
			want string
		}{
			{"no endpoints", etcdconf.Options{}, "--etcd-endpoints is empty"},
			{"mixed schemes", etcdconf.Options{Endpoints: []string{"https://a:1", "http://b:1"}}, "mix https and plain http"},
			{"missing cert", etcdconf.Options{Endpoints: https, CertFile: "/nonexistent/c.pem", KeyFile: f.ClientKey}, "/nonexistent/c.pem"},
			{"cert without key", etcdconf.Options{Endpoints: https, CertFile: f.ClientCert}, "--etcd-certfile and --etcd-keyfile must be given together"},
			{"missing CA", etcdconf.Options{Endpoints: https, CAFile: "/nonexistent/ca.pem"}, "/nonexistent/ca.pem"},
			{"CA not PEM", etcdconf.Options{Endpoints: https, CAFile: f.ClientKey}, "no PEM certificate"},
			{"bad API", etcdconf.Options{Endpoints: https, API: "v4"}, "--etcd-api"},
			{"relative prefix", etcdconf.Options{Endpoints: https, Prefix: "coreos.com"}, "must start with /"},
		} {
			t.Run(api+"/"+tc.name, func(t *testing.T) {
				if tc.o.API == "" {
					tc.o.API = api
				}
				s, err := etcdconf.Open(tc.o, nil, etcdconf.Hooks{})
				if err == nil {
					s.Close()
					t.Fatal("Open succeeded")
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %q does not mention %q", err, tc.want)
				}
			})
		}
	}
}

// One warning about plain http per Open, even when auto makes two stores.
func TestPlainHTTPWarnsOnce(t *testing.T) {
	for _, api := range []string{"v3", "v2", "auto"} {
		var buf logbuf.Buffer
		s, err := etcdconf.Open(etcdconf.Options{Endpoints: []string{"http://127.0.0.1:1"}, API: api}, bufLog(&buf), etcdconf.Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		if n := strings.Count(buf.String(), "not encrypted"); n != 1 {
			t.Errorf("%s: %d plain-http warnings, want 1:\n%s", api, n, buf.String())
		}
	}
}

func TestLooseKeyWarns(t *testing.T) {
	f := etcdtest.WriteTLS(t)
	if err := os.Chmod(f.ClientKey, 0o644); err != nil {
		t.Fatal(err)
	}
	var buf logbuf.Buffer
	s, err := etcdconf.Open(etcdconf.Options{Endpoints: []string{"https://127.0.0.1:1"}, CertFile: f.ClientCert, KeyFile: f.ClientKey, API: "v2"}, bufLog(&buf), etcdconf.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if !strings.Contains(buf.String(), "chmod 0600") {
		t.Errorf("no warning about the key file's mode:\n%s", buf.String())
	}
}

// Against a real etcd, each API reaches its keyspace, and auto finds the
// config where it is.
func TestOpenAPIs(t *testing.T) {
	eps := etcdtest.StartEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	prefix := "/test/open"
	o := etcdconf.Options{Endpoints: eps, Prefix: prefix, Timeout: 5 * time.Second}
	open := func(api string) *etcdconf.Store {
		o := o
		o.API = api
		s, err := etcdconf.Open(o, nil, etcdconf.Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	v3, auto := open("v3"), open("auto")
	if v3.API() != "v3" || auto.API() != "" || auto.Prefix() != prefix {
		t.Fatalf("API v3 %q, auto %q, prefix %q", v3.API(), auto.API(), auto.Prefix())
	}
	if _, _, err := auto.Leases(ctx); err == nil {
		t.Error("auto listed leases before choosing a keyspace")
	}
	if _, err := auto.Config(ctx); !errors.Is(err, lease.ErrNoConfig) {
		t.Fatalf("auto Config on an empty etcd: %v", err)
	}
	if err := v3.PutConfig(ctx, []byte(`{"Network":"10.5.0.0/16"}`)); err != nil {
		t.Fatal(err)
	}
	if api, err := auto.Choose(ctx); err != nil || api != "v3" {
		t.Fatalf("Choose = %q, %v", api, err)
	}
	if _, _, err := auto.Leases(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestFlags(t *testing.T) {
	parse := func(env map[string]string, args ...string) (etcdconf.Options, error) {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f := etcdconf.Register(fs)
		if err := fs.Parse(args); err != nil {
			return etcdconf.Options{}, err
		}
		return f.Options(func(k string) string { return env[k] })
	}
	o, err := parse(nil)
	if err != nil || strings.Join(o.Endpoints, ",") != "http://127.0.0.1:4001,http://127.0.0.1:2379" ||
		o.Prefix != "/coreos.com/network" || o.API != "auto" || o.CertFile != "" || o.Username != "" {
		t.Errorf("defaults: %+v %v", o, err)
	}
	env := map[string]string{
		"FLANNELD_ETCD_ENDPOINTS": "http://e1:2379, http://e2:2379",
		"FLANNELD_ETCD_PREFIX":    "/env",
		"FLANNELD_ETCD_USERNAME":  "", // empty: unset
		"FLANNELD_ETCD_PASSWORD":  "pw",
		"FLANNELD_ETCD_API":       "v2",
		"FLANNELD_ETCD_CAFILE":    "/ca.pem",
	}
	o, err = parse(env, "--etcd-prefix=/flag")
	if err != nil || strings.Join(o.Endpoints, " ") != "http://e1:2379 http://e2:2379" || o.Prefix != "/flag" ||
		o.Username != "" || o.Password != "pw" || o.API != "v2" || o.CAFile != "/ca.pem" {
		t.Errorf("flag > env > default: %+v %v", o, err)
	}
	for _, bad := range [][]string{{"--etcd-api=v4"}, {"--etcd-prefix=rel"}, {"--etcd-prefix="}, {"--etcd-certfile=/c.pem"}, {"--etcd-endpoints= , "}} {
		if _, err := parse(nil, bad...); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
	var help bytes.Buffer
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(&help)
	etcdconf.Register(fs)
	fs.PrintDefaults()
	for _, name := range []string{"etcd-endpoints", "etcd-prefix", "etcd-keyfile", "etcd-certfile", "etcd-cafile", "etcd-username", "etcd-password", "etcd-api"} {
		if !etcdconf.IsFlag(name) || !strings.Contains(help.String(), "-"+name) {
			t.Errorf("--%s: not declared or not known to IsFlag", name)
		}
	}
}
