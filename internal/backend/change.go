package backend

import (
	"net/netip"

	"github.com/flannel-go/flannel/internal/lease"
)

// Split divides changes into the leases to add or replace and the IPv4
// subnets of the removed ones, the form route.Frame.Update takes.
func Split(changes []Change) (put []lease.Lease, removed []netip.Prefix) {
	for _, c := range changes {
		if c.Removed {
			if c.Lease.Subnet.IsValid() {
				removed = append(removed, c.Lease.Subnet)
			}
			continue
		}
		put = append(put, c.Lease)
	}
	return put, removed
}
