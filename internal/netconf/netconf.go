// Package netconf parses and validates the network config that flanneld
// reads from <prefix>/config: upstream's keys, defaults and case-insensitive
// key matching, with every error naming the key and the bad value.
package netconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Config is a parsed, defaulted and validated network config.
type Config struct {
	EnableIPv4     bool
	EnableIPv6     bool
	EnableNFTables bool

	Network   netip.Prefix // valid when EnableIPv4
	SubnetLen int
	SubnetMin netip.Addr
	SubnetMax netip.Addr

	IPv6Network   netip.Prefix // valid when EnableIPv6
	IPv6SubnetLen int
	IPv6SubnetMin netip.Addr
	IPv6SubnetMax netip.Addr

	// BackendType is the lower-cased Backend.Type; "udp" when the config
	// has no Backend key at all (upstream's code, not its docs).
	BackendType string
	// Backend is the raw Backend object, for the backend to decode its own
	// options from.
	Backend json.RawMessage
}

// MaxSize is the largest config Parse accepts. Real configs are a few
// hundred bytes; the limit keeps a corrupt or hostile etcd value from
// costing more than a moment to reject.
const MaxSize = 1 << 20

// Error is a config that cannot be used. Key is the config key at fault
// (empty when the config as a whole is broken), Value what the config holds
// there (truncated, so a huge value cannot flood a log), and Reason what is
// wrong with it.
type Error struct {
	Key    string
	Value  string
	Reason string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("config: ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteByte(' ')
	}
	if e.Value != "" {
		b.WriteString(strconv.Quote(e.Value))
		b.WriteByte(' ')
	}
	b.WriteString(e.Reason)
	return b.String()
}

// maxValueLen bounds Error.Value.
const maxValueLen = 64

func newError(key, value, format string, args ...any) *Error {
	return &Error{Key: key, Value: truncate(value), Reason: fmt.Sprintf(format, args...)}
}

func truncate(s string) string {
	if len(s) <= maxValueLen {
		return s
	}
	n := maxValueLen - len("…")
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// rawConfig lets encoding/json do the key matching, so keys fold exactly as
// upstream's do ("NetWork", "subnetlen"), unknown keys are ignored and a
// repeated key's last value wins. Values stay raw so that type errors can
// name the key and the value.
type rawConfig struct {
	EnableIPv4     json.RawMessage
	EnableIPv6     json.RawMessage
	EnableNFTables json.RawMessage

	Network   json.RawMessage
	SubnetLen json.RawMessage
	SubnetMin json.RawMessage
	SubnetMax json.RawMessage

	IPv6Network   json.RawMessage
	IPv6SubnetLen json.RawMessage
	IPv6SubnetMin json.RawMessage
	IPv6SubnetMax json.RawMessage

	Backend json.RawMessage
}

// family holds the keys and limits that differ between IPv4 and IPv6, so
// both are defaulted and validated by the same code.
type family struct {
	// key names
	enable, network, subnetLen, subnetMin, subnetMax string

	bits        int // address length
	minPrefix   int // longest usable Network prefix (upstream: /28, /124)
	maxLen      int // longest SubnetLen (upstream: 30, 126)
	defaultLen  int // SubnetLen for networks of prefix ≤ defaultLen-2
	zeroIsUnset bool
}

var (
	ipv4 = family{
		enable: "EnableIPv4", network: "Network", subnetLen: "SubnetLen",
		subnetMin: "SubnetMin", subnetMax: "SubnetMax",
		bits: 32, minPrefix: 28, maxLen: 30, defaultLen: 24,
		// Upstream stores SubnetMin/Max as a uint32 where 0 means unset,
		// so "0.0.0.0" asks for the default.
		zeroIsUnset: true,
	}
	ipv6 = family{
		enable: "EnableIPv6", network: "IPv6Network", subnetLen: "IPv6SubnetLen",
		subnetMin: "IPv6SubnetMin", subnetMax: "IPv6SubnetMax",
		bits: 128, minPrefix: 124, maxLen: 126, defaultLen: 64,
	}
)

// Parse decodes a network config, fills in upstream's defaults and checks
// every rule upstream's CheckNetworkConfig checks, plus a few it misses
// (host bits in Network, SubnetMin above SubnetMax). The error, if any, is
// an *Error.
func Parse(data []byte) (*Config, error) {
	if len(data) > MaxSize {
		return nil, newError("", "", "is %d bytes; the limit is %d", len(data), MaxSize)
	}
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, newError("", "", "is empty")
	}
	var raw rawConfig
	if err := json.Unmarshal(data, &raw); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return nil, newError("", "", "is not valid JSON: %v at %s", syn, position(data, syn.Offset))
		}
		if trimmed[0] != '{' {
			return nil, newError("", truncate(string(trimmed)), "must be a JSON object")
		}
		return nil, newError("", "", "is not valid JSON: %v", err)
	}
	if trimmed[0] != '{' { // null decodes into a struct without complaint
		return nil, newError("", truncate(string(trimmed)), "must be a JSON object")
	}

	c := &Config{EnableIPv4: true}
	var err error
	if c.EnableIPv4, err = boolValue(ipv4.enable, raw.EnableIPv4, true); err != nil {
		return nil, err
	}
	if c.EnableIPv6, err = boolValue(ipv6.enable, raw.EnableIPv6, false); err != nil {
		return nil, err
	}
	if c.EnableNFTables, err = boolValue("EnableNFTables", raw.EnableNFTables, false); err != nil {
		return nil, err
	}
	if !c.EnableIPv4 && !c.EnableIPv6 {
		return nil, newError(ipv4.enable, "false", "leaves no address family enabled; set EnableIPv4 or EnableIPv6 to true")
	}
	if c.EnableIPv4 {
		s, err := ipv4.parse(raw.Network, raw.SubnetLen, raw.SubnetMin, raw.SubnetMax)
		if err != nil {
			return nil, err
		}
		c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax = s.network, s.subnetLen, s.min, s.max
	} else if err := typeCheck(ipv4, raw.Network, raw.SubnetLen, raw.SubnetMin, raw.SubnetMax); err != nil {
		return nil, err
	}
	if c.EnableIPv6 {
		s, err := ipv6.parse(raw.IPv6Network, raw.IPv6SubnetLen, raw.IPv6SubnetMin, raw.IPv6SubnetMax)
		if err != nil {
			return nil, err
		}
		c.IPv6Network, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax = s.network, s.subnetLen, s.min, s.max
	} else if err := typeCheck(ipv6, raw.IPv6Network, raw.IPv6SubnetLen, raw.IPv6SubnetMin, raw.IPv6SubnetMax); err != nil {
		return nil, err
	}
	if c.BackendType, c.Backend, err = backend(raw.Backend); err != nil {
		return nil, err
	}
	return c, nil
}

