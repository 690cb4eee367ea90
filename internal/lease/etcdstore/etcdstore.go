// Package etcdstore is the etcd v3 lease.Store, with upstream flannel's keys
// and values: <prefix>/config and <prefix>/subnets/<key>, each subnet key
// attached to an etcd lease (or to none, for a reservation).
//
// Design notes:
//   - Create is create-if-absent in one transaction, so two hosts can never
//     hold the same subnet; Renew and Revoke are guarded by the key's etcd
//     lease ID, so a host never overwrites or deletes a lease that is no
//     longer its own (upstream renews with a blind Put).
//   - A reservation (a key without an etcd lease) stays one: Renew only
//     rewrites its value (upstream issue #1329).
//   - Listing is one range request with no per-key TimeToLive, so the cost
//     of a resync does not grow in requests with the number of peers.
//   - Every request has a timeout, and the gRPC reconnect backoff is capped
//     at one second, so a restarted etcd is used again within about 2 s.
package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/flannel-go/flannel/internal/etcdconf/etcdopt"
	"github.com/flannel-go/flannel/internal/lease"
)

// Options configures New: the connection options shared with the v2
// store.
type Options = etcdopt.Options

// Store is a lease.Store on etcd v3. It is safe for concurrent use.
type Store struct {
	cli       *clientv3.Client
	log       *slog.Logger
	prefix    string // without trailing slash
	subnets   string // lease.SubnetsDir(prefix)
	endpoints string // for error messages
	timeout   time.Duration
	connErrs  *connErrors
	onConn    func(up bool)
	bad       lease.BadEntries // warn once per bad entry

	stop context.CancelFunc
	wg   sync.WaitGroup // monitor goroutine
}

var _ lease.Store = (*Store)(nil)

// New creates the client. It reads the TLS files (failing on any it cannot
// use) but, without Username, does not wait for etcd: requests made while
// etcd is down fail after the request timeout.
func New(o Options) (*Store, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("etcdstore: no etcd endpoints")
	}
	o = o.WithDefaults()
	log, timeout := o.Log, o.Timeout
	tc := tlsFor(o)
	prefix := strings.TrimRight(o.Prefix, "/")
	errs := &connErrors{}
	dialOpts := append([]grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
		MinConnectTimeout: 5 * time.Second,
	})}, errs.dialOptions(o.Endpoints, tc)...)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: o.Endpoints,
		TLS:       tc,
		Username:  o.Username,
		Password:  o.Password,
		// Only bounds the authentication New does with Username; the
		// connection itself is made in the background.
		DialTimeout:          timeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		PermitWithoutStream:  true,
		// Our own errors say what failed; the client's retry chatter
		// would only repeat them.
		Logger:      zap.NewNop(),
		DialOptions: dialOpts,
	})
	if err != nil {
		if cerr := errs.get(); cerr != nil {
			return nil, fmt.Errorf("etcdstore: connect to %s: %w (last connection error: %v)", strings.Join(o.Endpoints, ","), err, cerr)
		}
		return nil, fmt.Errorf("etcdstore: connect to %s: %w", strings.Join(o.Endpoints, ","), err)
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Store{
		cli:       cli,
		log:       log,
		prefix:    prefix,
		subnets:   lease.SubnetsDir(prefix),
		endpoints: strings.Join(o.Endpoints, ","),
		timeout:   timeout,
		connErrs:  errs,
		onConn:    o.OnConnState,
		stop:      stop,
	}
	s.wg.Go(func() { s.monitor(ctx) })
	return s, nil
}

// tlsFor is the TLS config for the endpoints, or nil for plain http (or
// unix sockets): the client would otherwise use TLS for every endpoint.
func tlsFor(o Options) *tls.Config {
	for _, ep := range o.Endpoints {
		if strings.HasPrefix(ep, "https://") {
			if o.TLS == nil {
				return &tls.Config{MinVersion: tls.VersionTLS12}
			}
			return o.TLS
		}
	}
	return nil
}

// monitor logs once when etcd becomes unreachable and once when it is back,
// however many reconnection attempts lie between.
func (s *Store) monitor(ctx context.Context) {
	conn := s.cli.ActiveConnection()
	down := false
	state := conn.GetState()
	for conn.WaitForStateChange(ctx, state) {
		state = conn.GetState()
		switch {
		case state == connectivity.TransientFailure && !down:
			down = true
			s.log.Warn("etcd unreachable; reconnecting", "endpoints", s.endpoints)
			if s.onConn != nil {
				s.onConn(false)
			}
		case state == connectivity.Ready && down:
			down = false
			s.log.Info("etcd reachable again", "endpoints", s.endpoints)
			if s.onConn != nil {
				s.onConn(true)
			}
		}
	}
}

// Client is the underlying etcd client, for tests that write around the
// store (raw keys, compaction, lease TTLs). Tools use the Store's methods.
func (s *Store) Client() *clientv3.Client { return s.cli }

// Prefix is the etcd key prefix in use, without a trailing slash.
func (s *Store) Prefix() string { return s.prefix }

// Close releases the client. Calls in progress fail.
func (s *Store) Close() error {
	s.stop()
	err := s.cli.Close()
	s.wg.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcdstore: close: %w", err)
	}
	return nil
}

// reqCtx bounds one request.
func (s *Store) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// fail wraps a request error; when etcd could not be reached it names the
// endpoints, since that is what the operator has to check.
func (s *Store) fail(what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || isCode(err, codes.DeadlineExceeded, codes.Unavailable) {
		if cerr := s.connErrs.get(); cerr != nil {
			return fmt.Errorf("etcdstore: %s: etcd at %s: %w (last connection error: %v)", what, s.endpoints, err, cerr)
		}
		return fmt.Errorf("etcdstore: %s: etcd at %s: %w", what, s.endpoints, err)
	}
	return fmt.Errorf("etcdstore: %s: %w", what, err)
}

func isCode(err error, cs ...codes.Code) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	for _, c := range cs {
		if st.Code() == c {
			return true
		}
	}
	return false
}
