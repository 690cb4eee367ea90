package etcdconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// ClientTLS returns the TLS config for o's endpoints, or nil when they are
// plain http. Plain http is logged as a warning, once, since it leaves the
// cluster's datastore open to anyone on the path; a client key readable by
// other users is too. Endpoints mixing https with plain http are refused:
// the v3 client picks transport security from the first endpoint alone,
// and the v2 client would send credentials in clear to some members.
func (o Options) ClientTLS(log *slog.Logger) (*tls.Config, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var https, plain int
	for _, ep := range o.Endpoints {
		if strings.HasPrefix(ep, "https://") {
			https++
		} else {
			plain++
		}
	}
	if https > 0 && plain > 0 {
		return nil, fmt.Errorf("etcd endpoints %s mix https and plain http", strings.Join(o.Endpoints, ","))
	}
	if https == 0 {
		switch {
		case o.CertFile != "" || o.KeyFile != "" || o.CAFile != "":
			log.Warn("etcd endpoints are plain http: TLS files ignored, traffic is not encrypted", "endpoints", o.Endpoints)
		case o.Username != "":
			log.Warn("etcd endpoints are plain http: traffic and password are not encrypted", "endpoints", o.Endpoints)
		default:
			log.Warn("etcd endpoints are plain http: traffic is not encrypted or authenticated", "endpoints", o.Endpoints)
		}
		return nil, nil
	}
	tc, err := TLSFiles(o.CertFile, o.KeyFile, o.CAFile)
	if err != nil {
		return nil, err
	}
	if why := LooseKeyFile(o.KeyFile); why != "" {
		log.Warn(why)
	}
	return tc, nil
}

// TLSFiles returns a TLS 1.2+ client config with the client certificate
// certFile/keyFile (PEM; both or neither) and, when caFile is set, only
// the CAs in caFile as roots (otherwise the system's). Every file is read
// now, so a missing or unusable one is an error naming it rather than a
// handshake failure later.
func TLSFiles(certFile, keyFile, caFile string) (*tls.Config, error) {
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
