package subnetenv_test

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flannel-go/flannel/internal/subnetenv"
)

func TestParseFull(t *testing.T) {
	tests := []struct {
		name, in string
		want     subnetenv.Full
	}{
		{"v4", v4File, subnetenv.Full{Env: v4Env, Networks: []netip.Prefix{pfx("10.5.0.0/16")}}},
		{"dual", dualFile, subnetenv.Full{
			Env:          dualEnv,
			Networks:     []netip.Prefix{pfx("10.42.0.0/16")},
			IPv6Networks: []netip.Prefix{pfx("2001:cafe:42::/56")},
		}},
		{"v6 only", v6OnlyFile, subnetenv.Full{Env: v6OnlyEnv, IPv6Networks: []netip.Prefix{pfx("fc00::/48")}}},
		{"two networks, a duplicate dropped",
			"FLANNEL_NETWORK=10.1.0.0/16, 192.168.0.0/16,10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
			subnetenv.Full{
				Env:      subnetenv.Env{Network: pfx("10.1.0.0/16"), Subnet: pfx("10.1.17.1/24"), MTU: 1472, IPMasq: true},
				Networks: []netip.Prefix{pfx("10.1.0.0/16"), pfx("192.168.0.0/16")},
			}},
		{"nothing", "foo=bar\n", subnetenv.Full{Missing: []string{
			"FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"}}},
		{"IPMASQ false is present", "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
			subnetenv.Full{
				Env:      subnetenv.Env{Network: pfx("10.5.0.0/16"), Subnet: pfx("10.5.72.1/24"), MTU: 1450},
				Networks: []netip.Prefix{pfx("10.5.0.0/16")},
			}},
		{"later empty value unsets", v4File + "FLANNEL_MTU=\n", subnetenv.Full{
			Env:      subnetenv.Env{Network: pfx("10.5.0.0/16"), Subnet: pfx("10.5.72.1/24"), IPMasq: true},
			Networks: []netip.Prefix{pfx("10.5.0.0/16")},
			Missing:  []string{"FLANNEL_MTU"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := subnetenv.ParseFull([]byte(tt.in))
			if err != nil {
				t.Fatalf("ParseFull: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, equateNetip); diff != "" {
				t.Errorf("ParseFull mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseFullErrors(t *testing.T) {
	for _, in := range []string{
		"FLANNEL_SUBNET=10.5.72.1/24,10.6.1.1/24\n", // one lease per family
		"FLANNEL_NETWORK=10.5.0.0/16,fc00::/48\n",
		"FLANNEL_NETWORK=10.5.0.0/16,10.6.1.0/16\n",
		"FLANNEL_MTU=x\n",
	} {
		if f, err := subnetenv.ParseFull([]byte(in)); err == nil {
			t.Errorf("ParseFull(%q) = %+v, want an error", in, f)
		}
	}
}

func TestReadFull(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "subnet.env")
	if _, err := subnetenv.ReadFull(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadFull of a missing file: %v, want fs.ErrNotExist", err)
	}
	if err := os.WriteFile(path, []byte("FLANNEL_MTU=big\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := subnetenv.ReadFull(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("ReadFull of a bad file: %v, want an error naming %s", err, path)
	}
	if err := subnetenv.Write(path, dualEnv); err != nil {
		t.Fatal(err)
	}
	f, err := subnetenv.ReadFull(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(dualEnv, f.Env, equateNetip); diff != "" || len(f.Missing) != 0 {
		t.Errorf("ReadFull after Write: missing %v, mismatch (-want +got):\n%s", f.Missing, diff)
	}
}

// FuzzParseFull checks that ParseFull agrees with Parse wherever Parse
// accepts the input, and never panics elsewhere.
func FuzzParseFull(f *testing.F) {
	for _, s := range []string{v4File, dualFile, v6OnlyFile, "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\n", "FLANNEL_MTU=\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		full, ferr := subnetenv.ParseFull(b)
		env, err := subnetenv.Parse(b)
		if err != nil {
			return
		}
		if ferr != nil {
			t.Fatalf("Parse accepts what ParseFull refuses: %v", ferr)
		}
		if diff := cmp.Diff(env, full.Env, equateNetip); diff != "" {
			t.Fatalf("ParseFull.Env differs from Parse (-Parse +ParseFull):\n%s", diff)
		}
		if len(full.Networks) > 1 || len(full.IPv6Networks) > 1 {
			t.Fatalf("Parse accepted a list: %v %v", full.Networks, full.IPv6Networks)
		}
	})
}
