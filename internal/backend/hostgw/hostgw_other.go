//go:build !linux

package hostgw

import (
	"errors"

	"github.com/flannel-go/flannel/internal/backend"
)

func newBackend(backend.Config) (backend.Backend, error) {
	return nil, errors.New("host-gw: only supported on Linux")
}
