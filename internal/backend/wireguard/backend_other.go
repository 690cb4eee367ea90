//go:build !linux

package wireguard

import (
	"errors"

	"github.com/flannel-go/flannel/internal/backend"
)

func newBackend(backend.Config, Config, string, bool, bool) (backend.Backend, error) {
	return nil, errors.New("wireguard: only supported on Linux")
}
