package lease

import "strings"

// The etcd keys of a network under prefix (default /coreos.com/network), the
// same in the v3 and v2 keyspaces and byte-for-byte upstream's:
//
//	<prefix>/config          the network config JSON
//	<prefix>/subnets/<key>   one lease or reservation, <key> as Lease.Key
//
// Every package that names these keys builds them here, so that a store,
// the CLI's messages and the lab's bulk writes cannot drift apart.

// ConfigKey is the key of the network config under prefix.
func ConfigKey(prefix string) string { return trimPrefix(prefix) + "/config" }

// SubnetsDir is the directory of the subnet keys under prefix, with its
// trailing slash: the range a listing or a watch covers.
func SubnetsDir(prefix string) string { return trimPrefix(prefix) + "/subnets/" }

// KeyPath is the full etcd key of the subnet key (as Lease.Key returns it)
// under prefix.
func KeyPath(prefix, key string) string { return SubnetsDir(prefix) + key }

// trimPrefix drops trailing slashes, so "/a/" and "/a" name the same keys.
func trimPrefix(prefix string) string { return strings.TrimRight(prefix, "/") }
