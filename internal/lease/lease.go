// Package lease defines a host's claim on one subnet of the overlay, the
// values stored for it in etcd, and the Store through which leases are read,
// created, renewed and watched.
//
// The encodings here are the compatibility contract with upstream flannel:
// the key `10.5.34.0-24` (or `10.5.34.0-24&fc00:0:0:1::-64` for dual stack)
// and the JSON value {"PublicIP":…,"PublicIPv6":null,"BackendType":…,
// "BackendData":…} must be byte-for-byte what upstream writes and reads.
package lease

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"time"
)

// DefaultTTL is how long a lease lives without renewal, as upstream.
const DefaultTTL = 24 * time.Hour

// Sentinel errors returned by Store implementations.
var (
	// ErrExists: Create found the subnet key already present.
	ErrExists = errors.New("lease: subnet already taken")
	// ErrNotFound: Renew found no key, or the key belongs to a different etcd lease.
	ErrNotFound = errors.New("lease: not found")
	// ErrCompacted: Watch was asked for a revision etcd has compacted; re-list.
	ErrCompacted = errors.New("lease: watch revision compacted")
	// ErrNoConfig: the network config key does not exist.
	ErrNoConfig = errors.New("lease: network config not found")
	// ErrNoFreeSubnet: every subnet between SubnetMin and SubnetMax is taken.
	ErrNoFreeSubnet = errors.New("lease: no free subnet")
)

// Lease is one host's subnet (and optional IPv6 subnet) with what peers need
// to reach it.
type Lease struct {
	Subnet  netip.Prefix // IPv4 subnet; always valid for leases stored in etcd
	Subnet6 netip.Prefix // IPv6 subnet; invalid (zero) when IPv6 is off
	Attrs   Attrs

	// ID is the store's handle on the lease's lifetime (the etcd v3 lease
	// ID). Zero means a reservation: a key with no TTL, which is never
	// handed to another host and never turned into an expiring lease.
	ID int64
	// Expires is when the lease ends unless renewed; zero for reservations
	// and where the store did not look it up (peers seen through a watch).
	Expires time.Time
}

// Reserved reports whether the lease is an operator's reservation.
func (l Lease) Reserved() bool { return l.ID == 0 }

// Key is the lease's key below <prefix>/subnets/.
func (l Lease) Key() string { return MakeKey(l.Subnet, l.Subnet6) }

func (l Lease) String() string { return l.Key() }

// Attrs is the lease value stored in etcd.
type Attrs struct {
	PublicIP      netip.Addr      // IPv4; "0.0.0.0" on the wire when unset
	PublicIPv6    netip.Addr      // null on the wire when unset
	BackendType   string          // omitted when empty (udp and alloc, as upstream)
	BackendData   json.RawMessage // omitted when empty
	BackendV6Data json.RawMessage // omitted when empty
}

// wireAttrs fixes field order and omission rules to upstream's.
type wireAttrs struct {
	PublicIP      string          `json:"PublicIP"`
	PublicIPv6    *string         `json:"PublicIPv6"`
	BackendType   string          `json:"BackendType,omitempty"`
	BackendData   json.RawMessage `json:"BackendData,omitempty"`
	BackendV6Data json.RawMessage `json:"BackendV6Data,omitempty"`
}

// MarshalJSON writes upstream's exact form.
func (a Attrs) MarshalJSON() ([]byte, error) {
	w := wireAttrs{PublicIP: "0.0.0.0", BackendType: a.BackendType}
	if a.PublicIP.IsValid() {
		w.PublicIP = a.PublicIP.String()
	}
	if a.PublicIPv6.IsValid() {
		s := a.PublicIPv6.String()
		w.PublicIPv6 = &s
	}
	if len(a.BackendData) > 0 && !bytes.Equal(a.BackendData, []byte("null")) {
		w.BackendData = a.BackendData
	}
	if len(a.BackendV6Data) > 0 && !bytes.Equal(a.BackendV6Data, []byte("null")) {
		w.BackendV6Data = a.BackendV6Data
	}
	return json.Marshal(w)
}

// UnmarshalJSON accepts what upstream writes; it rejects addresses that do
// not parse or are of the wrong family, so a bad value never becomes a route.
func (a *Attrs) UnmarshalJSON(b []byte) error {
	var w wireAttrs
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	var out Attrs
	if w.PublicIP != "" {
		ip, err := netip.ParseAddr(w.PublicIP)
		if err != nil || !ip.Is4() {
			return fmt.Errorf("PublicIP %q is not an IPv4 address", w.PublicIP)
		}
		if !ip.IsUnspecified() {
			out.PublicIP = ip
		}
	}
	if w.PublicIPv6 != nil && *w.PublicIPv6 != "" {
		ip, err := netip.ParseAddr(*w.PublicIPv6)
		if err != nil || !ip.Is6() || ip.Is4In6() || ip.Zone() != "" {
			return fmt.Errorf("PublicIPv6 %q is not an IPv6 address", *w.PublicIPv6)
		}
		out.PublicIPv6 = ip
	}
	out.BackendType = w.BackendType
	out.BackendData = cloneRaw(w.BackendData)
	out.BackendV6Data = cloneRaw(w.BackendV6Data)
	*a = out
	return nil
}

