package e2e

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// flanneld authenticates to etcd with a username and password limited to
// its prefix, a wrong password is a clear error, and the password never
// appears in a log.
func TestEtcdAuthAndNoSecretsInLogs(t *testing.T) {
	l := startLab(t, labOpts(t, 2, backendConfig("vxlan")))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli, err := l.Etcd()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	const prefix = "/coreos.com/network/"
	const secret = "S3cret-flannel-pw"
	steps := []func() error{
		func() error { _, err := cli.RoleAdd(ctx, "root"); return err },
		func() error { _, err := cli.UserAdd(ctx, "root", "root-pw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "flannel"); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, "flannel", prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, "flannel", secret); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "flannel", "flannel"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("etcd auth set-up step %d: %v", i, err)
		}
	}

	good, bad := l.Hosts[0], l.Hosts[1]
	good.Args = []string{"--etcd-username=flannel", "--etcd-password=" + secret}
	bad.Args = []string{"--etcd-username=flannel", "--etcd-password=wrong-" + secret}
	for _, h := range l.Hosts {
		if err := l.StopFlanneld(h, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		_ = os.Remove(l.SubnetFile(h))
		if err := l.StartFlanneld(h); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.WaitSubnet(ctx, good, 20*time.Second); err != nil {
		t.Fatalf("flanneld with the right password: %v", err)
	}
	waitFor(t, 20*time.Second, "the wrong password to be reported", func() bool {
		b, _ := os.ReadFile(l.LogFile(bad))
		return strings.Contains(strings.ToLower(string(b)), "auth")
	})
	if _, err := os.Stat(l.SubnetFile(bad)); err == nil {
		t.Error("flanneld with a wrong password wrote subnet.env")
	}
	for _, h := range l.Hosts {
		b, _ := os.ReadFile(l.LogFile(h))
		if strings.Contains(string(b), secret) {
			t.Errorf("%s: the etcd password appears in the log:\n%s", h.Name, b)
		}
	}
	b, _ := os.ReadFile(l.LogFile(bad))
	t.Logf("wrong-password log:\n%s", b)
}
