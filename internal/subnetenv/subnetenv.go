// Package subnetenv reads and writes /run/flannel/subnet.env, the file
// through which flanneld tells the CNI plugin, mk-docker-opts.sh and the
// operator which subnet this host owns. It is the one parser for all of
// them, so they cannot drift apart (upstream has two).
//
// The format is upstream's: shell-style KEY=value lines, written by
// flanneld and often read or edited by hand, so reading is as tolerant as
// the godotenv library upstream uses.
package subnetenv

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/flannel-go/flannel/internal/atomicfile"
)

// DefaultPath is where flanneld writes the file unless told otherwise.
const DefaultPath = "/run/flannel/subnet.env"

// Env is the content of subnet.env. A zero prefix means the line is absent
// (IPv4 or IPv6 disabled).
type Env struct {
	Network netip.Prefix // FLANNEL_NETWORK: the whole overlay, e.g. 10.5.0.0/16
	// Subnet is FLANNEL_SUBNET as written: the lease's first host address
	// with the lease's length, e.g. 10.5.72.1/24 for lease 10.5.72.0/24.
	// Subnet.Masked() is the lease.
	Subnet      netip.Prefix
	IPv6Network netip.Prefix // FLANNEL_IPV6_NETWORK
	IPv6Subnet  netip.Prefix // FLANNEL_IPV6_SUBNET, like Subnet
	MTU         int          // FLANNEL_MTU: the MTU containers must use
	IPMasq      bool         // FLANNEL_IPMASQ: flanneld masquerades (--ip-masq)
}

// Keys as upstream spells them.
const (
	keyNetwork     = "FLANNEL_NETWORK"
	keySubnet      = "FLANNEL_SUBNET"
	keyIPv6Network = "FLANNEL_IPV6_NETWORK"
	keyIPv6Subnet  = "FLANNEL_IPV6_SUBNET"
	keyMTU         = "FLANNEL_MTU"
	keyIPMasq      = "FLANNEL_IPMASQ"
)

// maxSize bounds what Read accepts; the real file is about 150 bytes.
const maxSize = 64 << 10

// SubnetAddr turns a lease into its FLANNEL_SUBNET form: the first host
// address with the lease's length (10.5.72.0/24 → 10.5.72.1/24), which is
// what the bridge (cni0, docker0) gets as its address.
func SubnetAddr(lease netip.Prefix) netip.Prefix {
	if !lease.IsValid() {
		return netip.Prefix{}
	}
	lease = lease.Masked()
	return netip.PrefixFrom(lease.Addr().Next(), lease.Bits())
}

// Format renders e exactly as upstream writes it: the IPv4 lines, the IPv6
// lines, then MTU and IPMASQ, each "KEY=value\n".
func Format(e Env) []byte {
	var b bytes.Buffer
	line := func(key string, p netip.Prefix) {
		if p.IsValid() {
			fmt.Fprintf(&b, "%s=%s\n", key, p)
		}
	}
	line(keyNetwork, e.Network)
	line(keySubnet, e.Subnet)
	line(keyIPv6Network, e.IPv6Network)
	line(keyIPv6Subnet, e.IPv6Subnet)
	fmt.Fprintf(&b, "%s=%d\n", keyMTU, e.MTU)
	fmt.Fprintf(&b, "%s=%t\n", keyIPMasq, e.IPMasq)
	return b.Bytes()
}

// Write replaces the file at path with e, atomically: readers see the old
// file or the new one, never a partial one, even if flanneld dies midway.
// The directory is created (0755) if missing; the file is 0644 whatever the
// umask, because the CNI plugin and other users read it.
func Write(path string, e Env) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("subnetenv: create directory %s: %w", dir, err)
	}
	if err := atomicfile.Write(path, Format(e), 0o644); err != nil {
		return fmt.Errorf("subnetenv: write %s: %w", path, err)
	}
	return nil
}

// Read reads and parses the file at path. A missing file gives an error
// matching fs.ErrNotExist: the normal case on a host's first start.
func Read(path string) (Env, error) {
	b, err := readFile(path)
	if err != nil {
		return Env{}, err
	}
	e, err := Parse(b)
	if err != nil {
		return Env{}, fmt.Errorf("%w (in %s)", err, path)
	}
	return e, nil
}