func cloneRaw(r json.RawMessage) json.RawMessage {
	if len(r) == 0 || bytes.Equal(r, []byte("null")) {
		return nil
	}
	return append(json.RawMessage(nil), r...)
}

// Equal reports whether two attribute sets describe the same peer endpoint.
func (a Attrs) Equal(b Attrs) bool {
	return a.PublicIP == b.PublicIP && a.PublicIPv6 == b.PublicIPv6 &&
		a.BackendType == b.BackendType &&
		bytes.Equal(compactJSON(a.BackendData), compactJSON(b.BackendData)) &&
		bytes.Equal(compactJSON(a.BackendV6Data), compactJSON(b.BackendV6Data))
}

func compactJSON(r json.RawMessage) []byte {
	var buf bytes.Buffer
	if json.Compact(&buf, r) != nil {
		return r
	}
	if bytes.Equal(buf.Bytes(), []byte("null")) {
		return nil // encoded as absent, so equal to absent
	}
	// Marshal escapes <, > and & (as encoding/json does); compare in that
	// form so that attrs stay Equal across a round trip through etcd.
	var esc bytes.Buffer
	json.HTMLEscape(&esc, buf.Bytes())
	return esc.Bytes()
}

// keyRE is upstream's key grammar: a mandatory IPv4 part and an optional
// IPv6 suffix.
var keyRE = regexp.MustCompile(`^(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-fA-F0-9:]+)-(\d+))?$`)

// MakeKey formats a subnet key: 10.5.34.0-24 or 10.5.34.0-24&fc00::-64.
func MakeKey(sn, sn6 netip.Prefix) string {
	k := fmt.Sprintf("%s-%d", sn.Addr(), sn.Bits())
	if sn6.IsValid() {
		k += fmt.Sprintf("&%s-%d", sn6.Addr(), sn6.Bits())
	}
	return k
}

// ParseKey parses a subnet key. Both subnets must be in canonical form (no
// host bits), so a hand-written key like 10.5.34.7-24 is rejected rather
// than silently routed as 10.5.34.0/24.
func ParseKey(key string) (sn, sn6 netip.Prefix, err error) {
	m := keyRE.FindStringSubmatch(key)
	if m == nil {
		return sn, sn6, fmt.Errorf("subnet key %q: not of the form 10.5.34.0-24", key)
	}
	if sn, err = parsePrefix(m[1], m[2], false); err != nil {
		return netip.Prefix{}, sn6, fmt.Errorf("subnet key %q: %w", key, err)
	}
	if m[3] != "" {
		if sn6, err = parsePrefix(m[3], m[4], true); err != nil {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q: %w", key, err)
		}
	}
	return sn, sn6, nil
}

func parsePrefix(addr, bits string, v6 bool) (netip.Prefix, error) {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.Prefix{}, err
	}
	if ip.Is6() != v6 || ip.Is4In6() || ip.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("address %s is of the wrong family", addr)
	}
	n, err := strconv.Atoi(bits)
	if err != nil || n < 0 || n > ip.BitLen() {
		return netip.Prefix{}, fmt.Errorf("bad prefix length %q", bits)
	}
	p := netip.PrefixFrom(ip, n)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s has host bits set", p)
	}
	return p, nil
}

// EventType says whether a watch event adds (or changes) or removes a lease.
type EventType int

const (
	Added EventType = iota
	Removed
)

func (t EventType) String() string {
	if t == Removed {
		return "removed"
	}
	return "added"
}

// Event is one change under <prefix>/subnets/. For Removed, only Subnet
// and Subnet6 of Lease are set.
type Event struct {
	Type  EventType
	Lease Lease
}

// Store is the cluster-wide lease registry (etcd). Implementations must be
// safe for concurrent use.
type Store interface {
	// Config returns the raw network config JSON, or ErrNoConfig.
	Config(ctx context.Context) ([]byte, error)
	// Leases lists every lease (and reservation) with the revision it was
	// read at. Entries whose key or value does not parse are skipped and
	// reported through the store's logger, naming the key.
	Leases(ctx context.Context) (leases []Lease, rev int64, err error)
	// Create stores l under its key only if the key is absent (ErrExists
	// otherwise), attached to a new lease of the given TTL. The returned
	// lease carries ID and Expires.
	Create(ctx context.Context, l Lease, ttl time.Duration) (Lease, error)
	// Renew extends l (identified by key and ID) to a full TTL and rewrites
	// its attributes; ErrNotFound if the key is gone or no longer ours.
	Renew(ctx context.Context, l Lease, ttl time.Duration) (Lease, error)
	// Revoke deletes l's key and ends its etcd lease.
	Revoke(ctx context.Context, l Lease) error
	// Watch calls fn with each batch of events after revision rev until ctx
	// ends (returning ctx.Err()) or the revision is compacted (returning
	// ErrCompacted; the caller re-lists). Connection loss is retried inside
	// with backoff and never busy-loops. fn runs on the caller's goroutine.
	Watch(ctx context.Context, rev int64, fn func([]Event)) error
}
