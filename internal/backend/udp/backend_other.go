//go:build !linux

package udp

import (
	"errors"

	"github.com/flannel-go/flannel/internal/backend"
)

// New fails: the udp backend needs Linux TUN devices.
func (o Options) New(cfg backend.Config) (backend.Backend, error) {
	return nil, errors.New("udp: backend requires Linux")
}