// ReadFull is Read for a reader that needs Full (the CNI plugin).
func ReadFull(path string) (Full, error) {
	b, err := readFile(path)
	if err != nil {
		return Full{}, err
	}
	f, err := ParseFull(b)
	if err != nil {
		return Full{}, fmt.Errorf("%w (in %s)", err, path)
	}
	return f, nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("subnetenv: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("subnetenv: read %s: %w", path, err)
	}
	if len(b) > maxSize {
		return nil, fmt.Errorf("subnetenv: %s is larger than %d bytes; not a subnet.env file", path, maxSize)
	}
	return b, nil
}

// Parse parses subnet.env content. It accepts what people write by hand:
// comments, blank lines, "export ", quotes, CRLF line ends, "KEY: value".
// Unknown keys are ignored and a repeated key's last value wins. Missing
// keys leave their field zero. A list of networks is an error: flanneld
// has one network per family.
func Parse(b []byte) (Env, error) {
	f, err := parse(b, false)
	return f.Env, err
}

// Full is subnet.env as the CNI plugin reads it, which needs two things Env
// does not say: every network of a comma-separated FLANNEL_NETWORK or
// FLANNEL_IPV6_NETWORK (flanneld releases with MultiClusterCIDR wrote
// lists, and upstream's plugin routes pods to each of them), and which keys
// are absent, because the plugin refuses a file without FLANNEL_MTU or
// FLANNEL_IPMASQ rather than guess a value.
type Full struct {
	Env // Network and IPv6Network are the first of their lists
	// Networks and IPv6Networks list every entry in file order, duplicates
	// dropped.
	Networks     []netip.Prefix
	IPv6Networks []netip.Prefix
	// Missing names the keys the plugin requires that are absent or empty,
	// in upstream's order and grouping: "FLANNEL_NETWORK" and
	// "FLANNEL_IPV6_NETWORK" when neither network is set, likewise the
	// subnets, then "FLANNEL_MTU" and "FLANNEL_IPMASQ".
	Missing []string
}

// ParseFull is Parse that accepts lists of networks and reports missing
// keys; see Full.
func ParseFull(b []byte) (Full, error) {
	return parse(b, true)
}

func parse(b []byte, lists bool) (Full, error) {
	vars, err := parseLines(b)
	if err != nil {
		return Full{}, err
	}
	var f Full
	seen := map[string]bool{}
	for _, kv := range vars {
		switch kv.key {
		case keyNetwork:
			f.Networks, err = parsePrefixes(kv, false, true, lists)
			f.Network = first(f.Networks)
		case keySubnet:
			f.Subnet, err = parsePrefix(kv, false, false)
		case keyIPv6Network:
			f.IPv6Networks, err = parsePrefixes(kv, true, true, lists)
			f.IPv6Network = first(f.IPv6Networks)
		case keyIPv6Subnet:
			f.IPv6Subnet, err = parsePrefix(kv, true, false)
		case keyMTU:
			f.MTU, err = parseMTU(kv)
		case keyIPMasq:
			f.IPMasq, err = parseBool(kv)
		}
		if err != nil {
			return Full{}, err
		}
		// A later empty value unsets the key, as it does the field.
		seen[kv.key] = kv.value != ""
	}
	if !f.Network.IsValid() && !f.IPv6Network.IsValid() {
		f.Missing = append(f.Missing, keyNetwork, keyIPv6Network)
	}
	if !f.Subnet.IsValid() && !f.IPv6Subnet.IsValid() {
		f.Missing = append(f.Missing, keySubnet, keyIPv6Subnet)
	}
	for _, k := range []string{keyMTU, keyIPMasq} {
		if !seen[k] {
			f.Missing = append(f.Missing, k)
		}
	}
	return f, nil
}

func first(ps []netip.Prefix) netip.Prefix {
	if len(ps) == 0 {
		return netip.Prefix{}
	}
	return ps[0]
}

type keyValue struct {
	key, value string
	line       int
}

func (kv keyValue) errorf(format string, args ...any) error {
	return fmt.Errorf("subnetenv: line %d: %s %s: %s", kv.line, kv.key, quote(kv.value), fmt.Sprintf(format, args...))
}

// quote keeps a hand-edited or corrupt value from flooding or forging log
// lines.
func quote(s string) string {
	const maxLen = 64
	if len(s) > maxLen {
		s = s[:maxLen] + "…"
	}
	return strconv.Quote(s)
}

