package etcdconf

import (
	"flag"
	"fmt"

	"github.com/flannel-go/flannel/internal/flagenv"
)

// EnvPrefix is the prefix of the variables that stand in for flags
// (FLANNELD_ETCD_ENDPOINTS for --etcd-endpoints), as upstream's flanneld.
const EnvPrefix = "FLANNELD_"

// Flags are the --etcd-* flags Register declared on one flag set.
type Flags struct {
	fs                        *flag.FlagSet
	endpoints, prefix         string
	keyFile, certFile, caFile string
	username, password        string
	api                       string
}

// Register declares the etcd flags on fs with upstream flanneld's names
// and defaults (and --etcd-api, ours).
func Register(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs}
	str := func(p *string, name, def, usage string) {
		fs.StringVar(p, name, def, usage+" (env "+flagenv.Name(EnvPrefix, name)+")")
	}
	str(&f.endpoints, "etcd-endpoints", DefaultEndpoints, "a comma-delimited list of etcd endpoints")
	str(&f.prefix, "etcd-prefix", DefaultPrefix, "etcd prefix")
	str(&f.keyFile, "etcd-keyfile", "", "SSL key file used to secure etcd communication")
	str(&f.certFile, "etcd-certfile", "", "SSL certification file used to secure etcd communication")
	str(&f.caFile, "etcd-cafile", "", "SSL Certificate Authority file used to secure etcd communication")
	str(&f.username, "etcd-username", "", "username for BasicAuth to etcd")
	str(&f.password, "etcd-password", "", "password for BasicAuth to etcd")
	str(&f.api, "etcd-api", APIAuto, "etcd API: v3, v2, or auto (the keyspace holding the network config; v3 if both)")
	return f
}

// IsFlag reports whether name is one of the flags Register declares.
func IsFlag(name string) bool {
	switch name {
	case "etcd-endpoints", "etcd-prefix", "etcd-keyfile", "etcd-certfile", "etcd-cafile",
		"etcd-username", "etcd-password", "etcd-api":
		return true
	}
	return false
}

// Options returns the options after the flag set was parsed: each etcd
// flag not given on the command line is taken from its FLANNELD_*
// variable (flag > variable > default; an empty variable counts as
// unset), then the result is validated.
func (f *Flags) Options(getenv func(string) string) (Options, error) {
	if err := flagenv.Set(f.fs, EnvPrefix, getenv, IsFlag); err != nil {
		return Options{}, err
	}
	o := Options{
		Endpoints: SplitEndpoints(f.endpoints),
		Prefix:    f.prefix,
		CertFile:  f.certFile, KeyFile: f.keyFile, CAFile: f.caFile,
		Username: f.username, Password: f.password,
		API: f.api,
	}
	if o.Prefix == "" {
		return Options{}, fmt.Errorf("--etcd-prefix=%q: must start with /", o.Prefix)
	}
	return o, o.Validate()
}
