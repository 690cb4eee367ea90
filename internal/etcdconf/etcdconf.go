// Package etcdconf is how both binaries reach a cluster's etcd: the
// connection options and their --etcd-* flags (upstream's names, defaults
// and FLANNELD_* variables), the client TLS config built from the cert,
// key and CA files, and the --etcd-api=auto|v3|v2 choice between the v3
// store (etcdstore) and the v2 one (etcdv2store). The stores themselves
// only take what this package resolved, so flanneld and flannelctl cannot
// drift apart in how they connect.
package etcdconf

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/flannel-go/flannel/internal/etcdconf/etcdopt"
)

// Upstream's defaults.
const (
	DefaultEndpoints = "http://127.0.0.1:4001,http://127.0.0.1:2379"
	DefaultPrefix    = etcdopt.DefaultPrefix
)

// The values of Options.API.
const (
	APIAuto = "auto" // the keyspace holding the network config; v3 if both do
	APIv3   = "v3"
	APIv2   = "v2"
)

// Options is how to reach etcd: what the --etcd-* flags say.
type Options struct {
	Endpoints []string // required, e.g. https://10.0.0.1:2379; one scheme for all
	Prefix    string   // optional; default DefaultPrefix

	// Client certificate and key (PEM; both or neither) and the CA that
	// signed etcd's server certificate; all optional, used for https://
	// endpoints.
	CertFile, KeyFile, CAFile string
	// Username and Password for etcd's auth; optional.
	Username, Password string

	API     string        // APIAuto (also when empty), APIv3 or APIv2
	Timeout time.Duration // optional per-request timeout; 0: the stores' default
}

// Validate checks what can be checked without reading files or dialling.
func (o Options) Validate() error {
	if len(o.Endpoints) == 0 {
		return errors.New("--etcd-endpoints is empty")
	}
	if o.Prefix != "" && !strings.HasPrefix(o.Prefix, "/") {
		return fmt.Errorf("--etcd-prefix=%q: must start with /", o.Prefix)
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return errors.New("--etcd-certfile and --etcd-keyfile must be given together")
	}
	switch o.API {
	case "", APIAuto, APIv3, APIv2:
	default:
		return fmt.Errorf("--etcd-api=%q: must be auto, v3 or v2", o.API)
	}
	if o.Timeout < 0 {
		return fmt.Errorf("timeout %s: must not be negative", o.Timeout)
	}
	return nil
}

// SplitEndpoints turns a comma-delimited list (the flag's form) into
// endpoints, dropping blanks.
func SplitEndpoints(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}
