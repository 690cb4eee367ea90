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
	"strconv"
	"strings"
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
func Write(path string, e Env) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("subnetenv: create directory %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("subnetenv: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("subnetenv: write %s: %w", path, err)
		}
	}()
	if _, err := f.Write(Format(e)); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	// Without the fsync a crash after the rename can leave an empty file
	// under the new name (ext4 delayed allocation).
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	// Make the rename itself durable. Not every filesystem can sync a
	// directory, and the file is already in place, so this is best effort.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Read reads and parses the file at path. A missing file gives an error
// matching fs.ErrNotExist: the normal case on a host's first start.
func Read(path string) (Env, error) {
	f, err := os.Open(path)
	if err != nil {
		return Env{}, fmt.Errorf("subnetenv: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return Env{}, fmt.Errorf("subnetenv: read %s: %w", path, err)
	}
	if len(b) > maxSize {
		return Env{}, fmt.Errorf("subnetenv: %s is larger than %d bytes; not a subnet.env file", path, maxSize)
	}
	e, err := Parse(b)
	if err != nil {
		return Env{}, fmt.Errorf("%w (in %s)", err, path)
	}
	return e, nil
}

// Parse parses subnet.env content. It accepts what people write by hand:
// comments, blank lines, "export ", quotes, CRLF line ends, "KEY: value".
// Unknown keys are ignored and a repeated key's last value wins. Missing
// keys leave their field zero.
func Parse(b []byte) (Env, error) {
	vars, err := parseLines(b)
	if err != nil {
		return Env{}, err
	}
	var e Env
	for _, kv := range vars {
		switch kv.key {
		case keyNetwork:
			e.Network, err = parsePrefix(kv, false, true)
		case keySubnet:
			e.Subnet, err = parsePrefix(kv, false, false)
		case keyIPv6Network:
			e.IPv6Network, err = parsePrefix(kv, true, true)
		case keyIPv6Subnet:
			e.IPv6Subnet, err = parsePrefix(kv, true, false)
		case keyMTU:
			e.MTU, err = parseMTU(kv)
		case keyIPMasq:
			e.IPMasq, err = parseBool(kv)
		}
		if err != nil {
			return Env{}, err
		}
	}
	return e, nil
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
	// Upstream still accepts a comma-separated list (a MultiClusterCIDR
	// leftover) and treats more than one entry as an error.
	var s string
	for _, part := range strings.Split(kv.value, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if s != "" {
			return netip.Prefix{}, kv.errorf("lists more than one CIDR; flannel supports one")
		}
		s = part
	}
	if s == "" {
		return netip.Prefix{}, nil
	}
	fam := "IPv4"
	if v6 {
		fam = "IPv6"
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Addr().Is6() != v6 || p.Addr().Is4In6() {
		return netip.Prefix{}, kv.errorf("not an %s CIDR", fam)
	}
	if network && p.Masked() != p {
		return netip.Prefix{}, kv.errorf("has host bits set; the network address is %s", p.Masked())
	}
	return p, nil
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
