//go:build !linux

package masq

import (
	"context"
	"errors"
	"log/slog"
)

// Manager keeps flannel's traffic rules; it exists only on Linux.
type Manager struct{}

var errUnsupported = errors.New("masq: traffic rules need Linux")

// New fails: iptables and nftables are Linux-only.
func New(kind Kind, log *slog.Logger) (*Manager, error) { return nil, errUnsupported }

// Kind returns the implementation the Manager programs.
func (m *Manager) Kind() Kind { return IPTables }

// Apply fails: see New.
func (m *Manager) Apply(ctx context.Context, r Rules) (bool, error) { return false, errUnsupported }

// RemoveOther fails: see New.
func (m *Manager) RemoveOther(ctx context.Context) error { return errUnsupported }
