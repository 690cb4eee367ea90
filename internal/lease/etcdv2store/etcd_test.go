package etcdv2store_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// etcdProc is an etcd server process (Debian's etcd 3.4 has the v2 API,
// behind --enable-v2; etcdembed's 3.7 has not).
type etcdProc struct {
	t      testing.TB
	URL    string // client URL
	args   []string
	log    string
	ready  *http.Client // for the readiness probe
	cmd    *exec.Cmd
	exited chan struct{}
}

// etcdOpts configure startEtcd; all optional.
type etcdOpts struct {
	// TLS: serve clients over https with this server certificate, and
	// require client certificates signed by ClientCA when it is set.
	CertFile, KeyFile, ClientCA string
	// Probe is the client for the readiness check (needed with TLS).
	Probe *http.Client
}

// startEtcd runs a single-member etcd on 127.0.0.1 with free ports and its
// data in t.TempDir(), killed (by PID) at cleanup. It skips the test when
// there is no etcd binary.
func startEtcd(t testing.TB, o etcdOpts) *etcdProc {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd not on PATH: these tests need a real etcd ≤ 3.5 with --enable-v2 (Debian: apt install etcd-server)")
	}
	dir := t.TempDir()
	scheme := "http"
	if o.CertFile != "" {
		scheme = "https"
	}
	if o.Probe == nil {
		o.Probe = &http.Client{}
	}
	for attempt := 0; ; attempt++ {
		cport, pport := freePort(t), freePort(t)
		e := &etcdProc{
			t:     t,
			URL:   fmt.Sprintf("%s://127.0.0.1:%d", scheme, cport),
			log:   filepath.Join(dir, fmt.Sprintf("etcd-%d.log", attempt)),
			ready: o.Probe,
		}
		peer := fmt.Sprintf("http://127.0.0.1:%d", pport)
		e.args = []string{
			"--name", "v2test",
			"--data-dir", filepath.Join(dir, fmt.Sprintf("data-%d", attempt)),
			"--listen-client-urls", e.URL, "--advertise-client-urls", e.URL,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", "v2test=" + peer,
			"--enable-v2",
			"--logger", "zap", "--log-outputs", e.log, "--log-level", "warn",
		}
		if o.CertFile != "" {
			e.args = append(e.args, "--cert-file", o.CertFile, "--key-file", o.KeyFile)
			if o.ClientCA != "" {
				e.args = append(e.args, "--client-cert-auth", "--trusted-ca-file", o.ClientCA)
			}
		}
		err := e.start(bin)
		if err == nil {
			t.Cleanup(e.stop)
			return e
		}
		logText, _ := os.ReadFile(e.log)
		if attempt < 3 && bytes.Contains(logText, []byte("address already in use")) {
			continue // another test took the port between probe and bind
		}
		t.Fatalf("start etcd: %v\n%s", err, logText)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs etcd and waits until it serves v2 requests.
func (e *etcdProc) start(bin string) error {
	e.cmd = exec.Command(bin, e.args...)
	e.exited = make(chan struct{})
	if err := e.cmd.Start(); err != nil {
		return err
	}
	go func() {
		e.cmd.Wait()
		close(e.exited)
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.URL+"/v2/keys/", nil)
		resp, err := e.ready.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		cancel()
		if err == nil && resp.StatusCode == http.StatusOK {
			return nil
		}
		select {
		case <-e.exited:
			return fmt.Errorf("etcd exited: %v", e.cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.stop()
			return fmt.Errorf("etcd not ready within 15 s (last probe: %v)", err)
		}
	}
}

// stop kills the process and waits for it; the data stays for restart.
func (e *etcdProc) stop() {
	select {
	case <-e.exited:
		return
	default:
	}
	e.cmd.Process.Kill()
	<-e.exited
	if e.t.Failed() {
		if b, err := os.ReadFile(e.log); err == nil && len(b) > 0 {
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			e.t.Logf("etcd log (last lines):\n%s", strings.Join(lines[max(0, len(lines)-20):], "\n"))
		}
	}
}

// restart starts the stopped etcd again with the same data and ports.
func (e *etcdProc) restart() {
	e.t.Helper()
	if err := e.start(e.cmd.Path); err != nil {
		e.t.Fatalf("restart etcd: %v", err)
	}
}
