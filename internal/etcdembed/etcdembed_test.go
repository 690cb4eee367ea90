package etcdembed_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/etcdembed"
	"github.com/flannel-go/flannel/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func client(t *testing.T, eps []string, tc *tls.Config) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: tc, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A member on port 0 reports a real endpoint, and its data survives a
// restart on the same directory and address.
func TestStartRestart(t *testing.T) {
	dir := t.TempDir()
	s := etcdtest.Start(t, etcdembed.Options{Dir: dir})
	eps := s.Endpoints()
	if len(eps) != 1 || strings.HasSuffix(eps[0], ":0") || !strings.HasPrefix(eps[0], "http://127.0.0.1:") {
		t.Fatalf("Endpoints() = %v, want one bound http://127.0.0.1:<port>", eps)
	}
	c := client(t, eps, nil)
	if _, err := c.Put(ctxT(t), "/k", "v1"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Close() // idempotent

	s2 := etcdtest.Start(t, etcdembed.Options{Dir: dir, ClientURLs: eps})
	if got := s2.Endpoints(); len(got) != 1 || got[0] != eps[0] {
		t.Fatalf("restarted on %v, want %v", got, eps)
	}
	r, err := c.Get(ctxT(t), "/k") // the old client reconnects by itself
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v1" {
		t.Fatalf("after restart /k = %v, want v1", r.Kvs)
	}
}

func TestStartErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    etcdembed.Options
		want string
	}{
		{"no dir", etcdembed.Options{}, "no data directory"},
		{"bad url", etcdembed.Options{Dir: t.TempDir(), ClientURLs: []string{"http://127.0.0.1"}}, "missing port"},
		{"http with tls", etcdembed.Options{Dir: t.TempDir(), TLS: &etcdembed.TLS{CertFile: "a", KeyFile: "b"}, ClientURLs: []string{"http://127.0.0.1:0"}}, "scheme must be https"},
		{"tls without key", etcdembed.Options{Dir: t.TempDir(), TLS: &etcdembed.TLS{CertFile: "a"}}, "certificate and a key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := etcdembed.Start(context.Background(), tc.o)
			if err == nil {
				s.Close()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// With TLS and a client CA, a client holding a certificate from that CA is
// served and one without a certificate is turned away.
func TestClientCertAuth(t *testing.T) {
	f := etcdtest.WriteTLS(t)
	s := etcdtest.Start(t, etcdembed.Options{TLS: &etcdembed.TLS{CertFile: f.ServerCert, KeyFile: f.ServerKey, ClientCAFile: f.CA}})
	eps := s.Endpoints()
	if !strings.HasPrefix(eps[0], "https://") {
		t.Fatalf("endpoint %s is not https", eps[0])
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cert, err := tls.LoadX509KeyPair(f.ClientCert, f.ClientKey)
	if err != nil {
		t.Fatal(err)
	}

	good := client(t, eps, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}})
	if _, err := good.Put(ctxT(t), "/k", "v"); err != nil {
		t.Fatalf("client with certificate: %v", err)
	}
	anon := client(t, eps, &tls.Config{RootCAs: pool})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := anon.Get(ctx, "/k"); err == nil {
		t.Fatal("client without certificate was served")
	}
}

// A normal start and close logs nothing: etcd's info chatter and the
// errors it reports about its own listeners closing are dropped.
func TestQuietLifecycle(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	s := etcdtest.Start(t, etcdembed.Options{Log: log})
	s.Close()
	if buf.Len() != 0 {
		t.Fatalf("start+close logged:\n%s", buf.String())
	}
	// A second member on the same client port cannot bind: the failure is
	// returned to the caller.
	s1 := etcdtest.Start(t, etcdembed.Options{})
	_, err := etcdembed.Start(context.Background(), etcdembed.Options{Dir: t.TempDir(), ClientURLs: s1.Endpoints(), Log: log})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("second member on %v: err = %v, want address already in use", s1.Endpoints(), err)
	}
}
