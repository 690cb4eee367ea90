// Package kubeapi runs a real kube-apiserver (built by
// scripts/kube-apiserver.sh into a cache outside the checkout) on a given
// etcd, for the lab's Kubernetes mode and, through package kubetest, for
// the tests. There is no controller-manager and no kubelet; the lab and
// the tests create the Node objects and set spec.podCIDR themselves, as
// node IPAM would. It is lab tooling: cmd/flanneld never imports it.
package kubeapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Binary returns the path of the cached kube-apiserver: $KUBE_APISERVER
// when set, else the file scripts/kube-apiserver.sh builds for the version
// pinned in tools/kube-apiserver/go.mod (found from the working directory
// upwards). The error says how to build it.
func Binary() (string, error) {
	if p := os.Getenv("KUBE_APISERVER"); p != "" {
		if !executable(p) {
			return "", fmt.Errorf("KUBE_APISERVER=%s is not an executable file", p)
		}
		return p, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	version, err := pinnedVersion(filepath.Join(root, "tools", "kube-apiserver", "go.mod"))
	if err != nil {
		return "", err
	}
	cache := os.Getenv("FLANNEL_CACHE")
	if cache == "" {
		cache = "/var/cache/flannel-go"
	}
	p := filepath.Join(cache, "kube-apiserver", version, "kube-apiserver")
	if !executable(p) {
		return "", fmt.Errorf("kube-apiserver %s is not built yet: run scripts/kube-apiserver.sh (about 15 min of two cores, once per machine)", version)
	}
	return p, nil
}

func executable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "tools", "kube-apiserver", "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("kube-apiserver: no tools/kube-apiserver/go.mod above the working directory; set KUBE_APISERVER")
		}
		dir = parent
	}
}

