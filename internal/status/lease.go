package status

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
)

// LeaseInfo is a lease as the operator's JSON shows it (`leases -o json`
// and the lease of `status -o json`).
type LeaseInfo struct {
	Subnet      string          `json:"subnet"`
	Subnet6     string          `json:"subnet6,omitempty"`
	PublicIP    string          `json:"publicIP"`
	PublicIPv6  string          `json:"publicIPv6,omitempty"`
	Backend     string          `json:"backend"`
	BackendData json.RawMessage `json:"backendData,omitempty"`
	Reserved    bool            `json:"reserved"`
	// Expires and TTLSeconds are absent for reservations.
	Expires    *time.Time `json:"expires,omitempty"`
	TTLSeconds *int64     `json:"ttlSeconds,omitempty"`
	Key        string     `json:"key"`
	LeaseID    string     `json:"leaseID,omitempty"` // etcd lease, hex as etcdctl prints it
}

// Info is l as shown, its key under prefix.
func Info(l lease.Lease, prefix string) LeaseInfo {
	j := LeaseInfo{
		Subnet:      l.Subnet.String(),
		PublicIP:    Addr(l.Attrs.PublicIP),
		Backend:     l.Attrs.BackendType,
		BackendData: l.Attrs.BackendData,
		Reserved:    l.Reserved(),
		Key:         lease.KeyPath(prefix, l.Key()),
	}
	if l.Subnet6.IsValid() {
		j.Subnet6 = l.Subnet6.String()
	}
	if l.Attrs.PublicIPv6.IsValid() {
		j.PublicIPv6 = l.Attrs.PublicIPv6.String()
	}
	if !l.Reserved() {
		j.LeaseID = fmt.Sprintf("%x", l.ID)
		if !l.Expires.IsZero() {
			t := l.Expires.UTC().Round(time.Second)
			ttl := int64(max(0, time.Until(l.Expires).Round(time.Second).Seconds()))
			j.Expires, j.TTLSeconds = &t, &ttl
		}
	}
	return j
}

// Addr is a, or "" when unset.
func Addr(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
