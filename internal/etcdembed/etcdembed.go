// Package etcdembed runs a single-member etcd server inside the current
// process, so tests and the local lab get a real etcd (same gRPC API, same
// lease and compaction behaviour) without an etcd binary or a fixed port.
package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// startTimeout bounds how long Start waits for the member to become ready.
const startTimeout = 10 * time.Second

// Options configures Start.
type Options struct {
	Dir  string // required: data directory (created if missing)
	Name string // optional: member name; default "default"
	// ClientURLs to listen on, e.g. http://10.9.0.1:2379; port 0 picks a
	// free port (see Server.Endpoints). Default http://127.0.0.1:0.
	ClientURLs []string
	// PeerURL to listen on for raft traffic; default http://127.0.0.1:0
	// (a single member never dials it).
	PeerURL string
	// Log receives etcd's own errors; nil discards them. etcd's info and
	// warning chatter is never forwarded.
	Log *slog.Logger
	// TLS, when set, serves the client URLs (which must be https) with a
	// server certificate and optionally requires client certificates.
	TLS *TLS
	// UnsafeNoFsync skips fsync: faster, and fine for throw-away test data.
	UnsafeNoFsync bool
}

// TLS is the client-side TLS setup of the server.
type TLS struct {
	CertFile, KeyFile string // required: server certificate and key (PEM)
	// ClientCAFile, when set, makes the server require a client
	// certificate signed by this CA.
	ClientCAFile string
}

// Server is a running embedded etcd member.
type Server struct {
	e         *embed.Etcd
	endpoints []string
	closeOnce sync.Once
	closing   *atomic.Bool // silences etcd's logger during Close
}

// Start launches the member and waits (at most 10 s, or until ctx ends)
// until it serves client requests.
func Start(ctx context.Context, o Options) (*Server, error) {
	closing := new(atomic.Bool)
	cfg, err := config(o, closing)
	if err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcdembed: start in %s: %w", o.Dir, err)
	}
	s := &Server{e: e, closing: closing}
	scheme := "http"
	if o.TLS != nil {
		scheme = "https"
	}
	for _, l := range e.Clients {
		s.endpoints = append(s.endpoints, scheme+"://"+l.Addr().String())
	}

	t := time.NewTimer(startTimeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
		return s, nil
	case err := <-e.Err():
		s.Close()
		return nil, fmt.Errorf("etcdembed: start in %s: %w", o.Dir, err)
	case <-t.C:
		s.Close()
		return nil, fmt.Errorf("etcdembed: start in %s: not ready after %v", o.Dir, startTimeout)
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("etcdembed: start in %s: %w", o.Dir, ctx.Err())
	}
}

func config(o Options, closing *atomic.Bool) (*embed.Config, error) {
	if o.Dir == "" {
		return nil, errors.New("etcdembed: no data directory")
	}
	cfg := embed.NewConfig()
	cfg.Dir = o.Dir
	if o.Name != "" {
		cfg.Name = o.Name
	}
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zapLogger(o.Log, closing))
	cfg.UnsafeNoFsync = o.UnsafeNoFsync
	// The v3 gRPC gateway and metrics are not needed and only add
	// listeners and goroutines.
	cfg.EnableGRPCGateway = false

	scheme := "http"
	if o.TLS != nil {
		scheme = "https"
	}
	clientURLs := o.ClientURLs
	if len(clientURLs) == 0 {
		clientURLs = []string{scheme + "://127.0.0.1:0"}
	}
	cus, err := parseURLs(clientURLs)
	if err != nil {
		return nil, err
	}
	for _, u := range cus {
		// etcd would silently serve plain http on an http URL even with
		// TLS configured.
		if u.Scheme != scheme {
			return nil, fmt.Errorf("etcdembed: client URL %s: scheme must be %s", u.String(), scheme)
		}
	}
	peer := o.PeerURL
	if peer == "" {
		peer = "http://127.0.0.1:0"
	}
	pus, err := parseURLs([]string{peer})
	if err != nil {
		return nil, err
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = cus, cus
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = pus, pus
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	if t := o.TLS; t != nil {
		if t.CertFile == "" || t.KeyFile == "" {
			return nil, errors.New("etcdembed: TLS needs a certificate and a key")
		}
		cfg.ClientTLSInfo.CertFile = t.CertFile
		cfg.ClientTLSInfo.KeyFile = t.KeyFile
		if t.ClientCAFile != "" {
			cfg.ClientTLSInfo.TrustedCAFile = t.ClientCAFile
			cfg.ClientTLSInfo.ClientCertAuth = true
		}
	}
	return cfg, nil
}

func parseURLs(ss []string) ([]url.URL, error) {
	out := make([]url.URL, 0, len(ss))
	for _, s := range ss {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("etcdembed: URL %q: %w", s, err)
		}
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			return nil, fmt.Errorf("etcdembed: URL %q: %w", s, err)
		}
		out = append(out, *u)
	}
	return out, nil
}

// Endpoints returns the client URLs with the ports actually bound.
func (s *Server) Endpoints() []string { return append([]string(nil), s.endpoints...) }

// Close stops the member and waits for its goroutines. The data directory
// is left in place, so Start on it again resumes the same cluster. Close
// may be called more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		// etcd reports its own listeners shutting down as errors.
		s.closing.Store(true)
		s.e.Close()
	})
}

// zapLogger forwards etcd's error-level records to log until closing is
// set.
func zapLogger(log *slog.Logger, closing *atomic.Bool) *zap.Logger {
	if log == nil {
		return zap.NewNop()
	}
	return zap.New(&slogCore{log: log, closing: closing})
}

// slogCore is a zapcore.Core that hands records to an slog.Logger.
type slogCore struct {
	log     *slog.Logger
	closing *atomic.Bool
	fields  []zapcore.Field
}

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return l >= zapcore.ErrorLevel && !c.closing.Load()
}

func (c *slogCore) With(fs []zapcore.Field) zapcore.Core {
	return &slogCore{log: c.log, closing: c.closing, fields: append(append([]zapcore.Field(nil), c.fields...), fs...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	args := make([]any, 0, 2*len(enc.Fields))
	for k, v := range enc.Fields {
		args = append(args, k, v)
	}
	c.log.Error("etcd: "+e.Message, args...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