// position names the byte a syntax error is at, both ways: editors count
// lines and columns, tools count bytes.
func position(data []byte, offset int64) string {
	// Offset counts the bytes read, the bad one included.
	pos := int(max(0, min(offset-1, int64(len(data)))))
	line := 1 + bytes.Count(data[:pos], []byte("\n"))
	col := pos - bytes.LastIndexByte(data[:pos], '\n')
	return fmt.Sprintf("line %d, column %d (byte offset %d)", line, col, pos)
}

// subnets is one family's validated settings.
type subnets struct {
	network   netip.Prefix
	subnetLen int
	min, max  netip.Addr
}

func (f family) parse(rawNet, rawLen, rawMin, rawMax json.RawMessage) (subnets, error) {
	var s subnets
	netStr, set, err := stringValue(f.network, rawNet)
	if err != nil {
		return s, err
	}
	if !set || netStr == "" {
		return s, newError(f.network, "", "is required when %s is true (please define a correct %s parameter in the flannel config)", f.enable, f.network)
	}
	if s.network, err = f.prefix(netStr); err != nil {
		return s, err
	}
	prefix := s.network.Bits()
	if prefix > f.minPrefix {
		return s, newError(f.network, netStr, "is too small. Minimum useful network prefix is /%d", f.minPrefix)
	}

	n, set, err := intValue(f.subnetLen, rawLen)
	if err != nil {
		return s, err
	}
	switch {
	case !set || n == 0: // upstream: 0 means "pick for me"
		if prefix <= f.defaultLen-2 {
			s.subnetLen = f.defaultLen
		} else {
			s.subnetLen = prefix + 2
		}
	case n < 0:
		return s, newError(f.subnetLen, string(rawLen), "must not be negative")
	case n > int64(f.maxLen):
		return s, newError(f.subnetLen, string(rawLen), "must be less than /%d", f.maxLen+1)
	case n < int64(prefix+2):
		return s, newError(f.subnetLen, string(rawLen), "is too short for %s %s: network must be able to accommodate at least four subnets (%s must be at least %d)", f.network, s.network, f.subnetLen, prefix+2)
	default:
		s.subnetLen = int(n)
	}

	// The network address has zeros in every host bit and a subnet is
	// smaller than the network, so "network + one subnet" is a single bit.
	first := setBit(s.network.Addr(), s.subnetLen-1)
	last := netip.PrefixFrom(lastAddr(s.network), s.subnetLen).Masked().Addr()
	if s.min, err = f.bound(f.subnetMin, rawMin, s, first); err != nil {
		return s, err
	}
	if s.max, err = f.bound(f.subnetMax, rawMax, s, last); err != nil {
		return s, err
	}
	if s.min.Compare(s.max) > 0 {
		return s, newError(f.subnetMin, s.min.String(), "is greater than %s %s", f.subnetMax, s.max)
	}
	return s, nil
}

