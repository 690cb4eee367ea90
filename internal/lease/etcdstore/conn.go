package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// connErrors remembers why the last connection attempt failed. The etcd
// client turns a request that timed out waiting for a connection into a
// bare "context deadline exceeded"; with this the error can say "x509:
// certificate signed by unknown authority" or "connection refused".
type connErrors struct {
	mu   sync.Mutex
	last error // nil after a successful connection
}

func (c *connErrors) set(err error) {
	c.mu.Lock()
	c.last = err
	c.mu.Unlock()
}

func (c *connErrors) get() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// dialOptions observe dials and TLS handshakes into c. Plain TCP endpoints
// only: the client's own dialer handles unix sockets.
func (c *connErrors) dialOptions(endpoints []string, tc *tls.Config) []grpc.DialOption {
	for _, ep := range endpoints {
		if strings.HasPrefix(ep, "unix") {
			return nil
		}
	}
	opts := []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil || tc == nil {
			c.set(err)
		}
		return conn, err
	})}
	if tc != nil {
		// Replaces the identical TLS credentials the client sets up.
		opts = append(opts, grpc.WithTransportCredentials(&recordingCreds{credentials.NewTLS(tc), c}))
	}
	return opts
}

// recordingCreds is TLS transport credentials that report handshake
// outcomes to connErrors.
type recordingCreds struct {
	credentials.TransportCredentials
	errs *connErrors
}

func (r *recordingCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, info, err := r.TransportCredentials.ClientHandshake(ctx, authority, conn)
	if err != nil {
		r.errs.set(err)
		return c, info, err
	}
	// A completed handshake does not clear the last error: in TLS 1.3 the
	// server may still refuse us on the first read, and a retry's handshake
	// must not erase the previous attempt's reason.
	// In TLS 1.3 the server rejects a missing or unacceptable client
	// certificate after the client's handshake is done: the alert arrives
	// as the first read's error.
	return &firstReadConn{Conn: c, errs: r.errs}, info, nil
}

// firstReadConn records the error of a connection's first read.
type firstReadConn struct {
	net.Conn
	errs *connErrors
	once sync.Once
}

func (c *firstReadConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.once.Do(func() {
		switch {
		case err == nil:
			c.errs.set(nil) // the connection really works
		case errors.Is(err, net.ErrClosed):
			// Closed by the client itself (a timeout or shutdown): says
			// nothing about why etcd refused us; keep the earlier reason.
		default:
			c.errs.set(err)
		}
	})
	return n, err
}

func (r *recordingCreds) Clone() credentials.TransportCredentials {
	return &recordingCreds{r.TransportCredentials.Clone(), r.errs}
}
