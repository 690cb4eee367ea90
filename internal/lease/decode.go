package lease

import (
	"errors"
	"fmt"
)

// Decode turns a key below <prefix>/subnets/ and its value into a lease,
// with the rules every store applies: the key must parse and be in
// canonical form (Renew and Revoke address a lease by Lease.Key(), so a
// key written in another spelling could never be renewed or removed by
// us), and the value must decode and name a public IPv4 or IPv6 address.
//
// When the key is good but the value is not, Decode returns the lease with
// only its subnets set and a *BadValueError, so a watch can still report
// the subnet as gone. ID and Expires are the store's to set.
func Decode(key string, value []byte) (Lease, error) {
	sn, sn6, err := ParseKey(key)
	if err != nil {
		return Lease{}, err
	}
	if k := MakeKey(sn, sn6); k != key {
		return Lease{}, fmt.Errorf("subnet key %q is not in canonical form %q", key, k)
	}
	// UnmarshalJSON directly: through json.Unmarshal the value would be
	// scanned once more before it (a listing of 65,000 leases pays that).
	var a Attrs
	if err := a.UnmarshalJSON(value); err != nil {
		return Lease{Subnet: sn, Subnet6: sn6}, &BadValueError{Key: key, Err: err}
	}
	if !a.PublicIP.IsValid() && !a.PublicIPv6.IsValid() {
		return Lease{Subnet: sn, Subnet6: sn6}, &BadValueError{Key: key, Err: errors.New("no public IP")}
	}
	return Lease{Subnet: sn, Subnet6: sn6, Attrs: a}, nil
}

// BadValueError is Decode's error for a good key with a bad value.
type BadValueError struct {
	Key string
	Err error
}

func (e *BadValueError) Error() string { return fmt.Sprintf("subnet %s: bad value: %v", e.Key, e.Err) }
func (e *BadValueError) Unwrap() error { return e.Err }
