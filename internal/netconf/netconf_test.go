package netconf_test

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/flannel-go/flannel/internal/netconf"
)

var equateNetip = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})

func TestParseDefaults(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	tests := []struct {
		name string
		in   string
		want netconf.Config
	}{{
		name: "upstream worked example",
		in:   `{"Network":"10.5.0.0/16"}`,
		want: netconf.Config{
			EnableIPv4: true, Network: pfx("10.5.0.0/16"), SubnetLen: 24,
			SubnetMin: addr("10.5.1.0"), SubnetMax: addr("10.5.255.0"), BackendType: "udp",
		},
	}, {
		name: "upstream docs example keeps explicit values",
		in:   `{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0","Backend":{"Type":"udp","Port":7890}}`,
		want: netconf.Config{
			EnableIPv4: true, Network: pfx("10.0.0.0/8"), SubnetLen: 20,
			SubnetMin: addr("10.10.0.0"), SubnetMax: addr("10.99.0.0"),
			BackendType: "udp", Backend: json.RawMessage(`{"Type":"udp","Port":7890}`),
		},
	}, {
		name: "kubernetes manifest",
		in:   `{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}`,
		want: netconf.Config{
			EnableIPv4: true, Network: pfx("10.244.0.0/16"), SubnetLen: 24,
			SubnetMin: addr("10.244.1.0"), SubnetMax: addr("10.244.255.0"),
			BackendType: "vxlan", Backend: json.RawMessage(`{"Type":"vxlan"}`),
		},
	}, {
		name: "keys and backend type are case-insensitive",
		in:   `{"NetWork":"10.5.0.0/16","subnetlen":25,"BACKEND":{"type":"VXLAN","vni":4}, "enablenftables":true}`,
		want: netconf.Config{
			EnableIPv4: true, EnableNFTables: true, Network: pfx("10.5.0.0/16"), SubnetLen: 25,
			SubnetMin: addr("10.5.0.128"), SubnetMax: addr("10.5.255.128"),
			BackendType: "vxlan", Backend: json.RawMessage(`{"type":"VXLAN","vni":4}`),
		},
	}, {
		name: "a /22 still gets /24 subnets",
		in:   `{"Network":"10.5.0.0/22"}`,
		want: netconf.Config{
			EnableIPv4: true, Network: pfx("10.5.0.0/22"), SubnetLen: 24,
			SubnetMin: addr("10.5.1.0"), SubnetMax: addr("10.5.3.0"), BackendType: "udp",
		},
	}, {
		name: "a /23 gets prefix+2",
		in:   `{"Network":"10.5.0.0/23"}`,
		want: netconf.Config{
			EnableIPv4: true, Network: pfx("10.5.0.0/23"), SubnetLen: 25,
			SubnetMin: addr("10.5.0.128"), SubnetMax: addr("10.5.1.128"), BackendType: "udp",
		},
	}, {
		name: "smallest network /28",
		in:   `{"Network":"192.168.7.16/28"}`,
		want: netconf.Config{
			EnableIPv4: true, Network: pfx("192.168.7.16/28"), SubnetLen: 30,
			SubnetMin: addr("192.168.7.20"), SubnetMax: addr("192.168.7.28"), BackendType: "udp",
		},
	}, {
		name: "whole IPv4 space",
		in:   `{"Network":"0.0.0.0/0"}`,
		want: netconf.Config{
			EnableIPv4: true, Network: pfx("0.0.0.0/0"), SubnetLen: 24,
			SubnetMin: addr("0.0.1.0"), SubnetMax: addr("255.255.255.0"), BackendType: "udp",
		},
	}, {
		name: "zero and null mean default, unknown keys ignored",
		in:   `{"Network":"10.5.0.0/16","SubnetLen":0,"SubnetMin":"0.0.0.0","SubnetMax":null,"EnableIPv4":null,"Comment":"x","Nested":{"a":[1]}}`,
		want: netconf.Config{
			EnableIPv4: true, Network: pfx("10.5.0.0/16"), SubnetLen: 24,
			SubnetMin: addr("10.5.1.0"), SubnetMax: addr("10.5.255.0"), BackendType: "udp",
		},
	}, {
		name: "repeated key: last one wins, as with encoding/json",
		in:   `{"Network":"10.1.0.0/16","network":"10.2.0.0/16"}`,
		want: netconf.Config{
			EnableIPv4: true, Network: pfx("10.2.0.0/16"), SubnetLen: 24,
			SubnetMin: addr("10.2.1.0"), SubnetMax: addr("10.2.255.0"), BackendType: "udp",
		},
	}, {
		name: "dual stack",
		in:   `{"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"2001:cafe:42::/56","Backend":{"Type":"vxlan"}}`,
		want: netconf.Config{
			EnableIPv4: true, EnableIPv6: true,
			Network: pfx("10.42.0.0/16"), SubnetLen: 24, SubnetMin: addr("10.42.1.0"), SubnetMax: addr("10.42.255.0"),
			IPv6Network: pfx("2001:cafe:42::/56"), IPv6SubnetLen: 64,
			IPv6SubnetMin: addr("2001:cafe:42:1::"), IPv6SubnetMax: addr("2001:cafe:42:ff::"),
			BackendType: "vxlan", Backend: json.RawMessage(`{"Type":"vxlan"}`),
		},
	}, {
		name: "IPv6 /62 gets /64, explicit bounds",
		in:   `{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fc00::/62","IPv6SubnetMin":"fc00:0:0:2::","IPv6SubnetMax":"fc00:0:0:2::"}`,
		want: netconf.Config{
			EnableIPv4: true, EnableIPv6: true,
			Network: pfx("10.5.0.0/16"), SubnetLen: 24, SubnetMin: addr("10.5.1.0"), SubnetMax: addr("10.5.255.0"),
			IPv6Network: pfx("fc00::/62"), IPv6SubnetLen: 64,
			IPv6SubnetMin: addr("fc00:0:0:2::"), IPv6SubnetMax: addr("fc00:0:0:2::"),
			BackendType: "udp",
		},
	}, {
		name: "IPv6 only, small network gets prefix+2; IPv4 keys are ignored",
		in:   `{"EnableIPv4":false,"EnableIPv6":true,"Network":"not looked at","IPv6Network":"fc00::/120","Backend":{"Type":"host-gw"}}`,
		want: netconf.Config{
			EnableIPv6:  true,
			IPv6Network: pfx("fc00::/120"), IPv6SubnetLen: 122,
			IPv6SubnetMin: addr("fc00::40"), IPv6SubnetMax: addr("fc00::c0"),
			BackendType: "host-gw", Backend: json.RawMessage(`{"Type":"host-gw"}`),
		},
	}, {
		name: "IPv6 whole space",
		in:   `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"::/0"}`,
		want: netconf.Config{
			EnableIPv6:  true,
			IPv6Network: pfx("::/0"), IPv6SubnetLen: 64,
			IPv6SubnetMin: addr("0:0:0:1::"), IPv6SubnetMax: addr("ffff:ffff:ffff:ffff::"),
			BackendType: "udp",
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := netconf.Parse([]byte(tt.in))
			if err != nil {
				t.Fatalf("Parse(%s): %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, *got, equateNetip); diff != "" {
				t.Errorf("Parse(%s) mismatch (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

// The worked example in upstream's docs promises 255 leases.
func TestParseWorkedExampleHas255Subnets(t *testing.T) {
	c, err := netconf.Parse([]byte(`{"Network": "10.5.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for a := c.SubnetMin; a.Compare(c.SubnetMax) <= 0; {
		n++
		b := a.As4()
		b[2]++ // one /24 step
		if b[2] == 0 {
			break
		}
		a = netip.AddrFrom4(b)
	}
	if n != 255 {
		t.Errorf("%s..%s holds %d /24 subnets, want 255", c.SubnetMin, c.SubnetMax, n)
	}
}

func TestParseErrors(t *testing.T) {
	net16 := `"Network":"10.5.0.0/16"`
	v6 := `"EnableIPv6":true,"Network":"10.5.0.0/16",`
	huge := `{"Network":"` + strings.Repeat("1", netconf.MaxSize) + `"}`
	tests := []struct {
		name    string
		in      string
		key     string
		errText string // substring of Error()
	}{
		{"empty", ``, "", "is empty"},
		{"whitespace", " \n\t", "", "is empty"},
		{"over 1 MiB", huge, "", "limit"},
		{"truncated", `{"Network":"10.5.0.0/16"`, "", "byte offset"},
		{"error on line 3", "{\n  \"Network\": \"10.5.0.0/16\"\n  \"SubnetLen\": 24\n}", "", "line 3, column 3 (byte offset 31)"},
		{"trailing comma", `{"Network":"10.5.0.0/16",}`, "", "byte offset 25"},
		{"single quotes", `{'Network':'10.5.0.0/16'}`, "", "byte offset"},
		{"trailing garbage", `{"Network":"10.5.0.0/16"} {}`, "", "byte offset"},
		{"byte order mark", "\xef\xbb\xbf{" + net16 + "}", "", "byte offset"},
		{"null", `null`, "", "JSON object"},
		{"array", `[{"Network":"10.5.0.0/16"}]`, "", "JSON object"},
		{"string", `"10.5.0.0/16"`, "", "JSON object"},
		{"no Network", `{}`, "Network", "please define a correct Network parameter"},
		{"empty Network", `{"Network":""}`, "Network", "required"},
		{"Network is a number", `{"Network":5}`, "Network", "must be a string, not a number"},
		{"Network is an object", `{"Network":{"IP":"10.5.0.0"}}`, "Network", "must be a string, not an object"},
		{"Network deeply nested", `{"Network":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`, "Network", "not an array"},
		{"Network without length", `{"Network":"10.5.0.0"}`, "Network", `"10.5.0.0" is not an IPv4 CIDR`},
		{"Network is IPv6", `{"Network":"fc00::/48"}`, "Network", "invalid IPv4 CIDR format"},
		{"Network is v4-mapped", `{"Network":"::ffff:10.5.0.0/112"}`, "Network", "IPv4 CIDR"},
		{"Network with host bits", `{"Network":"10.5.1.0/16"}`, "Network", "the network address is 10.5.0.0/16"},
		{"Network too small", `{"Network":"10.5.0.0/29"}`, "Network", "Minimum useful network prefix is /28"},
		{"Network /32", `{"Network":"10.5.0.1/32"}`, "Network", "too small"},
		{"SubnetLen string", `{` + net16 + `,"SubnetLen":"24"}`, "SubnetLen", `"24" must be a number, not a string`},
		{"SubnetLen bool", `{` + net16 + `,"SubnetLen":true}`, "SubnetLen", "not a boolean"},
		{"SubnetLen 31", `{` + net16 + `,"SubnetLen":31}`, "SubnetLen", "must be less than /31"},
		{"SubnetLen huge", `{` + net16 + `,"SubnetLen":99999}`, "SubnetLen", "must be less than /31"},
		{"SubnetLen overflows int64", `{` + net16 + `,"SubnetLen":99999999999999999999999}`, "SubnetLen", "not a prefix length"},
		{"SubnetLen negative", `{` + net16 + `,"SubnetLen":-1}`, "SubnetLen", "negative"},
		{"SubnetLen fraction", `{` + net16 + `,"SubnetLen":24.5}`, "SubnetLen", "whole number"},
		{"SubnetLen exponent", `{` + net16 + `,"SubnetLen":2.4e1}`, "SubnetLen", "whole number"},
		{"SubnetLen fewer than four subnets", `{` + net16 + `,"SubnetLen":17}`, "SubnetLen", "at least four subnets"},
		{"SubnetLen equals prefix", `{` + net16 + `,"SubnetLen":16}`, "SubnetLen", "at least 18"},
		{"SubnetMin outside", `{` + net16 + `,"SubnetMin":"10.6.0.0"}`, "SubnetMin", "not inside Network 10.5.0.0/16"},
		{"SubnetMax outside", `{` + net16 + `,"SubnetMax":"10.4.255.0"}`, "SubnetMax", "SubnetMax is not in the range of the Network"},
		{"SubnetMin off boundary", `{` + net16 + `,"SubnetMin":"10.5.1.5"}`, "SubnetMin", "SubnetLen boundary (/24)"},
		{"SubnetMax off boundary", `{` + net16 + `,"SubnetLen":25,"SubnetMax":"10.5.9.64"}`, "SubnetMax", "boundary (/25)"},
		{"SubnetMin above SubnetMax", `{` + net16 + `,"SubnetMin":"10.5.9.0","SubnetMax":"10.5.8.0"}`, "SubnetMin", "greater than SubnetMax 10.5.8.0"},
		{"SubnetMin above default SubnetMax", `{"Network":"10.5.0.0/24","SubnetLen":26,"SubnetMin":"10.5.0.192","SubnetMax":"10.5.0.64"}`, "SubnetMin", "greater"},
		{"SubnetMin IPv6", `{` + net16 + `,"SubnetMin":"fc00::"}`, "SubnetMin", "not an IPv4 address"},
		{"SubnetMin junk", `{` + net16 + `,"SubnetMin":"banana"}`, "SubnetMin", "not an IPv4 address"},
		{"SubnetMin CIDR", `{` + net16 + `,"SubnetMin":"10.5.1.0/24"}`, "SubnetMin", "not an IPv4 address"},
		{"SubnetMin number", `{` + net16 + `,"SubnetMin":168100096}`, "SubnetMin", "must be a string"},
		{"EnableIPv4 string", `{` + net16 + `,"EnableIPv4":"true"}`, "EnableIPv4", "must be true or false, not a string"},
		{"EnableIPv4 number", `{` + net16 + `,"EnableIPv4":1}`, "EnableIPv4", "true or false"},
		{"EnableNFTables string", `{` + net16 + `,"EnableNFTables":"yes"}`, "EnableNFTables", "true or false"},
		{"no family", `{` + net16 + `,"EnableIPv4":false}`, "EnableIPv4", "no address family"},
		{"no family, both explicit", `{"EnableIPv4":false,"EnableIPv6":false}`, "EnableIPv4", "no address family"},
		{"no IPv6Network", `{` + v6 + `"Backend":{"Type":"vxlan"}}`, "IPv6Network", "please define a correct IPv6Network parameter"},
		{"IPv6Network is IPv4", `{` + v6 + `"IPv6Network":"10.6.0.0/16"}`, "IPv6Network", "invalid IPv6 CIDR format"},
		{"IPv6Network host bits", `{` + v6 + `"IPv6Network":"fc00::1/48"}`, "IPv6Network", "the network address is fc00::/48"},
		{"IPv6Network zone", `{` + v6 + `"IPv6Network":"fe80::%eth0/64"}`, "IPv6Network", "IPv6 CIDR"},
		{"IPv6Network too small", `{` + v6 + `"IPv6Network":"fc00::/125"}`, "IPv6Network", "Minimum useful network prefix is /124"},
		{"IPv6SubnetLen 127", `{` + v6 + `"IPv6Network":"fc00::/48","IPv6SubnetLen":127}`, "IPv6SubnetLen", "must be less than /127"},
		{"IPv6SubnetLen too short", `{` + v6 + `"IPv6Network":"fc00::/48","IPv6SubnetLen":49}`, "IPv6SubnetLen", "at least four subnets (IPv6SubnetLen must be at least 50)"},
		{"IPv6SubnetMin outside", `{` + v6 + `"IPv6Network":"fc00::/48","IPv6SubnetMin":"fd00::"}`, "IPv6SubnetMin", "not inside IPv6Network fc00::/48"},
		{"IPv6SubnetMax off boundary", `{` + v6 + `"IPv6Network":"fc00::/48","IPv6SubnetMax":"fc00:0:0:1::1"}`, "IPv6SubnetMax", "boundary (/64)"},
		{"IPv6SubnetMin zone", `{` + v6 + `"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:1::%eth0"}`, "IPv6SubnetMin", "not an IPv6 address"},
		{"IPv6SubnetMin v4-mapped", `{` + v6 + `"IPv6Network":"fc00::/48","IPv6SubnetMin":"::ffff:10.5.1.0"}`, "IPv6SubnetMin", "not an IPv6 address"},
		{"disabled family still type-checked", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Network":5}`, "Network", "must be a string"},
		{"disabled IPv6 still type-checked", `{` + net16 + `,"IPv6SubnetLen":"64"}`, "IPv6SubnetLen", "must be a number"},
		{"Backend string", `{` + net16 + `,"Backend":"vxlan"}`, "Backend", `"vxlan" must be a JSON object`},
		{"Backend null", `{` + net16 + `,"Backend":null}`, "Backend", "JSON object"},
		{"Backend without Type", `{` + net16 + `,"Backend":{"VNI":1}}`, "Backend.Type", "unknown backend type: "},
		{"Backend empty Type", `{` + net16 + `,"Backend":{"Type":""}}`, "Backend.Type", "missing"},
		{"Backend Type number", `{` + net16 + `,"Backend":{"Type":7}}`, "Backend.Type", "must be a string"},
		{"Backend Type array", `{` + net16 + `,"Backend":{"Type":["vxlan"]}}`, "Backend.Type", "not an array"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := netconf.Parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("Parse(%.80s) = %+v, want an error naming %q", tt.in, c, tt.key)
			}
			var e *netconf.Error
			if !errors.As(err, &e) {
				t.Fatalf("Parse(%.80s): error %v is %T, want *netconf.Error", tt.in, err, err)
			}
			if e.Key != tt.key {
				t.Errorf("Parse(%.80s): error %q names key %q, want %q", tt.in, err, e.Key, tt.key)
			}
			if !strings.Contains(err.Error(), tt.errText) {
				t.Errorf("Parse(%.80s): error %q does not contain %q", tt.in, err, tt.errText)
			}
			if !strings.HasPrefix(err.Error(), "config: ") {
				t.Errorf("error %q lacks the config: prefix", err)
			}
			if len(err.Error()) > 400 {
				t.Errorf("error is %d bytes long: %.100s…", len(err.Error()), err)
			}
		})
	}
}

func TestErrorText(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0"}`,
			`config: SubnetMin "10.6.0.0" is not inside Network 10.5.0.0/16 (SubnetMin is not in the range of the Network)`},
		{`{"Network":"10.5.1.0/16"}`,
			`config: Network "10.5.1.0/16" has host bits set; the network address is 10.5.0.0/16`},
		{`{"Network":"10.5.0.0/16","SubnetLen":31}`,
			`config: SubnetLen "31" must be less than /31`},
		{`{"Network":"10.5.0.0/16","SubnetLen":"24"}`,
			`config: SubnetLen "24" must be a number, not a string`},
		{`{}`,
			`config: Network is required when EnableIPv4 is true (please define a correct Network parameter in the flannel config)`},
		{`{"Network":"10.5.0.0/16",}`,
			`config: is not valid JSON: invalid character '}' looking for beginning of object key string at line 1, column 26 (byte offset 25)`},
	}
	for _, tt := range tests {
		_, err := netconf.Parse([]byte(tt.in))
		if err == nil || err.Error() != tt.want {
			t.Errorf("Parse(%s) error:\n got %v\nwant %s", tt.in, err, tt.want)
		}
	}
}

// A hostile value must not flood the log, nor smuggle terminal escapes or
// newlines into it.
func TestErrorValueIsTruncatedAndQuoted(t *testing.T) {
	long := strings.Repeat("é", 100_000) // multi-byte, to catch cutting a rune in half
	for _, in := range []string{
		`{"Network":"` + long + `"}`,
		`{"Network":"10.5.0.0/16","SubnetMin":"\u001b[31m10.5.1.0\nlevel=INFO msg=forged"}`,
	} {
		_, err := netconf.Parse([]byte(in))
		var e *netconf.Error
		if !errors.As(err, &e) {
			t.Fatalf("Parse: %v, want *netconf.Error", err)
		}
		if len(e.Value) > 64 || !utf8.ValidString(e.Value) {
			t.Errorf("Value %q: want valid UTF-8 of at most 64 bytes", e.Value)
		}
		if strings.ContainsAny(err.Error(), "\n\x1b") || !strings.Contains(err.Error(), e.Key) {
			t.Errorf("error %q should name the key and escape control characters", err)
		}
		if len(err.Error()) > 300 {
			t.Errorf("error is %d bytes", len(err.Error()))
		}
	}
}
