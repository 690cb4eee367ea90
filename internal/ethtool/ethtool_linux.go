// Package ethtool reads a network device's offload features with the
// SIOCETHTOOL ioctls that the ethtool command uses; x/sys/unix has the
// command numbers but not the feature-name lookup.
package ethtool

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Constants of <linux/ethtool.h> that x/sys/unix does not carry.
const (
	ethSSFeatures  = 4  // ETH_SS_FEATURES: the feature name string set
	ethGStringLen  = 32 // ETH_GSTRING_LEN
	featureBlockSz = 16 // struct ethtool_get_features_block: 4 × u32
)

// ifreqData is struct ifreq with the ifr_data member of the union.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// ethtool runs one SIOCETHTOOL request on dev with buf as its data; buf
// starts with the command word.
func ethtool(fd int, dev string, buf []byte) error {
	var ifr ifreqData
	if len(dev) >= len(ifr.name) {
		return fmt.Errorf("interface name %q too long", dev)
	}
	copy(ifr.name[:], dev)
	ifr.data = unsafe.Pointer(&buf[0])
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(buf)
	if errno != 0 {
		return errno
	}
	return nil
}

// Feature reports whether the named offload feature (as `ethtool -k`
// names it) is active on dev. It uses the same three ioctls as ethtool:
// the size of the feature name set, the names, then the feature words.
func Feature(dev, name string) (bool, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("ethtool %s: socket: %w", dev, err)
	}
	defer unix.Close(fd)
	le := binary.NativeEndian

	// struct ethtool_sset_info { u32 cmd, reserved; u64 sset_mask; u32 data[1] }
	info := make([]byte, 4+4+8+4)
	le.PutUint32(info[0:], unix.ETHTOOL_GSSET_INFO)
	le.PutUint64(info[8:], 1<<ethSSFeatures)
	if err := ethtool(fd, dev, info); err != nil {
		return false, fmt.Errorf("ethtool %s: feature set size: %w", dev, err)
	}
	if le.Uint64(info[8:]) == 0 {
		return false, fmt.Errorf("ethtool %s: no feature names", dev)
	}
	n := int(le.Uint32(info[16:]))
	if n <= 0 || n > 4096 {
		return false, fmt.Errorf("ethtool %s: %d feature names", dev, n)
	}

	// struct ethtool_gstrings { u32 cmd, string_set, len; u8 data[] }
	strs := make([]byte, 12+n*ethGStringLen)
	le.PutUint32(strs[0:], unix.ETHTOOL_GSTRINGS)
	le.PutUint32(strs[4:], ethSSFeatures)
	le.PutUint32(strs[8:], uint32(n))
	if err := ethtool(fd, dev, strs); err != nil {
		return false, fmt.Errorf("ethtool %s: feature names: %w", dev, err)
	}
	idx := -1
	for i := range n {
		s := strs[12+i*ethGStringLen : 12+(i+1)*ethGStringLen]
		if j := bytes.IndexByte(s, 0); j >= 0 {
			s = s[:j]
		}
		if string(s) == name {
			idx = i
			break
		}
	}
	if idx < 0 {
		return false, fmt.Errorf("ethtool %s: the kernel has no feature %q", dev, name)
	}

	// struct ethtool_gfeatures { u32 cmd, size; blocks[size] }
	blocks := (n + 31) / 32
	feats := make([]byte, 8+blocks*featureBlockSz)
	le.PutUint32(feats[0:], unix.ETHTOOL_GFEATURES)
	le.PutUint32(feats[4:], uint32(blocks))
	if err := ethtool(fd, dev, feats); err != nil {
		return false, fmt.Errorf("ethtool %s: features: %w", dev, err)
	}
	block := feats[8+(idx/32)*featureBlockSz:]
	active := le.Uint32(block[8:]) // available, requested, active, never_changed
	return active&(1<<(idx%32)) != 0, nil
}
