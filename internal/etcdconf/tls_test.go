package etcdconf_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/etcdconf"
	"github.com/flannel-go/flannel/internal/etcdtest"
)

func TestTLSFilesErrors(t *testing.T) {
	f := etcdtest.WriteTLS(t)
	for _, tc := range []struct {
		name          string
		cert, key, ca string
		want          string
	}{
		{"missing cert", "/nonexistent/c.pem", f.ClientKey, "", "/nonexistent/c.pem"},
		{"key not matching", f.ClientCert, f.ServerKey, "", "load client certificate"},
		{"cert without key", f.ClientCert, "", "", "both a cert file and a key file"},
		{"key without cert", "", f.ClientKey, "", "both a cert file and a key file"},
		{"missing CA", "", "", "/nonexistent/ca.pem", "/nonexistent/ca.pem"},
		{"CA not PEM", "", "", f.ClientKey, "no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := etcdconf.TLSFiles(tc.cert, tc.key, tc.ca)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ClientConfig(%q, %q, %q) = %v, want an error mentioning %q", tc.cert, tc.key, tc.ca, err, tc.want)
			}
		})
	}
}

// The config authenticates to a server that requires client certificates
// from the CA, trusts only caFile, and refuses TLS below 1.2.
func TestTLSFilesHandshake(t *testing.T) {
	f := etcdtest.WriteTLS(t)
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AppendCertsFromPEM(pem)
	srvCert, err := tls.LoadX509KeyPair(f.ServerCert, f.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	serve := func(t *testing.T, maxVersion uint16) string {
		ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
			Certificates: []tls.Certificate{srvCert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    clientCAs,
			MaxVersion:   maxVersion,
		})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		t.Cleanup(func() {
			ln.Close()
			<-done
		})
		go func() {
			defer close(done)
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_ = c.(*tls.Conn).Handshake()
				c.Close()
			}
		}()
		return ln.Addr().String()
	}
	dial := func(addr string, tc *tls.Config) error {
		c, err := tls.Dial("tcp", addr, tc)
		if err != nil {
			return err
		}
		defer c.Close()
		// TLS 1.3 reports a rejected client certificate on the first read.
		_, err = c.Read(make([]byte, 1))
		if err != nil && strings.Contains(err.Error(), "EOF") {
			return nil
		}
		return err
	}

	addr := serve(t, 0)
	tc, err := etcdconf.TLSFiles(f.ClientCert, f.ClientKey, f.CA)
	if err != nil {
		t.Fatal(err)
	}
	if err := dial(addr, tc); err != nil {
		t.Fatalf("handshake with client certificate: %v", err)
	}

	noCert, err := etcdconf.TLSFiles("", "", f.CA)
	if err != nil {
		t.Fatal(err)
	}
	if err := dial(addr, noCert); err == nil {
		t.Fatal("handshake without client certificate succeeded")
	}

	otherCA, err := etcdconf.TLSFiles(f.ClientCert, f.ClientKey, etcdtest.WriteTLS(t).CA)
	if err != nil {
		t.Fatal(err)
	}
	if err := dial(addr, otherCA); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("handshake trusting another CA: %v, want a certificate error", err)
	}

	old := serve(t, tls.VersionTLS11)
	if err := dial(old, tc); err == nil {
		t.Fatal("handshake with a TLS 1.1 server succeeded")
	}
}

func TestLooseKeyFile(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		mode  os.FileMode
		loose bool
	}{{0o600, false}, {0o400, false}, {0o640, true}, {0o644, true}, {0o604, true}} {
		p := filepath.Join(dir, fmt.Sprintf("key-%o.pem", c.mode))
		if err := os.WriteFile(p, []byte("k"), c.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, c.mode); err != nil { // past the umask
			t.Fatal(err)
		}
		if got := etcdconf.LooseKeyFile(p); (got != "") != c.loose {
			t.Errorf("mode %04o: LooseKeyFile = %q, want loose=%v", c.mode, got, c.loose)
		}
	}
	if etcdconf.LooseKeyFile("") != "" {
		t.Error("no key file is not loose")
	}
}
