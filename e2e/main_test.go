// Package e2e runs real flanneld processes against a real etcd in a lab of
// network namespaces and checks what a user would see: containers reaching
// each other, upstream's etcd and subnet.env formats, restarts that lose no
// packet.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/ns"
)

var binDir string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Println("e2e: skipped, needs root")
		return 0
	}
	dir, err := os.MkdirTemp("", "flannel-e2e-bin")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer os.RemoveAll(dir)
	for _, c := range []string{"flanneld", "flannelctl"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, c), "../cmd/"+c)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Printf("e2e: build %s: %v\n%s", c, err, out)
			return 1
		}
	}
	binDir = dir
	return m.Run()
}

// labOpts are the options of a lab of n hosts running config.
func labOpts(t *testing.T, n int, config string, extraArgs ...string) lab.Options {
	return lab.Options{
		ID:           ns.Unique("fe"),
		Hosts:        n,
		Config:       config,
		Flanneld:     filepath.Join(binDir, "flanneld"),
		FlanneldArgs: extraArgs,
		EtcdCmd: func(listen, dataDir string) []string {
			return []string{filepath.Join(binDir, "flannelctl"), "lab", "etcd-server", "--listen", listen, "--data-dir", dataDir}
		},
	}
}

// startLab brings up a lab and tears it down at cleanup, printing the
// flanneld logs of a failed test.
func startLab(t *testing.T, o lab.Options) *lab.Lab {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	l, err := lab.Up(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range l.Hosts {
				b, _ := os.ReadFile(l.LogFile(h))
				t.Logf("--- %s flanneld log:\n%s", h.Name, b)
			}
		}
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return l
}

func backendConfig(b string) string {
	return fmt.Sprintf(`{"Network":"10.5.0.0/16","Backend":{"Type":%q}}`, b)
}
