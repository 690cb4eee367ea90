//go:build !linux

package vxlan

import (
	"errors"

	"github.com/flannel-go/flannel/internal/backend"
)

func newBackend(backend.Config, Options) (backend.Backend, error) {
	return nil, errors.New("vxlan: only supported on Linux")
}