func pinnedVersion(gomod string) (string, error) {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "k8s.io/kubernetes" && strings.HasPrefix(f[1], "v") {
			return f[1], nil
		}
		if len(f) >= 3 && f[0] == "require" && f[1] == "k8s.io/kubernetes" {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("%s: no k8s.io/kubernetes version", gomod)
}

// Options configure Launch.
type Options struct {
	Binary string   // the kube-apiserver; required
	Etcd   []string // etcd v3 client URLs; required
	Dir    string   // for certificates, keys, kubeconfigs and the log; required
	// Address to serve on; default 127.0.0.1. In a network namespace, give
	// that namespace's address and a Wrap that enters it.
	Address netip.Addr
	// Port to serve on; 0 picks a free one, or 6443 with Wrap (a fresh
	// namespace has every port free, and ours cannot be probed from here).
	Port int
	// Wrap is prepended to the command line, e.g. ip netns exec NAME.
	Wrap []string
	// Dial, when set, is how this process reaches the server (for the
	// readiness check and Client), e.g. a dial from inside its namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Args are extra kube-apiserver flags; later ones override ours.
	Args []string
	// Detach lets the server outlive this process (flannelctl lab up
	// exits, lab down stops it later): it gets a session of its own
	// instead of dying with its parent.
	Detach bool
}

// Server is a running kube-apiserver.
type Server struct {
	URL        string // https://ADDRESS:PORT
	Kubeconfig string // file for an admin (group system:masters)
	Log        string // the server's own log file
	Prefix     string // its etcd key prefix, unique per Launch

	dir    string
	pki    *pki
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	detach bool
	cmd    *exec.Cmd
	argv   []string
	exited chan struct{} // closed when cmd has been waited for
	err    error         // cmd.Wait's result, once exited is closed
}

// start runs the server process; its output is appended to the log.
func (s *Server) start() error {
	logf, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	s.exited = make(chan struct{})
	s.cmd = exec.Command(s.argv[0], s.argv[1:]...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	// The server must not outlive a test binary that dies on a timeout,
	// unless it is meant to.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if s.detach {
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := s.cmd.Start(); err != nil {
		close(s.exited)
		return fmt.Errorf("kubeapi: start %s: %w", s.argv[0], err)
	}
	cmd, exited := s.cmd, s.exited
	go func() {
		s.err = cmd.Wait()
		close(exited)
	}()
	return nil
}

// Restart stops the server and starts it again with the same address,
// certificates and etcd prefix, so clients and their kubeconfigs carry on;
// it returns when the server is ready. Stop, Start and Restart must not be
// called concurrently.
func (s *Server) Restart(ctx context.Context) error {
	s.Stop()
	return s.Start(ctx)
}

// ErrRunning is Start's error for a server that has not been stopped.
var ErrRunning = errors.New("kubeapi: kube-apiserver is running; Stop it first")

// Start runs a stopped server again, as Restart does, and returns when it
// is ready. Between Stop and Start the server is down for as long as the
// caller likes: an API server outage of a chosen length.
func (s *Server) Start(ctx context.Context) error {
	select {
	case <-s.exited:
	default:
		return ErrRunning
	}
	if err := s.start(); err != nil {
		return err
	}
	if err := s.waitReady(ctx); err != nil {
		s.Stop()
		return err
	}
	return nil
}

// readyTimeout bounds the start; a warm start on this machine takes ~5 s.
const readyTimeout = 90 * time.Second

// Launch starts kube-apiserver and waits until /readyz answers ok. Its etcd
// keys live under a fresh prefix, so it may share an etcd with flannel's
// own keys or with another Launch.
func Launch(ctx context.Context, o Options) (*Server, error) {
	if o.Binary == "" || len(o.Etcd) == 0 || o.Dir == "" {
		return nil, errors.New("kubeapi: Binary, Etcd and Dir are required")
	}
	if !o.Address.IsValid() {
		o.Address = netip.MustParseAddr("127.0.0.1")
	}
	if o.Port == 0 && len(o.Wrap) > 0 {
		o.Port = 6443
	}
	if o.Port == 0 {
		p, err := freePort(o.Address)
		if err != nil {
			return nil, err
		}
		o.Port = p
	}
	p, err := newPKI(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("kubeapi: CA: %w", err)
	}
	crt, key, err := p.issue("kube-apiserver", nil, []net.IP{o.Address.AsSlice(), net.IPv4(127, 0, 0, 1)}, true)
	if err != nil {
		return nil, err
	}
	file := func(name string, b []byte) string {
		path := filepath.Join(o.Dir, name)
		if err == nil {
			err = os.WriteFile(path, b, 0o600)
		}
		return path
	}
	tlsCert, tlsKey := file("apiserver.crt", crt), file("apiserver.key", key)
	if err != nil {
		return nil, err
	}
	saKey := filepath.Join(o.Dir, "sa.key")
	if err := writeServiceAccountKey(saKey); err != nil {
		return nil, fmt.Errorf("kubeapi: service account key: %w", err)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	s := &Server{
		URL:    "https://" + net.JoinHostPort(o.Address.String(), strconv.Itoa(o.Port)),
		Log:    filepath.Join(o.Dir, "kube-apiserver.log"),
		Prefix: "/kubeapi-" + hex.EncodeToString(rnd[:]),
		dir:    o.Dir,
		pki:    p,
		dial:   o.Dial,
		detach: o.Detach,
	}
	args := []string{
		"--etcd-servers=" + strings.Join(o.Etcd, ","),
		"--etcd-prefix=" + s.Prefix,
		"--bind-address=" + o.Address.String(),
		"--advertise-address=" + o.Address.String(),
		"--secure-port=" + strconv.Itoa(o.Port),
		"--cert-dir=" + o.Dir,
		"--tls-cert-file=" + tlsCert,
		"--tls-private-key-file=" + tlsKey,
		"--client-ca-file=" + filepath.Join(o.Dir, "ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + saKey,
		"--service-account-signing-key-file=" + saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=RBAC",
		// No controller-manager maintains the kubernetes Service's
		// endpoints; without this the server waits for them.
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=1",
	}
	args = append(args, o.Args...)
	argv := append(append([]string{}, o.Wrap...), o.Binary)
	argv = append(argv, args...)
	s.argv = argv
	if err := s.start(); err != nil {
		return nil, err
	}

	if s.Kubeconfig, err = s.WriteKubeconfig("admin.kubeconfig", "lab-admin", "system:masters"); err != nil {
		s.Stop()
		return nil, err
	}
	if err := s.waitReady(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func freePort(a netip.Addr) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(a.String(), "0"))
	if err != nil {
		return 0, fmt.Errorf("kubeapi: find a free port on %s: %w", a, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// WriteKubeconfig writes a kubeconfig named name (in the server's
// directory) for a user authenticated by a client certificate with that
// CN and groups, and returns its path. Give the user no groups to test RBAC.
func (s *Server) WriteKubeconfig(name, user string, groups ...string) (string, error) {
	crt, key, err := s.pki.issue(user, groups, nil, false)
	if err != nil {
		return "", err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["flannel-lab"] = &clientcmdapi.Cluster{Server: s.URL, CertificateAuthorityData: s.pki.caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: crt, ClientKeyData: key}
	cfg.Contexts["flannel-lab"] = &clientcmdapi.Context{Cluster: "flannel-lab", AuthInfo: user}
	cfg.CurrentContext = "flannel-lab"
	path := filepath.Join(s.dir, name)
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", fmt.Errorf("kubeapi: write %s: %w", path, err)
	}
	return path, nil
}

// RESTConfig is the admin's client config (with Options.Dial).
func (s *Server) RESTConfig() (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.Dial = s.dial
	// Tests create objects in bulk; client-go's default 5 QPS would make
	// 5,000 nodes take half an hour.
	cfg.QPS, cfg.Burst = 2000, 4000
	return cfg, nil
}

// Client is a clientset for the admin.
func (s *Server) Client() (kubernetes.Interface, error) {
	cfg, err := s.RESTConfig()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

func (s *Server) waitReady(ctx context.Context) error {
	c, err := s.Client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last error
	for {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		_, last = c.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		rcancel()
		if last == nil {
			return nil
		}
		// Nothing signals readiness but the endpoint itself: poll it.
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-s.exited:
			t.Stop()
			return fmt.Errorf("kubeapi: kube-apiserver exited (%v) before it was ready:\n%s", s.err, s.LogTail(3000))
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("kubeapi: kube-apiserver not ready after %v (last: %v):\n%s", readyTimeout, last, s.LogTail(3000))
		case <-t.C:
		}
	}
}

// LogTail returns the last n bytes of the server's log.
func (s *Server) LogTail(n int) string {
	b, _ := os.ReadFile(s.Log)
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// Stop ends the server: SIGTERM, then SIGKILL after 10 s. os.Process
// signals through a pidfd on Linux, and the process is our unreaped
// child, so the signal cannot reach a process that reused its PID. Stop is
// safe to call more than once and after the server died.
func (s *Server) Stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-s.exited:
	case <-t.C:
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// Exited is closed when the server process has ended.
func (s *Server) Exited() <-chan struct{} { return s.exited }
