package status

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"github.com/flannel-go/flannel/internal/backend/vxlan"
	"github.com/flannel-go/flannel/internal/lease"
)

// LeaseInfo is a lease as the operator's JSON shows it (`leases -o json`
// and the lease of `status -o json`).
type LeaseInfo struct {
	// Node is the lease's node in Kubernetes mode.
	Node        string          `json:"node,omitempty"`
	Subnet      string          `json:"subnet"`
	Subnet6     string          `json:"subnet6,omitempty"`
	PublicIP    string          `json:"publicIP"`
	PublicIPv6  string          `json:"publicIPv6,omitempty"`
	Backend     string          `json:"backend"`
	BackendData json.RawMessage `json:"backendData,omitempty"`
	// BackendV6Data is published apart from BackendData only in
	// Kubernetes mode (the backend-v6-data annotation).
	BackendV6Data json.RawMessage `json:"backendV6Data,omitempty"`
	Reserved      bool            `json:"reserved"`
	// Expires and TTLSeconds are absent for reservations.
	Expires    *time.Time `json:"expires,omitempty"`
	TTLSeconds *int64     `json:"ttlSeconds,omitempty"`
	Key        string     `json:"key,omitempty"`     // etcd mode
	LeaseID    string     `json:"leaseID,omitempty"` // etcd lease, hex as etcdctl prints it
	// Error says why a node's annotations make no lease (Kubernetes mode;
	// its peers ignore it).
	Error string `json:"error,omitempty"`
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

// NodeInfo is the lease that node publishes in Kubernetes mode. A podCIDR
// has no key, no etcd lease and no expiry: it is the node's for as long
// as the node exists.
func NodeInfo(node string, l lease.Lease) LeaseInfo {
	return LeaseInfo{
		Node:          node,
		Subnet:        prefixString(l.Subnet),
		Subnet6:       prefixString(l.Subnet6),
		PublicIP:      Addr(l.Attrs.PublicIP),
		PublicIPv6:    Addr(l.Attrs.PublicIPv6),
		Backend:       l.Attrs.BackendType,
		BackendData:   l.Attrs.BackendData,
		BackendV6Data: l.Attrs.BackendV6Data,
	}
}

// VtepMAC is the VTEP MAC of a vxlan lease, "" for other backends or data
// that does not decode.
func VtepMAC(l lease.Lease) string {
	if l.Attrs.BackendType != vxlan.Type {
		return ""
	}
	d, err := vxlan.DecodeLeaseData(l.Attrs.BackendData)
	if err != nil {
		return ""
	}
	return d.VtepMAC.String()
}
