package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/etcdtest"
	"github.com/flannel-go/flannel/internal/status"
)

// runCLI runs flannelctl with args as the binary would, with env as its
// whole environment, and returns its exit status and output.
func runCLI(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code = run(ctx, args, opsEnv{
		getenv: func(k string) string { return env[k] },
		stdin:  strings.NewReader(""),
		stdout: &out, stderr: &errb,
	})
	return code, out.String(), errb.String()
}

// Global flags work before the command as well as after it, as etcdctl's
// and kubectl's do.
func TestGlobalFlagsEitherSide(t *testing.T) {
	eps := strings.Join(etcdtest.StartEtcd(t), ",")
	prefix := "--etcd-prefix=/test/global"
	cfg := `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`
	if code, _, errOut := runCLI(t, nil, "--etcd-endpoints="+eps, prefix, "config", "set", cfg); code != 0 {
		t.Fatalf("config set with flags first: exit %d: %s", code, errOut)
	}
	for _, args := range [][]string{
		{"--etcd-endpoints=" + eps, prefix, "config", "get"},
		{"--etcd-endpoints", eps, prefix, "--", "config", "get"},
		{"config", "get", "--etcd-endpoints=" + eps, prefix},
		{"--etcd-endpoints=" + eps, "config", "get", prefix},
	} {
		code, out, errOut := runCLI(t, nil, args...)
		if code != 0 || strings.TrimSpace(out) != cfg {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	for _, args := range [][]string{
		{"--etcd-endpoints=" + eps, prefix, "-o", "json", "leases", "list"},
		{"leases", "list", "--etcd-endpoints=" + eps, prefix, "-o", "json"},
		{"-o", "json", "leases", "list", "--etcd-endpoints=" + eps, prefix},
	} {
		code, out, errOut := runCLI(t, nil, args...)
		var ls []status.LeaseInfo
		if code != 0 || json.Unmarshal([]byte(out), &ls) != nil || len(ls) != 0 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want an empty JSON list", args, code, out, errOut)
		}
	}
	// The flag after the command wins, as a later flag does.
	code, _, errOut := runCLI(t, nil, "--etcd-endpoints=http://127.0.0.1:1", "config", "get", "--etcd-endpoints="+eps, prefix)
	if code != 0 {
		t.Errorf("flag after the command does not override the one before: exit %d: %s", code, errOut)
	}
}

func TestExitCodes(t *testing.T) {
	eps := strings.Join(etcdtest.StartEtcd(t), ",")
	env := map[string]string{"FLANNELD_ETCD_ENDPOINTS": eps, "FLANNELD_ETCD_PREFIX": "/test/exit"}
	for _, tc := range []struct {
		args []string
		code int
		want string // in stderr
	}{
		{nil, 2, "usage:"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"--no-such-flag", "leases", "list"}, 2, "no-such-flag"},
		{[]string{"leases"}, 2, "missing subcommand"},
		{[]string{"leases", "frob"}, 2, "unknown subcommand"},
		{[]string{"leases", "show"}, 2, "want 1 arguments"},
		{[]string{"leases", "list", "--no-such-flag"}, 2, "no-such-flag"},
		{[]string{"leases", "list", "-o", "yaml"}, 2, "must be table or json"},
		{[]string{"--etcd-api=v4", "leases", "list"}, 2, "--etcd-api"},
		{[]string{"config", "frob"}, 2, "unknown subcommand"},
		{[]string{"--etcd-endpoints=http://e:1", "lab", "status"}, 2, "lab takes none of the etcd flags"},
		{[]string{"config", "get"}, 1, "no network config"},
		{[]string{"leases", "show", "10.5.1.0/24"}, 1, "no lease or reservation"},
		{[]string{"config", "set", `{"Network":`}, 1, "refused"},
		{[]string{"leases", "list"}, 0, ""},
		{[]string{"version"}, 0, ""},
		{[]string{"--version"}, 0, ""},
		{[]string{"-h"}, 0, ""},
		{[]string{"leases", "list", "-h"}, 0, "-etcd-endpoints"},
	} {
		code, out, errOut := runCLI(t, env, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("flannelctl %s: exit %d, stderr %q; want exit %d and %q\nstdout: %s", strings.Join(tc.args, " "), code, errOut, tc.code, tc.want, out)
		}
	}
}
