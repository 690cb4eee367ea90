package wireguard

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// maxKeyFile bounds what LoadOrCreateKey reads: a key file is 44 bytes
// and a newline.
const maxKeyFile = 4096

// LoadOrCreateKey returns the private key kept in path, generating and
// writing one (mode 0400, as upstream, via a temporary file and a rename,
// so a crash never leaves half a key) when the file does not exist. A file
// that exists but holds no key is an error naming the file: replacing it
// would change this host's identity behind the operator's back.
func LoadOrCreateKey(path string) (wgtypes.Key, bool, error) {
	k, err := readKey(path)
	if err == nil {
		return k, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return wgtypes.Key{}, false, err
	}
	k, err = wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("wireguard: generate private key: %w", err)
	}
	if err := writeKey(path, k); err != nil {
		var r errRaced
		if errors.As(err, &r) {
			return r.k, false, nil
		}
		return wgtypes.Key{}, false, err
	}
	return k, true, nil
}

func readKey(path string) (wgtypes.Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("wireguard: key file %s: %w", path, err)
	}
	defer f.Close()
	buf := make([]byte, maxKeyFile+1)
	n, _ := f.Read(buf)
	return parseKeyFile(path, buf[:n])
}

// parseKeyFile reads what `wg genkey` writes: the base64 key and a
// newline.
func parseKeyFile(path string, b []byte) (wgtypes.Key, error) {
	if len(b) > maxKeyFile {
		return wgtypes.Key{}, fmt.Errorf("wireguard: key file %s: larger than %d bytes, not a key file", path, maxKeyFile)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return wgtypes.Key{}, fmt.Errorf("wireguard: key file %s is empty; delete it to have a new key generated", path)
	}
	k, err := wgtypes.ParseKey(s)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("wireguard: key file %s does not hold a WireGuard private key (32 bytes in base64, as `wg genkey` writes); fix or delete it", path)
	}
	if k == (wgtypes.Key{}) {
		return wgtypes.Key{}, fmt.Errorf("wireguard: key file %s holds an all-zero key; delete it to have a new key generated", path)
	}
	return k, nil
}

func writeKey(path string, k wgtypes.Key) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("wireguard: key file directory: %w", err)
	}
	f, err := os.CreateTemp(dir, ".wgkey-*")
	if err != nil {
		return fmt.Errorf("wireguard: write key file %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if err := f.Chmod(0o400); err != nil {
		f.Close()
		return fmt.Errorf("wireguard: write key file %s: %w", path, err)
	}
	if _, err := f.WriteString(k.String() + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("wireguard: write key file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("wireguard: write key file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("wireguard: write key file %s: %w", path, err)
	}
	// A link, not a rename: two flanneld starting at once must not each
	// install a different key; the loser reads the winner's.
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			got, rerr := readKey(path)
			if rerr != nil {
				return rerr
			}
			if got != k {
				return errRaced{got}
			}
			return nil
		}
		return fmt.Errorf("wireguard: write key file %s: %w", path, err)
	}
	return nil
}

// errRaced carries the key another process wrote first.
type errRaced struct{ k wgtypes.Key }

func (errRaced) Error() string { return "wireguard: key file written concurrently" }
