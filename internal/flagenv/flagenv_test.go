package flagenv_test

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/flagenv"
)

type vals struct {
	endpoints string
	port      int
	ttl       time.Duration
	masq      bool
	local     string
}

func newFS(v *vals) *flag.FlagSet {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&v.endpoints, "etcd-endpoints", "http://127.0.0.1:2379", "")
	fs.IntVar(&v.port, "healthz-port", 0, "")
	fs.DurationVar(&v.ttl, "subnet-lease-ttl", 24*time.Hour, "")
	fs.BoolVar(&v.masq, "ip-masq", false, "")
	fs.StringVar(&v.local, "o", "table", "")
	return fs
}

func TestSet(t *testing.T) {
	env := map[string]string{
		"FLANNELD_ETCD_ENDPOINTS":   "https://10.0.0.1:2379",
		"FLANNELD_HEALTHZ_PORT":     "8471",
		"FLANNELD_SUBNET_LEASE_TTL": "", // empty: unset
		"FLANNELD_IP_MASQ":          "true",
		"FLANNELD_O":                "json",
	}
	for _, tc := range []struct {
		name string
		args []string
		use  func(string) bool
		want vals
	}{
		{"env fills unset flags", nil, nil,
			vals{"https://10.0.0.1:2379", 8471, 24 * time.Hour, true, "json"}},
		{"command line wins, even when it repeats the default", []string{"--healthz-port=0", "--ip-masq=false"}, nil,
			vals{"https://10.0.0.1:2379", 0, 24 * time.Hour, false, "json"}},
		{"only the flags use selects", nil, func(n string) bool { return n != "o" },
			vals{"https://10.0.0.1:2379", 8471, 24 * time.Hour, true, "table"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v vals
			fs := newFS(&v)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if err := flagenv.Set(fs, "FLANNELD_", func(k string) string { return env[k] }, tc.use); err != nil {
				t.Fatal(err)
			}
			if v != tc.want {
				t.Fatalf("got %+v, want %+v", v, tc.want)
			}
		})
	}
}

func TestSetErrorsNameEachVariable(t *testing.T) {
	var v vals
	fs := newFS(&v)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"FLANNELD_HEALTHZ_PORT":     "eighty",
		"FLANNELD_SUBNET_LEASE_TTL": "a day",
		"FLANNELD_ETCD_ENDPOINTS":   "https://10.0.0.1:2379",
	}
	err := flagenv.Set(fs, "FLANNELD_", func(k string) string { return env[k] }, nil)
	if err == nil {
		t.Fatal("Set accepted bad values")
	}
	for _, want := range []string{`FLANNELD_HEALTHZ_PORT="eighty"`, `FLANNELD_SUBNET_LEASE_TTL="a day"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if v.endpoints != "https://10.0.0.1:2379" {
		t.Errorf("a good variable was not applied next to bad ones: %q", v.endpoints)
	}
}

func TestName(t *testing.T) {
	for flag, want := range map[string]string{
		"etcd-endpoints":               "FLANNELD_ETCD_ENDPOINTS",
		"ip-masq-fully-random-disable": "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE",
		"log_backtrace_at":             "FLANNELD_LOG_BACKTRACE_AT",
		"v":                            "FLANNELD_V",
	} {
		if got := flagenv.Name("FLANNELD_", flag); got != want {
			t.Errorf("Name(%q) = %q, want %q", flag, got, want)
		}
	}
}
