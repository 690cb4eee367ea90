package subnetenv_test

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/flannel-go/flannel/internal/subnetenv"
)

var (
	equateNetip = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})
	pfx         = netip.MustParsePrefix
)

// Examples in upstream's format (documentation and a real dual-stack host).
var (
	v4Env = subnetenv.Env{
		Network: pfx("10.5.0.0/16"),
		Subnet:  pfx("10.5.72.1/24"),
		MTU:     1450,
		IPMasq:  true,
	}
	v4File = "FLANNEL_NETWORK=10.5.0.0/16\n" +
		"FLANNEL_SUBNET=10.5.72.1/24\n" +
		"FLANNEL_MTU=1450\n" +
		"FLANNEL_IPMASQ=true\n"

	dualEnv = subnetenv.Env{
		Network:     pfx("10.42.0.0/16"),
		Subnet:      pfx("10.42.3.1/24"),
		IPv6Network: pfx("2001:cafe:42::/56"),
		IPv6Subnet:  pfx("2001:cafe:42:3::1/64"),
		MTU:         1430,
	}
	dualFile = "FLANNEL_NETWORK=10.42.0.0/16\n" +
		"FLANNEL_SUBNET=10.42.3.1/24\n" +
		"FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n" +
		"FLANNEL_IPV6_SUBNET=2001:cafe:42:3::1/64\n" +
		"FLANNEL_MTU=1430\n" +
		"FLANNEL_IPMASQ=false\n"

	v6OnlyEnv = subnetenv.Env{
		IPv6Network: pfx("fc00::/48"),
		IPv6Subnet:  pfx("fc00:0:0:9::1/64"),
		MTU:         1280,
		IPMasq:      true,
	}
	v6OnlyFile = "FLANNEL_IPV6_NETWORK=fc00::/48\n" +
		"FLANNEL_IPV6_SUBNET=fc00:0:0:9::1/64\n" +
		"FLANNEL_MTU=1280\n" +
		"FLANNEL_IPMASQ=true\n"
)

func TestSubnetAddr(t *testing.T) {
	for _, tt := range []struct{ lease, want string }{
		{"10.5.72.0/24", "10.5.72.1/24"},
		{"10.5.0.128/25", "10.5.0.129/25"},
		{"10.244.255.0/24", "10.244.255.1/24"},
		{"192.168.7.20/30", "192.168.7.21/30"},
		{"fc00:0:0:1::/64", "fc00:0:0:1::1/64"},
		{"2001:cafe:42:ff::/64", "2001:cafe:42:ff::1/64"},
	} {
		if got := subnetenv.SubnetAddr(pfx(tt.lease)); got != pfx(tt.want) {
			t.Errorf("SubnetAddr(%s) = %s, want %s", tt.lease, got, tt.want)
		}
		// FLANNEL_SUBNET masked gives the lease back, which is how a
		// restart finds its previous subnet.
		if got := pfx(tt.want).Masked(); got != pfx(tt.lease) {
			t.Errorf("%s masked = %s, want %s", tt.want, got, tt.lease)
		}
	}
	if got := subnetenv.SubnetAddr(netip.Prefix{}); got.IsValid() {
		t.Errorf("SubnetAddr(invalid) = %s, want invalid", got)
	}
}

func TestFormatExactBytes(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  subnetenv.Env
		want string
	}{
		{"ipv4", v4Env, v4File},
		{"dual stack", dualEnv, dualFile},
		{"ipv6 only", v6OnlyEnv, v6OnlyFile},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(subnetenv.Format(tt.env)); got != tt.want {
				t.Errorf("Format mismatch (-want +got):\n%s", cmp.Diff(tt.want, got))
			}
		})
	}
}

func TestWriteReadRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "flannel")
	path := filepath.Join(dir, "subnet.env")
	for _, env := range []subnetenv.Env{v4Env, dualEnv, v6OnlyEnv, {}} {
		if err := subnetenv.Write(path, env); err != nil {
			t.Fatalf("Write: %v", err)
		}
		got, err := subnetenv.Read(path)
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if diff := cmp.Diff(env, got, equateNetip); diff != "" {
			t.Errorf("round trip mismatch (-want +got):\n%s", diff)
		}
	}
	// Nothing but the file itself is left in the directory.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "subnet.env" {
		t.Errorf("directory holds %v, want only subnet.env", entries)
	}
}

func TestWritePermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "flannel")
	path := filepath.Join(dir, "subnet.env")
	if err := subnetenv.Write(path, v4Env); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		want fs.FileMode
	}{{dir, fs.ModeDir | 0o755}, {path, 0o644}} {
		st, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != c.want {
			t.Errorf("%s has mode %v, want %v", c.path, st.Mode(), c.want)
		}
	}
}

func TestReadMissing(t *testing.T) {
	_, err := subnetenv.Read(filepath.Join(t.TempDir(), "subnet.env"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Read of a missing file: %v, want fs.ErrNotExist", err)
	}
}

func TestReadTooLarge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	big := strings.Repeat("# padding\n", 10_000) + v4File
	if err := os.WriteFile(path, []byte(big), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := subnetenv.Read(path); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("Read of a 100 KB file: %v, want a size error", err)
	}
}

// Readers racing a writer must see one whole version or the other, never a
// mix or a truncated file: the CNI plugin reads this file while flanneld
// may be writing it.
func TestWriteIsAtomic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	if err := subnetenv.Write(path, v4Env); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var reads, bad int
	var firstBad string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			b, err := os.ReadFile(path)
			reads++
			if s := string(b); err != nil || (s != v4File && s != dualFile) {
				if bad++; firstBad == "" {
					firstBad = s + " / " + errString(err)
				}
			}
		}
	}()
	for i := range 300 {
		env := v4Env
		if i%2 == 0 {
			env = dualEnv
		}
		if err := subnetenv.Write(path, env); err != nil {
			close(done)
			wg.Wait()
			t.Fatalf("Write #%d: %v", i, err)
		}
	}
	close(done)
	wg.Wait()
	if bad > 0 {
		t.Errorf("%d of %d reads saw a partial or missing file, e.g. %q", bad, reads, firstBad)
	}
	t.Logf("%d reads during 300 writes", reads)
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// A write that fails before the rename (here the temporary file cannot be
// created because its name would be too long) leaves the old file as it was.
func TestFailedWriteKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, strings.Repeat("s", 250))
	if err := os.WriteFile(path, []byte(v4File), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := subnetenv.Write(path, dualEnv); err == nil {
		t.Fatal("Write succeeded; the test needs it to fail")
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != v4File {
		t.Errorf("after a failed write the file holds %q (%v), want the old content", b, err)
	}
}

// A write that fails at the rename leaves no temporary file behind.
func TestFailedRenameCleansUp(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "subnet.env")
	// A non-empty directory cannot be replaced by a file.
	if err := os.MkdirAll(filepath.Join(path, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := subnetenv.Write(path, v4Env)
	if err == nil {
		t.Fatal("Write over a directory succeeded")
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the file", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %v, want only the subnet.env directory", entries)
	}
}

func TestParseTolerance(t *testing.T) {
	tests := []struct {
		name, in string
		want     subnetenv.Env
	}{
		{"upstream file", v4File, v4Env},
		{"CRLF", strings.ReplaceAll(dualFile, "\n", "\r\n"), dualEnv},
		{"no final newline", strings.TrimSuffix(v4File, "\n"), v4Env},
		{"comments, blank lines, export, quotes, spaces", `
# written by flanneld, edited by me
export FLANNEL_NETWORK="10.5.0.0/16"
	FLANNEL_SUBNET = '10.5.72.1/24'   # the bridge address

export	FLANNEL_MTU=1450 # vxlan overhead
FLANNEL_IPMASQ: true
`, v4Env},
		{"byte order mark", "\xef\xbb\xbf" + v4File, v4Env},
		{"unknown keys ignored", "FOO=bar\nFLANNEL_BACKEND=vxlan\n" + v4File + "OTHER='x y'\n", v4Env},
		{"last value wins", "FLANNEL_MTU=1500\n" + v4File, v4Env},
		{"single-entry comma list", "FLANNEL_NETWORK=10.5.0.0/16,\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", v4Env},
		{"IPMASQ spellings", "FLANNEL_IPMASQ=TRUE\n", subnetenv.Env{IPMasq: true}},
		{"empty values are unset", "FLANNEL_NETWORK=\nFLANNEL_SUBNET=''\nFLANNEL_MTU=\nFLANNEL_IPMASQ=\n", subnetenv.Env{}},
		{"empty file", "", subnetenv.Env{}},
		{"value with hash but no space", "FOO=a#b\nFLANNEL_MTU=9000\n", subnetenv.Env{MTU: 9000}},
		{"escaped quote", `FOO="a \" b"` + "\nFLANNEL_MTU=1\n", subnetenv.Env{MTU: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := subnetenv.Parse([]byte(tt.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, equateNetip); diff != "" {
				t.Errorf("Parse mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, in string
		errText  []string // substrings of the error
	}{
		{"two subnets", "FLANNEL_SUBNET=10.5.72.1/24,10.6.1.1/24\n", []string{"FLANNEL_SUBNET", "more than one"}},
		{"two networks", "FLANNEL_IPV6_NETWORK=fc00::/48, fd00::/48\n", []string{"FLANNEL_IPV6_NETWORK", "more than one"}},
		{"subnet without length", "FLANNEL_SUBNET=10.5.72.1\n", []string{"line 1", "FLANNEL_SUBNET", `"10.5.72.1"`, "IPv4 CIDR"}},
		{"v6 in v4 key", "FLANNEL_NETWORK=fc00::/48\n", []string{"FLANNEL_NETWORK", "IPv4"}},
		{"v4 in v6 key", "FLANNEL_IPV6_SUBNET=10.5.72.1/24\n", []string{"FLANNEL_IPV6_SUBNET", "IPv6"}},
		{"v4-mapped in v6 key", "FLANNEL_IPV6_SUBNET=::ffff:10.5.72.1/120\n", []string{"FLANNEL_IPV6_SUBNET"}},
		{"network host bits", "FLANNEL_NETWORK=10.5.1.0/16\n", []string{"FLANNEL_NETWORK", "10.5.0.0/16"}},
		{"MTU text", "\n\nFLANNEL_MTU=big\n", []string{"line 3", "FLANNEL_MTU", `"big"`}},
		{"MTU negative", "FLANNEL_MTU=-1\n", []string{"FLANNEL_MTU"}},
		{"MTU huge", "FLANNEL_MTU=99999999999999999999\n", []string{"FLANNEL_MTU"}},
		{"IPMASQ yes", "FLANNEL_IPMASQ=yes\n", []string{"FLANNEL_IPMASQ", `"yes"`}},
		{"no equals", "FLANNEL_SUBNET 10.5.72.1/24\n", []string{"line 1"}},
		{"bare word", "hello\n", []string{"line 1", "KEY=value"}},
		{"unterminated quote", `FLANNEL_SUBNET="10.5.72.1/24` + "\n", []string{"FLANNEL_SUBNET", "unterminated"}},
		{"junk after quote", `FLANNEL_SUBNET="10.5.72.1/24" x` + "\n", []string{"FLANNEL_SUBNET", "after the closing quote"}},
		{"empty key", "=1\n", []string{"variable name"}},
		{"long key", strings.Repeat("K", 100_000) + "='1\n", []string{"unterminated"}},
		{"long value truncated", "FLANNEL_SUBNET=" + strings.Repeat("9", 100_000) + "\n", []string{"FLANNEL_SUBNET"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := subnetenv.Parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("Parse = %+v, want an error", env)
			}
			for _, s := range tt.errText {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if len(err.Error()) > 200 || strings.Contains(err.Error(), "\n") {
				t.Errorf("error should be one short line: %q", err)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		v4File, dualFile, v6OnlyFile,
		"export FLANNEL_SUBNET='10.5.72.1/24' # c\r\n",
		`FLANNEL_NETWORK="10.5.0.0/16,"` + "\nFLANNEL_MTU=+12\nFLANNEL_IPMASQ=1\n",
		"FLANNEL_IPV6_SUBNET: fc00::1/64\n",
		`X="\"\\` + "\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := subnetenv.Parse(b)
		if err != nil {
			// Values are cut to 64 bytes, but invalid UTF-8 is escaped
			// as \xNN.
			if len(err.Error()) > 400 || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is %d bytes", len(err.Error()))
			}
			return
		}
		// What parses must survive a write and a read unchanged.
		again, err := subnetenv.Parse(subnetenv.Format(env))
		if err != nil {
			t.Fatalf("Format(%+v) does not parse: %v\n%s", env, err, subnetenv.Format(env))
		}
		if diff := cmp.Diff(env, again, equateNetip); diff != "" {
			t.Fatalf("round trip mismatch (-first +second):\n%s", diff)
		}
	})
}
