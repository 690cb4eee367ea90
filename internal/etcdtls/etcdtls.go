// Package etcdtls builds the client TLS config for etcd from the
// --etcd-certfile, --etcd-keyfile and --etcd-cafile files, the same way for
// every etcd API the stores speak.
package etcdtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// ClientConfig returns a TLS 1.2+ client config with the client
// certificate certFile/keyFile (PEM; both or neither) and, when caFile is
// set, only the CAs in caFile as roots (otherwise the system's). Every
// file is read now, so a missing or unusable one is an error naming it
// rather than a handshake failure later.
func ClientConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("a client certificate needs both a cert file and a key file")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate %s (key %s): %w", certFile, keyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// LooseKeyFile says why keyFile's permissions expose the private key (any
// access for group or others), or "" when they do not or it is unset. A
// key readable by other users lets them impersonate this host to etcd.
func LooseKeyFile(keyFile string) string {
	if keyFile == "" {
		return ""
	}
	st, err := os.Stat(keyFile)
	if err != nil || st.Mode().Perm()&0o077 == 0 {
		return ""
	}
	return fmt.Sprintf("%s has mode %04o: other users can read the etcd client key; chmod 0600 it", keyFile, st.Mode().Perm())
}