// bound parses SubnetMin or SubnetMax, or returns def when it is unset.
func (f family) bound(key string, raw json.RawMessage, s subnets, def netip.Addr) (netip.Addr, error) {
	str, set, err := stringValue(key, raw)
	if err != nil || !set || str == "" {
		return def, err
	}
	a, err := netip.ParseAddr(str)
	if err != nil || a.BitLen() != f.bits || a.Is4In6() || a.Zone() != "" {
		return a, newError(key, str, "is not an %s address", f.name())
	}
	if a.IsUnspecified() && f.zeroIsUnset {
		return def, nil
	}
	if !s.network.Contains(a) {
		return a, newError(key, str, "is not inside %s %s (%s is not in the range of the Network)", f.network, s.network, key)
	}
	if netip.PrefixFrom(a, s.subnetLen).Masked().Addr() != a {
		return a, newError(key, str, "is not on a SubnetLen boundary (/%d)", s.subnetLen)
	}
	return a, nil
}

func (f family) name() string {
	if f.bits == 32 {
		return "IPv4"
	}
	return "IPv6"
}

func (f family) prefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Addr().BitLen() != f.bits || p.Addr().Is4In6() {
		return p, newError(f.network, s, "is not an %s CIDR like %s (invalid %s CIDR format)", f.name(), f.example(), f.name())
	}
	if m := p.Masked(); m != p {
		return p, newError(f.network, s, "has host bits set; the network address is %s", m)
	}
	return p, nil
}

func (f family) example() string {
	if f.bits == 32 {
		return "10.5.0.0/16"
	}
	return "fc00::/48"
}

// typeCheck rejects values of the wrong JSON type for a disabled family:
// upstream decodes them (and fails) even when it then ignores them.
func typeCheck(f family, rawNet, rawLen, rawMin, rawMax json.RawMessage) error {
	for _, kv := range []struct {
		key string
		raw json.RawMessage
	}{{f.network, rawNet}, {f.subnetMin, rawMin}, {f.subnetMax, rawMax}} {
		if _, _, err := stringValue(kv.key, kv.raw); err != nil {
			return err
		}
	}
	_, _, err := intValue(f.subnetLen, rawLen)
	return err
}

func backend(raw json.RawMessage) (string, json.RawMessage, error) {
	if raw == nil {
		return "udp", nil, nil
	}
	if raw[0] != '{' {
		return "", nil, newError("Backend", describe(raw), "must be a JSON object like {\"Type\": \"vxlan\"}")
	}
	var be struct{ Type json.RawMessage }
	if err := json.Unmarshal(raw, &be); err != nil {
		return "", nil, newError("Backend", string(raw), "cannot be decoded: %v", err)
	}
	t, set, err := stringValue("Backend.Type", be.Type)
	if err != nil {
		return "", nil, err
	}
	if !set || t == "" {
		return "", nil, newError("Backend.Type", "", "is missing; set it to a backend such as \"vxlan\" (unknown backend type: )")
	}
	return strings.ToLower(t), append(json.RawMessage(nil), raw...), nil
}

// isNull reports a value that is absent or JSON null; both mean "unset",
// as they do for encoding/json's plain types.
func isNull(raw json.RawMessage) bool {
	return raw == nil || string(raw) == "null"
}

// describe renders a raw value for an error: a string's content, or the
// JSON text of anything else.
func describe(raw json.RawMessage) string {
	var s string
	if raw[0] == '"' && json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

func typeName(raw json.RawMessage) string {
	switch raw[0] {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	default:
		return "a number"
	}
}

func boolValue(key string, raw json.RawMessage, def bool) (bool, error) {
	switch {
	case isNull(raw):
		return def, nil
	case string(raw) == "true":
		return true, nil
	case string(raw) == "false":
		return false, nil
	}
	return false, newError(key, describe(raw), "must be true or false, not %s", typeName(raw))
}

func stringValue(key string, raw json.RawMessage) (s string, set bool, err error) {
	if isNull(raw) {
		return "", false, nil
	}
	if raw[0] != '"' {
		return "", false, newError(key, describe(raw), "must be a string, not %s", typeName(raw))
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false, newError(key, string(raw), "cannot be decoded: %v", err)
	}
	return s, true, nil
}

func intValue(key string, raw json.RawMessage) (n int64, set bool, err error) {
	if isNull(raw) {
		return 0, false, nil
	}
	if c := raw[0]; c != '-' && (c < '0' || c > '9') {
		return 0, false, newError(key, describe(raw), "must be a number, not %s", typeName(raw))
	}
	n, err = strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		return 0, false, newError(key, string(raw), "is not a prefix length (a whole number such as 24)")
	}
	return n, true, nil
}

// setBit returns a with bit i (0 = most significant) set.
func setBit(a netip.Addr, i int) netip.Addr {
	if a.Is4() {
		b := a.As4()
		b[i/8] |= 0x80 >> (i % 8)
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	b[i/8] |= 0x80 >> (i % 8)
	return netip.AddrFrom16(b)
}

// lastAddr is p's highest address (the broadcast address for IPv4).
func lastAddr(p netip.Prefix) netip.Addr {
	if p.Addr().Is4() {
		b := p.Addr().As4()
		for i := p.Bits(); i < 32; i++ {
			b[i/8] |= 0x80 >> (i % 8)
		}
		return netip.AddrFrom4(b)
	}
	b := p.Addr().As16()
	for i := p.Bits(); i < 128; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return netip.AddrFrom16(b)
}