func parsePrefix(kv keyValue, v6, network bool) (netip.Prefix, error) {
	ps, err := parsePrefixes(kv, v6, network, false)
	return first(ps), err
}

// parsePrefixes parses a value that upstream still accepts as a
// comma-separated list (a MultiClusterCIDR leftover); unless lists is set,
// more than one entry is an error, as it is for upstream's flanneld.
// Duplicates are dropped.
func parsePrefixes(kv keyValue, v6, network, lists bool) ([]netip.Prefix, error) {
	fam := "IPv4"
	if v6 {
		fam = "IPv6"
	}
	var out []netip.Prefix
	for _, part := range strings.Split(kv.value, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if len(out) > 0 && !lists {
			return nil, kv.errorf("lists more than one CIDR; flannel supports one")
		}
		p, err := netip.ParsePrefix(part)
		if err != nil || p.Addr().Is6() != v6 || p.Addr().Is4In6() {
			return nil, kv.errorf("not an %s CIDR", fam)
		}
		if network && p.Masked() != p {
			return nil, kv.errorf("has host bits set; the network address is %s", p.Masked())
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

func parseMTU(kv keyValue) (int, error) {
	if kv.value == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(kv.value)
	if err != nil || n < 0 || n > 65535 {
		return 0, kv.errorf("not an MTU (a number from 0 to 65535)")
	}
	return n, nil
}

func parseBool(kv keyValue) (bool, error) {
	if kv.value == "" {
		return false, nil
	}
	v, err := strconv.ParseBool(kv.value)
	if err != nil {
		return false, kv.errorf("not true or false")
	}
	return v, nil
}

// parseLines splits dotenv content into key/value pairs in file order.
func parseLines(b []byte) ([]keyValue, error) {
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf")) // BOM from Windows editors
	var out []keyValue
	for i, line := range strings.Split(string(b), "\n") {
		n := i + 1
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" || line[0] == '#' {
			continue
		}
		if rest, ok := strings.CutPrefix(line, "export"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
			line = strings.TrimSpace(rest)
		}
		sep := strings.IndexAny(line, "=:")
		if sep < 0 {
			return nil, fmt.Errorf("subnetenv: line %d: %s is not KEY=value", n, quote(line))
		}
		key := strings.TrimSpace(line[:sep])
		if !validKey(key) {
			return nil, fmt.Errorf("subnetenv: line %d: %s is not a variable name", n, quote(key))
		}
		value, err := unquote(strings.TrimSpace(line[sep+1:]))
		if err != nil {
			if len(key) > 64 {
				key = key[:64] + "…"
			}
			return nil, fmt.Errorf("subnetenv: line %d: %s: %w", n, key, err)
		}
		out = append(out, keyValue{key: key, value: value, line: n})
	}
	return out, nil
}

func validKey(k string) bool {
	if k == "" {
		return false
	}
	for _, c := range []byte(k) {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
		default:
			return false
		}
	}
	return true
}

var errUnterminated = errors.New("unterminated quoted value")

// unquote reads a value as the shell (and godotenv) would: 'literal',
// "with \" escapes", or bare up to a " #" comment. Anything after a closing
// quote must be a comment.
func unquote(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	switch q := v[0]; q {
	case '\'', '"':
		var b strings.Builder
		for i := 1; i < len(v); i++ {
			c := v[i]
			switch {
			case c == q:
				if rest := strings.TrimSpace(v[i+1:]); rest != "" && rest[0] != '#' {
					return "", fmt.Errorf("unexpected %s after the closing quote", quote(rest))
				}
				return b.String(), nil
			case c == '\\' && q == '"' && i+1 < len(v):
				i++
				switch v[i] {
				case 'n':
					b.WriteByte('\n')
				case 'r':
					b.WriteByte('\r')
				case 't':
					b.WriteByte('\t')
				default:
					b.WriteByte(v[i])
				}
			default:
				b.WriteByte(c)
			}
		}
		return "", errUnterminated
	}
	for i := 1; i < len(v); i++ {
		if v[i] == '#' && (v[i-1] == ' ' || v[i-1] == '\t') {
			return strings.TrimSpace(v[:i]), nil
		}
	}
	return v, nil
}
