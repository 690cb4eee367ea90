package e2e

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lab"
)

// flanneld tells systemd READY=1 only once subnet.env is written, and
// serves /healthz, /readyz and /metrics only on the address it was told.
func TestNotifyHealthAndMetrics(t *testing.T) {
	l := startLab(t, labOpts(t, 2, backendConfig("vxlan")))
	h := l.Hosts[1]
	if err := l.StopFlanneld(h, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(l.SubnetFile(h)); err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	argv := append(l.FlanneldArgv(h), "--healthz-ip=127.0.0.1", "--healthz-port=18081")
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS}, argv...)...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	logPath := filepath.Join(t.TempDir(), "flanneld.log")
	logf, _ := os.Create(logPath)
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("flanneld log:\n%s", b)
		}
	}()

	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 256)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no sd_notify message: %v", err)
	}
	if got := string(buf[:n]); !strings.Contains(got, "READY=1") {
		t.Fatalf("sd_notify sent %q, want READY=1", got)
	}
	if _, err := os.Stat(l.SubnetFile(h)); err != nil {
		t.Fatalf("READY=1 sent before subnet.env was written: %v", err)
	}

	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return lab.DialerIn(h.NS)(ctx, addr)
	}}}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := client.Get("http://127.0.0.1:18081" + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 || !strings.Contains(body, "flanneld is running") {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz = %d after READY=1, want 200", code)
	}
	// The peer's lease arrives through the watch right after start.
	deadline := time.Now().Add(5 * time.Second)
	var metrics string
	for {
		_, metrics = get("/metrics")
		if strings.Contains(metrics, "\nflannel_peers 1\n") || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, want := range []string{"\nflannel_ready 1\n", "\nflannel_peers 1\n", "flannel_lease_info{backend=\"vxlan\",public_ip=\"" + h.Addr.String(),
		"flannel_sync_duration_seconds_count", "flannel_watch_relists_total 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Bound to 127.0.0.1 only: the host's underlay address must refuse.
	if c, err := lab.DialerIn(h.NS)(context.Background(), net.JoinHostPort(h.Addr.String(), "18081")); err == nil {
		c.Close()
		t.Errorf("health server reachable on %s although --healthz-ip=127.0.0.1", h.Addr)
	}
	// One line per event that matters, no per-packet noise: the whole log of
	// a quiet start is short.
	f, _ := os.Open(logPath)
	defer f.Close()
	lines := 0
	for sc := bufio.NewScanner(f); sc.Scan(); {
		lines++
	}
	if lines > 15 {
		t.Errorf("%d log lines for a plain start; expected a handful", lines)
	}
}

// The udp backend's datapath counters show up in /metrics after traffic.
func TestUDPMetrics(t *testing.T) {
	l := startLab(t, labOpts(t, 2, backendConfig("udp")))
	h := l.Hosts[1]
	if err := l.StopFlanneld(h, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	h.Args = []string{"--healthz-ip=127.0.0.1", "--healthz-port=18082"}
	if err := l.StartFlanneld(h); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return lab.DialerIn(h.NS)(ctx, addr)
	}}}
	metrics := func() string {
		resp, err := client.Get("http://127.0.0.1:18082/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	waitFor(t, 20*time.Second, "/metrics with the peer", func() bool { return strings.Contains(metrics(), "\nflannel_peers 1\n") })
	if got, out, _ := l.Ping(context.Background(), l.Hosts[0], h.Container, 5, 100*time.Millisecond); got != 5 {
		t.Fatalf("pings through udp: %d/5\n%s", got, out)
	}
	m := metrics()
	in := regexp.MustCompile(`flannel_udp_packets_total\{direction="in"\} (\d+)`).FindStringSubmatch(m)
	out := regexp.MustCompile(`flannel_udp_packets_total\{direction="out"\} (\d+)`).FindStringSubmatch(m)
	if in == nil || out == nil {
		t.Fatalf("/metrics lacks flannel_udp_packets_total:\n%s", m)
	}
	if n, _ := strconv.Atoi(in[1]); n < 5 {
		t.Errorf("udp packets in = %d after 5 echo requests arrived", n)
	}
	if n, _ := strconv.Atoi(out[1]); n < 5 {
		t.Errorf("udp packets out = %d after 5 echo replies left", n)
	}
	for _, want := range []string{`flannel_udp_drops_total{direction="in",reason="malformed"}`, `flannel_udp_offload{offload="udp_gso"}`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
