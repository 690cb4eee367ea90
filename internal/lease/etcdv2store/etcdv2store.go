// Package etcdv2store is a lease.Store on etcd's v2 keys API, for clusters
// and tutorials that keep flannel's config and leases in the v2 keyspace
// (`etcdctl set`, `curl …/v2/keys/…`, etcd ≤ 3.5 run with --enable-v2), as
// upstream flannel did up to v0.17. Keys and values are the same as the v3
// store's: <prefix>/config and <prefix>/subnets/<key> holding upstream's
// JSON; a lease is a key with a TTL and a reservation a key without one.
//
// The client is a few hundred lines over net/http rather than
// go.etcd.io/etcd/client/v2: that module is unmaintained since etcd
// deprecated the v2 API (3.4) and removed it (3.6), it drags in old
// dependencies, and the protocol we need is four requests (GET, PUT with
// prevExist/prevIndex, DELETE with prevIndex, and a long-poll GET with
// wait=true) over form-encoded bodies and a small JSON reply.
//
// Design notes:
//   - Lease.ID is the key's createdIndex: it survives compare-and-swap
//     renewals and changes when the key is deleted and created again, so
//     it names one incarnation of a lease as a v3 lease ID does. It is 0
//     for keys without a TTL (reservations).
//   - Renew and Revoke read the key, check that it is still that
//     incarnation (same createdIndex, TTL present exactly when ID != 0),
//     and then write or delete with prevIndex=<the modifiedIndex just
//     read>, so a host never touches a key that is no longer its own.
//   - Watch long-polls one event at a time. etcd keeps the last 1000
//     events of the whole keyspace; a waitIndex older than that (error
//     401) is the v2 form of compaction and is reported as
//     lease.ErrCompacted, as is the removal of the subnets directory
//     itself, since either way the caller has to re-list.
//   - Reads fail over to the next endpoint on any transport error; writes
//     only when the request never left this host, because a write that
//     reached etcd may have been applied.
package etcdv2store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/flannel-go/flannel/internal/etcdconf/etcdopt"
	"github.com/flannel-go/flannel/internal/lease"
)

// Options configures New: the connection options shared with the v3
// store, so the daemon can switch stores with a flag. OnConnState is not
// used: this client keeps no connection to watch.
type Options = etcdopt.Options

// Store is a lease.Store on etcd's v2 API. It is safe for concurrent use
// and owns no goroutines.
type Store struct {
	c       *client
	log     *slog.Logger
	prefix  string // cleaned, without trailing slash
	subnets string // prefix + "/subnets" (the directory key)
	stop    context.CancelFunc

	mu sync.Mutex
	// ttls is the TTL last given to each of our leases, by ID, so that a
	// Renew without a TTL (as lease.Keep does) restores it: etcd v2 does
	// not remember a key's original TTL as a v3 lease does. Guarded by mu.
	ttls map[int64]time.Duration
	bad  lease.BadEntries // warn once per bad entry
}

var _ lease.Store = (*Store)(nil)

// New checks the options and reads the TLS files; it does not contact
// etcd.
func New(o Options) (*Store, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("etcdv2store: no etcd endpoints")
	}
	o = o.WithDefaults()
	log, timeout := o.Log, o.Timeout
	eps := make([]*url.URL, 0, len(o.Endpoints))
	for _, e := range o.Endpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("etcdv2store: endpoint %q is not an http:// or https:// URL", e)
		}
		eps = append(eps, u)
	}
	prefix := path.Clean("/" + o.Prefix)
	tr := &http.Transport{
		// No proxy from the environment: a proxy set for image pulls
		// must not intercept the cluster's datastore or its long polls.
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout: timeout,
			// Detects a dead peer under an idle long poll.
			KeepAlive: 15 * time.Second,
		}).DialContext,
		TLSClientConfig:     o.TLS,
		TLSHandshakeTimeout: timeout,
		// etcd sends a watch's headers at once, so this bounds long
		// polls against a hung endpoint too.
		ResponseHeaderTimeout: timeout,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
	}
	life, stop := context.WithCancel(context.Background())
	return &Store{
		c: &client{
			hc:        &http.Client{Transport: tr},
			endpoints: eps,
			user:      o.Username,
			pass:      o.Password,
			timeout:   timeout,
			log:       log,
			life:      life,
		},
		log:     log,
		prefix:  prefix,
		subnets: strings.TrimSuffix(lease.SubnetsDir(prefix), "/"),
		stop:    stop,
		ttls:    make(map[int64]time.Duration),
	}, nil
}

// Prefix is the etcd key prefix in use, without a trailing slash.
func (s *Store) Prefix() string { return s.prefix }

// Close makes calls in progress (a Watch included) and later calls fail,
// and closes idle connections.
func (s *Store) Close() error {
	s.stop()
	s.c.hc.CloseIdleConnections()
	return nil
}

// fail wraps a request error with what was being done.
func fail(what string, err error) error {
	if errors.Is(err, errClosed) {
		return errClosed
	}
	return fmt.Errorf("etcdv2store: %s: %w", what, err)
}

// rememberTTL records ttl for lease id; ttl 0 forgets it.
func (s *Store) rememberTTL(id int64, ttl time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ttl <= 0 {
		delete(s.ttls, id)
	} else {
		s.ttls[id] = ttl
	}
}

// ttlFor is the TTL to renew lease id with when the caller gives none.
func (s *Store) ttlFor(id int64) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ttl, ok := s.ttls[id]; ok {
		return ttl
	}
	return lease.DefaultTTL
}
